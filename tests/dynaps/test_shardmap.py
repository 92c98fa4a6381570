"""Partitioning, the shard map, and grouping requests by destination."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaps.contract import Partition
from dynaps.errors import ProtocolError
from dynaps.store.shardmap import NO_BACKUP, ShardMap, balanced_homes, next_servers, shard_key_range, shard_of
from dynaps.wire import shard_rows
from dynaps.wire.routing import group_by

sizes = st.tuples(st.integers(1, 5000), st.integers(1, 300))


@given(sizes, st.sampled_from(list(Partition)))
def test_every_key_has_a_shard_in_range(size: tuple[int, int], partition: Partition) -> None:
    num_keys, num_shards = size
    shards = shard_of(np.arange(num_keys, dtype=np.int64), num_keys, num_shards, partition)
    assert shards.min() >= 0
    assert shards.max() < num_shards


@given(sizes)
def test_range_shards_are_contiguous_and_match_their_key_range(size: tuple[int, int]) -> None:
    num_keys, num_shards = size
    shards = shard_of(np.arange(num_keys, dtype=np.int64), num_keys, num_shards, Partition.RANGE)
    assert (np.diff(shards) >= 0).all()
    for shard in np.unique(shards):
        first, end = shard_key_range(int(shard), num_keys, num_shards)
        np.testing.assert_array_equal(np.flatnonzero(shards == shard), np.arange(first, end))


@given(st.integers(1, 2000), st.lists(st.integers(1, 100), min_size=1, max_size=20, unique=True))
def test_balanced_homes_differ_by_at_most_one_shard(num_shards: int, servers: list[int]) -> None:
    homes = balanced_homes(num_shards, servers)
    counts = [int((homes == s).sum()) for s in servers]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == num_shards


def test_hash_partition_spreads_neighbouring_keys() -> None:
    shards = shard_of(np.arange(1024, dtype=np.int64), 1024, 16, Partition.HASH)
    counts = np.bincount(shards, minlength=16)
    assert counts.min() > 32  # about 64 each


def test_shard_map_round_trips_and_rejects_nonsense() -> None:
    shard_map = ShardMap.initial(8, Partition.RANGE, [3, 1])
    again = ShardMap.from_json(shard_map.to_json(), known_nodes={1, 3})
    np.testing.assert_array_equal(again.homes, shard_map.homes)
    assert again.servers() == [1, 3]
    doc = shard_map.to_json()
    for bad in (
        doc | {"homes": [1, 2]},  # a list, not packed
        doc | {"homes": doc["homes"][:-4]},  # too few homes
        doc | {"homes": doc["homes"][:-2] + "!="},  # not base64
        doc | {"numShards": 0},
        doc | {"numShards": (1 << 20) + 1},
        doc | {"backups": doc["homes"]},  # backups without their width
        doc | {"backups": doc["homes"], "backupWidth": 5},  # wider than any chain
        doc | {"backups": doc["homes"], "backupWidth": 2},  # 8 ids are not 8 rows of 2
        {"epoch": 1},
        {key: value for key, value in doc.items() if key != "homes"},  # no homes at all
        doc | {"partition": "zigzag"},
    ):
        try:
            ShardMap.from_json(bad, known_nodes={1, 3})
        except ProtocolError:
            continue
        raise AssertionError(f"accepted {bad}")


@given(st.lists(st.integers(-1, 6), max_size=50))
def test_group_by_partitions_indices_by_destination(dests: list[int]) -> None:
    array = np.asarray(dests, dtype=np.int16)
    groups = group_by(array)
    seen = []
    for dest, part in groups:
        indices = np.arange(len(array)) if part is None else part
        assert (array[indices] == dest).all()
        assert (np.diff(indices) > 0).all(), "order within a group is kept"
        seen.extend(indices.tolist())
    assert sorted(seen) == list(range(len(array)))
    assert len({dest for dest, _ in groups}) == len(groups)


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=12, unique=True),
    st.lists(st.integers(1, 44), min_size=1, max_size=60),
    st.integers(1, 4),
)
def test_each_shards_backups_are_the_servers_after_its_home_in_id_order(
    servers: list[int], homes: list[int], copies: int
) -> None:
    """As the rule reads, shard by shard: the servers after the home in id order, wrapping
    around, never the home; a home not among the servers (gone) takes the first ones."""
    order = sorted(servers)
    backups = next_servers(np.asarray(homes, dtype=np.int16), servers, copies)
    assert backups.shape == (len(homes), copies)
    for home, row in zip(homes, backups.tolist(), strict=True):
        start = order.index(home) + 1 if home in order else 0
        chosen = [s for s in order[start:] + order[:start] if s != home][:copies]
        assert row == chosen + [NO_BACKUP] * (copies - len(chosen))


def test_a_packed_column_inflates_to_its_ids_and_no_further() -> None:
    ids = np.arange(-1, 999, dtype=np.int16)
    np.testing.assert_array_equal(shard_rows.unpack(shard_rows.pack(ids), len(ids)), ids)
    # 64 MiB of zeros in 87 KiB of text: short enough to pass for 60,000 ids, inflated no further
    bomb = base64.b64encode(zlib.compress(bytes(64 << 20), 9)).decode()
    assert len(bomb) < 120_000
    trailing = base64.b64encode(base64.b64decode(shard_rows.pack(ids)) + b"\0").decode()
    for text, count in ((bomb, 60_000), (shard_rows.pack(ids), len(ids) + 1), (trailing, len(ids)), (7, 1)):
        with pytest.raises(ProtocolError):
            shard_rows.unpack(text, count)


def test_a_column_met_again_gives_its_ids_as_the_callers_own_copy() -> None:
    ids = np.array([3, 1, NO_BACKUP, 2], dtype=np.int16)
    text = shard_rows.pack(ids)  # remembered as it is packed
    first = shard_rows.unpack(text, len(ids))
    first[0] = 99  # the caller's array: what is remembered stays as it was
    np.testing.assert_array_equal(shard_rows.unpack(text, len(ids)), ids)
    arrived = base64.b64encode(zlib.compress(np.array([5, 6], dtype="<i2").tobytes())).decode()
    shard_rows.unpack(arrived, 2)[:] = 0  # decoded once, then known
    np.testing.assert_array_equal(shard_rows.unpack(arrived, 2), [5, 6])
    # what is remembered is what decoding gives, even for ids past int16 (they wrap on the wire)
    wide = shard_rows.pack(np.array([40_000, 7], dtype=np.int64))
    remembered = shard_rows.unpack(wide, 2)
    shard_rows.forget()
    np.testing.assert_array_equal(remembered, shard_rows.unpack(wide, 2))
