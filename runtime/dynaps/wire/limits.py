"""Room for a job's connections: ZeroMQ's socket limit and the process's open-file limit.

A process of a job talks to every other endpoint of it (today: a PUSH socket per node and
per training process; the coordinator also watches each node's connection with a monitor
pair), so what it needs grows with the job.  ZeroMQ's default of 1,023 sockets per context
ran out near 290 nodes in the coordinator (bench/README.md), and Linux's usual soft limit
of 1,024 open files runs out sooner: every socket holds a descriptor for its mailbox, every
TCP connection another.  So each process sizes both from the job before it opens a socket:

* ``zmq.MAX_SOCKETS`` from the largest size the job may reach (its scale ranges): a slot
  costs a few bytes, so there is no reason to stop short of what POST /scale allows;
* the soft ``RLIMIT_NOFILE`` raised towards the same, up to the hard limit (raising the
  soft limit needs no privilege); a hard limit too low for the job's *current* size is a
  :class:`~dynaps.errors.ConfigError` that says what to raise, instead of "Too many open
  files" from deep inside zmq once the job has half started.
"""

from __future__ import annotations

import logging
import resource
from typing import Any, NamedTuple

import zmq

from dynaps.contract import MAX_NODES, RuntimeConfig
from dynaps.errors import ConfigError

log = logging.getLogger(__name__)

# Per endpoint a process talks to, at most: a PUSH socket, and the monitor pair watching it.
SOCKETS_PER_PEER = 3
# Per endpoint: the three sockets' mailboxes (an eventfd each), the outgoing TCP connection
# and the peer's incoming one into our inbox.
FILES_PER_PEER = 5
# the inbox, the handshake's ZAP handler (its socket and a pipe pair: dynaps.wire.handshake),
# a refusal's temporary socket, the attach socket
SPARE_SOCKETS = 64
SPARE_FILES = 256  # the interpreter, logs, shared-memory segments, the HTTP endpoint


class JobSize(NamedTuple):
    """How many endpoints a process of the job talks to: now, and at the job's largest."""

    peers: int
    most: int


def job_size(config: RuntimeConfig) -> JobSize:
    """Every node, every worker's training process and the coordinator, now and at the top
    of the scale ranges (which default to the contract's MAX_NODES per role)."""
    peers = config.servers + 2 * config.workers + 1
    most = min(config.servers_range[1], MAX_NODES) + 2 * min(config.workers_range[1], MAX_NODES) + 1
    return JobSize(peers, max(peers, most))


def files_needed(peers: int) -> int:
    return FILES_PER_PEER * peers + SPARE_FILES


def sockets_needed(peers: int) -> int:
    return SOCKETS_PER_PEER * peers + SPARE_SOCKETS


def raise_file_limit(size: JobSize) -> int:
    """Raise the soft open-file limit towards what ``size.most`` needs; the new soft limit.

    Raises ConfigError when even the hard limit is below what ``size.peers`` needs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else max(soft, files_needed(size.most))
    wanted = min(files_needed(size.most), ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        log.debug("open-file limit raised from %d to %d for %d endpoints", soft, wanted, size.most)
        soft = wanted
    needed = files_needed(size.peers)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise ConfigError(
            f"a job of {size.peers} endpoints (nodes, training processes, the coordinator) needs "
            f"about {needed} open files in each process, but this process may open at most {hard} "
            "(the hard RLIMIT_NOFILE): raise it "
            "(ulimit -Hn, the container runtime's nofile ulimit, or limits.conf)"
        )
    return int(soft)


def context_for(size: JobSize | None) -> zmq.Context[Any]:
    """A ZeroMQ context with room for ``size`` (None: zmq's defaults, for tests and tools)."""
    context: zmq.Context[Any] = zmq.Context()
    if size is None:
        return context
    try:
        raise_file_limit(size)
        limit = int(context.get(zmq.SOCKET_LIMIT))
        context.set(zmq.MAX_SOCKETS, min(limit, sockets_needed(size.most)))
    except BaseException:
        context.term()
        raise
    return context


def out_of_room(exc: zmq.ZMQError, endpoints: int) -> ConfigError:
    """What to tell the user when a socket cannot be opened for want of descriptors or slots."""
    return ConfigError(
        f"cannot open a connection to another endpoint ({exc}; {endpoints} open): the job grew past "
        "this process's open-file limit or ZeroMQ's socket limit (dynaps sizes both from the "
        "job's scale ranges at start: set maxReplicas, or raise the hard RLIMIT_NOFILE)"
    )
