"""Micro benchmark: dynaps' basic operations against the limits of numpy and raw ZeroMQ.

One run measures, on the same table shape (100,000 keys x dim 100, float32):

* limits: numpy gather (np.take) and scatter-add (np.add.at) of 1 and 1000 rows; a raw
  pyzmq DEALER/ROUTER round trip between two processes, and a 100-key "pull-shaped" echo
  (800-byte request, 40,000-byte reply); both again with each end spinning briefly before
  it blocks, as dynaps' processes do (see dynaps/wire/zmq_transport.py), for an informative ratio;
* dynaps on a LocalCluster (1 server, 2 worker nodes): local pull of 1 and 1000 keys,
  local push of 1000 keys, remote synchronous pull of 1 key (owner idle, and owner's
  training process busy in a pure-Python loop), remote pull of 100 keys, remote push of
  100 keys, localize of 100 keys (their shards noted beforehand, as in training after a
  worker's first touch of a shard: bench/localize.py says why), an asynchronous window of
  32 one-key pulls;
* per-node metadata bytes per key.

It prints absolute figures and the ratios the targets are stated in, and writes JSON.

    python bench/micro.py [--quick] [--out bench/results/micro.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

import dynaps
from dynaps.config import spin_seconds
from dynaps.wire.zmq_transport import spin_until_readable

NUM_KEYS = 100_000
DIM = 100
ECHO_ROWS = 100


def timeit(fn: Callable[[], object], seconds: float, min_reps: int = 20) -> float:
    """Median seconds per call of fn over a few batches lasting about ``seconds`` in total."""
    fn()
    start = time.perf_counter()
    calls = 0
    while calls < min_reps or time.perf_counter() - start < seconds / 5:
        fn()
        calls += 1
    per_batch = max(min_reps, calls)
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(samples)


# ----------------------------------------------------------------------------- limits


def numpy_limits(seconds: float) -> dict[str, float]:
    table = np.random.default_rng(0).random((NUM_KEYS, DIM), dtype=np.float32)
    keys1000 = np.random.default_rng(1).integers(0, NUM_KEYS, 1000)
    keys1 = keys1000[:1].copy()
    rows1000 = np.ones((1000, DIM), dtype=np.float32)
    return {
        "numpy_gather_1_s": timeit(lambda: table.take(keys1, axis=0), seconds),
        "numpy_gather_1000_s": timeit(lambda: table.take(keys1000, axis=0), seconds),
        "numpy_scatter_add_1000_s": timeit(lambda: np.add.at(table, keys1000, rows1000), seconds),
    }


def _echo_server(address: str, spin: float) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.bind(address)
    reply = np.zeros((ECHO_ROWS, DIM), dtype=np.float32).tobytes()
    while True:
        if spin:
            spin_until_readable(sock, spin)
        ident, payload = sock.recv_multipart()
        if payload == b"stop":
            break
        sock.send_multipart([ident, reply if len(payload) == ECHO_ROWS * 8 else payload])
    sock.close(linger=0)
    context.term()


def zmq_limits(seconds: float, spin: float = 0.0) -> dict[str, float]:
    """Raw DEALER/ROUTER round trips; with ``spin``, both ends poll before blocking, as dynaps does."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(target=_echo_server, args=(address, spin))
    server.start()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(address)
    small = b"x" * 48
    keys = np.arange(ECHO_ROWS, dtype=np.int64).tobytes()

    def round_trip(payload: bytes) -> Callable[[], object]:
        def once() -> object:
            sock.send(payload)
            if spin:
                spin_until_readable(sock, spin)
            return sock.recv()

        return once

    suffix = "_spin_s" if spin else "_s"
    try:
        result = {
            f"zmq_round_trip{suffix}": timeit(round_trip(small), seconds),
            f"zmq_echo_100_keys{suffix}": timeit(round_trip(keys), seconds),
        }
    finally:
        sock.send(b"stop")
        server.join(10)
        sock.close(linger=0)
        context.term()
    return result


