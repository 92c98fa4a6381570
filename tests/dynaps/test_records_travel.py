"""The records of a program's settled updates stop travelling with keys once the keys reach
that program's node (real processes): an app's initial ``set`` of a table left a record
with every key, and every later move of the keys carried it on (MF: every column block's)."""

from __future__ import annotations

import numpy as np

import dynaps

KEYS = np.arange(64)
TABLES = {"T": dynaps.TableSpec(num_keys=len(KEYS), dim=2)}


def pass_the_keys_around(ps: dynaps.PS) -> int:
    """Rank 0 sets every key (a record at each home); the keys then go to rank 1, to rank 0
    and to rank 2 in turn.  Returns the records this worker's node holds at the end."""
    table = ps.table("T")
    if ps.rank == 0:
        table.set(KEYS, np.ones((len(KEYS), 2)))
    ps.barrier()
    for holder in (1, 0, 2):
        if ps.rank == holder:
            table.localize(KEYS)
        ps.barrier()
    records: int = ps.node_stats()["records_held"]
    return records


def test_a_program_s_settled_set_does_not_follow_its_keys_past_its_own_node() -> None:
    with dynaps.LocalCluster(servers=2, workers=3, tables=TABLES, allocation="dynamic") as cluster:
        held = cluster.run(pass_the_keys_around, timeout=120)
    # rank 1's node adopted rank 0's record before it was settled anywhere; rank 0's node
    # dropped it on arrival, so nothing came on to rank 2's node
    assert held[1] >= 1
    assert held[2] == 0
