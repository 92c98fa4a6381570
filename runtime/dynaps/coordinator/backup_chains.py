"""Each shard's replication chain: which servers back it up, chosen when the servers change.

Backups stay where they are while they remain valid (a ready server other than the home),
so most changes need no sync; a slot that empties goes to the ready server that backs up
the fewest shards.  At a million shards most rows keep their backups as they are: those are
found with numpy, and only the rows that change are looked at one by one.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from dynaps.store.shardmap import NO_BACKUP


def choose_backups(
    homes: npt.NDArray[np.int16],
    old: npt.NDArray[np.int16] | None,
    servers: Sequence[int],
    copies: int,
    lingering: Sequence[int] = (),
    handed: Sequence[int] = (),
) -> npt.NDArray[np.int16]:
    """Each shard's chain: ``copies`` backups on distinct ready servers other than its home,
    and one slot more for a server that is leaving (``copies + 1`` columns while one is
    in some chain, ``copies`` otherwise).

    A shard keeps the old backups that are still valid (a ready server, not its home), in
    their order, so they need no new sync; the empty slots go to the ready servers that back
    up the fewest shards (the lowest id among equals), in shard order, after the kept ones.
    A ``lingering`` server (draining: its backups are handed over before it leaves) stays
    where it is in the chain without counting towards ``copies``, except in the ``handed``
    shards, whose hand-over this commit completes; a second one in the same chain is
    dropped.  With too few servers the last slots stay NO_BACKUP.
    """
    ready = set(servers)
    backups = np.full((len(homes), copies + 1), NO_BACKUP, dtype=np.int16)
    load = dict.fromkeys(ready, 0)
    intact = _intact(homes, old, ready, lingering, handed, copies)
    if old is not None and intact.any():
        backups[intact, :copies] = old[intact, :copies]
        counts = np.bincount(old[intact, :copies].ravel())  # intact rows name ready servers only
        for server in np.flatnonzero(counts).tolist():
            load[server] += int(counts[server])
    changed = np.flatnonzero(~intact)
    chains = _kept(homes, old, changed, ready, set(lingering), set(handed), copies, load)
    fewest = [(count, server) for server, count in load.items()]  # what min((load, id)) picks
    heapq.heapify(fewest)
    for shard, chain in zip(changed.tolist(), chains, strict=True):
        home = int(homes[shard])
        missing = copies - sum(1 for b in chain if b in ready)
        while missing > 0:
            passed = []  # the home and the chain's servers: not candidates for this shard
            while fewest and (fewest[0][1] == home or fewest[0][1] in chain):
                passed.append(heapq.heappop(fewest))
            if not fewest:
                for entry in passed:
                    heapq.heappush(fewest, entry)
                break
            count, chosen = heapq.heappop(fewest)
            heapq.heappush(fewest, (count + 1, chosen))
            for entry in passed:
                heapq.heappush(fewest, entry)
            chain.append(chosen)
            missing -= 1
        backups[shard, : len(chain)] = chain
    if (backups[:, copies] == NO_BACKUP).all():
        return backups[:, :copies]  # nobody lingers: the usual width
    return backups


def _intact(
    homes: npt.NDArray[np.int16],
    old: npt.NDArray[np.int16] | None,
    ready: set[int],
    lingering: Sequence[int],
    handed: Sequence[int],
    copies: int,
) -> npt.NDArray[np.bool_]:
    """The shards whose chain stays exactly its first ``copies`` old backups: all ready,
    distinct, none the home, and no lingering server after them that the rules would keep
    (a row in doubt is not intact: it is then looked at one by one)."""
    if old is None or old.shape[1] < copies or copies < 1:
        return np.zeros(len(homes), dtype=np.bool_)
    intact = ~improper_chains(homes, old[:, :copies])
    for slot in range(copies):
        intact &= _among(old[:, slot], ready)
    if lingering:
        done = np.zeros(len(homes), dtype=np.bool_)
        done[[s for s in handed if 0 <= s < len(homes)]] = True
        for column in old[:, copies:].T:
            intact &= ~_among(column, set(lingering)) | done
    return intact


def improper_chains(homes: npt.NDArray[np.int16], backups: npt.NDArray[np.int16]) -> npt.NDArray[np.bool_]:
    """The rows whose backups name their home or a server twice (empty slots aside): never
    chosen here, but an adopted map comes from the nodes.  Column by column: numpy's row
    reductions are slow at a million shards."""
    improper = np.zeros(len(homes), dtype=np.bool_)
    for slot in range(backups.shape[1]):
        column = backups[:, slot]
        repeated = column == homes
        for earlier in range(slot):
            repeated |= column == backups[:, earlier]
        improper |= repeated & (column != NO_BACKUP)
    return improper


def _among(ids: npt.NDArray[np.int16], servers: set[int]) -> npt.NDArray[np.bool_]:
    """Whether each id is one of ``servers``, by a table with an entry per int16 value (as
    unsigned: NO_BACKUP is 65,535 there, never a server): ``np.isin`` sorts a million ids."""
    table = np.zeros(1 << 16, dtype=np.bool_)
    table[np.asarray(sorted(servers), dtype=np.int16).view(np.uint16)] = True
    found: npt.NDArray[np.bool_] = table[ids.view(np.uint16)]
    return found


def _kept(
    homes: npt.NDArray[np.int16],
    old: npt.NDArray[np.int16] | None,
    shards: npt.NDArray[np.int64],
    ready: set[int],
    lingering: set[int],
    handed: set[int],
    copies: int,
    load: dict[int, int],
) -> list[list[int]]:
    """Per shard of ``shards``: its old backups that stay valid, in chain order (``load``
    counts the ready ones; a lingering server once, not in a ``handed`` shard)."""
    rows: list[list[int]] = [[] for _ in shards] if old is None else old[shards].tolist()
    kept = []
    for shard, home, previous in zip(shards.tolist(), homes[shards].tolist(), rows, strict=True):
        valid: list[int] = []
        counted = 0
        extra = False
        for backup in previous:
            if backup == home or backup in valid:
                continue
            if backup in ready and counted < copies:
                valid.append(backup)
                load[backup] += 1
                counted += 1
            elif backup in lingering and shard not in handed and not extra:
                valid.append(backup)
                extra = True
        kept.append(valid)
    return kept
