"""Data loss the coordinator reports: status.dataLoss, the DataLoss condition, one Event per new
loss, Failed/DataLoss for onDataLoss: Fail (pure: no cluster)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dynaps.contract import DATA_LOSS_EXIT_CODE, ConditionType, JobPhase, JobStatus
from dynaps_operator import data_loss
from dynaps_operator.coordinator_view import (
    MAX_LOSSES,
    MAX_MESSAGE,
    MAX_SHARDS,
    CoordinatorView,
    parse_status,
)
from dynaps_operator.names import Role
from dynaps_operator.planner import Memory, Plan, plan
from tests.dynaps_operator.helpers import T0, full_set, observed, pod

STAMP = T0.timestamp()
MEMBERS = [
    {"id": 1, "role": "coordinator", "name": "mf-coordinator"},
    {"id": 2, "role": "server", "name": "mf-server-0"},
    {"id": 3, "role": "server", "name": "mf-server-1"},
]


def loss(
    cause: str = "initial",
    server: int = 3,
    shards: list[int] | None = None,
    keys: int = 50,
    *,
    counted: bool = False,
    epoch: int = 4,
    at: float = STAMP,
    age: float | None = None,
) -> dict[str, Any]:
    """An entry as the runtime writes it (dynaps.coordinator.data_loss.LossEntry.to_json)."""
    entry: dict[str, Any] = {
        "cause": cause,
        "server": server,
        "epoch": epoch,
        "shards": shards if shards is not None else [2, 3],
        "keys": keys,
        "keysCounted": counted,
        "time": at,
        "message": f"2 shards ({keys} keys) of lost server {server} ...",
    }
    if cause == "checkpoint":
        entry["checkpointAgeSeconds"] = age
    return entry


def status_doc(losses: list[Any], members: list[dict[str, Any]] | None = None) -> CoordinatorView:
    doc = {
        "phase": "running",
        "epoch": 4,
        "servers": {"desired": 1},
        "workers": {"desired": 2},
        "members": MEMBERS[:2] if members is None else members,
        "dataLoss": losses,
    }
    return parse_status(doc)


def running(losses: list[dict[str, Any]] | None = None) -> Plan:
    """A running job whose coordinator reported ``losses`` (none: the previous poll, with mf-server-1)."""
    first = plan(observed())
    before = parse_status(
        {"phase": "running", "servers": {"desired": 1}, "workers": {"desired": 2}, "members": MEMBERS}
    )
    p = plan(observed(pods=full_set(), status=first.status, coordinator=before))
    if losses is None:
        return p
    return poll(p, losses)


def poll(p: Plan, losses: list[dict[str, Any]], **kw: Any) -> Plan:
    view = status_doc(losses, **kw)
    return plan(observed(pods=full_set(), status=p.status, memory=p.memory, coordinator=view))


def events(p: Plan) -> list[str]:
    return [e.message for e in p.events if e.reason == "DataLoss"]


def test_the_view_keeps_a_bounded_part_of_the_loss_list() -> None:
    many = [loss(shards=list(range(1000)), epoch=i) for i in range(MAX_LOSSES + 8)]
    many[-1]["message"] = "x" * 5000
    view = status_doc([{"cause": "initial"}, "junk", *many])
    assert len(view.losses) == MAX_LOSSES
    assert [x.epoch for x in view.losses] == list(range(8, MAX_LOSSES + 8))  # the latest
    last = view.losses[-1]
    assert (last.shard_count, last.shards) == (1000, tuple(range(MAX_SHARDS)))
    assert len(last.message) == MAX_MESSAGE
    assert last.time == T0
    assert status_doc([{"cause": "initial"}, "junk"]).losses == ()
    assert view.node_names == {1: "mf-coordinator", 2: "mf-server-0"}


def test_a_loss_sets_the_condition_and_posts_one_event_naming_the_lost_server() -> None:
    p = running([loss("initial", keys=50)])
    lost = p.status.data_loss
    assert lost is not None
    assert (lost.entries, lost.keys) == (1, 50)
    [entry] = lost.recent
    assert (entry.cause, entry.node, entry.server, entry.shards, entry.keys_counted) == (
        "initial",
        3,
        "mf-server-1",  # named by the previous poll: the lost server is gone from this one
        [2, 3],
        False,
    )
    condition = p.status.condition(ConditionType.DATA_LOSS)
    assert condition is not None
    assert (condition.status, condition.reason) == ("True", "InitialValuesRestored")
    assert "50 keys lost updates in 1 recovery" in condition.message
    assert "initial values" in condition.message
    assert events(p) == [
        "2 shards (at most 50 keys) of lost server mf-server-1 restarted from their initial values"
        " (no replica, no checkpoint)"
    ]
    assert [e.type for e in p.events if e.reason == "DataLoss"] == ["Warning"]
    assert p.status.phase == JobPhase.RUNNING  # onDataLoss: Continue


def test_a_loss_seen_again_is_not_posted_again_and_its_count_is_updated() -> None:
    p = running([loss(keys=50)])
    again = poll(p, [loss(keys=50)])
    assert not events(again)
    assert again.status == p.status
    counted = poll(again, [loss(keys=40, counted=True)])
    assert not events(counted)
    assert counted.status.data_loss is not None
    assert (counted.status.data_loss.entries, counted.status.data_loss.keys) == (1, 40)
    assert counted.status.data_loss.recent[0].keys_counted
    assert JobStatus.model_validate(counted.status.to_wire()) == counted.status  # as stored
    condition = counted.status.condition(ConditionType.DATA_LOSS)
    assert condition is not None
    assert "40 keys" in condition.message
    first = p.status.condition(ConditionType.DATA_LOSS)
    assert first is not None
    assert condition.last_transition_time == first.last_transition_time
    # An operator restart forgets its memory, not the job's status: nothing is posted twice.
    restarted = plan(
        observed(
            pods=full_set(),
            status=counted.status,
            memory=Memory(),
            coordinator=status_doc([loss(keys=40, counted=True)]),
        )
    )
    assert not events(restarted)
    assert restarted.status.data_loss == counted.status.data_loss


def test_each_recovery_is_an_entry_and_the_reason_is_the_worst_cause() -> None:
    # One lost server whose shards went to two new homes: two entries, two Events.
    p = running([loss("initial", shards=[4], keys=11), loss("initial", shards=[5], keys=10)])
    assert len(events(p)) == 2
    later = T0 + timedelta(seconds=30)
    checkpoint = loss("checkpoint", server=2, shards=[0, 1], keys=32, epoch=6, at=later.timestamp(), age=12.4)
    q = poll(p, [loss("initial", shards=[4], keys=11), loss("initial", shards=[5], keys=10), checkpoint])
    assert events(q) == [
        "2 shards (at most 32 keys) of lost server mf-server-0 went back to the last checkpoint (12 s old)"
    ]
    assert q.status.data_loss is not None
    assert (q.status.data_loss.entries, q.status.data_loss.keys) == (3, 53)
    condition = q.status.condition(ConditionType.DATA_LOSS)
    assert condition is not None
    assert condition.reason == "InitialValuesRestored"  # the checkpoint lost less
    assert "12 s old" in condition.message  # the latest
    assert data_loss.worst(["checkpoint"], "") == "CheckpointRestored"
    assert data_loss.worst(["checkpoint", "replicas-exhausted"], "") == "ReplicasExhausted"
    assert data_loss.worst(["checkpoint"], "InitialValuesRestored") == "InitialValuesRestored"
    assert data_loss.worst(["something-new"], "") == "DataLoss"


def test_a_lost_worker_s_keys_are_named_and_ranked_by_what_they_went_back_to() -> None:
    """A home took back the keys a lost worker held: to their last write-back (replication, the
    mildest loss) or to the home's copy from before the localize (none: every update since)."""
    worker = {"id": 4, "role": "worker", "name": "mf-worker-1"}
    p = poll(running(), [], members=[*MEMBERS, worker])  # the poll before the loss names it
    written_back = loss("write-back", server=4, shards=[1], keys=50, counted=True)
    q = poll(p, [written_back])
    assert events(q) == [
        "50 keys held by lost node mf-worker-1 went back to their last write-back: the updates of up "
        "to its last flush interval are lost"
    ]
    condition = q.status.condition(ConditionType.DATA_LOSS)
    assert condition is not None
    assert condition.reason == "WriteBackRestored"
    home_copy = loss("home-copy", server=4, shards=[2], keys=7, counted=True, at=STAMP + 1)
    r = poll(q, [written_back, home_copy])
    assert len(events(r)) == 1
    assert "before they were localized" in events(r)[0]
    condition = r.status.condition(ConditionType.DATA_LOSS)
    assert condition is not None
    assert condition.reason == "HomeCopyRestored"
    assert r.status.data_loss is not None
    assert (r.status.data_loss.entries, r.status.data_loss.keys) == (2, 57)
    assert data_loss.worst(["write-back", "checkpoint"], "") == "CheckpointRestored"
    assert data_loss.worst(["home-copy", "replicas-exhausted"], "") == "HomeCopyRestored"
    assert data_loss.worst(["write-back"], "InitialValuesRestored") == "InitialValuesRestored"


