"""``dynaps.LocalCluster``: a whole job on this machine, for tests, notebooks and benchmarks.

It starts the same processes a pod would run (coordinator, servers, worker nodes) on
127.0.0.1, plus one long-lived *runner* per worker (:mod:`dynaps.local.runners`): a training
process attached to its worker node that executes the functions given to
:meth:`LocalCluster.run`, so ``fn`` must be importable (defined at module level).

The cluster changes live, through the same paths the operator uses: :meth:`scale` adds
or drains nodes, :meth:`stop` sends SIGTERM (a graceful drain), :meth:`kill` SIGKILL (a
crash), :meth:`status` reads the coordinator's ``/status``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from dynaps.contract import (
    HEARTBEAT_INTERVAL_MS,
    MAX_NODES,
    Allocation,
    ConsistencyModel,
    Partition,
    TableSpec,
    secret,
    thread_env,
)
from dynaps.errors import ClusterError, ConfigError, DynapsTimeoutError, UsageError
from dynaps.local import runners
from dynaps.local.cluster_config import cluster_config, named_tables
from dynaps.local.launch import Process, start_coordinator, start_node, stop_processes, training_threads


class LocalCluster:
    """A dynaps job on this machine: ``with LocalCluster(servers=2, workers=2, tables=...) as c``."""

    def __init__(
        self,
        servers: int = 1,
        workers: int = 1,
        tables: Mapping[str, TableSpec] | None = None,
        *,
        allocation: Allocation | str = Allocation.DYNAMIC,
        consistency: ConsistencyModel | str = ConsistencyModel.ASYNC,
        staleness: int = 0,
        replication: int = 0,
        flush_interval_ms: int = 100,
        num_shards: int = 1024,
        partition: Partition | str = Partition.RANGE,
        checkpoint_dir: str | None = None,
        checkpoint_interval: int = 0,
        restore_from: str | None = None,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        request_timeout: float = 120.0,
        startup_timeout: float = 120.0,
        log_level: str = "WARNING",
        log_dir: str | None = None,
    ) -> None:
        """``log_dir``: a directory for each process's log (``<name>.log``: ``coordinator``,
        ``server-0``, ``worker-0`` and ``runner-worker-0``...); by default they write to this
        process's stderr."""
        if not tables or not isinstance(tables, Mapping):
            raise ConfigError("LocalCluster needs tables={name: dynaps.TableSpec(num_keys=..., dim=...)}")
        named = named_tables(tables)
        self._own_checkpoints = checkpoint_dir is None
        checkpoints = checkpoint_dir or tempfile.mkdtemp(prefix="dynaps-checkpoints-")
        try:
            self.config = cluster_config(
                named,
                checkpoints,
                servers=servers,
                workers=workers,
                allocation=allocation,
                consistency=consistency,
                staleness=staleness,
                replication=replication,
                flush_interval_ms=flush_interval_ms,
                heartbeat_interval_ms=heartbeat_interval_ms,
                checkpoint_interval=checkpoint_interval,
                restore_from=restore_from,
                num_shards=num_shards,
                partition=partition,
                request_timeout=request_timeout,
            )
        except ConfigError:
            if self._own_checkpoints:
                shutil.rmtree(checkpoints, ignore_errors=True)
            raise
        servers, workers = self.config.servers, self.config.workers
        self.log_level = log_level
        self.log_dir = log_dir
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
        self._secret = secret.new_secret()  # this job's own: signs its messages, proves an attach
        self.startup_timeout = startup_timeout
        self.processes: dict[str, Process] = {}
        self._workers: dict[str, runners.Worker] = {}
        self._next = {"server": servers, "worker": workers}
        self._job: runners.Job | None = None
        self.http_port = 0
        self.closed = False
        try:
            self._start(servers, workers)
        except BaseException:
            self.close()
            raise

    def _env(self) -> dict[str, str]:
        return {"DYNAPS_LOG_LEVEL": self.log_level, secret.HEX_ENV: secret.encode(self._secret)}

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret.http_token(self._secret)}"}

    def _start(self, servers: int, workers: int) -> None:
        address = self._start_coordinator()
        self.config = self.config.model_copy(update={"coordinator": address})
        for i in range(servers):
            self._start_server(f"server-{i}")
        started = [self._start_worker(f"worker-{i}", i) for i in range(workers)]
        runners.await_runners(started, self.startup_timeout, self.processes)

    def _start_coordinator(self) -> str:
        """Start the coordinator (logging to its file, if any); returns its data-plane address."""
        fd = self._log_fd("coordinator")
        try:
            proc, address, self.http_port = start_coordinator(
                self.config, self._env(), self.startup_timeout, fd
            )
        finally:
            if fd is not None:
                os.close(fd)
        self.processes["coordinator"] = proc
        return address

    def _log_fd(self, name: str) -> int | None:
        """A descriptor of ``name``'s log file, appended to (a restarted process continues it),
        for a child to inherit; None: our stderr.  Ours is closed once the child has it."""
        if self.log_dir is None:
            return None
        return os.open(
            os.path.join(self.log_dir, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )

    def _output(self, name: str) -> tuple[int, int] | None:
        fd = self._log_fd(name)
        return None if fd is None else (fd, fd)

    def _start_server(self, name: str) -> None:
        output = self._output(name)
        try:
            self.processes[name] = start_node(
                "server", self.config, name, extra_env=self._env(), output=output
            )
        finally:
            if output is not None:
                os.close(output[0])

    def _start_worker(self, name: str, rank: int | None, workers: int | None = None) -> runners.Worker:
        """``workers``: the job's worker count once this one runs, if not the configuration's."""
        token = secrets.token_hex(8)
        output = self._output(name)
        try:
            node = start_node(
                "worker",
                self.config,
                name,
                attach_token=token,
                rank=rank,
                extra_env=self._env(),
                output=output,
                workers=workers,
            )
        finally:
            if output is not None:
                os.close(output[0])
        self.processes[name] = node
        log = None if self.log_dir is None else os.path.join(self.log_dir, f"runner-{name}.log")
        threads = thread_env(training_threads(self.config, workers), os.environ)
        worker = runners.start_runner(
            name, node, token, self.log_level, secret.encode(self._secret), log, threads
        )
        self._workers[name] = worker
        return worker

    # ------------------------------------------------------------------ running code

    def _live_workers(self) -> list[runners.Worker]:
        return [w for w in self._workers.values() if w.rank >= 0 and w.runner.is_alive()]

    def submit(self, fn: Callable[..., Any], *args: Any) -> runners.Job:
        """Start ``fn(ps, *args)`` in every worker; returns at once."""
        if self.closed:
            raise ClusterError("the cluster is closed")
        if self._job is not None and not self._job.done():
            raise ClusterError("a job is still running on this cluster; call its result() first")
        if not callable(fn):
            raise UsageError(f"LocalCluster.run takes a function fn(ps, *args), got {fn!r}")
        name = getattr(fn, "__qualname__", repr(fn))
        task = runners.pickled_task(fn, args)
        conns = {}
        for worker in self._live_workers():
            worker.conn.send_bytes(task)
            conns[worker.rank] = worker.conn
        self._job = runners.Job(name, conns, self.log_dir)
        return self._job

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> list[Any]:
        """Run ``fn(ps, *args)`` in every worker; returns their results ordered by rank.

        A :class:`UsageError` that ``fn`` raised (first, in any rank) is raised here as one;
        any other failure is a :class:`ClusterError` with every failed rank's traceback.
        """
        return self.submit(fn, *args).result(timeout)

    # ------------------------------------------------------------------ live changes

    def scale(self, servers: int | None = None, workers: int | None = None, timeout: float = 120.0) -> None:
        """Grow or shrink the job live; returns once the new shard map is committed.

        New servers receive shards by migration; surplus nodes drain (their keys move
        away first) and exit.  New workers join with fresh runners (for the next ``run``).
        """
        for name, count in (("servers", servers), ("workers", workers)):
            if count is not None and (type(count) is not int or not 1 <= count <= MAX_NODES):
                raise UsageError(
                    f"scale({name}=...) takes a whole number from 1 to {MAX_NODES}, got {count!r}"
                )
        new_workers = []
        if servers is not None:
            for _ in range(servers - len(self._nodes("server"))):
                self._start_server(f"server-{self._take('server')}")
        if workers is not None:
            for _ in range(workers - len(self._live_workers())):
                new_workers.append(self._start_worker(f"worker-{self._take('worker')}", None, workers))
        self._post("scale", {k: v for k, v in (("servers", servers), ("workers", workers)) if v is not None})
        runners.await_runners(new_workers, self.startup_timeout)
        if workers is not None and self._job is None:
            # surplus workers drain: idle runners are told to end now
            for worker in sorted(self._live_workers(), key=lambda w: w.rank)[workers:]:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        self._await(lambda s: self._settled(s, servers, workers), timeout, "the scaled job to settle")

    def _take(self, role: str) -> int:
        index = self._next[role]
        self._next[role] += 1
        return index

    def _nodes(self, role: str) -> list[str]:
        return [
            name for name, proc in self.processes.items() if name.startswith(role) and proc.poll() is None
        ]

    def _settled(self, status: dict[str, Any], servers: int | None, workers: int | None) -> bool:
        if status["migrationsInFlight"] or status["migrationsQueued"]:
            return False
        members = status["members"]
        if (
            servers is not None
            and sum(1 for m in members if m["role"] == "server" and m["state"] == "ready") != servers
        ):
            return False
        if servers is not None and len(self._nodes("server")) != servers:
            return False
        return (
            workers is None
            or sum(1 for m in members if m["role"] == "worker" and m["state"] == "ready") == workers
        )

    def stop(self, name: str, timeout: float = 120.0) -> None:
        """SIGTERM node ``name`` (e.g. ``"worker-1"``): it drains gracefully, then exits 0."""
        proc = self._process(name)
        worker = self._workers.get(name)
        if worker is not None and (self._job is None or self._job.done()):
            with contextlib.suppress(OSError):
                worker.conn.send(None)  # an idle runner ends with its node
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise DynapsTimeoutError(f"{name} did not drain within {timeout} s") from exc

    def kill(self, name: str) -> None:
        """SIGKILL node ``name`` (and a worker's training process): a crash."""
        proc = self._process(name)
        worker = self._workers.get(name)
        if worker is not None and worker.runner.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.runner.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        if worker is not None:
            worker.runner.join(10)

    def checkpoint(self, timeout: float = 120.0) -> dict[str, Any]:
        """Take a checkpoint now; returns its description (``id``, ``path``, ``keys``)."""
        before = (self.status().get("lastCheckpoint") or {}).get("id", 0)
        self._post("checkpoint", {})
        status = self._await(
            lambda s: (s.get("lastCheckpoint") or {}).get("id", 0) > before, timeout, "the checkpoint"
        )
        last: dict[str, Any] = status["lastCheckpoint"]
        return last

    def restart(self, name: str) -> None:
        """Start node ``name`` (or ``"coordinator"``) again, as Kubernetes recreates a pod.

        A node restarted under its name replaces its predecessor at once (its keys are
        recovered as after a crash); a restarted coordinator rebuilds the running job
        from the nodes' heartbeats.  Kills the old process first if it still runs.
        """
        old = self._process(name)
        if name == "coordinator":
            if old.poll() is None:
                old.kill()
                old.wait()
            if old.stdout is not None:
                old.stdout.close()
            # the same address: the nodes' connections find the new coordinator by themselves
            self._start_coordinator()
            return
        if old.poll() is None:
            self.kill(name)
        if name.startswith("server"):
            self._start_server(name)
            return
        previous = self._workers.get(name)
        worker = self._start_worker(name, previous.rank if previous else None)
        runners.await_runners([worker], self.startup_timeout)

    def _process(self, name: str) -> Process:
        proc = self.processes.get(name)
        if proc is None:
            raise ConfigError(f"no process named {name!r}; this cluster has {sorted(self.processes)}")
        return proc

    # ------------------------------------------------------------------ introspection

    def status(self) -> dict[str, Any]:
        """The coordinator's /status document."""
        url = f"http://127.0.0.1:{self.http_port}/status"
        request = urllib.request.Request(url, headers=self._auth())
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            doc: dict[str, Any] = json.load(response)
        return doc

    def _post(self, action: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/{action}",
            data=json.dumps(body).encode(),
            method="POST",
            headers=self._auth(),
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:  # the coordinator refused it and says why
            raise ConfigError(f"{action} refused: {exc.read().decode(errors='replace').strip()}") from None

    def _await(self, check: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if check(status):
                return status
            if time.monotonic() > deadline:
                raise DynapsTimeoutError(f"timed out after {timeout} s waiting for {what}: {status}")
            time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        """Process ids of every process the cluster started (runners as ``runner-<rank>``)."""
        pids = {name: proc.pid for name, proc in self.processes.items() if proc.poll() is None}
        for worker in self._workers.values():
            if worker.runner.pid is not None and worker.runner.is_alive():
                pids[f"runner-{worker.rank}"] = worker.runner.pid
        return pids

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 15.0) -> None:
        """Stop every process of the cluster and wait for them."""
        if getattr(self, "closed", True):
            return
        self.closed = True
        for worker in self._workers.values():
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers.values():
            # one that never joined waits to attach, not for this pipe, and holds no work
            wait = max(0.0, deadline - time.monotonic()) if worker.rank >= 0 else 0.0
            worker.runner.join(wait)
            if worker.runner.is_alive():
                worker.runner.kill()
                worker.runner.join()
            worker.conn.close()
        coordinator = self.processes.get("coordinator")
        nodes = [p for name, p in self.processes.items() if name != "coordinator"]
        if coordinator is not None:
            stop_processes([coordinator], grace=timeout)
        stop_processes(nodes, grace=max(1.0, deadline - time.monotonic()))
        if getattr(self, "_own_checkpoints", False):
            shutil.rmtree(self.config.fault_tolerance.checkpoint.path, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()
