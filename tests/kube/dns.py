"""A minimal cluster DNS server (UDP, A records) for the process kubelet's pods.

Pods get a resolv.conf that points here with the usual Kubernetes search path, so `<svc>`,
`<svc>.<ns>`, `<svc>.<ns>.svc[.cluster.local]` and `<host>.<svc>...` resolve as they do with CoreDNS.
It answers only names under cluster.local and never forwards a query: pods cannot reach outside
names, and no query leaves the machine. The record table is replaced whole (one reference swap), so a
lookup never sees a half-updated table.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Mapping

CLUSTER_DOMAIN = "cluster.local"
TYPE_A = 1
CLASS_IN = 1
RCODE_OK = 0
RCODE_FORMERR = 1
RCODE_NXDOMAIN = 3
TTL_SECONDS = 1


class ClusterDns:
    def __init__(self, address: str, port: int = 53) -> None:
        self.address = address
        self._records: Mapping[str, tuple[str, ...]] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((address, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="process-kubelet-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sock.close()

    def set_records(self, records: Mapping[str, tuple[str, ...]]) -> None:
        """Replaces the table: fully qualified lower-case names without the final dot -> IPv4s."""
        self._records = dict(records)

    def lookup(self, name: str) -> tuple[str, ...] | None:
        return self._records.get(name.lower().rstrip("."))

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(query)
            if reply:
                self._sock.sendto(reply, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000 or qdcount != 1:
            return _header(ident, flags, RCODE_FORMERR, 0, 0) if not flags & 0x8000 else None
        try:
            name, end = _read_name(query, 12)
        except ValueError:
            return _header(ident, flags, RCODE_FORMERR, 0, 0)
        qtype, qclass = struct.unpack("!HH", query[end : end + 4])
        question = query[12 : end + 4]
        addresses = self.lookup(name)
        if addresses is None:
            return _header(ident, flags, RCODE_NXDOMAIN, 1, 0) + question
        # A known name asked for AAAA (or anything else) gets an empty answer, not NXDOMAIN, so the
        # resolver still uses the A records it asked for in parallel.
        answers = list(addresses) if qtype == TYPE_A and qclass == CLASS_IN else []
        body = b"".join(
            struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, TTL_SECONDS, 4) + socket.inet_aton(ip)
            for ip in answers
        )
        return _header(ident, flags, RCODE_OK, 1, len(answers)) + question + body


def _header(ident: int, query_flags: int, rcode: int, qdcount: int, ancount: int) -> bytes:
    # QR=1, keep the opcode and RD bit, AA=1 (we are the authority for cluster.local), RA=0.
    flags = 0x8000 | (query_flags & 0x7900) | 0x0400 | rcode
    return struct.pack("!HHHHHH", ident, flags, qdcount, ancount, 0, 0)


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if offset >= len(message):
            raise ValueError("truncated name")
        length = message[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:
            raise ValueError("compressed names do not occur in questions")
        labels.append(message[offset : offset + length].decode("ascii", errors="replace"))
        offset += length
