"""Control-plane scale harness (issue 15): the real coordinator against N simulated nodes.

The coordinator is the real one, a process of its own started as ``LocalCluster`` starts it
(``dynaps coordinator --announce``, the job's config and secret in its environment). The N
nodes are simulated, a few hundred per helper process (``bench/scale_sim.py``), each with its
own sockets on 127.0.0.1, the job's MAC on every message and the real control messages:
register, heartbeats, READY after a membership, migrations of small shards, drains, losses.

Measured for each N (half servers, half workers; every worker also has its training
process, which registers and receives every membership, as a real one does):

* **registration**: time until every node has its id (WELCOME) and until every endpoint saw
  the job RUNNING, with the coordinator's CPU seconds and the bytes the nodes received;
* **steady heartbeats**: the coordinator's CPU seconds per second (``/proc/PID/stat`` utime +
  stime) while N nodes heartbeat every ``--heartbeat-ms``, nothing else happening;
* **one join, one graceful leave (POST /drain), one lost server (its sockets closed, its
  heartbeats stopped)**: time until every endpoint received the membership that says so
  (first and last arrival), bytes the nodes received until then, and until the job settled
  (migrations and recoveries done);
* **scale-out by 10 % more servers**: time until the new servers home their shards and no
  migration is left, with the migrations, membership versions, bytes and coordinator CPU.

Beside each run, ``bench/scale_probes.py`` measures in this process what one real node pays
for a membership (whole, and as a delta) and the coordinator's CPU per heartbeat;
``bench/scale_plot.py`` draws the figures against N.

    python bench/scale.py --nodes 10,100,1000 [--heartbeat-ms 200] [--out bench/results/scale.json]

Every process it starts is stopped by pid at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynaps.contract import FaultTolerance, NamedTable, RebalancePolicy, RuntimeConfig, secret
from scale_plot import plot
from scale_probes import KEYS_PER_SHARD, heartbeat_cost, node_side, tick_and_status_cost
from scale_sim import HELD_SHARDS_ENV

HERE = Path(__file__).resolve()
ANNOUNCE_PREFIX = "DYNAPS_COORDINATOR_READY "  # dynaps.local.launch.ANNOUNCE_PREFIX
NODES_PER_HELPER = 250
PROFILE_ENV = "SCALE_COORDINATOR_PROFILE"  # a path: the coordinator runs under cProfile
POLL_SECONDS = 0.1
PHASES = ("steady", "join", "leave", "loss", "scale-out")  # in the order they run, after registration


class HarnessError(RuntimeError):
    """A step did not complete: what was waited for and what was seen."""


def log(text: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def memberships(counters: dict[str, Any]) -> int:
    """Membership versions the endpoints received, whole or as deltas."""
    return int(counters["msgs_in"].get("MEMBERSHIP", 0)) + deltas(counters)


def deltas(counters: dict[str, Any]) -> int:
    return int(counters["msgs_in"].get("MEMBERSHIP_DELTA", 0))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the processes


class Coordinator:
    """The real coordinator process and its HTTP endpoint."""

    def __init__(self, config: RuntimeConfig, env: dict[str, str], token: str, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--serve-coordinator"], env=env, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc, timeout, "the coordinator's announcement")
        if not line.startswith(ANNOUNCE_PREFIX):
            raise HarnessError(f"unexpected output from the coordinator: {line!r}")
        address, port = line[len(ANNOUNCE_PREFIX) :].split()
        self.address = address.removeprefix("tcp://")
        self.http = f"http://127.0.0.1:{port}"
        self.token = token

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """Resident memory (VmRSS): queued messages show here, zmq's buffers being unbounded."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.http + path, data=data, method="GET" if body is None else "POST"
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as reply:
            doc: dict[str, Any] = json.loads(reply.read() or b"{}")
            return doc

    def status(self) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise HarnessError(f"the coordinator exited with code {self.proc.returncode}")
        return self._request("/status")

    def post(self, action: str, body: dict[str, Any]) -> None:
        self._request(f"/{action}", body)


