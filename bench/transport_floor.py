"""The floor under any transport: one round trip through pyzmq (PUSH/PULL pairs, as
ZmqTransport uses them) against one over a plain TCP connection (length-prefixed, both ends
blocking), between two processes, with the wall time and the CPU time of both per round trip.

    python bench/transport_floor.py                 # 64 B and 40 KB answers, 3,000 round trips each
    python bench/transport_floor.py --count 1000

No dynaps code runs: this measures what ZeroMQ's I/O threads cost on this machine (each zmq
hop wakes the sender's I/O thread, the receiver's, then the receiver), which is why the
runtime's transport is plain TCP (dynaps.wire.tcp_transport; bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from typing import Any

import zmq

WARM_UP = 50


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _zmq_side(first: bool, ports: tuple[int, int], size: int, count: int) -> float:
    context: zmq.Context[Any] = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.bind(f"tcp://127.0.0.1:{ports[0] if first else ports[1]}")
    out = context.socket(zmq.PUSH)
    out.connect(f"tcp://127.0.0.1:{ports[1] if first else ports[0]}")
    answer, header = b"x" * size, b"h" * 40
    started = 0.0
    try:
        if not first:  # the answering side
            for _ in range(count + WARM_UP):
                inbox.recv_multipart()
                out.send_multipart([header, answer])
            time.sleep(0.2)  # what was sent leaves before the context ends
            return 0.0
        time.sleep(0.3)  # the other side binds
        for i in range(count + WARM_UP):
            if i == WARM_UP:
                started = time.perf_counter()
            out.send_multipart([header, b"request!"])
            inbox.recv_multipart()
        return (time.perf_counter() - started) / count
    finally:
        inbox.close(linger=0)
        out.close(linger=0)
        context.term()


def _read(conn: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _tcp_side(first: bool, ports: tuple[int, int], size: int, count: int) -> float:
    if not first:
        with socket.create_server(("127.0.0.1", ports[1])) as listener:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                answer = (40 + size).to_bytes(4, "little") + b"h" * 40 + b"x" * size
                for _ in range(count + WARM_UP):
                    _read(conn, int.from_bytes(_read(conn, 4), "little"))
                    conn.sendall(answer)
        return 0.0
    time.sleep(0.3)
    started = 0.0
    with socket.create_connection(("127.0.0.1", ports[1])) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (48).to_bytes(4, "little") + b"h" * 48
        for i in range(count + WARM_UP):
            if i == WARM_UP:
                started = time.perf_counter()
            conn.sendall(request)
            _read(conn, int.from_bytes(_read(conn, 4), "little"))
    return (time.perf_counter() - started) / count


def measure(kind: str, size: int, count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of both processes) per round trip."""
    side = _zmq_side if kind == "zmq" else _tcp_side
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = (int(a.getsockname()[1]), int(b.getsockname()[1]))
    before = _cpu_seconds()
    pid = os.fork()
    if pid == 0:
        try:
            side(False, ports, size, count)
        finally:
            os._exit(0)
    wall = side(True, ports, size, count)
    os.waitpid(pid, 0)
    return wall, (_cpu_seconds() - before) / (count + WARM_UP)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000, help="round trips per measurement")
    args = parser.parse_args()
    print(f"{'transport':10} {'answer':>8} {'wall us':>9} {'CPU us (both)':>14}")
    for kind in ("zmq", "tcp"):
        for size in (64, 40_000):
            wall, cpu = measure(kind, size, args.count)
            print(f"{kind:10} {size:>7}B {wall * 1e6:9.1f} {cpu * 1e6:14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
