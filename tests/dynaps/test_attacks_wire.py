"""Issue 12's attacks on the message plane, against a real LocalCluster on 127.0.0.1.

The attacker is a plain pyzmq PUSH socket (or a raw TCP socket) that knows every address
of the job (anyone on the network can find them) but not the job secret. After each
attack the job still runs and has lost nothing: every test ends by checking the table's
values and that every process of the job is alive.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import pwd
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

import dynaps
from dynaps.client.ps import PS
from dynaps.contract import NamedTable, Partition, secret
from dynaps.errors import ClusterError, ConfigError
from dynaps.store import shm
from dynaps.store.checkpoint_files import commit, contained, resolve, write_owned
from dynaps.store.shardmap import ShardMap
from dynaps.store.shm import AttachServer, attach, attach_address, attach_proof, watch_process
from dynaps.store.table_store import TableStore
from dynaps.wire import control, messages
from dynaps.wire.auth import Authenticator
from dynaps.wire.codec import encode, encode_reply
from dynaps.wire.protocol import COORDINATOR, MsgType, client_of
from tests.dynaps.wire_peers import peer_sockets

KEYS = 100
DIM = 4
TABLES = {"W": dynaps.TableSpec(num_keys=KEYS, dim=DIM)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dynaps.LocalCluster]:
    with dynaps.LocalCluster(servers=1, workers=2, tables=TABLES, checkpoint_interval=0) as c:
        c.run(_fill)
        yield c


def _fill(ps: PS) -> None:
    if ps.rank == 0:
        ps.table("W").set(np.arange(KEYS), np.ones((KEYS, DIM), np.float32))
    ps.barrier()


def _sum(ps: PS) -> float:
    return float(ps.table("W").pull(np.arange(KEYS)).sum())


def _addresses(ps: PS) -> dict[str, Any]:
    """Where everything of the job listens, as a training process knows it."""
    transport: Any = ps._transport  # the test plays an attacker who found them
    homes = sorted({int(h) for h in ps.shard_map.homes})
    # the TCP transport keeps them on its sending side (tcp_outbound), ZeroMQ's in itself
    known = transport._outbound.addresses if hasattr(transport, "_outbound") else transport._addresses
    return {
        "peers": dict(known),
        "me": transport.address,
        "node": ps.node,
        "servers": homes,
    }


def _node_stats(ps: PS, node: int) -> dict[str, Any]:
    return ps.node_stats(node)


@pytest.fixture
def job(cluster: dynaps.LocalCluster) -> Iterator[dict[str, Any]]:
    """The job's addresses; afterwards, proof that the job runs and lost nothing."""
    found = cluster.run(_addresses)
    yield {"cluster": cluster, **found[0], "other": found[1]}
    assert cluster.run(_sum, timeout=60) == [float(KEYS * DIM)] * 2
    assert all(proc.poll() is None for proc in cluster.processes.values()), "a process of the job died"


@pytest.fixture
def attacker(cluster: dynaps.LocalCluster) -> Iterator[Any]:
    """PUSH sockets to any address of the job, past the handshake: an attacker who read the
    job's connection password off the network (the MAC must stop what it sends)."""
    with peer_sockets(secret.wire_key(cluster._secret)) as make:

        def to(address: str) -> Any:
            sock = make(zmq.PUSH)
            sock.connect(address if address.startswith("tcp://") else f"tcp://{address}")
            return sock

        yield to


def _malformed(cluster: dynaps.LocalCluster, node: int) -> int:
    return int(cluster.run(_node_stats, node)[0].get("malformed", 0))


def _await_malformed(cluster: dynaps.LocalCluster, node: int, at_least: int) -> None:
    deadline = time.monotonic() + 20
    while _malformed(cluster, node) < at_least:
        assert time.monotonic() < deadline, f"node {node} did not count the forged messages"
        time.sleep(0.05)


