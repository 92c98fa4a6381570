"""How long a program polls for an answer before it blocks (dynaps.wire.spin): its budget, or
for a lone localize as long as the table's localizes usually took, up to ten budgets."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dynaps.client import requests as requests_module
from dynaps.client.handles import Handle
from dynaps.wire import messages
from dynaps.wire.codec import encode
from dynaps.wire.protocol import MsgType, client_of
from dynaps.wire.spin import HEADROOM, LONG_SPIN_FACTOR, spin_for
from tests.dynaps.test_client_requests import WORKER, AnsweringRecorder, Client

BUDGET = 10e-3  # large, so that the test's own pauses never decide an assertion
MS = 1_000_000  # ns


def test_the_spin_is_the_budget_or_the_expected_wait_within_ten_budgets() -> None:
    assert spin_for(-1.0, BUDGET) == BUDGET  # nothing expected (or already late)
    assert spin_for(BUDGET / 2, BUDGET) == BUDGET  # sooner than the budget
    assert spin_for(3 * BUDGET, BUDGET) == 3 * BUDGET
    assert spin_for(LONG_SPIN_FACTOR * BUDGET, BUDGET) == LONG_SPIN_FACTOR * BUDGET
    # an answer due later than that is not worth polling for beyond the budget
    assert spin_for(LONG_SPIN_FACTOR * BUDGET * 1.01, BUDGET) == BUDGET
    assert spin_for(1.0, 0.0) == 0.0  # no budget: never spin


class SpinRecorder(AnsweringRecorder):
    """Answers a pull, or else the oldest localize handle, at each receive; notes the spin
    each receive was asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.spins: list[float] = []
        self.localizes: list[Handle] = []

    def recv(self, timeout: float | None = None, spin: float = 0.0) -> list[Any] | None:
        self.spins.append(spin)
        pulled = super().recv(timeout, spin)
        if pulled is not None or not self.localizes:
            return pulled
        handle = self.localizes.pop(0)
        return encode(messages.localized(2, client_of(WORKER), handle.req_id, 0, handle.remaining))


def client_with_budget(budget: float) -> tuple[Client, SpinRecorder]:
    client = Client(transport=SpinRecorder)
    client.store.loc[:] = 2  # every key remote
    client.requests._spin = budget
    transport = client.transport
    assert isinstance(transport, SpinRecorder)
    return client, transport


def localize_that_took(client: Client, transport: SpinRecorder, took_ns: int) -> float:
    """A lone localize, sent ``took_ns`` ago as far as its handle knows; the spin its wait
    asked for first."""
    keys = np.array([5], dtype=np.int64)
    handle = client.requests.new_handle(MsgType.LOCALIZE, 0, "W", keys, None, 1)
    handle.started -= took_ns
    transport.localizes.append(handle)
    transport.spins.clear()
    handle.result()
    return transport.spins[0]


def pull_that_took(client: Client, transport: SpinRecorder, took_ns: int) -> float:
    handle = client.table.pull([5], wait=False)
    assert isinstance(handle, Handle)
    handle.started -= took_ns
    transport.spins.clear()
    handle.result()
    return transport.spins[0]


def test_a_lone_localize_spins_as_long_as_the_tables_localizes_usually_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the requests' clock stands still: what a localize took is what the test says, however
    # long the machine pauses between two lines (an overloaded run took 10 ms and more)
    frozen = SimpleNamespace(perf_counter_ns=lambda: 10**12, monotonic=time.monotonic)
    monkeypatch.setattr(requests_module, "time", frozen)
    client, transport = client_with_budget(BUDGET)
    assert localize_that_took(client, transport, 30 * MS) == BUDGET  # nothing learnt yet
    # the next one expects 30 ms with headroom, from when it was sent
    spin = localize_that_took(client, transport, 0)
    assert spin == pytest.approx(HEADROOM * 30e-3)
    # each lone wait moves the figure a quarter of the way to what it took (0 here)
    assert localize_that_took(client, transport, 0) == pytest.approx(HEADROOM * 22.5e-3)
    assert BUDGET < HEADROOM * 22.5e-3 < spin


def test_a_pull_spins_the_budget_however_long_pulls_take() -> None:
    """One hop: a pull later than the budget means a busy machine, where spinning costs."""
    client, transport = client_with_budget(BUDGET)
    assert pull_that_took(client, transport, 30 * MS) == BUDGET
    assert pull_that_took(client, transport, 0) == BUDGET


def test_a_localize_that_usually_takes_longer_than_ten_budgets_spins_the_budget() -> None:
    client, transport = client_with_budget(BUDGET)
    localize_that_took(client, transport, 500 * MS)
    assert localize_that_took(client, transport, 0) == BUDGET


def test_with_other_requests_in_flight_the_wait_does_not_spin() -> None:
    client, transport = client_with_budget(BUDGET)
    first = client.table.pull([5], wait=False)
    client.table.pull([6], wait=False)
    assert isinstance(first, Handle)
    first.result()
    assert transport.spins[0] == 0.0  # the nodes need the CPU to answer a window


def test_without_a_budget_nothing_spins() -> None:
    client, transport = client_with_budget(0.0)
    localize_that_took(client, transport, 30 * MS)
    assert localize_that_took(client, transport, 0) == 0.0
