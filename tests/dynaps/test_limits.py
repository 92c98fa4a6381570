"""Room for a job's connections (dynaps.wire.limits): zmq's socket limit and the open-file
limit sized from the job, and clear errors where they do not suffice."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import zmq

from dynaps.contract import MAX_NODES, NamedTable, RuntimeConfig
from dynaps.errors import ConfigError
from dynaps.wire import handshake, limits
from dynaps.wire.zmq_transport import ZmqTransport

KEY = bytes(range(32))


def config(servers: int, workers: int, **ranges: tuple[int, int]) -> RuntimeConfig:
    table = NamedTable(name="W", num_keys=8, dim=1)
    return RuntimeConfig(tables=[table], servers=servers, workers=workers, **ranges)


def test_the_job_size_counts_nodes_training_processes_and_the_coordinator() -> None:
    bounded = config(3, 4, servers_range=(1, 10), workers_range=(2, 20))
    assert limits.job_size(bounded) == limits.JobSize(peers=3 + 2 * 4 + 1, most=10 + 2 * 20 + 1)
    unbounded = config(3, 4)  # no maxReplicas: the contract's largest job
    assert limits.job_size(unbounded).most == 3 * MAX_NODES + 1


def test_a_context_has_room_for_the_largest_job_up_to_zmqs_own_limit() -> None:
    small = limits.context_for(limits.JobSize(10, 400))
    large = limits.context_for(limits.JobSize(10, 3 * MAX_NODES + 1))
    try:
        assert small.get(zmq.MAX_SOCKETS) == limits.sockets_needed(400) > 1023
        assert large.get(zmq.MAX_SOCKETS) == large.get(zmq.SOCKET_LIMIT)
    finally:
        small.term()
        large.term()


@pytest.fixture
def soft_limit() -> Iterator[int]:
    """The open-file soft limit, put back afterwards (lowering and raising it needs no privilege)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_open_file_limit_is_raised_for_the_job(soft_limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.files_needed(200)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit here ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
    assert limits.raise_file_limit(limits.JobSize(10, 200)) == wanted
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == wanted
    # never lowered: a limit above what the job needs stays
    assert limits.raise_file_limit(limits.JobSize(2, 2)) == wanted


def test_a_hard_limit_below_what_the_job_needs_is_a_clear_error() -> None:
    # Lowering the hard limit cannot be undone: in a child process of its own.
    program = textwrap.dedent(
        """
        import resource
        from dynaps.errors import ConfigError
        from dynaps.wire import limits
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))
        try:
            limits.raise_file_limit(limits.JobSize(1000, 1000))
        except ConfigError as exc:
            print(exc)
        else:
            print("no error")
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    message, soft = done.stdout.strip().splitlines()
    assert "a job of 1000 endpoints" in message
    assert f"about {limits.files_needed(1000)} open files" in message
    assert "at most 400" in message
    assert "RLIMIT_NOFILE" in message
    assert soft == "400"  # raised as far as it goes, and no further


def test_a_job_grown_past_the_socket_limit_gets_a_clear_error_not_a_zmq_one() -> None:
    # room for one peer: the context holds SPARE_SOCKETS + 3 sockets, the inbox and the
    # handshake's among them
    transport = ZmqTransport(1, KEY, size=limits.JobSize(1, 1))
    try:
        room = limits.sockets_needed(1) - 1 - handshake.GUARD_SOCKETS
        for peer in range(2, 2 + room):
            transport.connect(peer, "tcp://127.0.0.1:9")  # connecting needs no listener
            transport.send(peer, [b"hello"])  # a socket opens on the first send
        transport.connect(2 + room, "tcp://127.0.0.1:9")
        with pytest.raises(ConfigError, match="socket limit"):
            transport.send(2 + room, [b"hello"])
    finally:
        transport.close()
