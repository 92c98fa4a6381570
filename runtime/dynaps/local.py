"""``dynaps.LocalCluster``: a whole job on this machine, for tests, notebooks and benchmarks.

It starts the same processes a pod would run (coordinator, servers, worker nodes) on
127.0.0.1, plus one long-lived *runner* per worker: a training process attached to its
worker node that executes the functions given to :meth:`LocalCluster.run`.  Runners live
as long as the cluster, so consecutive runs reuse warm processes and keep the keys they
localized.  Functions and results travel to runners over local pipes (pickle, never over
the network), so ``fn`` must be importable (defined at module level).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.connection
import secrets
import time
import traceback
import urllib.request
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

from dynaps.contract import (
    Allocation,
    Consistency,
    ConsistencyModel,
    FaultTolerance,
    NamedTable,
    Partition,
    RebalancePolicy,
    RuntimeConfig,
    TableSpec,
)
from dynaps.errors import ClusterError, ConfigError, DynapsTimeoutError
from dynaps.launch import Process, start_coordinator, start_node, stop_processes

_SPAWN = multiprocessing.get_context("spawn")


def _runner_main(token: str, conn: multiprocessing.connection.Connection, log_level: str) -> None:
    """A runner: attach to the worker node, then run functions until told to stop."""
    from dynaps import client
    from dynaps.config import setup_logging

    setup_logging(log_level)
    try:
        ps = client.PS.attach(token)
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"runner could not join the job: {exc}"))
        return
    client._CURRENT = ps  # dynaps.connect() inside fn returns this connection
    conn.send(("ready", ps.rank))
    try:
        while True:
            try:
                item = conn.recv()
            except EOFError:
                break
            if item is None:
                break
            fn, args = item
            try:
                conn.send(("ok", fn(ps, *args)))
            except BaseException as exc:
                conn.send(("error", "".join(traceback.format_exception(exc))))
    finally:
        ps.close()


class Job:
    """A function running in every worker; ``result()`` returns their results by rank."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self._cluster = cluster
        self._name = name
        self._results: dict[int, Any] = {}
        self._errors: dict[int, str] = {}

    def done(self) -> bool:
        self._collect(0.0)
        return len(self._results) + len(self._errors) == len(self._cluster._runners)

    def result(self, timeout: float | None = None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() > deadline:
                raise DynapsTimeoutError(f"{self._name} did not finish within {timeout} s")
            self._collect(0.2)
        self._cluster._job = None
        if self._errors:
            rank, text = min(self._errors.items())
            raise ClusterError(f"{self._name} failed on worker rank {rank}:\n{text}")
        return [self._results[rank] for rank in sorted(self._results)]

    def _collect(self, timeout: float) -> None:
        pending = {
            conn: rank
            for rank, conn in self._cluster._runners.items()
            if rank not in self._results and rank not in self._errors
        }
        if not pending:
            return
        for ready in multiprocessing.connection.wait(list(pending), timeout):
            conn = cast(multiprocessing.connection.Connection, ready)
            rank = pending[conn]
            try:
                status, value = conn.recv()
            except EOFError:
                self._errors[rank] = "the worker process died"
                continue
            if status == "ok":
                self._results[rank] = value
            else:
                self._errors[rank] = value


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
        num_shards: int = 1024,
        partition: Partition | str = Partition.RANGE,
        request_timeout: float = 120.0,
        startup_timeout: float = 120.0,
        log_level: str = "WARNING",
    ) -> None:
        if not tables:
            raise ConfigError("LocalCluster needs tables={name: dynaps.TableSpec(num_keys=..., dim=...)}")
        named = [NamedTable(name=name, **spec.model_dump()) for name, spec in tables.items()]
        self.config = RuntimeConfig(
            job="local",
            tables=named,
            servers=servers,
            workers=workers,
            allocation=Allocation(allocation),
            consistency=Consistency(model=ConsistencyModel(consistency), staleness=staleness),
            fault_tolerance=FaultTolerance(replication=replication),
            rebalance_policy=RebalancePolicy(num_shards=num_shards, partition=Partition(partition)),
            coordinator="127.0.0.1:0",
            request_timeout_seconds=request_timeout,
        )
        self.log_level = log_level
        self.processes: dict[str, Process] = {}
        self._runner_procs: list[Any] = []
        self._runners: dict[int, multiprocessing.connection.Connection] = {}
        self._job: Job | None = None
        self.http_port = 0
        self.closed = False
        try:
            self._start(startup_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout: float) -> None:
        env = {"DYNAPS_LOG_LEVEL": self.log_level}
        coordinator, address, self.http_port = start_coordinator(self.config, env, timeout)
        self.processes["coordinator"] = coordinator
        config = self.config.model_copy(update={"coordinator": address})
        for i in range(config.servers):
            self.processes[f"server-{i}"] = start_node("server", config, f"server-{i}", extra_env=env)
        tokens = []
        for i in range(config.workers):
            token = secrets.token_hex(8)
            tokens.append(token)
            self.processes[f"worker-{i}"] = start_node(
                "worker", config, f"worker-{i}", attach_token=token, rank=i, extra_env=env
            )
        pending = []
        for token in tokens:
            parent, child = _SPAWN.Pipe()
            proc = _SPAWN.Process(target=_runner_main, args=(token, child, self.log_level), daemon=True)
            proc.start()
            child.close()
            self._runner_procs.append(proc)
            pending.append(parent)
        deadline = time.monotonic() + timeout
        for conn in pending:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise ClusterError(f"the workers did not join within {timeout} s")
            status, value = conn.recv()
            if status != "ready":
                raise ClusterError(str(value))
            self._runners[int(value)] = conn

    # ------------------------------------------------------------------ running code

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Start ``fn(ps, *args)`` in every worker; returns at once."""
        if self.closed:
            raise ClusterError("the cluster is closed")
        if self._job is not None and not self._job.done():
            raise ClusterError("a job is still running on this cluster; call its result() first")
        name = getattr(fn, "__qualname__", repr(fn))
        for conn in self._runners.values():
            conn.send((fn, args))
        self._job = Job(self, name)
        return self._job

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> list[Any]:
        """Run ``fn(ps, *args)`` in every worker; returns their results ordered by rank."""
        return self.submit(fn, *args).result(timeout)

    # ------------------------------------------------------------------ introspection

    def status(self) -> dict[str, Any]:
        """The coordinator's /status document."""
        url = f"http://127.0.0.1:{self.http_port}/status"
        with urllib.request.urlopen(url, timeout=10) as response:
            doc: dict[str, Any] = json.load(response)
        return doc

    def pids(self) -> dict[str, int]:
        """Process ids of every process the cluster started."""
        pids = {name: proc.pid for name, proc in self.processes.items()}
        for i, proc in enumerate(self._runner_procs):
            if proc.pid is not None:
                pids[f"runner-{i}"] = proc.pid
        return pids

    # ------------------------------------------------------------------ shutdown

    def close(self, timeout: float = 15.0) -> None:
        """Stop every process of the cluster and wait for them."""
        if self.closed:
            return
        self.closed = True
        for conn in self._runners.values():
            with contextlib.suppress(OSError):
                conn.send(None)
        deadline = time.monotonic() + timeout
        for proc in self._runner_procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._runners.values():
            conn.close()
        coordinator = self.processes.get("coordinator")
        nodes = [p for name, p in self.processes.items() if name != "coordinator"]
        if coordinator is not None:
            stop_processes([coordinator], grace=timeout)
        stop_processes(nodes, grace=max(1.0, deadline - time.monotonic()))

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()
