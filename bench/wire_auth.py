"""What authenticating every message costs on the wire: no authentication, dynaps' MAC
trailer (dynaps/wire/auth.py) and ZeroMQ CURVE, in one run.

Two processes play a pull over PUSH/PULL sockets on 127.0.0.1: a request (a 60-byte header
and 800 bytes of keys in one frame) and a reply that is a bare header ("1 key") or a header and 40,000
bytes of rows ("100 keys", dim 100 float32), with both ends spinning briefly before they
block, as dynaps' processes do.  Each variant runs ``--rounds`` times, interleaved with the
others, and reports the median round trip (wall) and the CPU seconds of both processes
per round trip, with its ratio to no authentication.  CURVE uses one key pair derived
from the job's key (every process of a job holds the secret; no ZAP handler here: the
handshake cost is not on the measured path).

    python bench/wire_auth.py [--rounds 3] [--count 2000] [--out bench/results/wire_auth.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils import z85

from dynaps.wire.auth import Authenticator
from dynaps.wire.zmq_transport import spin_until_readable

KEY = bytes(range(32))
SPIN = 0.0004  # seconds: dynaps' default spin before blocking
VARIANTS = ("none", "mac", "curve")
REPLIES = {"1 key": 0, "100 keys": 40_000}


def _header(sender: int) -> bytes:
    return bytes(6) + sender.to_bytes(2, "little", signed=True) + bytes(52)


def _curve_keys() -> tuple[bytes, bytes]:
    secret = z85.encode(hashlib.blake2b(KEY, digest_size=32, person=b"bench-curve").digest())
    return zmq.curve_public(secret), secret


def _sockets(context: zmq.Context[Any], variant: str) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    inbox, outbox = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    for sock in (inbox, outbox):
        sock.setsockopt(zmq.LINGER, 0)
    if variant == "curve":
        public, secret = _curve_keys()
        inbox.curve_server = True
        inbox.curve_publickey, inbox.curve_secretkey = public, secret
        outbox.curve_serverkey = public
        outbox.curve_publickey, outbox.curve_secretkey = public, secret
    return inbox, outbox


def _codec(variant: str, me: int, peer: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    if variant != "mac":
        return (lambda frames: frames), (lambda frames: frames)
    auth = Authenticator(KEY)
    return (lambda frames: auth.sign(me, peer, frames)), (lambda frames: auth.verify(me, frames))


def _recv(sock: zmq.Socket[Any]) -> list[Any]:
    spin_until_readable(sock, SPIN)
    return sock.recv_multipart()


def _server(variant: str, reply_bytes: int, port: int, pipe: Any) -> None:
    context: zmq.Context[Any] = zmq.Context()
    inbox, outbox = _sockets(context, variant)
    pipe.send(inbox.bind_to_random_port("tcp://127.0.0.1"))
    outbox.connect(f"tcp://127.0.0.1:{port}")
    sign, verify = _codec(variant, 2, 1)
    rows = np.ones(reply_bytes // 4, dtype=np.float32)
    reply: Sequence[Any] = [_header(2), rows] if reply_bytes else [_header(2)]
    started = time.process_time()
    while True:
        frames = verify(_recv(inbox))
        if frames[0] == b"stop":
            break
        outbox.send_multipart(sign(reply), copy=reply_bytes < 65536)
    pipe.send(time.process_time() - started)
    context.destroy(linger=0)


def round_trip(variant: str, reply_bytes: int, count: int) -> tuple[float, float]:
    """Median wall seconds and CPU seconds (both processes) per round trip."""
    context: zmq.Context[Any] = zmq.Context()
    inbox, outbox = _sockets(context, variant)
    port = inbox.bind_to_random_port("tcp://127.0.0.1")
    mine, theirs = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_server, args=(variant, reply_bytes, port, theirs))
    server.start()
    try:
        outbox.connect(f"tcp://127.0.0.1:{mine.recv()}")
        sign, verify = _codec(variant, 1, 2)
        request = [_header(1) + bytes(800)]  # one frame, as dynaps.wire.messages.request_frames
        for _ in range(200):  # connect, handshake, warm up
            outbox.send_multipart(sign(request))
            verify(_recv(inbox))
        walls = []
        cpu_start = time.process_time()
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(count // 5):
                outbox.send_multipart(sign(request))
                verify(_recv(inbox))
            walls.append((time.perf_counter() - t0) / (count // 5))
        cpu = time.process_time() - cpu_start
        outbox.send_multipart(sign([b"stop"]))
        cpu += mine.recv()  # the server's, warm-up included: the same for every variant
        server.join(timeout=10)
    finally:
        if server.is_alive():
            server.kill()
            server.join()
        context.destroy(linger=0)
    return statistics.median(walls), cpu / (count + 200)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, interleaved")
    parser.add_argument("--count", type=int, default=2000, help="round trips per run")
    parser.add_argument("--out", default="bench/results/wire_auth.json", help="where to write the JSON")
    args = parser.parse_args()
    if args.rounds < 1 or args.count < 5:
        parser.error("--rounds must be at least 1 and --count at least 5")
    walls: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for shape, reply_bytes in REPLIES.items():
            for variant in VARIANTS:
                wall, cpu = round_trip(variant, reply_bytes, args.count)
                walls.setdefault((shape, variant), []).append(wall)
                cpus.setdefault((shape, variant), []).append(cpu)
    figures: dict[str, dict[str, float]] = {}
    print(f"{'reply':<9} {'variant':<6} {'round trip us':>14} {'ratio':>6} {'CPU us':>7} {'ratio':>6}")
    for shape in REPLIES:
        base_wall = statistics.median(walls[(shape, "none")])
        base_cpu = statistics.median(cpus[(shape, "none")])
        for variant in VARIANTS:
            wall = statistics.median(walls[(shape, variant)])
            cpu = statistics.median(cpus[(shape, variant)])
            figures[f"{shape}/{variant}"] = {"round_trip_s": wall, "cpu_s": cpu}
            print(
                f"{shape:<9} {variant:<6} {wall * 1e6:14.1f} {wall / base_wall:6.2f} "
                f"{cpu * 1e6:7.1f} {cpu / base_cpu:6.2f}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "count": args.count, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