class _Framed:
    """Length-prefixed messages over one connection, read with as few calls as the kernel
    allows (a message that arrived whole takes one ``recv``); ``spin``: poll this long
    (yielding the CPU) before a blocking read, as dynaps' transport does."""

    def __init__(self, conn: Any, spin: float = 0.0) -> None:
        self.conn = conn
        self.spin = spin
        self.buf = bytearray()

    def send(self, payload: bytes) -> None:
        self.conn.sendall(len(payload).to_bytes(4, "little") + payload)

    def _fill(self) -> None:
        if self.spin:
            self.conn.setblocking(False)
            until = time.perf_counter() + self.spin
            try:
                while True:
                    try:
                        chunk = self.conn.recv(1 << 20)
                        break
                    except BlockingIOError:
                        if time.perf_counter() >= until:
                            chunk = None
                            break
                        os.sched_yield()
            finally:
                self.conn.setblocking(True)
            if chunk is not None:
                if not chunk:
                    raise EOFError
                self.buf += chunk
                return
        chunk = self.conn.recv(1 << 20)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def recv(self) -> bytes:
        while len(self.buf) < 4:
            self._fill()
        size = int.from_bytes(self.buf[:4], "little")
        while len(self.buf) < 4 + size:
            self._fill()
        payload = bytes(self.buf[4 : 4 + size])
        del self.buf[: 4 + size]
        return payload


def _tcp_echo_server(port: int, spin: float) -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framed = _Framed(conn, spin)
    reply = np.zeros((ECHO_ROWS, DIM), dtype=np.float32).tobytes()
    while True:
        payload = framed.recv()
        if payload == b"stop":
            break
        framed.send(reply if len(payload) == ECHO_ROWS * 8 else payload)
    conn.close()
    listener.close()


def tcp_limits(seconds: float, spin: float = 0.0) -> dict[str, float]:
    """Length-prefixed round trips over a plain TCP connection (with ``spin``, both ends poll
    before blocking): the floor of dynaps' own transport (dynaps.wire.tcp_transport), which
    has no I/O threads."""
    import socket

    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_tcp_echo_server, args=(port, spin))
    server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the echo server did not start"
            time.sleep(0.05)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framed = _Framed(conn, spin)
    small = b"x" * 48
    keys = np.arange(ECHO_ROWS, dtype=np.int64).tobytes()

    def round_trip(payload: bytes) -> Callable[[], object]:
        def once() -> object:
            framed.send(payload)
            return framed.recv()

        return once

    suffix = "_spin_s" if spin else "_s"
    try:
        return {
            f"tcp_round_trip{suffix}": timeit(round_trip(small), seconds),
            f"tcp_echo_100_keys{suffix}": timeit(round_trip(keys), seconds),
        }
    finally:
        framed.send(b"stop")
        server.join(10)
        conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- dynaps

OWNED_BY_1 = np.arange(90_000, 90_100, dtype=np.int64)  # keys worker rank 1 localizes


def prepare(ps: Any) -> None:
    W = ps.table("W")
    if ps.rank == 0:
        W.localize(np.arange(0, 1000))
    else:
        W.localize(OWNED_BY_1)
    ps.barrier()


def measure_local(ps: Any, seconds: float) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    W = ps.table("W")
    keys1000 = np.random.default_rng(1).integers(0, 1000, 1000)
    keys1 = keys1000[:1].copy()
    rows = np.ones((1000, DIM), dtype=np.float32)
    before = ps.stats()["keys_pulled_remote"]
    result = {
        "local_pull_1_s": timeit(lambda: W.pull(keys1), seconds),
        "local_pull_1000_s": timeit(lambda: W.pull(keys1000), seconds),
        "local_push_1000_s": timeit(lambda: W.push(keys1000, rows), seconds),
        "local_push_1_s": timeit(lambda: W.push(keys1, rows[:1]), seconds),  # one entry per update
    }
    assert ps.stats()["keys_pulled_remote"] == before, "local benchmark touched remote keys"
    return result


