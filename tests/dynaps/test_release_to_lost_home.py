"""A draining worker's keys on their way back to a home that dies (audit F9).

A draining worker gives every key it holds back to its home (RELEASE, HANDOFF, TRANSFER).
If the home dies with the TRANSFER undelivered, the shard's new home rebuilds the key from
its replica: the worker's last write-back, without what it changed since its last flush.
No loss may be silent: the updates survive, or ``/status`` ``dataLoss`` counts them.  The
real coordinator and nodes in-process (tests/dynaps/simnet.py); the test delivers the
messages one by one to stop at exactly that moment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynaps.node.drain import Drain
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, Message, MsgType
from tests.dynaps.simnet import NUM_KEYS, WORKERS, Cluster

KEY = 0


def in_flight(cluster: Cluster, source: int, dest: int) -> list[MsgType]:
    """The types of the messages on their way from ``source`` to ``dest``, in order."""
    layout = [cluster.store(dest).layout]
    return [decode(frames, layout).type for frames in cluster.network.channels[(source, dest)]]


def deliver_all(cluster: Cluster, source: int, dest: int) -> None:
    while cluster.network.channels[(source, dest)]:
        cluster.deliver((source, dest))


def releasing(cluster: Cluster) -> tuple[int, int]:
    """A worker localizes KEY, writes it back, pushes to it once more (after its last flush),
    then drains: returns (the worker, KEY's home) with its TRANSFER of KEY on its way home."""
    worker = WORKERS[0]
    cluster.start("localize", worker, [KEY])
    cluster.settle(None)
    assert cluster.store(worker).loc[KEY] == worker
    cluster.start("push", worker, [KEY])
    cluster.settle(None)
    cluster.flush()  # the home (and its backup) have this push
    cluster.settle(None)
    cluster.start("push", worker, [KEY])  # applied in place: newer than the last flush
    cluster.settle(None)
    assert cluster.store(worker).values[KEY, 0] == 2
    home = int(cluster.shard_map.home_of(np.array([KEY]), NUM_KEYS)[0])
    assert cluster.store(home).values[KEY, 0] == 1, "the home has only the flushed push"

    cluster.coordinator.run_command("drain", {"node": str(worker)})
    cluster.shells[worker].running = False  # its program finished at once
    deliver_all(cluster, COORDINATOR, worker)  # DRAIN
    cluster.tick()  # the drain gives the key back: RELEASE to the home
    assert cluster.planes[worker].drain is Drain.KEYS
    assert in_flight(cluster, worker, home) == [MsgType.RELEASE]
    cluster.deliver((worker, home))  # the home asks for the key: HANDOFF
    assert in_flight(cluster, home, worker) == [MsgType.HANDOFF]
    cluster.deliver((home, worker))  # the worker sends the key (and its rows) home
    assert in_flight(cluster, worker, home) == [MsgType.TRANSFER]
    assert cluster.store(worker).loc[KEY] != worker, "the key left the worker"
    return worker, home


def losses(cluster: Cluster) -> list[dict[str, Any]]:
    cluster.coordinator.publish_status()  # as the coordinator's loop does after each turn
    entries: list[dict[str, Any]] = cluster.coordinator.status()["dataLoss"]
    return entries


def value_of_key(cluster: Cluster) -> float:
    owners = [n for n, server in cluster.live().items() if server.stores[0].loc[KEY] == n]
    assert len(owners) == 1, f"key {KEY} has owners {owners}"
    return float(cluster.store(owners[0]).values[KEY, 0])


def test_a_release_lost_with_its_home_keeps_its_updates_or_counts_their_loss() -> None:
    cluster = Cluster(replicated=True)
    worker, home = releasing(cluster)
    cluster.kill(home, True)  # the TRANSFER dies with the home
    cluster.settle(None)
    kept = value_of_key(cluster)
    if kept == cluster.pushed[KEY]:
        return  # the push survived
    assert kept == 1, "the new home rebuilt the key from its replica (the last flush)"
    entries = losses(cluster)
    counted = [e for e in entries if e["server"] == home and e["cause"] == "write-back"]
    assert counted, f"the push after the last flush was lost and not counted: dataLoss {entries}"
    assert counted[0]["keys"] == 1
    assert f"worker {worker}" in counted[0]["message"], counted[0]["message"]
    assert worker in cluster.stopped, "the worker left once it had reported"


def test_a_drain_leaves_only_once_its_home_confirmed_the_keys() -> None:
    """Nothing is reported when the key arrives; the worker waits for the home's word."""
    cluster = Cluster(replicated=True)
    worker, home = releasing(cluster)
    cluster.tick()
    assert cluster.planes[worker].drain is Drain.KEYS, "left before its key arrived"
    cluster.deliver((worker, home))  # the TRANSFER: the home confirms (LOCALIZED)
    cluster.settle(None)
    assert worker in cluster.stopped
    assert value_of_key(cluster) == cluster.pushed[KEY] == 2
    assert losses(cluster) == []


def backup_of_key(cluster: Cluster) -> int:
    backups = cluster.shard_map.backups
    assert backups is not None
    return int(backups[int(cluster.shard_map.shard_of(np.array([KEY]), NUM_KEYS)[0]), 0])


def test_a_home_lost_after_its_backup_confirmed_the_keys_loses_nothing() -> None:
    """The home passed the rows that arrived down its chain, whose tail confirmed them: the
    backup rebuilds the key with the worker's last push, and nothing is reported lost."""
    cluster = Cluster(replicated=True)
    worker, home = releasing(cluster)
    backup = backup_of_key(cluster)
    cluster.deliver((worker, home))  # the TRANSFER
    assert in_flight(cluster, home, backup) == [MsgType.REPLICATE]
    deliver_all(cluster, home, worker)  # LOCALIZED: arrived, the backup's ACK to follow
    assert cluster.nodes[worker].relocations.releases.count() == 1
    cluster.deliver((home, backup))
    deliver_all(cluster, backup, worker)  # the tail's ACK
    assert cluster.nodes[worker].relocations.releases.count() == 0
    cluster.kill(home, True)
    cluster.settle(None)
    assert value_of_key(cluster) == cluster.pushed[KEY] == 2
    assert losses(cluster) == []


def test_a_home_lost_before_its_backup_has_the_keys_counts_their_loss() -> None:
    """The key arrived and the home said so, but its rows died on their way to the backup
    (a backup drops what a lost node sent): confirmed by the home alone, this loss was silent."""
    cluster = Cluster(replicated=True)
    worker, home = releasing(cluster)
    cluster.deliver((worker, home))  # the TRANSFER
    deliver_all(cluster, home, worker)  # LOCALIZED
    cluster.kill(home, False)  # its REPLICATE to the backup dies with it
    cluster.settle(None)
    assert value_of_key(cluster) == 1, "rebuilt from the replica: the last flush"
    [entry] = losses(cluster)
    assert (entry["cause"], entry["server"], entry["keys"]) == ("write-back", home, 1)
    assert f"worker {worker}" in entry["message"]


def test_acks_and_confirmations_a_node_did_not_ask_for_change_nothing() -> None:
    """A node now reads ACK and LOCALIZED for keys it gave back: one for a transfer it never
    sent, or one more after the release was confirmed, is ignored (no error, no count)."""
    cluster = Cluster(replicated=True)
    worker, home = releasing(cluster)
    releases = cluster.nodes[worker].relocations.releases
    [(tid, release)] = releases.unconfirmed.items()
    unknown = tid + 1000
    releases.on_release_acked(Message(MsgType.ACK, home, worker, unknown, 0, 5))
    releases.on_released(Message(MsgType.LOCALIZED, home, worker, unknown, 0, 5))
    assert releases.count() == 1
    assert release.unacked == 1
    assert not release.arrived
    cluster.deliver((worker, home))  # the TRANSFER
    cluster.settle(None)
    assert releases.count() == 0
    releases.on_release_acked(Message(MsgType.ACK, home, worker, tid, 0, 1))  # once more
    assert not releases.unconfirmed
    assert losses(cluster) == []
