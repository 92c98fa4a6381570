"""A node told to stop while it waits to join: it exits at once, not when its wait ends.

A job whose pods are deleted while they start (its deadline passed, it was suspended)
loses its coordinator too; a node still waiting for the coordinator's WELCOME must not
wait out its start-up deadline (300 s) or the pod's grace period.  Found by a full run
under load: `test_active_deadline_fails_the_job_and_stops_its_pods` waited 60 s for a
worker pod whose node had been SIGTERMed before it joined.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import zmq

from dynaps.contract import RuntimeConfig, TableSpec, secret
from dynaps.local.launch import start_node, stop_processes
from dynaps.node.process import SIGTERM_EXIT_CODE

pytestmark = pytest.mark.integration


def test_a_node_sigtermed_before_it_joined_exits_at_once() -> None:
    context = zmq.Context()
    coordinator = context.socket(zmq.PULL)  # takes the REGISTER and never answers
    coordinator.setsockopt(zmq.LINGER, 0)
    port = coordinator.bind_to_random_port("tcp://127.0.0.1")
    config = RuntimeConfig(
        tables=[{"name": "W", **TableSpec(num_keys=10, dim=1).model_dump()}],
        servers=1,
        workers=1,
        coordinator=f"127.0.0.1:{port}",
    )
    env = {secret.HEX_ENV: secret.encode(secret.new_secret()), "DYNAPS_LOG_LEVEL": "WARNING"}
    node = start_node("server", config, "server-0", extra_env=env)
    try:
        assert coordinator.poll(60_000), "the node never registered"
        coordinator.recv_multipart()  # it waits for its WELCOME now
        node.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = node.wait(timeout=10)
        assert code == SIGTERM_EXIT_CODE
        assert time.monotonic() - started < 3.0, "the node waited on after SIGTERM"
    except subprocess.TimeoutExpired:
        pytest.fail("a node SIGTERMed while joining was still running 10 s later")
    finally:
        stop_processes([node])
        coordinator.close()
        context.term()