def _read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The next line ``proc`` writes (whole lines, flushed), or HarnessError after ``timeout``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 0)
    deadline = time.monotonic() + timeout
    while not ready:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        if proc.poll() is not None:
            raise HarnessError(f"process {proc.pid} exited ({proc.returncode}) before {what}")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
    line = proc.stdout.readline()
    if not line.endswith(b"\n"):
        raise HarnessError(f"process {proc.pid} closed its output before {what}")
    return line.decode().strip()


class Helper:
    """A process of simulated nodes (``bench/scale_sim.py``), driven by JSON lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "--sim-helper"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def ask(self, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(
            _read_line(self.proc, timeout, f"helper's answer to {request['cmd']}")
        )
        if "error" in reply:
            raise HarnessError(f"helper {self.proc.pid}: {reply['error']}")
        return reply


def stop_by_pid(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM each process we started, wait, then SIGKILL; reap them all."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


# ---------------------------------------------------------------------- one size


class Run:
    """One job of N simulated nodes against one coordinator; the figures as they are measured."""

    def __init__(self, nodes: int, args: argparse.Namespace) -> None:
        self.n = nodes
        self.args = args
        self.servers = max(1, nodes // 2)
        self.workers = max(1, nodes - self.servers)
        shards = args.shards
        self.config = RuntimeConfig(
            job=f"scale-{nodes}",
            tables=[NamedTable(name="w", num_keys=shards * KEYS_PER_SHARD, dim=1)],
            servers=self.servers,
            workers=self.workers,
            fault_tolerance=FaultTolerance(heartbeat_interval_ms=args.heartbeat_ms),
            rebalance_policy=RebalancePolicy(
                num_shards=shards, max_concurrent_migrations=args.max_migrations
            ),
            coordinator="127.0.0.1:0",
        )
        self.secret = secret.new_secret()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.helpers: list[Helper] = []
        self.coordinator: Coordinator | None = None
        self.result: dict[str, Any] = {
            "nodes": nodes,
            "servers": self.servers,
            "workers": self.workers,
            "endpoints": self.servers + 2 * self.workers,  # every worker's training process too
            "heartbeat_ms": args.heartbeat_ms,
            "num_shards": shards,
            "max_concurrent_migrations": args.max_migrations,
            "load_average_before": list(os.getloadavg()),
            "errors": [],
        }
        self._next_server = self.servers
        self._recoveries_checked: set[int] = set()

    def env(self, config: RuntimeConfig) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("DYNAPS_CONFIG_FILE", None)
        env["DYNAPS_CONFIG"] = config.to_json()
        env[secret.HEX_ENV] = secret.encode(self.secret)
        env.setdefault("DYNAPS_LOG_LEVEL", "WARNING")
        env[HELD_SHARDS_ENV] = str(self.args.held_shards)
        return env

    # -------------------------------------------------------------- plumbing

    def start(self) -> None:
        env = self.env(self.config)
        if self.args.profile:
            env[PROFILE_ENV] = str(Path(self.args.profile).with_suffix(f".{self.n}.prof"))
        coordinator = Coordinator(self.config, env, secret.http_token(self.secret))
        self.procs.append(coordinator.proc)
        self.coordinator = coordinator
        self.config = self.config.model_copy(update={"coordinator": coordinator.address})
        count = self.args.helpers or max(1, min(os.cpu_count() or 1, math.ceil(self.n / NODES_PER_HELPER)))
        helper_env = self.env(self.config)
        for _ in range(count):
            helper = Helper(helper_env)
            self.procs.append(helper.proc)
            self.helpers.append(helper)
        self.result["helpers"] = count
        self.result["pids"] = [p.pid for p in self.procs]

    def stop(self) -> None:
        if self.coordinator is not None and self.coordinator.proc.poll() is None:
            try:
                self.coordinator.post("shutdown", {})
                self.coordinator.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired, HarnessError) as exc:
                log(f"N={self.n}: the coordinator did not shut down cleanly ({exc}); stopping it")
        for helper in self.helpers:
            if helper.proc.poll() is None:
                with contextlib.suppress(OSError, HarnessError, ValueError):
                    helper.ask({"cmd": "stop"}, timeout=10)
        stop_by_pid(self.procs)
        self.result["load_average_after"] = list(os.getloadavg())

    @property
    def coord(self) -> Coordinator:
        assert self.coordinator is not None
        return self.coordinator

    def counters(self) -> dict[str, Any]:
        """The helpers' counters, summed (ids merged, errors joined)."""
        total: dict[str, Any] = {"msgs_in": {}, "ids": {}, "errors": [], "cpu": 0.0}
        for helper in self.helpers:
            part = helper.ask({"cmd": "counters"})
            for key, value in part.items():
                if key == "msgs_in":
                    for kind, count in value.items():
                        total["msgs_in"][kind] = total["msgs_in"].get(kind, 0) + count
                elif key == "ids":
                    total["ids"].update(value)
                elif key == "errors":
                    total["errors"].extend(value)
                elif key.startswith("last_"):
                    total[key] = max(total.get(key, 0.0), value)
                else:
                    total[key] = total.get(key, 0) + value
        return total

    def wait(self, what: str, done: Callable[[], bool], timeout: float | None = None) -> float:
        """Poll ``done`` until it holds; the time it first held."""
        deadline = time.monotonic() + (timeout or self.args.phase_timeout)
        # a /status read costs the coordinator a JSON dump of every member: poll less as N grows
        pause = max(POLL_SECONDS, self.n / 2000)
        while not done():
            if time.monotonic() > deadline:
                raise HarnessError(f"N={self.n}: timed out waiting for {what}")
            time.sleep(pause)
        return time.monotonic()

    def reached(self, node: int, cond: str, since: float) -> dict[str, Any]:
        total = reached = 0
        first, last = float("inf"), 0.0
        for helper in self.helpers:
            part = helper.ask({"cmd": "reached", "node": node, "cond": cond, "since": since})
            total += part["total"]
            reached += part["reached"]
            last = max(last, part["last"])
            if part["reached"]:
                first = min(first, part["first"])
        return {"total": total, "reached": reached, "first": first, "last": last}

    def _helper_for_new(self) -> Helper:
        return self.helpers[self._next_server % len(self.helpers)]

    def _add_servers(self, count: int) -> tuple[float, list[str]]:
        names = [f"server-{self._next_server + i}" for i in range(count)]
        self._next_server += count
        sent = []
        for i, name in enumerate(names):
            helper = self.helpers[(self._next_server + i) % len(self.helpers)]
            sent.append(helper.ask({"cmd": "add", "nodes": [{"name": name, "role": "server"}]})["sent_at"])
        return min(sent), names

    def _scale_servers(self, count: int) -> None:
        """POST /scale and wait until the coordinator applied it: a REGISTER that overtakes
        the command (its HTTP thread queues it) would be refused as one server too many."""
        self.coord.post("scale", {"servers": count})
        self.wait(
            f"the coordinator to want {count} servers",
            lambda: self.coord.status()["servers"]["desired"] == count,
        )

    def _node_id(self, name: str) -> int:
        found: dict[str, int] = {}

        def known() -> bool:
            counters = self.counters()
            refused = [e for e in counters["errors"] if e.startswith(f"{name} refused")]
            if refused:
                raise HarnessError(f"N={self.n}: {refused[0]}")
            found.update(counters["ids"])
            return bool(found.get(name))

        self.wait(f"{name} to get its id", known)
        return found[name]

    def _settled(self, extra: Callable[[dict[str, Any]], bool] | None = None) -> Callable[[], bool]:
        def check() -> bool:
            status = self.coord.status()
            idle = (
                status["migrationsInFlight"] == 0
                and status["migrationsQueued"] == 0
                and status["recoveriesInFlight"] == 0
            )
            return idle and (extra is None or extra(status))

        return check

    def _event(
        self, node: int, cond: str, since: float, before: dict[str, Any], cpu0: float
    ) -> dict[str, Any]:
        """Wait until every live endpoint saw ``node`` ``cond``; the figures of the fan-out."""
        seen: dict[str, Any] = {}

        def everyone() -> bool:
            seen.update(self.reached(node, cond, since))
            return bool(seen["total"]) and seen["reached"] == seen["total"]

        self.wait(f"every endpoint to see node {node} {cond}", everyone)
        after = self.counters()
        return {
            "reach_s": round(seen["last"] - since, 4),
            # the first endpoint's arrival: what the coordinator took to decide (a loss: to detect)
            "first_s": round(seen["first"] - since, 4),
            "coordinator_rss_mb": self.coord.rss_mb(),
            "endpoints": seen["total"],
            "bytes_to_nodes": after["bytes_in"] - before["bytes_in"],
            "bytes_from_coordinator": after["bytes_from_coordinator"] - before["bytes_from_coordinator"],
            "memberships_received": memberships(after) - memberships(before),
            "deltas_received": deltas(after) - deltas(before),
            "coordinator_cpu_s_to_reach": round(self.coord.cpu() - cpu0, 3),
        }

    def _settle_figures(
        self, since: float, before: dict[str, Any], cpu0: float, status0: dict[str, Any], extra: Any = None
    ) -> dict[str, Any]:
        settled = self.wait("the job to settle", self._settled(extra))
        after = self.counters()
        status = self.coord.status()
        return {
            "settle_s": round(settled - since, 3),
            "settle_bytes_to_nodes": after["bytes_in"] - before["bytes_in"],
            "settle_memberships_received": memberships(after) - memberships(before),
            "settle_deltas_received": deltas(after) - deltas(before),
            "settle_coordinator_cpu_s": round(self.coord.cpu() - cpu0, 3),
            "settle_coordinator_rss_mb": self.coord.rss_mb(),
            "migrations": status["migrationsCompleted"] - status0["migrationsCompleted"],
            "membership_versions": status["membershipVersion"] - status0["membershipVersion"],
        }

    # -------------------------------------------------------------- the phases

    def registration(self) -> None:
        cpu0 = self.coord.cpu()
        plan: list[list[dict[str, Any]]] = [[] for _ in self.helpers]
        specs: list[dict[str, Any]] = [{"name": f"server-{i}", "role": "server"} for i in range(self.servers)]
        specs += [{"name": f"worker-{i}", "role": "worker", "rank": i} for i in range(self.workers)]
        for i, spec in enumerate(specs):
            plan[i % len(self.helpers)].append(spec)
        sent = min(
            helper.ask({"cmd": "add", "nodes": part})["sent_at"]
            for helper, part in zip(self.helpers, plan, strict=True)
        )
        endpoints = self.result["endpoints"]
        state: dict[str, Any] = {}

        def running() -> bool:
            state.update(self.counters())
            return bool(state["running"] == endpoints)

        self.wait(f"{endpoints} endpoints to see the job running", running)
        self.result["registration"] = {
            "all_welcomed_s": round(state["last_welcome"] - sent, 3),
            "all_running_s": round(state["last_running"] - sent, 3),
            "coordinator_cpu_s": round(self.coord.cpu() - cpu0, 3),
            "bytes_to_nodes": state["bytes_in"],
            "memberships_received": memberships(state),
            "deltas_received": deltas(state),
        }
        log(f"N={self.n}: running after {state['last_running'] - sent:.2f} s")

    def steady(self) -> None:
        time.sleep(self.args.warmup)
        helpers0 = self.counters()["cpu"]
        cpu0, t0 = self.coord.cpu(), time.monotonic()
        time.sleep(self.args.steady_seconds)
        cpu1, t1 = self.coord.cpu(), time.monotonic()
        helpers1 = self.counters()["cpu"]
        status = self.coord.status()
        per_s = (cpu1 - cpu0) / (t1 - t0)
        rate = self.n * 1000 / self.args.heartbeat_ms
        self.result["steady"] = {
            "window_s": round(t1 - t0, 2),
            "coordinator_cpu_per_s": round(per_s, 4),
            "heartbeats_per_s": rate,
            "coordinator_cpu_us_per_heartbeat": round(per_s / rate * 1e6, 1),
            "helpers_cpu_per_s": round((helpers1 - helpers0) / (t1 - t0), 3),
            "lost_by_then": status["lost"],
            "coordinator_rss_mb": self.coord.rss_mb(),
        }
        log(f"N={self.n}: steady heartbeats cost the coordinator {per_s:.3f} CPU s/s")

    def join(self) -> None:
        before, status0, cpu0 = self.counters(), self.coord.status(), self.coord.cpu()
        self._scale_servers(status0["servers"]["ready"] + 1)
        sent, (name,) = self._add_servers(1)
        node = self._node_id(name)
        figures = self._event(node, "ready", sent, before, cpu0)
        self.result["join"] = figures  # kept if what follows times out
        figures.update(
            self._settle_figures(sent, before, cpu0, status0, lambda s: str(node) in s["shardsPerServer"])
        )
        self.result["join"] = figures
        log(f"N={self.n}: join reached every endpoint in {figures['reach_s']:.3f} s")

    def leave(self) -> None:
        name = "server-1" if self.servers > 1 else "server-0"
        node = self._node_id(name)
        before, status0, cpu0 = self.counters(), self.coord.status(), self.coord.cpu()
        since = time.monotonic()
        self.coord.post("drain", {"node": name})
        figures = self._event(node, "absent", since, before, cpu0)
        self.result["leave"] = figures  # kept if what follows times out
        figures.update(self._settle_figures(since, before, cpu0, status0))
        self.result["leave"] = figures
        log(f"N={self.n}: graceful leave reached every endpoint in {figures['reach_s']:.3f} s")

    def loss(self) -> None:
        name = "server-2" if self.servers > 2 else "server-0"
        before, status0, cpu0 = self.counters(), self.coord.status(), self.coord.cpu()
        owner = next(h for h in self.helpers if name in h.ask({"cmd": "counters"})["ids"])
        killed = owner.ask({"cmd": "kill", "name": name})
        since, node = float(killed["at"]), int(killed["node"])
        figures = self._event(node, "lost", since, before, cpu0)
        self.result["loss"] = figures  # kept if what follows times out
        recovered = self.wait(
            "the lost server's shards to be rebuilt", lambda: self.coord.status()["recoveriesInFlight"] == 0
        )
        figures["recovered_s"] = round(recovered - since, 3)
        figures.update(self._check_asked(since))
        time.sleep(2.5)  # the coordinator rebalances 2 s after a recovery (REBALANCE_AFTER_RECOVERY)
        figures.update(self._settle_figures(since, before, cpu0, status0))
        self.result["loss"] = figures
        log(f"N={self.n}: loss reached every endpoint in {figures['reach_s']:.3f} s")

    def _check_asked(self, since: float) -> dict[str, Any]:
        """Which nodes the loss's recoveries asked (OWNERS_QUERY), against the workers whose
        programs said they may hold keys of the recovered shards: every such worker must be
        asked (else the rebuild could give a key a second owner), and with targeted recovery
        no other worker; servers asked are the shards' former homes."""
        held: dict[int, set[int]] = {}
        asked: dict[int, set[int]] = {}
        roles: dict[int, str] = {}
        recoveries: dict[int, set[int]] = {}
        times: dict[int, list[float]] = {}
        noted = 0
        for helper in self.helpers:
            part = helper.ask({"cmd": "holders"})
            held.update({int(n): set(s) for n, s in part.get("held", {}).items()})
            roles.update({int(n): r for n, r in part.get("roles", {}).items()})
            noted += int(part.get("noted", 0))
            for rid, shards in part.get("recoveries", {}).items():
                recoveries[int(rid)] = set(shards)
            times.update({int(rid): t for rid, t in part.get("rebuild_times", {}).items()})
            for n, rids in part.get("asked", {}).items():
                for rid in rids:
                    asked.setdefault(int(rid), set()).add(int(n))
        fresh = [rid for rid in recoveries if rid not in self._recoveries_checked]
        self._recoveries_checked.update(fresh)
        shards = set().union(*(recoveries[r] for r in fresh)) if fresh else set()
        who = set().union(*(asked.get(r, set()) for r in fresh)) if fresh else set()
        holders = {n for n, s in held.items() if s & shards and roles.get(n) == "worker"}
        workers_asked = {n for n in who if roles.get(n) == "worker"}
        missed = sorted(holders - workers_asked)
        if missed:
            self.result["errors"].append(f"holders not asked by the recovery: {missed[:20]}")
        return {
            "recoveries": len(fresh),
            "recovered_shards": len(shards),
            "holdings_noted": noted,
            "nodes_asked": len(who),
            "workers_asked": len(workers_asked),
            "servers_asked": len(who) - len(workers_asked),
            "holders_of_those_shards": len(holders),
            "holders_missed": len(missed),
            "asked_holding_none": len(workers_asked - holders),
            # at the simulated homes (no /status polling): RECOVER to RECOVERED, and kill to the last
            "rebuild_s_max": round(max((times[r][1] - times[r][0] for r in fresh), default=0.0), 4),
            "rebuilt_at_homes_s": round(max((times[r][1] for r in fresh), default=since) - since, 4),
        }

    def scale_out(self) -> None:
        before, status0, cpu0 = self.counters(), self.coord.status(), self.coord.cpu()
        present = status0["servers"]["ready"]
        added = max(1, round(present * 0.1))
        self._scale_servers(present + added)
        sent, names = self._add_servers(added)
        ids = [self._node_id(name) for name in names]

        def landed(status: dict[str, Any]) -> bool:
            homes = status["shardsPerServer"]
            ready = status["servers"]["ready"] == present + added
            return ready and all(str(node) in homes for node in ids)

        figures = {"servers_before": present, "added": added}
        figures.update(self._settle_figures(sent, before, cpu0, status0, landed))
        self.result["scale_out"] = figures
        log(f"N={self.n}: +{added} servers rebalanced in {figures['settle_s']:.2f} s")

    def run(self) -> dict[str, Any]:
        log(f"N={self.n}: {self.servers} servers, {self.workers} workers (+ their training processes)")
        try:
            self.start()
            phases = {
                "steady": self.steady,
                "join": self.join,
                "leave": self.leave,
                "loss": self.loss,
                "scale-out": self.scale_out,
            }
            self.registration()
            for name, phase in phases.items():
                if name in self.args.phases:
                    phase()
            errors = self.counters()
            self.result["helper_errors"] = errors["errors"]
            self.result["sockets_in_helpers"] = errors["sockets"]
        except (HarnessError, OSError) as exc:
            log(f"N={self.n}: FAILED: {exc}")
            self.result["errors"].append(str(exc))
        finally:
            self.stop()
            code = self.coordinator.proc.returncode if self.coordinator is not None else None
            self.result["coordinator_exit_code"] = code
        return self.result


