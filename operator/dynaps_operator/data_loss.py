"""Data the job lost, as the coordinator reports it: ``status.dataLoss``, the ``DataLoss``
condition and one Warning Event per new loss. Pure.

The coordinator lists every recovery that restored keys from other than a synced replica,
and every home's report of keys it took back from a lost node (a worker's localized keys)
(``/status`` ``dataLoss``).  Its list starts empty again when a coordinator is replaced, and an
entry's ``keys`` changes once the new home counted what it rebuilt, so the job's status is
where the operator keeps what it saw: totals over the job's life and the latest
:data:`MAX_RECENT` entries.  An entry is known by what never changes (cause, lost node,
epoch, first shards): one seen before is updated in place and never posted again, also after
an operator restart (the status survives it, the operator's memory does not).

The condition's reason is the worst cause seen (initial values lose every update, a home's
copy from before a localize every update since, an exhausted replica those since its last
sync, a checkpoint those since it was written, a last write-back those of one flush
interval); it stays True for the rest of the job: lost updates do not come back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dynaps.contract import DataLossCause, DataLossEntry, DataLossStatus
from dynaps_operator.coordinator_view import CoordinatorView, Loss
from dynaps_operator.decisions import C, Observed, Plan, R

MAX_RECENT = 10  # entries kept in status.dataLoss.recent
MAX_EVENTS = 5  # Events per reconcile; more new entries are summed up in one more

REASONS = {
    DataLossCause.CHECKPOINT: R.CHECKPOINT_RESTORED,
    DataLossCause.REPLICAS_EXHAUSTED: R.REPLICAS_EXHAUSTED,
    DataLossCause.INITIAL: R.INITIAL_VALUES_RESTORED,
    DataLossCause.WRITE_BACK: R.WRITE_BACK_RESTORED,
    DataLossCause.HOME_COPY: R.HOME_COPY_RESTORED,
}
# mildest first
SEVERITY: list[str] = [
    R.WRITE_BACK_RESTORED,
    R.CHECKPOINT_RESTORED,
    R.REPLICAS_EXHAUSTED,
    R.HOME_COPY_RESTORED,
    R.INITIAL_VALUES_RESTORED,
]

KNOWN_CAUSES = frozenset(c.value for c in DataLossCause)

Identity = tuple[str, int, int, tuple[int, ...]]


def absorb(o: Observed, p: Plan, view: CoordinatorView) -> None:
    """Merge ``view``'s losses into the status; set the condition; post the new ones."""
    if not view.losses:
        return
    # The lost server is gone from the view that reports its loss; the previous one named it.
    before = o.memory.last_coordinator
    names = {**(before.node_names if before is not None else {}), **view.node_names}
    stored = p.status.data_loss or DataLossStatus()
    merged, new = merge(stored, view.losses, names)
    if merged == stored:
        return
    p.update(data_loss=merged)
    previous = p.status.condition(C.DATA_LOSS)
    reason = worst([e.cause for e in merged.recent], previous.reason if previous is not None else "")
    p.condition(C.DATA_LOSS, True, reason, summary(merged), o.now)
    for entry in new[:MAX_EVENTS]:
        p.event(R.DATA_LOSS, describe(entry), warning=True)
    if len(new) > MAX_EVENTS:
        more = new[MAX_EVENTS:]
        keys = sum(e.keys for e in more)
        p.event(R.DATA_LOSS, f"and {len(more)} more recoveries lost updates on {keys} keys", warning=True)


def merge(
    stored: DataLossStatus, losses: Sequence[Loss], names: Mapping[int, str]
) -> tuple[DataLossStatus, list[DataLossEntry]]:
    """``stored`` with ``losses`` in it, and the entries it did not hold yet."""
    recent = list(stored.recent)
    index = {identity(e): i for i, e in enumerate(recent)}
    entries, keys = stored.entries, stored.keys
    new: list[DataLossEntry] = []
    # Entries older than those kept were seen before (the coordinator lists them in order).
    evicted_until = recent[0].time if recent and stored.entries > len(recent) else None
    for loss in losses:
        at = index.get(identity(loss))
        if at is None and evicted_until is not None and loss.time <= evicted_until:
            continue
        if at is None:
            entry = entry_of(loss, names)
            index[identity(entry)] = len(recent)
            recent.append(entry)
            new.append(entry)
            entries, keys = entries + 1, keys + entry.keys
            continue
        old = recent[at]
        if (old.keys, old.keys_counted) != (loss.keys, loss.counted):  # the new home counted them
            counted = {"keys": loss.keys, "keys_counted": loss.counted, "message": loss.message}
            recent[at] = old.model_copy(update=counted)
            keys += loss.keys - old.keys
    kept = recent[-MAX_RECENT:]
    return DataLossStatus(entries=entries, keys=max(keys, 0), recent=kept), new


def identity(entry: Loss | DataLossEntry) -> Identity:
    # Two recoveries of one lost server (one per new home) differ in their shards.
    return (entry.cause, entry.node, entry.epoch, tuple(entry.shards))


def entry_of(loss: Loss, names: Mapping[int, str]) -> DataLossEntry:
    return DataLossEntry(
        cause=loss.cause,
        node=loss.node,
        server=names.get(loss.node, f"node {loss.node}"),
        epoch=loss.epoch,
        shard_count=loss.shard_count,
        shards=list(loss.shards),
        keys=loss.keys,
        keys_counted=loss.counted,
        checkpoint_age_seconds=None if loss.checkpoint_age is None else round(loss.checkpoint_age, 1),
        time=loss.time,
        message=loss.message,
    )


def worst(causes: Sequence[str], previous: str) -> str:
    """The reason of the worst of ``causes``, or ``previous`` (the condition's) if worse: an
    entry that left ``recent`` still happened."""
    ranked: list[str] = [REASONS[DataLossCause(c)] for c in causes if c in KNOWN_CAUSES]
    ranked += [previous] if previous in SEVERITY else []
    return max(ranked, key=SEVERITY.index) if ranked else R.DATA_LOSS


def describe(entry: DataLossEntry) -> str:
    """One line for people: whose keys, how many, back to what."""
    keys = f"{entry.keys} keys" if entry.keys_counted else f"at most {entry.keys} keys"
    if entry.cause == DataLossCause.WRITE_BACK:
        return (
            f"{keys} held by lost node {entry.server} went back to their last write-back: the updates "
            "of up to its last flush interval are lost"
        )
    if entry.cause == DataLossCause.HOME_COPY:
        return (
            f"{keys} held by lost node {entry.server} went back to their home's copy from before they "
            "were localized (no replication): every update since is lost"
        )
    where = f"{entry.shard_count} shards ({keys}) of lost server {entry.server}"
    if entry.cause == DataLossCause.CHECKPOINT:
        age = entry.checkpoint_age_seconds
        old = "of unknown age" if age is None else f"{age:.0f} s old"
        return f"{where} went back to the last checkpoint ({old})"
    if entry.cause == DataLossCause.INITIAL:
        return f"{where} restarted from their initial values (no replica, no checkpoint)"
    if entry.cause == DataLossCause.REPLICAS_EXHAUSTED:
        return f"{where} had no synced replica left and no checkpoint: updates since the last sync are lost"
    return f"{where} lost updates ({entry.cause})"


def summary(status: DataLossStatus) -> str:
    recoveries = f"{status.entries} {'recovery' if status.entries == 1 else 'recoveries'}"
    latest = f"; latest: {describe(status.recent[-1])}" if status.recent else ""
    return f"{status.keys} keys lost updates in {recoveries}{latest}"
