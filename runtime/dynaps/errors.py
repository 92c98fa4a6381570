"""The exceptions dynaps raises, in one place so users can catch them by kind.

Every error a user can cause (bad keys, an unknown table, a call outside a dynaps
process, an invalid manifest) is a subclass of :class:`DynapsError` with a message that
names the problem; library errors are wrapped with ``raise ... from e``.

    DynapsError
    ├── ConfigError            invalid configuration or manifest
    ├── NotConnectedError      dynaps.connect() outside a process started by dynaps
    ├── UsageError             a call with bad arguments
    │   ├── UnknownTableError  ps.table(name) for a table that was never declared
    │   └── KeyRangeError      keys outside [0, num_keys)
    ├── ProtocolError          a malformed message (dropped by nodes, never raised to users)
    ├── DynapsTimeoutError     an operation did not complete in time
    └── ClusterError           a node or the job failed (a worker exited non-zero, ...)
        └── Drained            this worker is leaving the job: stop training and return
"""

from __future__ import annotations


class DynapsError(Exception):
    """Base class of every error dynaps raises on purpose."""


class ConfigError(DynapsError):
    """Configuration (environment, manifest, arguments) is invalid."""


class NotConnectedError(DynapsError):
    """The process was not started by dynaps, so there is no cluster to connect to."""


class UsageError(DynapsError, ValueError):
    """An API call received arguments it cannot accept."""


class UnknownTableError(UsageError, KeyError):
    """A table name that the job does not declare."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a readable message matters more here.
        return str(self.args[0]) if self.args else ""


class KeyRangeError(UsageError, IndexError):
    """Keys outside the table's range [0, num_keys)."""


class ProtocolError(DynapsError):
    """A message does not follow the wire protocol."""


class DynapsTimeoutError(DynapsError, TimeoutError):
    """An operation did not complete within its deadline."""


class ClusterError(DynapsError):
    """A node of the job failed or the job could not run."""


class Drained(ClusterError):  # noqa: N818 - reads as an event: `except dynaps.Drained`
    """This worker is being drained (scale-in, SIGTERM, preemption): finish up and return.

    Raised by the next call after the worker's node starts to leave; operations already
    acknowledged are kept.  Catch it to return partial results.
    """