def test_a_forged_set_is_dropped_and_counted(job: dict[str, Any], attacker: Any) -> None:
    server = job["servers"][0]
    before = _malformed(job["cluster"], server)
    keys = np.arange(KEYS, dtype=np.int64)
    forged = messages.request(
        MsgType.SET, client_of(job["node"]), 1, 0, keys, values=np.full((KEYS, DIM), 9.0, np.float32)
    )
    frames = encode(forged)
    sock = attacker(job["peers"][server])
    sock.send_multipart(frames)  # no trailer
    sock.send_multipart(Authenticator(os.urandom(32)).sign(forged.sender, server, frames))  # a guessed key
    _await_malformed(job["cluster"], server, before + 2)


def test_a_forged_shutdown_does_not_stop_a_server(job: dict[str, Any], attacker: Any) -> None:
    server = job["servers"][0]
    before = _malformed(job["cluster"], server)
    attacker(job["peers"][server]).send_multipart(
        messages.control(MsgType.SHUTDOWN, COORDINATOR, control.Shutdown(reason="forged"))
    )
    _await_malformed(job["cluster"], server, before + 1)


def test_forged_checkpoint_orders_are_not_obeyed(job: dict[str, Any], attacker: Any, tmp_path: Path) -> None:
    server = job["servers"][0]
    before = _malformed(job["cluster"], server)
    sock = attacker(job["peers"][server])
    sock.send_multipart(
        messages.control(
            MsgType.CHECKPOINT, COORDINATOR, control.Checkpoint(id=1, phase=control.CheckpointPhase.PAUSE)
        )
    )
    target = tmp_path / "x" / ".." / "y"
    order = control.Checkpoint(id=2, phase=control.CheckpointPhase.WRITE, path=str(target))
    sock.send_multipart(messages.control(MsgType.CHECKPOINT, COORDINATOR, order))
    _await_malformed(job["cluster"], server, before + 2)
    assert not (tmp_path / "y").exists()
    # not paused: a localize (which a checkpoint's pause holds) still completes
    job["cluster"].run(_localize_some)


def _localize_some(ps: PS) -> None:
    if ps.rank == 0:
        ps.table("W").localize(np.arange(10), wait=True)


def test_a_forged_worker_done_does_not_end_the_job(job: dict[str, Any], attacker: Any) -> None:
    sock = attacker(job["cluster"].config.coordinator)
    sock.send_multipart(messages.control(MsgType.WORKER_DONE, job["node"], control.WorkerDone(exit_code=7)))
    status = job["cluster"].status()
    time.sleep(0.5)  # the coordinator acts on a WORKER_DONE at once; give the forged one time
    assert job["cluster"].status()["phase"] == status["phase"]
    assert job["cluster"].processes["coordinator"].poll() is None


def test_a_forged_register_does_not_replace_a_server(job: dict[str, Any], attacker: Any) -> None:
    cluster = job["cluster"]
    before = sorted(m["id"] for m in cluster.status()["members"])
    register = control.Register(
        role="server",
        address="tcp://127.0.0.1:9",
        nonce="forged",
        config_digest=control.config_digest(cluster.config),
        name="server-0",
    )
    attacker(cluster.config.coordinator).send_multipart(messages.control(MsgType.REGISTER, -1, register))
    time.sleep(0.5)
    assert sorted(m["id"] for m in cluster.status()["members"]) == before


def test_forged_acks_do_not_complete_pulls(job: dict[str, Any], attacker: Any) -> None:
    """399 ACKs for request ids 1..399 into a training process's inbox: later pulls are right."""
    other = job["other"]
    sock = attacker(other["me"])
    server = job["servers"][0]
    for req_id in range(1, 400):
        sock.send_multipart(
            encode_reply(MsgType.ACK, server, client_of(other["node"]), req_id, 0, 1, 0, None, None)
        )
    time.sleep(0.5)  # the job's final pulls (in the fixture) read them first, then their own


def _capture_and_replay(ps: PS, server: int, address: str) -> float:
    """Push once, capturing the signed frames as they leave; replay them; read the value."""
    transport: Any = ps._transport  # the test taps the wire here
    captured: list[list[Any]] = []
    sign = transport.auth.sign

    def tap(sender: int, dest: int, frames: Any) -> list[Any]:
        signed: list[Any] = sign(sender, dest, frames)
        if dest == server:
            captured.append([bytes(memoryview(f)) for f in signed])
        return signed

    transport.auth.sign = tap
    try:
        ps.table("W").push(np.array([KEYS - 1]), np.ones((1, DIM), np.float32))
    finally:
        transport.auth.sign = sign
    assert captured
    with peer_sockets(transport._key) as make:  # past the handshake: the MAC must stop these
        sock = make(zmq.PUSH)
        sock.connect(address)
        for frames in captured * 3:
            sock.send_multipart(frames)
    # how many the server dropped by now (the replays may still be on their way: counted later)
    return float(ps.node_stats(server).get("malformed", 0))


