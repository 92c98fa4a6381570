"""The TCP transport's receiving side alone: reading one message from a loopback connection
and cutting it into frames (``dynaps.wire.tcp_inbound.Inbound.read``), per message, in one
process, no MAC.  The message is written whole before the timed read, so the figure is the
read's and the cut's CPU, not a wait.

    python bench/receive_path.py                  # 40 KB and 300 B messages, 5,000 each
    python bench/receive_path.py --cold-malloc    # without first raising glibc's mmap threshold

``--cold-malloc`` leaves glibc's allocator as a fresh process has it: a block over 128 KB
then comes from mmap until a freed one raises the threshold (a process that keeps no
large free block pays an mmap, a page fault and a munmap for every such allocation).
Compare trees by running this file from each with its runtime on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import array
import collections
import fcntl
import os
import selectors
import socket
import statistics
import termios
import time

from dynaps.wire.tcp_inbound import HEADS, MAGIC, Connection, Inbound


def _readable(sock: socket.socket) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(sock, termios.FIONREAD, count)
    return count[0]


def per_message(size: int, count: int) -> float:
    """Microseconds to read and cut one message of a 40-byte header and ``size`` bytes."""
    selector = selectors.DefaultSelector()
    inbox: collections.deque[list[bytes]] = collections.deque()
    inbound = Inbound(selector, MAGIC + b"password", 1 << 24, inbox, "127.0.0.1", 0)
    sender = socket.create_connection(("127.0.0.1", inbound.port))
    receiving, _ = inbound._listener.accept()  # the one connection, admitted by hand
    conn = Connection(receiving, 0.0)
    conn.admitted = True
    header, body = b"h" * 40, os.urandom(size)
    message = HEADS[2].pack(2, len(header), len(body)) + header + body
    total = 0.0
    try:
        for _ in range(count):
            sender.sendall(message)
            while _readable(receiving) < len(message):
                pass
            started = time.perf_counter()
            while not inbox:
                inbound.read(conn)
            inbox.popleft()
            total += time.perf_counter() - started
    finally:
        sender.close()
        receiving.close()
        inbound.close()
        selector.close()
    return total / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000, help="messages per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per size (median)")
    parser.add_argument("--cold-malloc", action="store_true", help="keep glibc's mmap threshold as it starts")
    args = parser.parse_args()
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    if not args.cold_malloc:
        block = bytearray(1 << 20)  # freed at once: glibc raises its mmap threshold above it
        del block
    for size in (40_000, 300):
        figures = [per_message(size, args.count) for _ in range(args.repeat)]
        print(
            f"{size:>6} B: read and cut {statistics.median(figures):6.2f} us per message "
            f"(each: {', '.join(f'{f:.2f}' for f in figures)})"
        )


if __name__ == "__main__":
    main()
