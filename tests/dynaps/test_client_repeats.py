"""Repeated keys of a remote pull or push travel once each; the caller still sees (and the
owners still apply) every repeat.  Without processes: the client's requests are recorded
and answered here (tests/dynaps/test_client_requests.py's harness)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from dynaps.client.handles import Handle
from dynaps.client.key_paths import DEDUPLICATE_FROM
from dynaps.contract import NamedTable, UpdaterKind, UpdaterSpec
from dynaps.wire.protocol import Message, MsgType

from .test_client_requests import WORKER, Client

KEYS = 16
DIM = 2


def client_with(owners: npt.NDArray[np.int64], updater: UpdaterSpec | None = None) -> Client:
    spec = NamedTable(name="W", num_keys=KEYS, dim=DIM, updater=updater or UpdaterSpec())
    client = Client(spec)
    client.store.loc[:] = owners
    client.transport.take()
    return client


def owners_of(seed: int) -> npt.NDArray[np.int64]:
    owners = np.random.default_rng(seed).choice([WORKER, 1, 2], KEYS)
    owners[:3] = [WORKER, 1, 2]  # every kind of owner present
    return owners


def repeated_keys(seed: int) -> npt.NDArray[np.int64]:
    return np.random.default_rng([seed, 1]).integers(0, KEYS, 3 * DEDUPLICATE_FROM)


@pytest.mark.parametrize("seed", range(6))
def test_a_pull_asks_for_each_remote_key_once_and_fills_every_repeat(seed: int) -> None:
    owners, keys = owners_of(seed), repeated_keys(seed)
    truth = np.arange(KEYS * DIM, dtype=np.float32).reshape(KEYS, DIM)
    client = client_with(owners)
    client.store.values[:] = truth  # the keys our node owns are read here
    handle = client.table.pull(keys, wait=False)
    assert isinstance(handle, Handle)
    asked: list[int] = []
    for dest, msg in client.transport.take():
        assert msg.type is MsgType.PULL
        assert msg.keys is not None
        assert (owners[msg.keys] == dest).all()
        asked += msg.keys.tolist()
        reply = Message(
            MsgType.PULL_REPLY, sender=dest, req_id=msg.req_id, count=len(msg.keys), positions=msg.positions
        )
        reply.values = truth[msg.keys]
        client.requests._absorb(reply)
    remote = np.unique(keys[owners[keys] != WORKER])
    assert sorted(asked) == remote.tolist()  # each remote key once
    result = handle.result()
    assert result is not None
    np.testing.assert_array_equal(result, truth[keys])  # every position, in the caller's order


@pytest.mark.parametrize("seed", range(6))
def test_a_push_sends_each_remote_key_once_with_its_repeats_summed(seed: int) -> None:
    owners, keys = owners_of(seed), repeated_keys(seed)
    rows = np.random.default_rng([seed, 2]).normal(size=(len(keys), DIM)).astype(np.float32)
    client = client_with(owners)
    client.table.push(keys, rows, wait=False)
    expected = np.zeros((KEYS, DIM))
    np.add.at(expected, keys, rows)
    sent: dict[int, npt.NDArray[np.float32]] = {}
    for dest, msg in client.transport.take():
        assert msg.type is MsgType.PUSH
        assert msg.keys is not None
        assert msg.values is not None
        assert (owners[msg.keys] == dest).all()
        for key, row in zip(msg.keys.tolist(), msg.values, strict=True):
            assert key not in sent
            sent[key] = row
    remote = np.unique(keys[owners[keys] != WORKER])
    assert sorted(sent) == remote.tolist()
    for key, row in sent.items():
        np.testing.assert_allclose(row, expected[key], rtol=1e-5, atol=1e-5)
    local = np.unique(keys[owners[keys] == WORKER])  # applied here, every repeat added
    np.testing.assert_allclose(client.store.values[local], expected[local], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "updater"),
    [
        ("push", UpdaterSpec(kind=UpdaterKind.CUSTOM, name="momentum")),  # may treat repeats its own way
        ("set", None),  # the last of a key's rows wins on the owner: never summed
    ],
)
def test_pushes_to_custom_updaters_and_sets_keep_their_repeats(
    kind: str, updater: UpdaterSpec | None
) -> None:
    keys = np.tile(np.arange(4, 8), DEDUPLICATE_FROM)  # all homed on server 2, each many times
    client = client_with(np.full(KEYS, 2), updater)
    rows = np.ones((len(keys), DIM), dtype=np.float32)
    (client.table.push if kind == "push" else client.table.set)(keys, rows, wait=False)
    [(dest, msg)] = client.transport.take()
    assert dest == 2
    assert msg.keys is not None
    assert msg.keys.tolist() == keys.tolist()


def test_a_pull_of_distinct_keys_goes_as_it_came() -> None:
    many = 4 * DEDUPLICATE_FROM
    client = Client(NamedTable(name="W", num_keys=many, dim=DIM))
    client.store.loc[:] = 1
    client.transport.take()
    keys = np.random.default_rng(5).permutation(many)
    client.table.pull(keys, wait=False)
    [(_, msg)] = client.transport.take()
    assert msg.keys is not None
    assert msg.keys.tolist() == keys.tolist()  # the caller's order: nothing sorted or reshuffled