def measure_remote(ps: Any, seconds: float, busy: bool) -> dict[str, float]:
    """Rank 0 pulls keys owned by rank 1; with busy=True rank 1 spins in Python meanwhile."""
    W = ps.table("W")
    if ps.rank == 1:
        ps.barrier()
        if busy:
            stop_at = time.monotonic() + seconds * 3 + 5
            x = 0
            while time.monotonic() < stop_at:  # pure Python: holds the GIL
                for i in range(10_000):
                    x += i
        ps.barrier()
        return {}
    ps.barrier()
    key = OWNED_BY_1[:1].copy()
    remote_before = ps.stats()["keys_pulled_remote"]
    result = {
        ("remote_pull_1_busy_owner_s" if busy else "remote_pull_1_s"): timeit(lambda: W.pull(key), seconds)
    }
    assert ps.stats()["keys_pulled_remote"] > remote_before, "pull was not remote"
    ps.barrier()
    return result


def measure_remote_bulk(ps: Any, seconds: float) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    W = ps.table("W")
    server_keys = np.arange(10_000, 10_100, dtype=np.int64)  # homed on the server, never localized
    rows = np.ones((100, DIM), dtype=np.float32)
    result = {
        "remote_pull_100_s": timeit(lambda: W.pull(server_keys), seconds),
        "remote_push_100_s": timeit(lambda: W.push(server_keys, rows), seconds),
    }

    def window(total: int = 4000, depth: int = 32) -> float:
        keys = [np.array([k], dtype=np.int64) for k in range(20_000, 20_000 + depth)]
        t0 = time.perf_counter()
        inflight = [W.pull(keys[i], wait=False) for i in range(depth)]
        issued = depth
        while inflight:
            handle = inflight.pop(0)
            handle.result()
            if issued < total:
                inflight.append(W.pull(keys[issued % depth], wait=False))
                issued += 1
        return (time.perf_counter() - t0) / total

    window()
    result["async_window_32_op_s"] = statistics.median(window() for _ in range(5))

    # the HOLDING note of each shard ahead (a one-column table has the same shards): else
    # every fresh localize here pays a round trip to the coordinator first (~98 keys a shard)
    ps.table("shards").localize(np.arange(30_000, NUM_KEYS - 10_000))
    batches = iter(range(30_000, NUM_KEYS - 10_000, 100))

    def localize_fresh() -> None:
        first = next(batches)
        W.localize(np.arange(first, first + 100))

    t0 = time.perf_counter()
    count = 0
    while count < 20 or time.perf_counter() - t0 < seconds:
        localize_fresh()
        count += 1
        if count >= 500:
            break
    result["localize_100_s"] = (time.perf_counter() - t0) / count
    return result


def metadata(ps: Any) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    mine = ps.node_stats()
    return {"metadata_bytes_per_key_worker": mine["metadata_bytes"] / mine["num_keys"]}


def server_metadata(ps: Any, server: int) -> dict[str, float]:
    if ps.rank != 0:
        return {}
    stats = ps.node_stats(server)
    return {"metadata_bytes_per_key_server": stats["metadata_bytes"] / stats["num_keys"]}


def dynaps_figures(seconds: float) -> dict[str, float]:
    tables = {
        "W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=DIM),
        "shards": dynaps.TableSpec(num_keys=NUM_KEYS, dim=1),  # W's shards, to note them
    }
    figures: dict[str, float] = {}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables) as cluster:
        cluster.run(prepare)
        runs: tuple[Callable[[], list[dict[str, float]]], ...] = (
            lambda: cluster.run(measure_local, seconds),
            lambda: cluster.run(measure_remote, seconds, False),
            lambda: cluster.run(measure_remote, seconds, True),
            lambda: cluster.run(measure_remote_bulk, seconds),
            lambda: cluster.run(metadata),
        )
        for run in runs:
            for part in run():
                figures.update(part)
        server_id = next(m["id"] for m in cluster.status()["members"] if m["role"] == "server")
        for part in cluster.run(server_metadata, server_id):
            figures.update(part)
    return figures


# ----------------------------------------------------------------------------- report