def test_a_replayed_push_is_applied_once(job: dict[str, Any]) -> None:
    cluster, server = job["cluster"], job["servers"][0]
    before = _malformed(cluster, server)
    # the key is on the server (never localized): the push goes over the wire
    cluster.submit(_noop).result(30)
    results = cluster.run(_replay_from_rank0, server, job["peers"][server])
    assert results[0] is not None
    # Three copies of one signed message: at most one is accepted, whichever comes first, so
    # at least two are dropped. The original usually makes it three; but if its transmission
    # was lost (the transport loses what was half written when a connection drops, and the
    # request's retry is signed anew), a replay is the first copy of it to arrive, and its
    # request is still applied once, by its id. A full suite run counted 2, not 3, once.
    _await_malformed(cluster, server, before + 2)
    # undo the one real push so that the job's final check holds
    cluster.run(_undo_push)


def _noop(ps: PS) -> None:
    return None


def _replay_from_rank0(ps: PS, server: int, address: str) -> float | None:
    if ps.rank != 0:
        return None
    value = _capture_and_replay(ps, server, address)
    row = ps.table("W").pull(np.array([KEYS - 1]))
    assert float(row.sum()) == 2.0 * DIM  # 1 + the one push, not 1 + 4
    return value


def _undo_push(ps: PS) -> None:
    if ps.rank == 0:
        ps.table("W").set(np.array([KEYS - 1]), np.ones((1, DIM), np.float32))
    ps.barrier()


def _zmtp_greeting() -> bytes:
    # ZMTP 3.0: signature, version 3.0, mechanism NULL, as-server 0, filler
    return b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)


def _zmtp_ready() -> bytes:
    name, value = b"Socket-Type", b"PUSH"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(value)) + value
    return b"\x04" + bytes([len(body)]) + body


def test_a_huge_declared_message_from_an_outsider_closes_the_connection(job: dict[str, Any]) -> None:
    """A peer that declares a 4 GiB frame is cut off at once: an outsider in the handshake
    (an insider by ZMQ_MAXMSGSIZE: test_wire_auth.py)."""
    server = job["servers"][0]
    host, port = job["peers"][server].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the node may close before all of it is sent
            sock.sendall(_zmtp_greeting())
            sock.sendall(_zmtp_ready())
            sock.sendall(b"\x02" + struct.pack(">Q", 4 << 30) + bytes(1024))  # a long frame of 4 GiB
        deadline = time.monotonic() + 10
        while True:  # the node answers with (part of) its greeting, then closes
            assert time.monotonic() < deadline, "the node kept a 4 GiB message open"
            try:
                if not sock.recv(4096):
                    break
            except ConnectionResetError:
                break


def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) << 10


