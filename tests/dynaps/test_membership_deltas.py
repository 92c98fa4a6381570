"""Membership as deltas (dynaps.wire.membership_deltas): what the coordinator sends when the
job changes, how processes follow it, and that its size does not grow with the job."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaps.contract import Partition
from dynaps.errors import ClusterError, ProtocolError
from dynaps.store.shardmap import MAX_BACKUP_WIDTH, ShardMap
from dynaps.wire import codec, control, membership_deltas, messages
from dynaps.wire.control import MAX_SHARDS
from dynaps.wire.protocol import COORDINATOR, HEADER, MAX_BODY_BYTES, MsgType, client_of
from tests.dynaps.samples import backups_of, homes_of, shard_map_doc
from tests.dynaps.simnet import NUM_KEYS, SERVERS, SPARE, WORKERS, Cluster
from tests.dynaps.test_coordinator_core import Job

NUM_SHARDS = 8


def node(i: int, role: str = "server", ready: bool = True, client: str | None = None) -> control.NodeInfo:
    return control.NodeInfo(id=i, role=role, address=f"tcp://n{i}", client=client, ready=ready)


def membership(
    version: int,
    nodes: list[control.NodeInfo],
    homes: list[int],
    backups: list[list[int]] | None = None,
    lost: list[int] | None = None,
    epoch: int = 1,
    incarnation: str = "c1",
) -> control.Membership:
    shard_map = shard_map_doc(homes, backups, epoch)
    return control.Membership(
        version=version,
        incarnation=incarnation,
        phase=control.Phase.RUNNING,
        nodes=nodes,
        shard_map=shard_map,
        num_workers=sum(1 for n in nodes if n.role == "worker"),
        lost=lost or [],
    )


def same(a: control.Membership, b: control.Membership) -> bool:
    """Equal as a process reads them (the order of the nodes carries no meaning)."""
    nodes = {n.id: n for n in a.nodes} == {n.id: n for n in b.nodes}
    return nodes and a.model_copy(update={"nodes": []}) == b.model_copy(update={"nodes": []})


BASE = membership(3, [node(1), node(2), node(3, "worker", client="tcp://p3")], [1] * 4 + [2] * 4)


# ---------------------------------------------------------------------- diff and apply


@st.composite
def changes(draw: st.DrawFn, replicated: bool) -> tuple[control.Membership, control.Membership]:
    """A membership and a later one: nodes joined, left, lost, changed; shards moved."""
    ids = sorted(draw(st.sets(st.integers(1, 12), min_size=2, max_size=8)))
    servers = ids[: max(1, len(ids) // 2)]
    nodes = [node(i, "server" if i in servers else "worker", draw(st.booleans())) for i in ids]
    homes = draw(st.lists(st.sampled_from(servers), min_size=NUM_SHARDS, max_size=NUM_SHARDS))
    backups = [[draw(st.sampled_from([-1, *servers]))] for _ in homes] if replicated else None
    lost = sorted(draw(st.sets(st.integers(13, 20), max_size=2)))
    base = membership(3, nodes, homes, backups, lost)
    gone = draw(st.sets(st.sampled_from(ids[1:]), max_size=len(ids) - 1))  # the first server stays
    newly_lost = sorted(draw(st.sets(st.sampled_from(sorted(gone)), max_size=len(gone))) if gone else [])
    joined = [node(i, "server") for i in sorted(draw(st.sets(st.integers(21, 30), max_size=3)))]
    kept = [n.model_copy(update={"ready": draw(st.booleans())}) for n in nodes if n.id not in gone]
    new_nodes = kept + joined
    new_servers = [n.id for n in new_nodes if n.role == "server"]
    new_homes = [h if draw(st.booleans()) else draw(st.sampled_from(new_servers)) for h in homes]
    new_backups = None
    if backups is not None:
        new_backups = [
            r if draw(st.booleans()) else [draw(st.sampled_from([-1, *new_servers]))] for r in backups
        ]
    epoch = 1 + draw(st.integers(0, 2))
    new = membership(4, new_nodes, new_homes, new_backups, lost + newly_lost, epoch)
    return base, new


@given(st.booleans().flatmap(changes))
def test_a_delta_applied_to_the_previous_membership_gives_the_new_one(pair: Any) -> None:
    base, new = pair
    delta = membership_deltas.diff([base], new)
    assert delta is not None
    assert same(membership_deltas.apply(base, delta), new)
    # and it says only what changed
    old_map, new_map = base.shard_map, new.shard_map
    old_homes, new_homes = homes_of(old_map), homes_of(new_map)
    rows = {s for s in range(NUM_SHARDS) if old_homes[s] != new_homes[s]}
    old_backups, new_backups = backups_of(old_map), backups_of(new_map)
    if old_backups is not None and new_backups is not None:
        rows |= {s for s in range(NUM_SHARDS) if old_backups[s] != new_backups[s]}
    assert set(delta.shards) == rows
    assert {n.id for n in delta.changed} == {n.id for n in new.nodes if n not in base.nodes}


def test_one_delta_serves_every_document_of_its_version() -> None:
    """A joiner got the membership whole between two announcements, with itself listed; the
    others hold the announced one: the next delta turns both into the next version."""
    joiner_doc = BASE.model_copy(update={"nodes": [*BASE.nodes, node(4, ready=False)]})
    new = BASE.model_copy(update={"version": 4, "nodes": [*BASE.nodes, node(4)]})
    delta = membership_deltas.diff([BASE, joiner_doc], new)
    assert delta is not None
    assert [n.id for n in delta.changed] == [4]
    assert same(membership_deltas.apply(BASE, delta), new)
    assert same(membership_deltas.apply(joiner_doc, delta), new)


@pytest.mark.parametrize(
    "new",
    [
        BASE.model_copy(update={"version": 4, "incarnation": "c2"}),  # another coordinator
        BASE.model_copy(update={"version": 4, "lost": [], "nodes": BASE.nodes}).model_copy(
            update={"shard_map": shard_map_doc([1] * 4)}
        ),
        membership(4, BASE.nodes, [1] * 8, [[2]] * 8),  # backups appear
    ],
    ids=["incarnation", "number of shards", "backups"],
)
def test_what_a_delta_cannot_say_goes_out_whole(new: control.Membership) -> None:
    assert membership_deltas.diff([BASE], new) is None
    lost_before = BASE.model_copy(update={"lost": [9]})
    assert membership_deltas.diff([lost_before], BASE.model_copy(update={"version": 4})) is None


def delta(**fields: Any) -> control.MembershipDelta:
    body: dict[str, Any] = {"base": 3, "version": 4, "incarnation": "c1", "phase": "running"}
    body.update(num_workers=1, epoch=1)
    return control.MembershipDelta.model_validate({**body, **fields})


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (delta(base=2), "2->4 does not apply to 3"),
        (delta(incarnation="c2"), "does not apply"),
        (delta(removed=[7]), "removes nodes it does not list"),
        (delta(lost=[2]), "declares lost nodes it does not remove"),
        (delta(shards=[8], homes=[1]), "names shard 8 of 8"),
        (delta(shards=[0], homes=[9]), "homes shards on unknown nodes"),
        (delta(shards=[0], homes=[1], backups=[[2]]), "backups do not match"),
        (delta(epoch=0), "goes back to epoch 0"),
    ],
)
def test_a_delta_that_does_not_fit_what_is_held_is_refused(
    change: control.MembershipDelta, problem: str
) -> None:
    with pytest.raises(ProtocolError, match=problem):
        membership_deltas.apply(BASE, change)


def test_a_lost_node_cannot_come_back_through_a_delta() -> None:
    lost = membership_deltas.apply(BASE, delta(removed=[2], lost=[2], shards=[4], homes=[1]))
    assert (lost.lost, [n.id for n in lost.nodes]) == ([2], [1, 3])
    with pytest.raises(ProtocolError, match="lists lost nodes again"):
        membership_deltas.apply(lost, delta(base=4, version=5, changed=[node(2).model_dump()]))


# ---------------------------------------------------------------------- following


class Asked:
    def __init__(self) -> None:
        self.versions: list[int] = []
        self.now = 100.0

    def __call__(self, version: int) -> None:
        self.versions.append(version)


def test_a_follower_applies_deltas_in_turn_and_asks_for_the_whole_when_it_missed_one() -> None:
    asked = Asked()
    follower = membership_deltas.Follower(asked, clock=lambda: asked.now)
    follower.took(BASE)
    fourth = follower.next(delta(changed=[node(4).model_dump()]))
    assert fourth is not None
    assert fourth.version == 4
    follower.took(fourth)
    assert follower.next(delta(base=5, version=6)) is None  # version 5 never came
    assert asked.versions == [4]
    assert follower.next(delta(base=6, version=7)) is None  # behind still: asked once a second
    asked.now += membership_deltas.ASK_AGAIN_SECONDS
    assert follower.next(delta(base=7, version=8)) is None
    assert asked.versions == [4, 4]
    whole = fourth.model_copy(update={"version": 8})
    follower.took(whole)  # the answer
    assert follower.next(delta(base=6, version=7)) is None  # old news: not asked again
    assert follower.next(delta(base=8, version=9)) is not None
    assert (asked.versions, follower.asked) == ([4, 4], 2)


def test_a_follower_that_holds_nothing_or_another_coordinators_membership_asks() -> None:
    asked = Asked()
    follower = membership_deltas.Follower(asked, clock=lambda: asked.now)
    assert follower.next(delta()) is None
    follower.took(BASE)
    asked.now += membership_deltas.ASK_AGAIN_SECONDS
    assert follower.next(delta(incarnation="c2")) is None
    assert asked.versions == [0, 3]


def test_a_bad_delta_is_refused_and_the_whole_asked_for() -> None:
    asked = Asked()
    follower = membership_deltas.Follower(asked, clock=lambda: asked.now)
    follower.took(BASE)
    with pytest.raises(ProtocolError, match="removes nodes it does not list"):
        follower.next(delta(removed=[7]))
    assert asked.versions == [3]
    assert follower.current is BASE


# ---------------------------------------------------------------------- the coordinator


def join_a_worker(workers: int) -> tuple[Job, int, list[tuple[int, MsgType, Any]]]:
    """A job of ``workers`` workers and 2 servers; one more worker joins: what was sent."""
    job = Job(servers=2, workers=workers, workers_range=(1, workers + 1))
    job.start()
    job.coordinator.run_command("scale", {"workers": workers + 1})
    late = job.register("worker", f"w{workers}")
    job.tell(late, MsgType.READY, {"version": job.coordinator.outbox.version})
    job.attach(late)
    sent = [s for s in job.wire.sent if s[1] in (MsgType.MEMBERSHIP, MsgType.MEMBERSHIP_DELTA)]
    assert job.wire.take_memberships()  # each endpoint's copy followed, as the harness checks
    return job, late, sent


def test_a_change_reaches_every_process_as_a_delta_whose_size_does_not_grow_with_the_job() -> None:
    sizes = {}
    for workers in (4, 40):
        job, late, sent = join_a_worker(workers)
        wholes = [e for e, kind, _ in sent if kind is MsgType.MEMBERSHIP]
        assert wholes == [late, client_of(late)]  # the joiner and its program: whole
        deltas = [body for e, kind, body in sent if kind is MsgType.MEMBERSHIP_DELTA]
        endpoints = 2 + 2 * (workers + 1)
        # the join (READY), then the program's arrival: to every endpoint but that program
        assert len(deltas) == 2 * (endpoints - 1)
        sizes[workers] = max(len(json.dumps(body)) for body in deltas)
        every = {e for e, _ in job.wire.held.items()}
        assert all(job.wire.held[e].version == job.coordinator.outbox.version for e in every)
    assert sizes[40] <= sizes[4] + 8  # a digit more in an id or two: not ten times the nodes


def test_the_whole_membership_of_a_thousand_servers_and_a_million_shards_fits_a_body() -> None:
    """The contract's most shards, the widest backup rows (three backups and a draining
    server's slot), a thousand servers and as many workers: the whole document is sent
    and read back (as JSON lists the map alone was 17.6 MiB, past the 16 MiB bound)."""
    rng = np.random.default_rng(7)
    servers, workers = np.arange(1, 1001), np.arange(1001, 2001)
    homes = rng.choice(servers, MAX_SHARDS).astype(np.int16)
    backups = rng.choice(servers, (MAX_SHARDS, MAX_BACKUP_WIDTH)).astype(np.int16)
    shard_map = ShardMap(9, MAX_SHARDS, Partition.HASH, homes, backups)
    nodes = [node(int(i)) for i in servers] + [
        node(int(i), "worker", client=f"tcp://10.0.{i // 256}.{i % 256}:40000") for i in workers
    ]
    whole = control.Membership(
        version=5,
        phase=control.Phase.RUNNING,
        nodes=nodes,
        shard_map=shard_map.to_json(),
        num_workers=len(workers),
    )
    frames = messages.control(MsgType.MEMBERSHIP, COORDINATOR, whole)
    assert len(frames[1]) <= MAX_BODY_BYTES
    got = codec.decode(frames, ()).body
    assert isinstance(got, control.Membership)
    again = ShardMap.from_json(got.shard_map)
    np.testing.assert_array_equal(again.homes, homes)
    assert again.backups is not None
    np.testing.assert_array_equal(again.backups, backups)
    # a change that moves most shards goes whole rather than as a delta past the bound
    moved = ShardMap(10, MAX_SHARDS, Partition.HASH, np.roll(homes, 1), backups)
    later = whole.model_copy(update={"version": 6, "shard_map": moved.to_json()})
    assert membership_deltas.diff([whole], later) is None
    few = homes.copy()
    few[:3] = [1, 2, 3]
    few_moved = ShardMap(10, MAX_SHARDS, Partition.HASH, few, backups).to_json()
    delta = membership_deltas.diff([whole], later.model_copy(update={"shard_map": few_moved}))
    assert delta is not None
    assert delta.shards == [s for s in range(3) if few[s] != homes[s]]


def test_a_body_past_the_bound_is_refused_where_it_is_sent() -> None:
    """Not dropped by its receiver in silence: the sender hears of it."""
    huge = control.Stats(counters={"blob": "x" * MAX_BODY_BYTES})
    with pytest.raises(ClusterError, match="past the bound"):
        messages.control(MsgType.STATS_REPLY, 3, huge)


def test_a_process_that_asks_gets_the_whole_membership() -> None:
    job = Job(servers=2, workers=1)
    _, (w1,) = job.start()
    job.tell(client_of(w1), MsgType.MEMBERSHIP_QUERY, {"version": 1})
    [(endpoint, whole)] = job.wire.take_memberships()
    assert endpoint == client_of(w1)
    assert whole.version == job.coordinator.outbox.version
    assert sorted(n.id for n in whole.nodes) == sorted(job.names)


# ---------------------------------------------------------------------- in the simulated network


@pytest.mark.parametrize(
    "endpoint", [WORKERS[0], client_of(WORKERS[0]), SERVERS[0]], ids=["worker", "program", "server"]
)
def test_a_process_that_missed_a_delta_asks_for_the_whole_membership_and_catches_up(endpoint: int) -> None:
    """The real coordinator, nodes and training programs (tests/dynaps/simnet.py): the first
    delta of a join never reaches ``endpoint``; the next one does not follow what it holds,
    so it asks, gets the whole membership, and the job goes on as if nothing was lost."""
    cluster = Cluster()
    lost: list[int] = []

    def lose_first_delta(source: int, dest: int, frames: Sequence[Any]) -> bool:
        kind = HEADER.unpack_from(bytes(memoryview(frames[0])))[1]
        if dest == endpoint and not lost and kind == MsgType.MEMBERSHIP_DELTA:
            lost.append(cluster.coordinator.outbox.version)
            return True
        return False

    cluster.network.lose = lose_first_delta
    cluster.join_spare()  # its READY is announced (the lost delta), then each shard it gets
    cluster.settle(None)
    assert lost
    assert SPARE in cluster.shard_map.homes
    if endpoint == client_of(WORKERS[0]):
        follower = cluster.clients[WORKERS[0]]._membership.follower
    else:
        follower = cluster.planes[endpoint].follower
    assert follower.asked == 1
    announced = cluster.coordinator.outbox.announced
    assert announced is not None
    assert follower.current is not None
    assert same(follower.current, announced)
    for worker in WORKERS:  # every program routes by the new map: every update lands once
        cluster.start("push", worker, list(range(NUM_KEYS)))
        cluster.settle(None)
    cluster.check()
