"""Real processes on 127.0.0.1: a push whose owner does not answer for longer than the silence
limit is sent again (dynaps.client.retries.Retries.resend_silent) and still applied once.

The owner's node is stopped (SIGSTOP) while a push waits for it: the push and the copy sent
again through the key's home both wait in the stopped node's socket, and both are read when
it runs again.  Its exactly-once records make it apply the update once and answer both.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import dynaps

pytestmark = pytest.mark.integration

KEY = 7
TIMEOUT = 8.0  # requestTimeoutSeconds: the silence limit is a quarter of it, 2 s


def localize_by_rank_1(ps: dynaps.PS) -> int:
    """Rank 1's node takes KEY; every rank says where its node serves /metrics."""
    if ps.rank == 1:
        ps.table("W").localize([KEY])
    ps.barrier()
    return int(ps.node_stats()["metrics_port"])


def push_then_read(ps: dynaps.PS) -> dict[str, Any] | None:
    if ps.rank != 0:
        return None
    table = ps.table("W")
    table.push([KEY], np.ones((1, 1), dtype=np.float32))  # waits for the stopped owner
    return {"value": float(table.pull([KEY])[0, 0]), "stats": ps.stats()}


def resent_for_silence(port: int) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "dynaps_client_requests_resent_total" and sample.labels.get("cause") == "silence"
    )


def test_a_push_to_an_owner_silent_past_the_limit_is_sent_again_and_applied_once() -> None:
    tables = {"W": dynaps.TableSpec(num_keys=100, dim=1)}
    with dynaps.LocalCluster(servers=1, workers=2, tables=tables, request_timeout=TIMEOUT) as cluster:
        ports = cluster.run(localize_by_rank_1)
        owner = cluster.pids()["worker-1"]
        os.kill(owner, signal.SIGSTOP)
        try:
            job = cluster.submit(push_then_read)
            deadline = time.monotonic() + 30
            while resent_for_silence(ports[0]) < 1:  # rank 0's node reads its program's counters
                assert time.monotonic() < deadline, "the push was never sent again"
                time.sleep(0.1)
        finally:
            os.kill(owner, signal.SIGCONT)
        [result] = [r for r in job.result(timeout=60) if r]
        assert result["value"] == 1.0  # applied once, though it reached the owner twice
        assert result["stats"]["requests_resent_silence"] >= 1
        assert result["stats"]["requests_resent_membership"] == 0  # no node was lost meanwhile
