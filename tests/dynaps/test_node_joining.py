"""A node joining the job: what makes it give up, and what must not.

A node told to stop while it waits to join exits at once, not when its wait ends.

A job whose pods are deleted while they start (its deadline passed, it was suspended)
loses its coordinator too; a node still waiting for the coordinator's WELCOME must not
wait out its start-up deadline (300 s) or the pod's grace period.  Found by a full run
under load: `test_active_deadline_fails_the_job_and_stops_its_pods` waited 60 s for a
worker pod whose node had been SIGTERMed before it joined.

A captured answer meant for another process (a refusal, a fence, a shutdown), replayed to a
joining node, does not make it give up (security audit, finding 2).

A REGISTER left unanswered is sent again, and then the question for the shard map: either, or
its answer, may have gone with a coordinator killed before it read it.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import zmq

from dynaps.client.membership import register
from dynaps.config import transport_kind
from dynaps.contract import Partition, RuntimeConfig, TableSpec, secret
from dynaps.local.launch import start_node, stop_processes
from dynaps.node.process import SIGTERM_EXIT_CODE
from dynaps.store.shardmap import ShardMap
from dynaps.wire import control, joining, messages
from dynaps.wire.auth import Authenticator
from dynaps.wire.codec import decode
from dynaps.wire.protocol import COORDINATOR, Message, MsgType, client_of
from dynaps.wire.transport import open_transport
from tests.dynaps.wire_peers import peer_sockets

pytestmark = pytest.mark.integration


def one_server_job(coordinator: str) -> RuntimeConfig:
    """A job of one server and one worker whose coordinator (the test) is at ``coordinator``."""
    return RuntimeConfig(
        tables=[{"name": "W", **TableSpec(num_keys=10, dim=1).model_dump()}],
        servers=1,
        workers=1,
        coordinator=coordinator.removeprefix("tcp://"),
    )


def test_a_node_sigtermed_before_it_joined_exits_at_once() -> None:
    job_secret = secret.new_secret()
    with peer_sockets(secret.wire_key(job_secret)) as make:
        coordinator = make(zmq.PULL)  # takes the REGISTER and never answers
        port = coordinator.bind_to_random_port("tcp://127.0.0.1")
        config = one_server_job(f"127.0.0.1:{port}")
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
    config = one_server_job(coordinator.address)
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


def test_a_node_asks_again_for_its_id_and_then_for_the_shard_map() -> None:
    job_secret = secret.new_secret()
    coordinator = open_transport(transport_kind(), COORDINATOR, secret.wire_key(job_secret))
    config = one_server_job(coordinator.address)
    env = {secret.HEX_ENV: secret.encode(job_secret), "DYNAPS_LOG_LEVEL": "WARNING"}
    node = start_node("server", config, "server-0", extra_env=env)

    def next_message(what: str) -> tuple[float, Message]:
        frames = coordinator.recv(timeout=joining.AGAIN_SECONDS * 3)
        assert frames is not None, f"no {what}"
        return time.monotonic(), decode(frames, [])

    try:
        first_at, first = next_message("REGISTER")
        again_at, again = next_message("REGISTER again")  # the first is left unanswered
        assert (first.type, again.type) == (MsgType.REGISTER, MsgType.REGISTER)
        nonce = control.body_of(first, control.Register).nonce
        assert control.body_of(again, control.Register).nonce == nonce  # a copy, known as one
        assert again_at - first_at >= joining.AGAIN_SECONDS * 0.9
        register = control.body_of(again, control.Register)
        coordinator.connect(7, register.address)
        welcome = control.Welcome(node=7, nonce=nonce)
        coordinator.send(7, messages.control(MsgType.WELCOME, COORDINATOR, welcome))
        _, query = next_message("MEMBERSHIP_QUERY")  # the shard map does not come
        assert (query.type, query.sender) == (MsgType.MEMBERSHIP_QUERY, 7)
    finally:
        stop_processes([node])
        coordinator.close()


def test_a_program_asks_again_to_attach_and_then_for_the_running_membership(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(joining, "AGAIN_SECONDS", 0.2)
    key = secret.wire_key(secret.new_secret())
    coordinator = open_transport(transport_kind(), COORDINATOR, key)
    program = open_transport(transport_kind(), client_of(7), key)
    program.connect(COORDINATOR, coordinator.address)
    result: list[tuple[control.Membership, control.Welcome | None]] = []
    asking = threading.Thread(
        target=lambda: result.append(register(program, client_of(7), 7, "digest", time.monotonic() + 30))
    )
    asking.start()

    def next_message(what: str) -> Message:
        frames = coordinator.recv(timeout=5)
        assert frames is not None, f"no {what}"
        return decode(frames, [])

    try:
        first, again = next_message("REGISTER"), next_message("REGISTER again")
        nonce = control.body_of(first, control.Register).nonce
        assert control.body_of(again, control.Register).nonce == nonce
        coordinator.connect(client_of(7), program.address)
        welcome = control.Welcome(node=7, nonce=nonce, rank=0)
        coordinator.send(client_of(7), messages.control(MsgType.WELCOME, COORDINATOR, welcome))
        query = next_message("MEMBERSHIP_QUERY")  # the running membership does not come
        assert (query.type, query.sender) == (MsgType.MEMBERSHIP_QUERY, client_of(7))
        shard_map = ShardMap.initial(4, Partition.RANGE, [1])
        info = control.NodeInfo(
            id=7, role="worker", address="tcp://127.0.0.1:9", client=program.address, rank=0
        )
        running = control.Membership(
            version=2, phase="running", nodes=[info], shard_map=shard_map.to_json(), num_workers=1
        )
        coordinator.send(client_of(7), messages.control(MsgType.MEMBERSHIP, COORDINATOR, running))
        asking.join(timeout=10)
        [(membership, welcomed)] = result
        assert (membership.version, welcomed) == (2, welcome)
    finally:
        asking.join(timeout=35)
        program.close()
        coordinator.close()