def test_losses_add_up_over_a_coordinator_replacement() -> None:
    p = running([loss(keys=50)])
    replaced = poll(p, [])  # the new coordinator's list starts empty: what the job lost stays
    assert replaced.status.data_loss == p.status.data_loss
    assert replaced.status.is_true(ConditionType.DATA_LOSS)
    later = (T0 + timedelta(minutes=5)).timestamp()
    again = poll(replaced, [loss("replicas-exhausted", server=2, keys=7, epoch=1, at=later)])
    assert len(events(again)) == 1
    assert again.status.data_loss is not None
    assert (again.status.data_loss.entries, again.status.data_loss.keys) == (2, 57)
    assert again.status.data_loss.recent[-1].server == "mf-server-0"


def test_many_losses_are_bounded_in_the_status_and_in_the_events() -> None:
    many = [loss(shards=[i], keys=1, epoch=i, at=STAMP + i) for i in range(20)]
    p = running(many)
    assert p.status.data_loss is not None
    assert (p.status.data_loss.entries, p.status.data_loss.keys) == (20, 20)
    assert len(p.status.data_loss.recent) == data_loss.MAX_RECENT
    assert p.status.data_loss.recent[-1].epoch == 19
    assert len(events(p)) == data_loss.MAX_EVENTS + 1
    assert events(p)[-1] == "and 15 more recoveries lost updates on 15 keys"
    # The coordinator still lists the entries that left status.dataLoss.recent: not new.
    again = poll(p, many)
    assert not events(again)
    assert again.status == p.status
    newer = poll(again, [*many, loss(shards=[99], keys=3, epoch=99, at=STAMP + 99)])
    assert len(events(newer)) == 1
    assert newer.status.data_loss is not None
    assert (newer.status.data_loss.entries, newer.status.data_loss.keys) == (21, 23)


