"""What ``bench/scale.py`` measures in its own process, beside the real coordinator's run:
what one real node pays for a membership at a size (the whole document and a delta:
bytes, parse time, sockets), and the CPU the coordinator spends on a heartbeat, a tick and a
``/status`` document."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dynaps.contract import NamedTable, RebalancePolicy, RuntimeConfig

KEYS_PER_SHARD = 4  # as bench/scale.py: small shards


def node_side(nodes: int, shards: int) -> dict[str, Any]:
    """What one real node pays per membership at this size: the body's bytes, its parse time,
    and the sockets ``joining.connect_members`` opens (one per node and per training process)."""
    from dynaps.contract import Partition
    from dynaps.store.shardmap import ShardMap
    from dynaps.wire import codec, control, membership_deltas, messages
    from dynaps.wire.protocol import COORDINATOR, MsgType

    servers = max(1, nodes // 2)
    infos = [
        control.NodeInfo(
            id=i + 1,
            role="server" if i < servers else "worker",
            address=f"tcp://127.0.0.1:{20000 + i}",
            client=None if i < servers else f"tcp://127.0.0.1:{40000 + i}",
            rank=None if i < servers else i - servers,
            name=f"server-{i}" if i < servers else f"worker-{i - servers}",
            ready=True,
        )
        for i in range(nodes)
    ]
    shard_map = ShardMap.initial(shards, Partition.RANGE, list(range(1, servers + 1)))
    body = control.Membership(
        version=1,
        phase=control.Phase.RUNNING,
        nodes=infos,
        shard_map=shard_map.to_json(),
        num_workers=nodes - servers,
    )
    frames = messages.control(MsgType.MEMBERSHIP, COORDINATOR, body)
    # a server joined and its first shards were committed: one node, 1/(servers + 1) of the rows
    joined = control.NodeInfo(id=nodes + 1, role="server", address="tcp://127.0.0.1:19999", ready=True)
    homes = shard_map.homes.copy()
    homes[:: servers + 1] = nodes + 1
    moved = ShardMap(shard_map.epoch + 1, shards, shard_map.partition, homes)
    after = body.model_copy(update={"version": 2, "nodes": [*infos, joined], "shard_map": moved.to_json()})
    delta = membership_deltas.diff([body], after)
    assert delta is not None
    delta_frames = messages.control(MsgType.MEMBERSHIP_DELTA, COORDINATOR, delta)

    def whole() -> None:
        codec.decode(frames, [])

    def follow() -> None:
        msg = codec.decode(delta_frames, [])
        membership_deltas.apply(body, control.body_of(msg, control.MembershipDelta))

    return {
        "membership_bytes": sum(len(f) for f in frames),
        "membership_parse_ms": round(_median_cpu(whole, 5) * 1000, 3),
        "delta_bytes": sum(len(f) for f in delta_frames),  # of this join's first commit
        "delta_rows": len(delta.shards),
        "delta_parse_and_apply_ms": round(_median_cpu(follow, 5) * 1000, 3),
        "push_sockets_per_real_node": nodes - 1 + (nodes - servers),
    }


def _median_cpu(work: Callable[[], object], runs: int) -> float:
    """The median CPU seconds of ``work``."""
    took = []
    for _ in range(runs):
        start = time.process_time()
        work()
        took.append(time.process_time() - start)
    return sorted(took)[runs // 2]


class _NullTransport:
    """Swallows what the coordinator sends: its own cost, without sockets, in this process."""

    endpoint = 0
    address = "tcp://127.0.0.1:1"
    rejected = 0
    last_rejected = ""

    def connect(self, endpoint: int, address: str) -> None:
        pass

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        pass

    def knows(self, endpoint: int) -> bool:
        return True

    def send(self, endpoint: int, frames: Any) -> None:
        pass

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None:
        pass


def heartbeat_cost(nodes: int, shards: int) -> float:
    """CPU microseconds ``Coordinator.receive`` takes for one HEARTBEAT in a running job of
    ``nodes`` (in this process, no socket), median of 200."""
    from dynaps.wire import control, messages
    from dynaps.wire.protocol import MsgType

    coordinator = _running_coordinator(nodes, shards)
    body = control.Heartbeat(role="server", address="tcp://127.0.0.1:20000", name="server-0")
    beat = messages.control(MsgType.HEARTBEAT, 1, body)
    return round(_median_cpu(lambda: coordinator.receive(beat), 200) * 1e6, 1)


def tick_and_status_cost(nodes: int, shards: int) -> dict[str, float]:
    """CPU microseconds of one ``Coordinator.tick`` with every member just heard (failure
    detection, timers; no socket, so no disconnect monitors) and of one ``/status`` document,
    in a running job of ``nodes``, medians of 200."""
    coordinator = _running_coordinator(nodes, shards)
    for member in coordinator.roster.members.values():
        member.heard(time.monotonic())
    return {
        "tick_us": round(_median_cpu(coordinator.tick, 200) * 1e6, 1),
        # rebuilt whole, whether or not anything changed
        "status_document_us": round(_median_cpu(coordinator.published.refresh, 200) * 1e6, 1),
    }


def _running_coordinator(nodes: int, shards: int) -> Any:
    """A coordinator in this process whose job of ``nodes`` runs (registered, ready, every
    worker's program attached), sending into nothing."""
    from dynaps.coordinator.core import Coordinator
    from dynaps.wire import control, messages
    from dynaps.wire.protocol import MsgType, client_of

    servers = max(1, nodes // 2)
    config = RuntimeConfig(
        job="probe",
        tables=[NamedTable(name="w", num_keys=shards * KEYS_PER_SHARD, dim=1)],
        servers=servers,
        workers=nodes - servers,
        rebalance_policy=RebalancePolicy(num_shards=shards),
        coordinator="127.0.0.1:1",
    )
    coordinator = Coordinator(config, _NullTransport())
    for i in range(nodes):
        role = "server" if i < servers else "worker"
        reg = control.Register(
            role=role, address=f"tcp://127.0.0.1:{20000 + i}", nonce=f"n{i}", config_digest=coordinator.digest
        )  # a nonce each: a REGISTER with a member's nonce is a copy, answered again
        coordinator.receive(messages.control(MsgType.REGISTER, -1, reg))
    for member in coordinator.roster.active():
        coordinator.receive(messages.control(MsgType.READY, member.id, control.Ready(version=1)))
    for member in coordinator.roster.active("worker"):
        reg = control.Register(
            role="client",
            address=f"tcp://127.0.0.1:{40000 + member.id}",
            nonce=f"c{member.id}",
            config_digest=coordinator.digest,
            node=member.id,
        )
        coordinator.receive(messages.control(MsgType.REGISTER, client_of(member.id), reg))
    return coordinator
