"""Real processes on 127.0.0.1: every node's and the coordinator's /metrics, scraped over
HTTP and parsed, count what the training programs did."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import dynaps
from dynaps.store import usage

pytestmark = pytest.mark.integration

TABLES = {
    "W": dynaps.TableSpec(num_keys=1000, dim=4),
    "E": dynaps.TableSpec(num_keys=500, dim=2, dtype="float64"),
}
PULLS, PUSHES, LOCALIZED = 30, 20, 10

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dynaps.LocalCluster]:
    """Its own job: the counts below are all this module's programs did."""
    with dynaps.LocalCluster(servers=2, workers=2, tables=TABLES) as c:
        yield c


def work(ps: dynaps.PS) -> dict[str, Any]:
    """Known operations (no key of W moves), a report, and where every node serves /metrics."""
    W, E = ps.table("W"), ps.table("E")
    rng = np.random.default_rng(ps.rank)
    pulled = pushed = 0
    for i in range(PULLS):
        keys = rng.integers(0, 1000, size=1 if i % 2 else 7)  # the one-key path and the other
        W.pull(keys)
        pulled += len(keys)
    for _ in range(PUSHES):
        keys = rng.integers(0, 1000, size=5)
        W.push(keys, np.ones((5, 4), dtype=np.float32))
        pushed += len(keys)
    mine = np.arange(ps.rank * LOCALIZED, (ps.rank + 1) * LOCALIZED)
    E.localize(mine)
    E.pull(mine)  # in place now
    ps.report(loss=0.5 + ps.rank)
    servers = sorted({int(home) for home in ps.shard_map.homes})
    ports = {node: int(ps.node_stats(node)["metrics_port"]) for node in [*servers, ps.node]}
    ps.barrier()
    return {"pulled": pulled, "pushed": pushed, "node": ps.node, "ports": ports}


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)  # no token
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, /, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def total(found: Samples, name: str, /, **labels: str) -> float:
    """The sum of ``name``'s samples that carry ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in found.items() if n == name and wanted <= have)


@pytest.fixture(scope="module")
def ran(cluster: dynaps.LocalCluster) -> list[dict[str, Any]]:
    return cluster.run(work)


def test_each_worker_node_counts_its_programs_calls_and_keys(ran: list[dict[str, Any]]) -> None:
    for result in ran:
        code, text = scrape(result["ports"][result["node"]])
        assert code == 200
        found = samples(text)
        assert value(found, "dynaps_client_pulls_total", table="W") == PULLS
        assert value(found, "dynaps_client_pushes_total", table="W") == PUSHES
        # no key of W is on a worker: every one was asked of a server
        assert (
            value(found, "dynaps_client_keys_pulled_total", table="W", location="remote") == result["pulled"]
        )
        assert value(found, "dynaps_client_keys_pulled_total", table="W", location="local") == 0
        assert (
            value(found, "dynaps_client_keys_pushed_total", table="W", location="remote") == result["pushed"]
        )
        assert value(found, "dynaps_client_received_bytes_total", table="W") == result["pulled"] * 4 * 4
        assert value(found, "dynaps_client_sent_bytes_total", table="W") == result["pushed"] * 4 * 4
        for cause in ("membership", "silence"):  # nothing was lost: no request went twice
            assert value(found, "dynaps_client_requests_resent_total", table="W", cause=cause) == 0
        # every synchronous remote call is one observation of its operation's latency
        pull = {"table": "W", "operation": "pull"}
        assert value(found, "dynaps_client_request_duration_seconds_count", **pull) == PULLS
        assert value(found, "dynaps_client_request_duration_seconds_bucket", le="+Inf", **pull) == PULLS
        assert 0 < value(found, "dynaps_client_request_duration_seconds_sum", **pull) < PULLS * 5
        smallest = value(
            found, "dynaps_client_request_duration_seconds_bucket", le=str(usage.LATENCY_BOUNDS[0]), **pull
        )
        assert 0 <= smallest <= PULLS
        push = {"table": "W", "operation": "push"}
        assert value(found, "dynaps_client_request_duration_seconds_count", **push) == PUSHES
        # E: LOCALIZED keys moved here, then read in place
        assert value(found, "dynaps_client_keys_localized_total", table="E") == LOCALIZED
        assert value(found, "dynaps_client_keys_pulled_total", table="E", location="local") == LOCALIZED
        assert value(found, "dynaps_node_keys_relocated_total", table="E", direction="in") == LOCALIZED
        assert value(found, "dynaps_node_owned_keys", table="E") == LOCALIZED
        assert (
            value(
                found,
                "dynaps_node_info",
                node=str(result["node"]),
                role="worker",
                rank=str(ran.index(result)),
            )
            == 1
        )


def test_the_servers_answered_exactly_the_keys_the_programs_asked_for(ran: list[dict[str, Any]]) -> None:
    servers = {
        node: port for result in ran for node, port in result["ports"].items() if node != result["node"]
    }
    assert len(servers) == 2
    scraped = [samples(scrape(port)[1]) for port in servers.values()]
    answered = sum(total(found, "dynaps_node_keys_pulled_total", table="W") for found in scraped)
    applied = sum(total(found, "dynaps_node_keys_pushed_total", table="W") for found in scraped)
    assert answered == sum(r["pulled"] for r in ran)
    assert applied == sum(r["pushed"] for r in ran)
    requests = sum(total(found, "dynaps_node_pull_requests_total", table="W") for found in scraped)
    assert requests >= len(ran) * PULLS  # a request split between the servers counts at each
    for found in scraped:
        assert value(found, "dynaps_node_sent_bytes_total", table="W") == 16 * value(
            found, "dynaps_node_keys_pulled_total", table="W"
        )
        assert value(found, "dynaps_node_messages_dropped_total", reason="malformed") == 0
        assert total(found, "dynaps_client_pulls_total") == 0  # a server has no program
    relocated_out = sum(
        value(found, "dynaps_node_keys_relocated_total", table="E", direction="out") for found in scraped
    )
    assert relocated_out == len(ran) * LOCALIZED


def test_the_coordinator_exposes_the_job_and_what_the_programs_reported(
    cluster: dynaps.LocalCluster, ran: list[dict[str, Any]]
) -> None:
    deadline = time.monotonic() + 10
    while True:  # a report travels to the coordinator on its own; wait until it arrived
        code, text = scrape(cluster.http_port)
        found = samples(text)
        if total(found, "dynaps_job_reported_by_rank") == sum(0.5 + rank for rank in range(len(ran))):
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert code == 200
    assert value(found, "dynaps_job_phase", phase="running") == 1
    assert value(found, "dynaps_job_phase", phase="stopping") == 0
    assert value(found, "dynaps_job_nodes", role="workers", state="ready") == 2
    assert value(found, "dynaps_job_nodes", role="servers", state="desired") == 2
    assert value(found, "dynaps_job_reported", name="loss") in {0.5, 1.5}
    assert value(found, "dynaps_job_reported_by_rank", name="loss", rank="1") == 1.5
    assert value(found, "dynaps_job_lost_keys_total") == 0
    assert "127.0.0.1" not in text  # counts and names, no addresses


def test_a_metrics_port_answers_only_metrics(ran: list[dict[str, Any]]) -> None:
    port = ran[0]["ports"][ran[0]["node"]]
    assert scrape(port, "/status")[0] == 404
    assert scrape(port, "/metrics?x=1")[0] == 200


def replicated_work(ps: dynaps.PS) -> dict[str, Any]:
    """Pushes to server-held keys (each row goes to its backup), and updates of keys held
    here (dirty until the next write-back)."""
    W = ps.table("W")
    keys = np.arange(100 + 10 * ps.rank, 110 + 10 * ps.rank)
    W.push(keys, np.ones((10, 4), dtype=np.float32))
    mine = np.arange(500 + 10 * ps.rank, 510 + 10 * ps.rank)
    W.localize(mine)
    W.push(mine, np.ones((10, 4), dtype=np.float32))  # in place: our node writes them back
    servers = sorted({int(home) for home in ps.shard_map.homes})
    return {"node": ps.node, "ports": {n: int(ps.node_stats(n)["metrics_port"]) for n in [*servers, ps.node]}}


def test_replication_lag_and_rows_sent_to_backups_are_counted() -> None:
    # a write-back interval far longer than the test: the updated keys stay dirty
    with dynaps.LocalCluster(
        servers=2, workers=1, tables={"W": TABLES["W"]}, replication=1, flush_interval_ms=600_000
    ) as cluster:
        (result,) = cluster.run(replicated_work)
        worker = samples(scrape(result["ports"][result["node"]])[1])
        servers = [
            samples(scrape(port)[1]) for node, port in result["ports"].items() if node != result["node"]
        ]
    assert value(worker, "dynaps_node_replication_dirty_keys", table="W") == 10
    assert value(worker, "dynaps_node_replication_flush_age_seconds") >= 0
    # every pushed row went from its home to its one backup, once, and so did the rows the
    # worker wrote back when its localized keys arrived
    assert sum(value(found, "dynaps_node_keys_replicated_total") for found in servers) == 10 + 10
    assert sum(value(found, "dynaps_node_keys_backed_up_total") for found in servers) == 10 + 10
    for found in servers:
        assert value(found, "dynaps_node_replication_dirty_keys", table="W") == 0
