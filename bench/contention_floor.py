"""The machine's own CPU inflation: the same numpy work done by 1 process and split over N.

``bench/cpu_scaling.py`` compares a job's CPU per epoch at N nodes with 1 node.  Part of
what grows is not the parameter server's: N processes time-sharing few cores evict each
other's caches on every switch, so the same arithmetic costs more CPU.  This measures that
part alone, with no dynaps code in the loop: KGE's minibatch step (ComplEx dim 32, batch
256, 4 negatives per side, the gradients of ``dynaps.apps.kge_models`` and a scatter-add
into a 5,000 x 64 table, what ``bench/cpu_scaling.py``'s KGE runners compute), a fixed number
of steps in all, split over N forked processes, the CPU (user + system) of each one's steps
(its table's set-up apart) summed.  The
ratio CPU(N) / CPU(1) is the floor under any job's inflation on this machine.

    python -P bench/contention_floor.py                 # N = 1, 2, 8, 16; 3 interleaved rounds
    python -P bench/contention_floor.py --steps 3200 --processes 1,8 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
import time

import numpy as np

from dynaps.apps.kge_models import make_model

ENTITIES, RELATIONS, BATCH, NEGATIVES = 5000, 50, 256, 4


def steps(count: int, seed: int) -> float:
    """``count`` KGE minibatch steps on a private table (as one training process would);
    returns the CPU seconds of the steps alone (the table's set-up is not counted)."""
    model = make_model("complex", 32)
    rng = np.random.default_rng(seed)
    entities = rng.normal(size=(ENTITIES, model.entity_dim)).astype(np.float32)
    relations = rng.normal(size=(RELATIONS, model.relation_dim)).astype(np.float32)
    flat = entities.reshape(-1)
    columns = np.arange(model.entity_dim)
    started = time.process_time()
    for _ in range(count):
        heads, tails = rng.integers(0, ENTITIES, BATCH), rng.integers(0, ENTITIES, BATCH)
        rels, negatives = rng.integers(0, RELATIONS, BATCH), rng.integers(0, ENTITIES, 2 * NEGATIVES * BATCH)
        rows = entities[negatives]
        half = NEGATIVES * BATCH
        g = model.gradients(
            entities[heads],
            relations[rels],
            entities[tails],
            rows[:half].reshape(BATCH, NEGATIVES, -1),
            rows[half:].reshape(BATCH, NEGATIVES, -1),
        )
        keys = np.concatenate([heads, tails, negatives])
        grads = np.concatenate(
            [g.head, g.tail, g.tail_negatives.reshape(half, -1), g.head_negatives.reshape(half, -1)]
        )
        # the flattened scatter-add of dynaps.store.updaters (repeated keys summed)
        np.add.at(flat, (keys[:, None] * model.entity_dim + columns).ravel(), -0.01 * grads.reshape(-1))
    return time.process_time() - started


def measure(processes: int, total: int) -> tuple[float, float]:
    """CPU seconds of the steps of all ``processes`` (set-up apart) and the wall time from
    the first fork to the last exit, ``total`` steps split among them."""
    started = time.perf_counter()
    children = []
    for index in range(processes):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(read_end)
                os.write(write_end, struct.pack("<d", steps(total // processes, index)))
            except BaseException:
                code = 1
            os._exit(code)
        os.close(write_end)
        children.append((pid, read_end))
    cpu = 0.0
    for pid, read_end in children:
        answer = os.read(read_end, 8)
        os.close(read_end)
        if os.waitpid(pid, 0)[1] != 0 or len(answer) != 8:
            raise SystemExit(f"worker process {pid} failed")
        cpu += struct.unpack("<d", answer)[0]
    return cpu, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1600, help="minibatch steps in all (default 1600)")
    parser.add_argument(
        "--processes", default="1,2,8,16", help="comma-separated process counts (must include 1)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.processes.split(",")]
    except ValueError:
        parser.error("--processes takes comma-separated whole numbers, e.g. 1,8")
    if 1 not in counts or min(counts) < 1 or args.steps < max(counts) or args.rounds < 1:
        parser.error("--processes must include 1, all >= 1, and --steps at least the largest count")
    cpu: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        for n in counts:
            seconds, wall = measure(n, args.steps)
            cpu[n].append(seconds)
            line = f"round {round_ + 1}: {n:3d} processes  CPU {seconds:6.2f} s  wall {wall:6.2f} s"
            print(line, flush=True)
    base = statistics.median(cpu[1])
    print(f"\n{os.cpu_count()} CPUs; {args.steps} steps in all; median CPU and CPU(N) / CPU(1):")
    for n in counts:
        median = statistics.median(cpu[n])
        print(f"  {n:3d} processes  {median:6.2f} s  {median / base:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