# ---------------------------------------------------------------------- entry points


def serve_coordinator() -> int:
    """The coordinator process: ``dynaps coordinator --announce`` (optionally under cProfile).
    It sizes its own socket and file limits from the job (``dynaps.wire.limits``)."""
    from dynaps.cli import main

    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        return main(["coordinator", "--announce"])
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(main, ["coordinator", "--announce"])
    finally:
        profiler.dump_stats(profile)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Control-plane scale harness: the real coordinator against N simulated nodes "
        "(registration, steady heartbeats, join, graceful leave, lost server, +10 %% servers).",
    )
    parser.add_argument("--nodes", default="10,100", help="comma-separated sizes N (default 10,100)")
    parser.add_argument("--heartbeat-ms", type=int, default=200, help="heartbeat interval (default 200)")
    parser.add_argument(
        "--out", default="", help="the JSON result (default bench/results/scale-<sizes>.json)"
    )
    parser.add_argument("--shards", type=int, default=1024, help="shards of the job (default 1024)")
    parser.add_argument(
        "--max-migrations",
        type=int,
        default=RebalancePolicy().max_concurrent_migrations,
        help="rebalancePolicy.maxConcurrentMigrations (default: the manifest's, 4)",
    )
    parser.add_argument(
        "--held-shards",
        type=int,
        default=2,
        help="shards each simulated worker's program says it localizes keys of (HOLDING; default 2)",
    )
    parser.add_argument(
        "--helpers", type=int, default=0, help="simulation processes (default: by N and cores)"
    )
    parser.add_argument("--steady-seconds", type=float, default=10.0, help="steady heartbeat window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds between RUNNING and the window")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="seconds a phase may take")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases after registration (default all: {','.join(PHASES)}); "
        "e.g. 'steady' to measure heartbeats alone",
    )
    parser.add_argument("--profile", default="", help="run the coordinator under cProfile: PATH.N.prof")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument(
        "--plot-from",
        nargs="+",
        metavar="JSON",
        default=[],
        help="run nothing: plot the sizes of these result files together, to --out (a .png)",
    )
    parser.add_argument("--serve-coordinator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sim-helper", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plot_together(sources: list[Path], out: Path) -> int:
    """One plot of the sizes of several runs (each size run on its own, as at N = 1,000)."""
    results: list[dict[str, Any]] = []
    for source in sources:
        try:
            results.extend(json.loads(source.read_text())["results"])
        except (OSError, ValueError, KeyError) as exc:
            print(f"--plot-from: cannot read results from {source}: {exc}", file=sys.stderr)
            return 2
    print(plot(sorted(results, key=lambda r: int(r["nodes"])), out.with_suffix(".png")))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_coordinator:
        return serve_coordinator()
    if args.sim_helper:
        import scale_sim

        return scale_sim.helper_main()
    if args.plot_from:
        return plot_together([Path(p) for p in args.plot_from], Path(args.out or "scale.png"))
    try:
        sizes = [int(s) for s in args.nodes.split(",") if s.strip()]
    except ValueError:
        print(f"--nodes must be comma-separated integers, not {args.nodes!r}", file=sys.stderr)
        return 2
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        print(f"--phases: unknown {', '.join(unknown)} (choose from {', '.join(PHASES)})", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < 2:
        print("--nodes: every size must be at least 2 (one server, one worker)", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every process started
    out = Path(args.out or HERE.parent / "results" / f"scale-{'-'.join(map(str, sizes))}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the finally clauses stop what was started

    signal.signal(signal.SIGTERM, on_sigterm)
    results: list[dict[str, Any]] = []
    document: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "fd_limit": hard,
        "results": results,
    }
    for size in sizes:
        run = Run(size, args)
        started = time.monotonic()
        cpu0 = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        result = run.run()
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["cpu_s_all_processes"] = round(sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - cpu0, 1)
        result["node_side"] = node_side(size, args.shards)
        result["coordinator_us_per_heartbeat_in_process"] = heartbeat_cost(size, args.shards)
        result["coordinator_in_process"] = tick_and_status_cost(size, args.shards)
        results.append(result)
        out.write_text(json.dumps(document, indent=1) + "\n")  # after each size: a crash keeps the rest
    if not args.no_plot:
        document["plot"] = plot(results, out.with_suffix(".png"))
        out.write_text(json.dumps(document, indent=1) + "\n")
    log(f"wrote {out}")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