TARGETS: list[tuple[str, str, Callable[[dict[str, float]], float], str, Callable[[float], bool]]] = [
    (
        "local pull 1000 keys vs numpy gather",
        "throughput ratio",
        lambda f: f["numpy_gather_1000_s"] / f["local_pull_1000_s"],
        ">= 0.50",
        lambda r: r >= 0.5,
    ),
    ("local pull 1 key", "microseconds", lambda f: f["local_pull_1_s"] * 1e6, "<= 5 us", lambda r: r <= 5),
    (
        "remote pull 1 key vs zmq round trip",
        "latency ratio",
        lambda f: f["remote_pull_1_s"] / f["zmq_round_trip_s"],
        "<= 1.3",
        lambda r: r <= 1.3,
    ),
    (
        "  ... while the owner's program is busy",
        "latency ratio",
        lambda f: f["remote_pull_1_busy_owner_s"] / f["zmq_round_trip_s"],
        "<= 1.3",
        lambda r: r <= 1.3,
    ),
    (
        "remote pull 1 key vs a spinning zmq round trip (info)",
        "latency ratio",
        lambda f: f["remote_pull_1_s"] / f["zmq_round_trip_spin_s"],
        "(no target)",
        lambda r: True,
    ),
    (
        "remote pull 1 key vs a plain TCP round trip (info)",
        "latency ratio",
        lambda f: f["remote_pull_1_s"] / f["tcp_round_trip_s"],
        "(no target)",
        lambda r: True,
    ),
    (
        "  ... while the owner's program is busy (info)",
        "latency ratio",
        lambda f: f["remote_pull_1_busy_owner_s"] / f["tcp_round_trip_s"],
        "(no target)",
        lambda r: True,
    ),
    (
        "remote pull 1 key vs a spinning TCP round trip (info)",
        "latency ratio",
        lambda f: f["remote_pull_1_s"] / f["tcp_round_trip_spin_s"],
        "(no target)",
        lambda r: True,
    ),
    (
        "remote pull 100 keys",
        "keys/s",
        lambda f: 100 / f["remote_pull_100_s"],
        ">= 300,000",
        lambda r: r >= 300_000,
    ),
    (
        "localize 100 keys",
        "keys/s",
        lambda f: 100 / f["localize_100_s"],
        ">= 214,000",
        lambda r: r >= 214_000,
    ),
    (
        "async window of 32",
        "ops/s",
        lambda f: 1 / f["async_window_32_op_s"],
        ">= 34,000",
        lambda r: r >= 34_000,
    ),
    (
        "metadata per key (server)",
        "bytes",
        lambda f: f["metadata_bytes_per_key_server"],
        "<= 8",
        lambda r: r <= 8,
    ),
    (
        "metadata per key (worker)",
        "bytes",
        lambda f: f["metadata_bytes_per_key_worker"],
        "<= 8",
        lambda r: r <= 8,
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time budget per measurement")
    parser.add_argument("--quick", action="store_true", help="short measurements (a smoke run)")
    parser.add_argument("--out", default="bench/results/micro.json", help="where to write the JSON")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    figures: dict[str, float] = {}
    print("measuring numpy limits ...", file=sys.stderr)
    figures.update(numpy_limits(seconds))
    print("measuring zmq limits ...", file=sys.stderr)
    figures.update(zmq_limits(seconds))
    figures.update(zmq_limits(seconds, spin=spin_seconds() or 100e-6))
    print("measuring plain TCP limits ...", file=sys.stderr)
    figures.update(tcp_limits(seconds))
    figures.update(tcp_limits(seconds, spin=spin_seconds() or 100e-6))
    print("measuring dynaps ...", file=sys.stderr)
    figures.update(dynaps_figures(seconds))

    print(f"\n{'figure':42} {'value':>14}")
    for name, value in figures.items():
        shown = f"{value * 1e6:10.2f} us" if name.endswith("_s") else f"{value:10.2f}"
        print(f"{name:42} {shown:>14}")
    print(f"\n{'target':42} {'measured':>14} {'goal':>12}  met")
    report = []
    for name, unit, compute, goal, met in TARGETS:
        value = compute(figures)
        ok = met(value)
        report.append({"target": name.strip(" ."), "unit": unit, "value": value, "goal": goal, "met": ok})
        print(f"{name:42} {value:14,.2f} {goal:>12}  {'yes' if ok else 'NO'}  ({unit})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyzmq": zmq.__version__,
            "platform": platform.platform(),
        },
        "table": {"num_keys": NUM_KEYS, "dim": DIM, "dtype": "float32"},
        "figures": figures,
        "targets": report,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