def test_no_loss_no_condition() -> None:
    p = running([])
    assert p.status.data_loss is None
    assert p.status.condition(ConditionType.DATA_LOSS) is None
    assert "dataLoss" not in p.status.to_wire()


def test_on_data_loss_fail_ends_the_job_with_reason_data_loss() -> None:
    p = running([loss(keys=50)])
    why = "data loss (faultTolerance.onDataLoss: Fail): 2 shards (50 keys) of lost server 3 restarted"
    ending = status_doc([loss(keys=50)])
    ending = CoordinatorView(
        **{**ending.__dict__, "phase": "stopping", "exit_code": DATA_LOSS_EXIT_CODE, "reason": why}
    )
    stopping = plan(observed(pods=full_set(), status=p.status, memory=p.memory, coordinator=ending))
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=DATA_LOSS_EXIT_CODE)
    done = plan(observed(pods=pods, status=stopping.status, memory=stopping.memory))
    assert done.status.phase == JobPhase.FAILED
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "DataLoss"
    assert why in failed.message
    assert done.status.is_true(ConditionType.DATA_LOSS)
    assert "DataLoss" in [e.reason for e in done.events if e.type == "Warning"]
    # The operator missed the final /status: the coordinator's log tail says why.
    tail = f"job ends (3): {why}"
    pods[0] = pod(Role.COORDINATOR, exit_code=DATA_LOSS_EXIT_CODE, message=tail)
    missed = plan(observed(pods=pods, status=p.status, memory=Memory()))
    failed = missed.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "DataLoss"


def test_a_program_exiting_3_is_not_data_loss() -> None:
    p = running()
    seen = CoordinatorView(phase="stopping", exit_code=3, reason="worker rank 1 exited with code 3")
    pods = full_set()
    pods[0] = pod(Role.COORDINATOR, exit_code=3)
    done = plan(observed(pods=pods, status=p.status, memory=Memory(last_coordinator=seen)))
    failed = done.status.condition(ConditionType.FAILED)
    assert failed is not None
    assert failed.reason == "JobFailed"
