"""What a shard map costs on the wire: the whole membership's body size and its encode,
decode and parse time (a map not seen before), a delta's diff (the coordinator's) and apply
time, and a follower's CPU per epoch (apply a delta, read the map it makes; ten epochs in a
row), in CPU ms, per number of shards.

    PYTHONPATH=runtime .venv/bin/python bench/shard_map_wire.py

Run it against another revision's runtime (``git archive REV runtime | tar -x -C /tmp/rev``,
then ``PYTHONPATH=/tmp/rev/runtime``) to compare encodings in the same sitting.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dynaps.contract import Partition
from dynaps.store.shardmap import ShardMap
from dynaps.wire import codec, control, membership_deltas, messages, shard_rows
from dynaps.wire.protocol import COORDINATOR, MsgType

SIZES = ((1024, 1, 10), (1024, 1, 1000), (1 << 16, 2, 1000), (1 << 20, 2, 1000), (1 << 20, 3, 1000))


def node(i: int) -> control.NodeInfo:
    return control.NodeInfo(id=i, role="server", address=f"tcp://10.0.{i // 256}.{i % 256}:4000", ready=True)


def measure(shards: int, copies: int, servers: int) -> str:
    homes = np.repeat(np.arange(1, servers + 1), -(-shards // servers))[:shards].astype(np.int16)
    backups = np.stack([(homes + c - 1) % servers + 1 for c in range(1, copies + 1)], axis=1).astype(np.int16)
    before = ShardMap(3, shards, Partition.RANGE, homes, backups)
    moved = homes.copy()
    moved[: shards // servers] = servers  # one server's shards move to another
    after = ShardMap(4, shards, Partition.RANGE, moved, backups)
    nodes = [node(i) for i in range(1, servers + 1)]
    old = control.Membership(
        version=3, phase=control.Phase.RUNNING, nodes=nodes, shard_map=before.to_json(), num_workers=0
    )
    new = old.model_copy(update={"version": 4, "shard_map": after.to_json()})
    reps = 10
    start = time.process_time()
    for _ in range(reps):
        delta = membership_deltas.diff([old], new)
    diff_ms = (time.process_time() - start) / reps * 1e3
    assert delta is not None
    start = time.process_time()
    for _ in range(reps):
        membership_deltas.apply(old, delta)
    apply_ms = (time.process_time() - start) / reps * 1e3
    whole_s = 0.0
    for _ in range(reps):
        getattr(shard_rows, "forget", lambda: None)()  # a receiver's first read: nothing remembered
        start = time.process_time()
        frames = messages.control(MsgType.MEMBERSHIP, COORDINATOR, new)
        got = codec.decode(frames, ()).body
        assert isinstance(got, control.Membership)
        ShardMap.from_json(got.shard_map)
        whole_s += time.process_time() - start
    whole_ms = whole_s / reps * 1e3
    return (
        f"{shards:>8} shards, {copies} backups, {servers:>4} servers: body {len(frames[1]) / 2**20:6.2f} MiB,"
        f" whole {whole_ms:7.1f} ms, diff {diff_ms:6.2f} ms, apply {apply_ms:6.2f} ms,"
        f" follow {follow(old, shards, servers, reps):6.2f} ms"
    )


def follow(start: control.Membership, shards: int, servers: int, steps: int) -> float:
    """CPU ms per epoch of a process that follows the map: each epoch one server's shards
    move to the next, and the process applies the delta and reads the map it makes (what a
    node does with every MEMBERSHIP_DELTA).  The coordinator's diffs are made first."""
    chain, homes = [start], ShardMap.from_json(start.shard_map).homes.copy()
    backups = ShardMap.from_json(start.shard_map).backups
    per_server = -(-shards // servers)
    for step in range(steps):
        homes[step * per_server : (step + 1) * per_server] = (step + 1) % servers + 1
        moved = ShardMap(5 + step, shards, Partition.RANGE, homes.copy(), backups)
        version = chain[-1].version + 1
        chain.append(chain[-1].model_copy(update={"version": version, "shard_map": moved.to_json()}))
    deltas = [membership_deltas.diff([chain[i]], chain[i + 1]) for i in range(steps)]
    held = ShardMap.from_json(start.shard_map)  # the process holds the first map
    start_cpu = time.process_time()
    current = start
    for delta in deltas:
        assert delta is not None
        current = membership_deltas.apply(current, delta)
        held = ShardMap.from_json(current.shard_map)
    spent = (time.process_time() - start_cpu) / steps * 1e3
    assert (held.homes == homes).all()
    return spent


def main() -> None:
    # no options: --help says what it measures instead of running it
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    for size in SIZES:
        try:
            print(measure(*size), flush=True)
        except Exception as exc:  # an encoding that cannot send it: say so, go on
            print(f"{size}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)


if __name__ == "__main__":
    main()