def _grown_by_unfinished(address: str, pid: int, megabytes: int) -> int:
    """As an outsider: a ZMTP greeting (NULL), then frames with MORE set and never a last
    one, 2 bytes each, on a connection kept open; how much process ``pid`` grew meanwhile."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    before = _rss(pid)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(_zmtp_greeting())
            greeting = b""
            while len(greeting) < 64:
                received = sock.recv(64 - len(greeting))
                if not received:
                    break
                greeting += received
            sock.sendall(_zmtp_ready())
            chunk = b"\x01\x00" * (64 << 10)  # 128 KiB: 65,536 empty frames, MORE set
            for _ in range(megabytes * 8):
                sock.sendall(chunk)
        except OSError:  # closed by the peer: what the handshake does to an outsider
            pass
        time.sleep(0.5)  # what arrived is taken in
        return _rss(pid) - before


@pytest.mark.parametrize("target", ["coordinator", "server"])
def test_an_endless_unfinished_message_from_an_outsider_holds_no_memory(
    job: dict[str, Any], target: str
) -> None:
    """Security audit, finding 1: libzmq holds the frames of a message that has not ended
    (64 bytes each for 2 on the wire) before any MAC is checked: 8 MiB sent grew the
    coordinator by 256 MiB.  An outsider is now refused in the handshake (it has not the
    job's connection password), before a frame is read."""
    cluster = job["cluster"]
    name = "coordinator" if target == "coordinator" else "server-0"
    address = cluster.config.coordinator if target == "coordinator" else job["peers"][job["servers"][0]]
    grown = _grown_by_unfinished(address, cluster.processes[name].pid, megabytes=8)
    assert grown < 16 << 20, f"{target} grew by {grown >> 20} MiB"
    assert cluster.processes[name].poll() is None


def test_an_outsider_without_the_password_reaches_nothing(job: dict[str, Any]) -> None:
    """A complete forged message from a plain ZeroMQ socket (no password) is refused in the
    handshake: the node never even counts it as malformed."""
    server = job["servers"][0]
    cluster = job["cluster"]
    before = _malformed(cluster, server)
    context: zmq.Context[Any] = zmq.Context()
    outsiders = [context.socket(zmq.PUSH), context.socket(zmq.PUSH)]
    outsiders[1].setsockopt(zmq.PLAIN_USERNAME, b"dynaps")
    outsiders[1].setsockopt(zmq.PLAIN_PASSWORD, b"a guess")
    try:
        for sock in outsiders:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(job["peers"][server])
            # not blocking: ZeroMQ drops a connecting socket's queue when the handshake fails
            # (the node speaks no ZMTP, or refuses the password), and a send after that would
            # wait for ever (once in a full run on a busy machine); unsent reaches nothing too
            with contextlib.suppress(zmq.Again):
                sock.send_multipart([b"junk"], flags=zmq.NOBLOCK)
        # one message with the password after them, so there is something to wait for
        with peer_sockets(secret.wire_key(cluster._secret)) as make:
            insider = make(zmq.PUSH)
            insider.connect(job["peers"][server])
            insider.send_multipart([b"junk"])
            _await_malformed(cluster, server, before + 1)
        time.sleep(0.5)
        assert _malformed(cluster, server) == before + 1, "an outsider's message reached the node"
    finally:
        for sock in outsiders:
            sock.close()
        context.term()


def test_the_job_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    from dynaps.contract import CONFIG_ENV, NamedTable, RuntimeConfig

    config = RuntimeConfig(tables=[NamedTable(name="W", num_keys=10, dim=1)], coordinator="127.0.0.1:0")
    env = {k: v for k, v in os.environ.items() if k not in (secret.HEX_ENV, secret.FILE_ENV)}
    env[CONFIG_ENV] = config.to_json()
    for role in ("coordinator", "server"):
        done = subprocess.run(
            [sys.executable, "-m", "dynaps", role],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert "no job secret" in done.stderr
        assert "Traceback" not in done.stderr


# ------------------------------------------------------------------ without processes


def test_a_checkpoint_path_must_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "ckpt-000009").symlink_to(tmp_path / "elsewhere")  # planted in the volume
    assert contained(str(root), str(root / "ckpt-000007")) == root.resolve() / "ckpt-000007"
    for bad in (
        str(root / ".." / "ckpt-000007"),
        str(root / "ckpt-000007" / ".." / ".." / "y"),
        "/x/../y",
        str(tmp_path / "ckpt-000007"),  # a checkpoint name, but another directory
        str(root / "ckpt-000009"),  # a symlink out of the root
        str(root / "W"),
        str(root),
    ):
        with pytest.raises(ConfigError):
            contained(str(root), bad)
    with pytest.raises(ConfigError):
        contained("", str(root / "ckpt-000007"))  # no root configured: nothing is written


def _owned_store() -> TableStore:
    """A server's table store whose keys it owns (what a checkpoint writes)."""
    shard_map = ShardMap.initial(2, Partition.RANGE, [1])
    return TableStore.create(0, NamedTable(name="W", num_keys=8, dim=1), shard_map, home=1, shared=False)


def test_checkpoint_writes_do_not_follow_links_planted_below_the_root(tmp_path: Path) -> None:
    """Security audit, finding 8: whoever can write the checkpoint volume plants links below
    a checkpoint directory (its table folder, the temporary files); writes must neither land
    elsewhere nor overwrite a link's target."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    elsewhere, victim = tmp_path / "elsewhere", tmp_path / "victim"
    elsewhere.mkdir()
    victim.write_text("keep")
    store = _owned_store()
    (root / "ckpt-000007").mkdir()
    (root / "ckpt-000007" / "W").symlink_to(elsewhere)  # the table folder
    with pytest.raises(ConfigError, match="link"):
        write_owned(store, 1, contained(str(root), str(root / "ckpt-000007")))
    assert not list(elsewhere.iterdir())
    (root / "ckpt-000008" / "W").mkdir(parents=True)
    (root / "ckpt-000008" / "W" / ".node-1.npz.tmp").symlink_to(victim)  # the temporary file
    assert write_owned(store, 1, contained(str(root), str(root / "ckpt-000008"))) == 8
    assert victim.read_text() == "keep"
    assert (root / "ckpt-000008" / "W" / "node-1.npz").is_file()


def test_the_coordinators_commit_does_not_follow_planted_links(tmp_path: Path) -> None:
    """Finding 8: ``commit`` (MANIFEST, LATEST) checked nothing."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    elsewhere, victim = tmp_path / "elsewhere", tmp_path / "victim"
    elsewhere.mkdir()
    victim.write_text("keep")
    (root / ".LATEST.tmp").symlink_to(victim)
    (root / "ckpt-000009").mkdir()
    (root / "ckpt-000009" / ".MANIFEST.json.tmp").symlink_to(victim)
    commit(root, 9, {})
    assert victim.read_text() == "keep"
    assert (root / "LATEST").read_text() == "ckpt-000009"
    (root / "ckpt-000010").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="link"):
        commit(root, 10, {})
    assert not list(elsewhere.iterdir())
    assert (root / "LATEST").read_text() == "ckpt-000009"


