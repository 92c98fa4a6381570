"""A training process whose node was declared lost, or stopped running, applies no more
local updates (issue 13's fencing, audit F3), without processes.

Its node writes back what the program updates in place (replication's write-back), and only
while the node's loop runs; the homes take those keys back with the last write-back once the
coordinator declares the node lost.  So a program that went on updating them would have
every update acknowledged and then lost.  Two things stop it: a membership (or the
coordinator's REFUSED) that names its node as lost, after which every call raises
ClusterError; and the node's stamp in the control block, which the node renews on every
turn of its loop: while it is older than a bound, local updates wait for the node, and fail
once the node is known lost or its process is gone.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from dynaps.client.stages import StageFollower
from dynaps.contract import FaultTolerance, StageSpec
from dynaps.errors import ClusterError, Drained, DynapsTimeoutError
from dynaps.store.control_block import CONTROL_BYTES, ControlBlock
from dynaps.wire.protocol import TableLayout
from tests.dynaps.test_client_requests import WORKER, Client, Recorder, membership

WRITE_BACK = FaultTolerance(replication=1, flush_interval_ms=100)
ROW = np.ones(1, dtype=np.float32)
STALE = 10.0  # seconds since the node's loop last ran: far past any bound


def control_block(stamp: float, pid: int) -> npt.NDArray[np.uint8]:
    """A worker node's control block: running, its loop's last turn, its process id."""
    block = np.zeros(CONTROL_BYTES, dtype=np.uint8)
    views = ControlBlock(block)
    views.beat(stamp)
    views.set_pid(pid)
    return block


def set_stamp(block: npt.NDArray[np.uint8], stamp: float) -> None:
    ControlBlock(block).beat(stamp)


class Waiting(Recorder):
    """A transport whose ``recv`` runs ``on_recv`` (the world going on while the program waits)."""

    def __init__(self, layouts: list[TableLayout] | None = None) -> None:
        super().__init__(layouts)
        self.on_recv: Callable[[int], None] = lambda calls: None
        self.calls: list[tuple[float | None, float]] = []

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        self.calls.append((timeout, spin))
        self.on_recv(len(self.calls))
        return None


def waiting_client(block: npt.NDArray[np.uint8], tolerance: FaultTolerance = WRITE_BACK) -> Client:
    client = Client(tolerance=tolerance, transport=Waiting, control_block=block)
    client.store.loc[:] = WORKER  # every key is held here: every access is local
    return client


def recv_calls(client: Client) -> list[tuple[float | None, float]]:
    transport = client.transport
    assert isinstance(transport, Waiting)
    return transport.calls


def on_recv(client: Client, hook: Callable[[int], None]) -> None:
    transport = client.transport
    assert isinstance(transport, Waiting)
    transport.on_recv = hook


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_membership_that_lists_our_node_as_lost_stops_every_local_call() -> None:
    client = Client()
    client.store.loc[:] = WORKER
    client.table.push_one(5, ROW)
    client.membership.apply(membership(2, [1, 2], lost=(WORKER,)))
    calls: list[Callable[[], object]] = [
        lambda: client.table.push_one(5, ROW),
        lambda: client.table.pull_one(5),
        lambda: client.table.push([5, 6], np.ones((2, 1))),
        lambda: client.table.pull([5]),
        lambda: client.table.set([5], np.zeros((1, 1))),
    ]
    for call in calls:
        with pytest.raises(ClusterError, match="declared lost") as raised:
            call()
        assert not isinstance(raised.value, Drained), "a lost node is not a drain"
    assert client.store.values[5].tolist() == [1.0], "nothing applied after the loss"


def test_local_writes_wait_while_the_node_has_not_run_and_go_on_once_it_runs() -> None:
    block = control_block(time.monotonic() - STALE, os.getpid())
    client = waiting_client(block)
    on_recv(client, lambda calls: set_stamp(block, time.monotonic()) if calls == 3 else None)
    client.table.push_one(5, ROW)
    assert client.store.values[5].tolist() == [1.0]
    calls = recv_calls(client)
    assert len(calls) == 3, "applied before the node ran again"
    assert all(not spin and timeout is not None and timeout <= 0.1 for timeout, spin in calls), (
        "the wait must leave the CPU to the node"
    )
    client.table.push_one(5, ROW)  # fresh again: no wait
    assert len(recv_calls(client)) == 3
    assert client.store.values[5].tolist() == [2.0]


def test_a_node_declared_lost_while_the_program_waits_fails_the_update() -> None:
    block = control_block(time.monotonic() - STALE, os.getpid())
    client = waiting_client(block)
    on_recv(client, lambda calls: client.membership.apply(membership(2, [1, 2], lost=(WORKER,))))
    with pytest.raises(ClusterError, match="declared lost"):
        client.table.push([5], np.ones((1, 1)))
    assert client.store.values[5].tolist() == [0.0]


def test_a_node_process_that_is_gone_fails_the_update() -> None:
    client = waiting_client(control_block(time.monotonic() - STALE, dead_pid()))
    with pytest.raises(ClusterError, match="node process"):
        client.table.push_one(5, ROW)
    assert client.store.values[5].tolist() == [0.0]


def test_a_node_that_stays_stopped_times_the_update_out() -> None:
    client = waiting_client(control_block(time.monotonic() - STALE, os.getpid()))
    client.requests.config = client.requests.config.model_copy(update={"request_timeout_seconds": 0.3})
    started = time.monotonic()
    with pytest.raises(DynapsTimeoutError, match="has not run"):
        client.table.push_one(5, ROW)
    assert 0.3 <= time.monotonic() - started < 5.0
    assert client.store.values[5].tolist() == [0.0]


def test_without_write_back_a_stopped_node_does_not_hold_local_updates() -> None:
    """Nothing writes local updates back then (no replication), or every one is written
    through before it is acknowledged: the node's stamp bounds nothing."""
    for tolerance in (FaultTolerance(), FaultTolerance(replication=1, flush_interval_ms=0)):
        block = control_block(time.monotonic() - STALE, os.getpid())
        client = waiting_client(block, tolerance)
        client.table.push([5], np.ones((1, 1)), wait=False)
        assert client.store.values[5].tolist() == [1.0]
        assert recv_calls(client) == []


def test_a_program_following_stages_stops_with_an_error_not_as_if_drained() -> None:
    """A drained worker's stage loop ends quietly (it is told to leave); a lost node's must
    not look like that: its program raises."""
    client = Client()
    stages = StageFollower(client.requests, [StageSpec(name="one", epochs=3, workers=1)])
    client.membership.apply(membership(2, [1, 2], lost=(WORKER,)))
    with pytest.raises(ClusterError, match="declared lost"):
        next(stages.units())
