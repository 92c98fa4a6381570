"""Data-shard leases: workers take the job's data piece by piece from the coordinator.

A job splits each epoch's data into ``num_shards`` pieces.  A worker asks for a lease on
the next free piece, trains on it, and asks for the next (which also marks the previous
one done).  When a worker leaves or dies, the pieces it held but did not finish go back
to the queue, so another worker takes them; a worker that joins mid-epoch simply takes
what is left.  A worker holds one piece of an epoch at a time: asking again before it
finished it (its answer was lost, and the program asked again) gets that piece again.
Every piece is processed at least once per epoch (exactly once unless a worker died in the
middle of one, or the coordinator restarted).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EpochLeases:
    num_shards: int
    free: list[int]
    held: dict[int, int] = field(default_factory=dict)  # shard -> worker node
    done: set[int] = field(default_factory=set)


class Leases:
    def __init__(self) -> None:
        self.epochs: dict[int, EpochLeases] = {}

    def next(self, epoch: int, num_shards: int, worker: int, finished: int | None) -> int | None:
        """Mark ``finished`` done and lease the next free shard of ``epoch`` to ``worker``."""
        state = self.epochs.get(epoch)
        if state is None:
            state = self.epochs[epoch] = EpochLeases(num_shards, list(range(num_shards)))
        if finished is not None and state.held.get(finished) == worker:
            del state.held[finished]
            state.done.add(finished)
        for shard, holder in state.held.items():
            if holder == worker:  # asked again (the answer was lost): the same shard, not a second
                return shard
        if not state.free:
            return None
        shard = state.free.pop(0)
        state.held[shard] = worker
        return shard

    def release(self, worker: int) -> int:
        """A worker left: its unfinished shards go back to the front of the queues."""
        returned = 0
        for state in self.epochs.values():
            mine = sorted(s for s, w in state.held.items() if w == worker)
            for shard in mine:
                del state.held[shard]
            state.free[:0] = mine
            returned += len(mine)
        return returned

    def status(self) -> dict[str, dict[str, int]]:
        return {
            str(epoch): {
                "shards": s.num_shards,
                "done": len(s.done),
                "held": len(s.held),
                "free": len(s.free),
            }
            for epoch, s in sorted(self.epochs.items())[-3:]
        }