def test_latest_must_name_a_checkpoint_under_the_root(tmp_path: Path) -> None:
    """Finding 8: LATEST's contents were joined to the root unchecked, so a restore could
    load another job's checkpoint."""
    root, other = tmp_path / "job" / "checkpoints", tmp_path / "other" / "ckpt-000003"
    other.mkdir(parents=True)
    (other / "MANIFEST.json").write_text("{}")
    root.mkdir(parents=True)
    for planted in ("../../other/ckpt-000003", str(other)):
        (root / "LATEST").write_text(planted)
        with pytest.raises(ConfigError):
            resolve(root, "latest")
    (root / "ckpt-000004").symlink_to(other)
    (root / "LATEST").write_text("ckpt-000004")
    with pytest.raises(ConfigError):
        resolve(root, "latest")


def _attach_as(token: str, job_secret: bytes, uid: int | None, out: Any) -> None:
    """In a child process: become ``uid`` (if given), try to attach, report what happened."""
    try:
        if uid is not None:
            os.setgid(uid)
            os.setuid(uid)
        attach(token, job_secret, lambda description, fds: description, 5.0)
        out.send("attached")
    except (ClusterError, OSError, ValueError) as exc:
        out.send(f"refused: {exc}")


def _try_attach(server: AttachServer, token: str, job_secret: bytes, uid: int | None) -> tuple[str, str]:
    """Run an attach attempt in a child while this process serves; (child's view, node's view)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_attach_as, args=(token, job_secret, uid, child))
    proc.start()
    node_view = "nothing"
    deadline = time.monotonic() + 10
    try:
        while True:
            ended = parent.poll(0.01)  # the child may give up first: its connection still waits
            try:
                hello = server.accept({"node": 1}, [])
            except ClusterError as exc:
                node_view = f"refused: {exc}"
            else:
                if hello is not None:
                    node_view = "served"
            if ended:
                break
            assert time.monotonic() < deadline, "the attach attempt did not end"
        return str(parent.recv()), node_view
    finally:
        proc.join(10)


def test_only_a_process_that_knows_the_secret_attaches() -> None:
    job_secret = secret.new_secret()
    token = "t" + os.urandom(4).hex()
    server = AttachServer(token, job_secret)
    try:
        client, node = _try_attach(server, token, secret.new_secret(), None)
        assert node.startswith("refused: ")
        assert "job secret" in node
        assert client.startswith("refused")
        client, node = _try_attach(server, token, job_secret, None)
        assert (client, node) == ("attached", "served")
    finally:
        server.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another user (nobody)")
def test_a_process_of_another_user_cannot_attach() -> None:
    """Another uid that found the socket in /proc/net/unix and knows the proof still fails."""
    job_secret = secret.new_secret()
    token = "t" + os.urandom(4).hex()
    server = AttachServer(token, job_secret)
    try:
        client, node = _try_attach(server, token, job_secret, pwd.getpwnam("nobody").pw_uid)
        assert node.startswith("refused: ")
        assert "another user" in node
        assert client.startswith("refused")
    finally:
        server.close()


# ------------------------------------------------------------------ local attach (finding 3)


def test_no_secret_on_a_command_line(job: dict[str, Any]) -> None:
    """Any user can read /proc/PID/cmdline: no process of the job carries its secret or an
    attach token there (security audit, finding 3: the token let another user take the
    attach socket's name before the node bound it)."""
    cluster = job["cluster"]
    pids = [proc.pid for proc in cluster.processes.values()]
    pids += [worker.runner.pid for worker in cluster._workers.values()]  # the test reads /proc as anyone can
    hexed = secret.encode(cluster._secret).encode()
    for pid in pids:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert not [a for a in args if a.startswith(b"--attach") or hexed in a], args


def _serve_as_impostor(server: socket.socket, served: list[str]) -> None:
    """Another user's listener on the attach name: reads the hello, answers with a
    description and a memfd of its own (what the program would then map)."""
    server.settimeout(10)
    try:
        conn, _ = server.accept()
    except OSError:
        return
    with conn:
        conn.settimeout(10)
        (length,) = struct.unpack("<I", conn.recv(4, socket.MSG_WAITALL))
        conn.recv(length, socket.MSG_WAITALL)
        fd = os.memfd_create("impostor")
        try:
            payload = b'{"node": 1, "answer": "0000"}'
            socket.send_fds(conn, [struct.pack("<I", len(payload)) + payload], [fd])
            served.append("description")
            with contextlib.suppress(OSError):
                conn.recv(16)
        finally:
            os.close(fd)


def test_a_program_does_not_take_descriptors_from_an_impostor() -> None:
    """Whoever listens where the program attaches must prove the job secret before the
    program maps anything it sends (finding 3: it trusted any listener)."""
    job_secret, token = secret.new_secret(), "t" + os.urandom(4).hex()
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.bind(attach_address(token))
    impostor.listen(1)
    served: list[str] = []
    thread = threading.Thread(target=_serve_as_impostor, args=(impostor, served))
    thread.start()
    prepared: list[Any] = []
    before = len(os.listdir("/proc/self/fd"))
    try:
        with pytest.raises(ClusterError, match="does not know the job secret"):
            attach(token, job_secret, lambda description, fds: prepared.append(description), 5.0)
    finally:
        thread.join(15)
        impostor.close()
    assert served == ["description"], "the impostor was never asked"
    assert not prepared
    assert len(os.listdir("/proc/self/fd")) == before - 1, "the impostor's memfd was kept"


def _squat_as(token: str, uid: int, bound: Any) -> None:
    """In a child: become ``uid``, take the attach name first, and serve as an impostor."""
    os.setgid(uid)
    os.setuid(uid)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(attach_address(token))
    server.listen(1)
    bound.send("bound")
    _serve_as_impostor(server, [])


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another user (nobody)")
def test_a_program_refuses_a_node_of_another_user() -> None:
    """Another user who took the attach name first is refused by the program before it
    sends anything (SO_PEERCRED), even one that somehow had the answer."""
    job_secret, token = secret.new_secret(), "t" + os.urandom(4).hex()
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    squatter = ctx.Process(target=_squat_as, args=(token, pwd.getpwnam("nobody").pw_uid, child))
    squatter.start()
    try:
        assert parent.poll(10), "the squatter did not start"
        assert parent.recv() == "bound"
        prepared: list[Any] = []
        with pytest.raises(ClusterError, match="another user"):
            attach(token, job_secret, lambda description, fds: prepared.append(description), 5.0)
        assert not prepared
    finally:
        squatter.join(15)
        if squatter.is_alive():
            squatter.kill()
            squatter.join()


# ------------------------------------------------------------------ the attached program's pid (finding 13)


def _attach_claiming_pid(token: str, job_secret: bytes, claimed: int) -> None:
    """In a child: attach as the protocol says, but claim another pid in the hello."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(attach_address(token))
        hello = {"pid": claimed, "proof": attach_proof(job_secret, token), "challenge": "c"}
        payload = json.dumps(hello).encode()
        sock.sendall(struct.pack("<I", len(payload)) + payload)
        sock.recv(1 << 16)
        sock.sendall(struct.pack("<I", 2) + b"{}")


def test_the_node_takes_its_programs_pid_from_the_kernel() -> None:
    """Security audit, finding 13: the node watched (for the shared lock) the pid the hello
    claimed; it is the one SO_PEERCRED reports."""
    job_secret, token = secret.new_secret(), "t" + os.urandom(4).hex()
    server = AttachServer(token, job_secret)
    ctx = multiprocessing.get_context("fork")
    program = ctx.Process(target=_attach_claiming_pid, args=(token, job_secret, 1))
    program.start()
    try:
        hello = None
        deadline = time.monotonic() + 10
        while hello is None:
            assert time.monotonic() < deadline, "the program did not attach"
            hello = server.accept({"node": 1}, [])
            time.sleep(0.01)
        assert hello["pid"] == program.pid
    finally:
        program.join(10)
        server.close()


def _hold_pid(uid: int, out: Any) -> None:
    os.setgid(uid)
    os.setuid(uid)
    out.send("holding")
    time.sleep(60)


def _reuse(pid: int, uid: int) -> Any:
    """A process of ``uid`` that gets number ``pid`` if the kernel gives it out: it hands out
    the number after ns_last_pid, unless a pidfd still pins it (or another fork on the
    machine took it first, hence the tries). None if it never did."""
    ctx = multiprocessing.get_context("fork")
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        parent, child = ctx.Pipe()
        newcomer = ctx.Process(target=_hold_pid, args=(uid, child))
        newcomer.start()
        if newcomer.pid == pid:
            assert parent.poll(10), "the newcomer did not start"
            assert parent.recv() == "holding"
            return newcomer
        newcomer.kill()
        newcomer.join()
    return None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to choose the next pid and run as nobody")
def test_a_program_that_died_is_not_alive_once_another_process_has_its_pid() -> None:
    """Finding 13: if the training process dies holding the shared lock and another user's
    process gets its pid, the node (kill(pid, 0): EPERM, or success as root) took it as
    alive and waited on the lock for good, stopped heartbeating, and was declared lost."""
    ctx = multiprocessing.get_context("fork")
    program = ctx.Process(target=time.sleep, args=(0.5,))
    program.start()
    assert program.pid is not None
    alive = watch_process(program.pid)  # at attach time
    assert alive()
    program.join()
    newcomer = _reuse(program.pid, pwd.getpwnam("nobody").pw_uid)
    try:
        assert not alive(), "the node takes another user's process for its training program"
    finally:
        if newcomer is not None:
            newcomer.kill()
            newcomer.join()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a child as another user (nobody)")
def test_without_pidfds_a_process_of_another_user_is_not_ours() -> None:
    """Where a seccomp profile refuses pidfd_open, the fallback asks kill(pid, 0): EPERM (a
    process of another user) means not our program, not alive."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    checker = ctx.Process(target=_check_as_nobody, args=(os.getpid(), child))
    checker.start()
    try:
        assert parent.poll(10), "the check did not answer"
        assert parent.recv() == (True, False)  # its own pid: ours; this root process: not ours
    finally:
        checker.join(10)


def _check_as_nobody(pid: int, out: Any) -> None:
    uid = pwd.getpwnam("nobody").pw_uid
    os.setgid(uid)
    os.setuid(uid)
    out.send((shm._runs_as_us(os.getpid()), shm._runs_as_us(pid)))
