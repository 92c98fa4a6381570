"""A node joining the job: what makes it give up, and what must not.

A node told to stop while it waits to join exits at once, not when its wait ends.

A job whose pods are deleted while they start (its deadline passed, it was suspended)
loses its coordinator too; a node still waiting for the coordinator's WELCOME must not
wait out its start-up deadline (300 s) or the pod's grace period.  Found by a full run
under load: `test_active_deadline_fails_the_job_and_stops_its_pods` waited 60 s for a
worker pod whose node had been SIGTERMed before it joined.

A captured answer meant for another process (a refusal, a fence, a shutdown), replayed to a
joining node, does not make it give up (security audit, finding 2).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from dynaps.config import transport_kind
from dynaps.contract import RuntimeConfig, TableSpec, secret
from dynaps.local.launch import start_node, stop_processes
from dynaps.node.process import SIGTERM_EXIT_CODE
from dynaps.wire import control, messages
from dynaps.wire.auth import Authenticator
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, MsgType
from dynaps.wire.transport import open_transport
from tests.dynaps.wire_peers import peer_sockets

pytestmark = pytest.mark.integration


def test_a_node_sigtermed_before_it_joined_exits_at_once() -> None:
    job_secret = secret.new_secret()
    with peer_sockets(secret.wire_key(job_secret)) as make:
        coordinator = make(zmq.PULL)  # takes the REGISTER and never answers
        port = coordinator.bind_to_random_port("tcp://127.0.0.1")
        config = RuntimeConfig(
            tables=[{"name": "W", **TableSpec(num_keys=10, dim=1).model_dump()}],
            servers=1,
            workers=1,
            coordinator=f"127.0.0.1:{port}",
        )
        env = {secret.HEX_ENV: secret.encode(job_secret), "DYNAPS_LOG_LEVEL": "WARNING"}
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


def _captured(key: bytes, dest: int, kind: MsgType, body: control.Refused | control.Shutdown) -> list[bytes]:
    """A message the job's coordinator signed for someone else: what an attacker who captured
    it on the wire can send again, unchanged, to any port of the job."""
    signed = Authenticator(key).sign(COORDINATOR, dest, messages.control(kind, COORDINATOR, body))
    return [bytes(memoryview(f)) for f in signed]


REPLAYS: dict[str, tuple[int, MsgType, control.Refused | control.Shutdown]] = {
    "another registration's refusal": (-2, MsgType.REFUSED, control.Refused(nonce="f00d", reason="captured")),
    "another node's fence": (-2, MsgType.REFUSED, control.Refused(nonce="", reason="captured")),
    "another node's shutdown": (5, MsgType.SHUTDOWN, control.Shutdown(reason="captured")),
}


@pytest.mark.parametrize("replayed", list(REPLAYS))
def test_a_captured_answer_for_someone_else_does_not_stop_a_joining_node(
    replayed: str, tmp_path: Path
) -> None:
    """Security audit, finding 2: a node waiting for its WELCOME has no endpoint id yet, so
    it accepts a message for any destination. A REFUSED or SHUTDOWN the coordinator sent to
    another process, replayed to it, must not make it give up: only the refusal of its own
    registration (its nonce) does. The replay goes first on the connection, the real
    refusal after it: the node must exit with the real one's reason."""
    job_secret = secret.new_secret()
    key = secret.wire_key(job_secret)
    coordinator = open_transport(transport_kind(), COORDINATOR, key)
    config = RuntimeConfig(
        tables=[{"name": "W", **TableSpec(num_keys=10, dim=1).model_dump()}],
        servers=1,
        workers=1,
        coordinator=coordinator.address.removeprefix("tcp://"),
    )
    env = {secret.HEX_ENV: secret.encode(job_secret), "DYNAPS_LOG_LEVEL": "WARNING"}
    log = (tmp_path / "node.log").open("wb")
    node = start_node("server", config, "server-0", extra_env=env, output=(log.fileno(), log.fileno()))
    try:
        with peer_sockets(key) as make:  # an attacker who read the job's connection password
            attacker = make(zmq.PUSH)
            frames = coordinator.recv(timeout=60)
            assert frames is not None, "the node never registered"
            register = control.body_of(decode(frames, []), control.Register)
            attacker.connect(register.address)
            attacker.send_multipart(_captured(key, *REPLAYS[replayed]))
            real = control.Refused(nonce=register.nonce, reason="the real answer")
            attacker.send_multipart(_captured(key, -2, MsgType.REFUSED, real))
            node.wait(timeout=30)
        output = (tmp_path / "node.log").read_text()
        assert "the real answer" in output, output
        assert "captured" not in output, output
    finally:
        stop_processes([node])
        log.close()
        coordinator.close()
