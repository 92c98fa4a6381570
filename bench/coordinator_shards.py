"""The coordinator's own CPU for the shard map's work at large sizes: the job's start (the
first map and its backups, the first membership to every endpoint), a server lost (its
shards rebuilt elsewhere, new backups), a server joining (new backups, a rebalance
plan), and five migrations' commits (each an epoch: the map, its backups and replicas
followed, the delta to every endpoint). One real Coordinator in this process, driven by
messages as the nodes would send them; the network is a counter of bytes (nothing is
sent), so the figures are the coordinator's alone.

    PYTHONPATH=runtime .venv/bin/python bench/coordinator_shards.py --shards 1048576 --servers 1000

Compare revisions by pointing PYTHONPATH at another tree's runtime (``git archive REV
runtime | tar -x -C /tmp/rev``) in the same sitting.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from dynaps.contract import NamedTable, RuntimeConfig
from dynaps.coordinator.core import Coordinator
from dynaps.wire import codec, control
from dynaps.wire.protocol import CLIENT_BIT, MsgType, header


class CountingNetwork:
    """A Transport that sends nothing: it counts the bytes and keeps the WELCOMEs."""

    endpoint = 0
    address = "inproc://coordinator"
    rejected = 0
    last_rejected = ""

    def __init__(self) -> None:
        self.bytes = 0
        self.welcomes: dict[str, int] = {}
        self.dropped: list[int] = []
        self.known: set[int] = set()

    def connect(self, endpoint: int, address: str) -> None:
        self.known.add(endpoint)

    def forget(self, endpoint: int, linger: float = 0.0) -> None:
        self.known.discard(endpoint)

    def knows(self, endpoint: int) -> bool:
        return endpoint in self.known

    def send(self, endpoint: int, frames: Sequence[Any]) -> None:
        self.bytes += sum(len(f) for f in frames)
        if frames[0][1] == MsgType.WELCOME:
            body = codec.decode([bytes(f) for f in frames], []).body
            assert isinstance(body, control.Welcome)
            self.welcomes[body.nonce] = body.node

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        return None

    def close(self, linger: float = 0.0) -> None:
        pass

    def watch(self, endpoint: int) -> None:
        pass

    def connection_events(self) -> list[tuple[int, bool]]:
        dropped, self.dropped = self.dropped, []
        return [(e, False) for e in dropped]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Driver:
    def __init__(self, shards: int, servers: int, workers: int, replication: int) -> None:
        self.config = RuntimeConfig.model_validate(
            {
                "tables": [NamedTable(name="W", num_keys=shards * 4, dim=1)],
                "servers": servers,
                "workers": workers,
                "rebalance_policy": {"num_shards": shards},
                "fault_tolerance": {"replication": replication},
            }
        )
        self.net, self.clock = CountingNetwork(), Clock()
        self.coordinator = Coordinator(self.config, self.net, clock=self.clock)
        self.servers: list[int] = []

    def tell(self, sender: int, kind: MsgType, body: dict[str, Any]) -> None:
        self.coordinator.receive([header(kind, sender, sender, 0), json.dumps(body).encode()])
        self.coordinator.end_turn()

    def register(self, role: str, name: str, node: int = 0) -> int:
        body: dict[str, Any] = {
            "role": role,
            "address": f"tcp://{name}",
            "nonce": f"n-{name}",
            "config_digest": control.config_digest(self.config),
            "name": name,
        }
        if node:
            body["node"] = node
        self.tell(node | CLIENT_BIT if node else -1, MsgType.REGISTER, body)
        return self.net.welcomes[f"n-{name}"]

    def heartbeats(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            self.clock.now += 0.1
            for member in self.coordinator.roster.active():
                self.tell(member.id, MsgType.HEARTBEAT, {"role": member.role, "address": member.address})
            self.coordinator.tick()

    def start(self) -> None:
        self.servers = [self.register("server", f"s{i}") for i in range(self.config.servers)]
        workers = [self.register("worker", f"w{i}") for i in range(self.config.workers)]
        for node in self.servers + workers:
            self.tell(node, MsgType.READY, {"version": 1})
        for node in workers:
            self.register("client", f"p{node}", node)

    def lose_a_server(self) -> None:
        victim = self.servers.pop(0)
        self.net.dropped.append(victim)
        self.clock.now += 0.1
        self.coordinator.tick()
        self.clock.now += self.coordinator.liveness.grace_after_disconnect + 0.01
        self.heartbeats(0.1)

    def add_a_server(self) -> None:
        self.coordinator.run_command("scale", {"servers": len(self.coordinator.roster.active("server")) + 1})
        node = self.register("server", "joiner")
        self.tell(node, MsgType.READY, {"version": self.coordinator.outbox.version})
        self.heartbeats(0.1)

    def commit_migrations(self, count: int = 5) -> None:
        """``count`` epochs that each move 4 shards to the last server, as a migration's commit
        does (called directly: landing one through the nodes' messages needs every backup's
        marker), each announced to every endpoint."""
        homes = self.coordinator.homes
        for i in range(count):
            assert homes.shard_map is not None
            moved = homes.shard_map.homes.copy()
            moved[4 * i : 4 * i + 4] = self.servers[-1]
            homes._commit(moved, flushed=list(range(4 * i, 4 * i + 4)))
            homes.announce()


def measure(name: str, step: Callable[[], None], net: CountingNetwork) -> dict[str, float]:
    net.bytes = 0
    start = time.process_time()
    step()
    cpu = time.process_time() - start
    print(f"  {name}: {cpu:.2f} CPU s, {net.bytes / 2**20:.1f} MiB to send", flush=True)
    return {"cpu_s": cpu, "sent_mib": net.bytes / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=1 << 20)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--out", help="write the figures here as JSON")
    args = parser.parse_args()
    sizes = f"{args.shards} shards, {args.servers} servers, {args.workers} workers"
    print(f"{sizes}, replication {args.replication}")
    driver = Driver(args.shards, args.servers, args.workers, args.replication)
    figures = {
        "start": measure("start (register, first map, ready)", driver.start, driver.net),
        "server lost": measure("a server lost", driver.lose_a_server, driver.net),
        "server joins": measure("a server joins", driver.add_a_server, driver.net),
        "5 migration commits": measure("5 migration commits", driver.commit_migrations, driver.net),
    }
    if args.out:
        with open(args.out, "w") as out:
            json.dump({"args": vars(args), "figures": figures}, out, indent=2)


if __name__ == "__main__":
    main()
