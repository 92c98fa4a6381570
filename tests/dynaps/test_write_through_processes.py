"""Write-through (``flushIntervalMs: 0``) with real processes: a worker killed while keys move
between workers loses no acknowledged increment, and applies none twice (issue 13, audit
findings F5 and F7).

Keys 0..199 are the victim's (worker rank 1 localizes them), keys 200..239 move between
rank 0 and the victim all the time (both localize some every round, and rank 2 pushes to
them most), the rest stay on the servers.  Every worker pushes unit increments
synchronously.  Rank 0 pushes only to keys it never
holds, so each of its pushes is served by another node: the victim's write-throughs, the
moves and the retries after the kill are what is tested, not the training process's own
local write-through.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import dynaps
from tests.dynaps.progress_logs import whole_lines

pytestmark = pytest.mark.integration

NUM_KEYS = 1000
TABLES = {"W": dynaps.TableSpec(num_keys=NUM_KEYS, dim=2)}
VICTIM = 1
OWN = np.arange(0, 200)  # localized by the victim before anyone pushes
MOBILE = np.arange(200, 240)  # localized again and again by rank 0 and the victim
ROUND_KEYS = 30


def round_keys(rank: int, turn: int) -> np.ndarray:
    """The keys of one round of ``rank`` (a function of the round: the test recomputes the
    victim's rounds from the number it logged)."""
    rng = np.random.default_rng([rank, turn])
    if rank == 0:  # never the mobile keys, which it may hold
        pool = np.concatenate([OWN, np.arange(MOBILE[-1] + 1, NUM_KEYS)])
        return rng.choice(pool, size=ROUND_KEYS)
    if rank == 2:  # mostly keys on their way between the other two
        return np.concatenate([rng.choice(MOBILE, size=20), rng.integers(0, NUM_KEYS, size=ROUND_KEYS - 20)])
    return rng.integers(0, NUM_KEYS, size=ROUND_KEYS)


def push_through(ps: dynaps.PS, stop_file: str, out_dir: str) -> None:
    """Push until ``stop_file`` exists; the victim logs each acknowledged round, the others
    save what was acknowledged to them."""
    W = ps.table("W")
    if ps.rank == VICTIM:
        W.localize(OWN)
    ps.barrier()
    moves = np.random.default_rng(100 + ps.rank)
    acked = np.zeros(NUM_KEYS, dtype=np.int64)
    log = os.open(os.path.join(out_dir, f"rounds-{ps.rank}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    localizing = []
    turn = 0
    while not os.path.exists(stop_file) or turn < 20:
        turn += 1
        keys = round_keys(ps.rank, turn)
        W.push(keys, np.ones((len(keys), 2)))
        np.add.at(acked, keys, 1)
        os.write(log, f"{turn}\n".encode())
        if ps.rank != 2:
            localizing.append(W.localize(np.unique(moves.choice(MOBILE, size=8)), wait=False))
    for handle in localizing:
        handle.result()
    os.close(log)
    np.save(os.path.join(out_dir, f"acked-{ps.rank}.npy"), acked)


def read_all(ps: dynaps.PS) -> np.ndarray:
    return ps.table("W").pull(np.arange(NUM_KEYS))[:, 0]


def logged(path: Path) -> int:
    lines = whole_lines(path)
    return int(lines[-1][0]) if lines else 0


def test_a_worker_killed_under_write_through_loses_no_acknowledged_increment_and_doubles_none(
    tmp_path: Path,
) -> None:
    stop = tmp_path / "stop"
    with dynaps.LocalCluster(
        servers=2, workers=3, tables=TABLES, replication=1, flush_interval_ms=0, num_shards=16
    ) as cluster:
        job = cluster.submit(push_through, str(stop), str(tmp_path))
        deadline = time.monotonic() + 60
        while logged(tmp_path / f"rounds-{VICTIM}") < 40:
            assert time.monotonic() < deadline, "the victim does not push"
            time.sleep(0.05)
        cluster.kill(f"worker-{VICTIM}")
        victim_rounds = logged(tmp_path / f"rounds-{VICTIM}")
        while not cluster.status()["lost"]:
            assert time.monotonic() < deadline, "the victim was never declared lost"
            time.sleep(0.05)
        survivors_then = {rank: logged(tmp_path / f"rounds-{rank}") for rank in (0, 2)}
        while any(logged(tmp_path / f"rounds-{rank}") < then + 20 for rank, then in survivors_then.items()):
            assert time.monotonic() < deadline, "the survivors stopped pushing after the loss"
            time.sleep(0.05)
        stop.touch()
        while not job.done():  # the victim's rank fails (killed); the others save what they got
            assert time.monotonic() < deadline + 60, "the survivors did not stop"
            time.sleep(0.05)
        values = cluster.run(read_all)[0]
    acked = sum(np.load(tmp_path / f"acked-{rank}.npy") for rank in (0, 2))
    for turn in range(1, victim_rounds + 1):
        np.add.at(acked, round_keys(VICTIM, turn), 1)
    unsure = np.zeros(NUM_KEYS, dtype=np.int64)  # the round the victim was pushing when killed
    np.add.at(unsure, round_keys(VICTIM, victim_rounds + 1), 1)
    extra = values.astype(np.int64) - acked
    lost = int(-extra[extra < 0].sum())
    assert lost == 0, f"{lost} acknowledged increments lost on keys {np.flatnonzero(extra < 0)[:20]}"
    doubled = extra - unsure
    assert (doubled <= 0).all(), f"{int(doubled[doubled > 0].sum())} increments applied twice"
