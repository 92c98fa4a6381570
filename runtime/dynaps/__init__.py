"""dynaps: a parameter server with dynamic parameter allocation.

    import dynaps
    ps = dynaps.connect()              # in a process started by dynaps
    W = ps.table("W")
    W.localize(keys); v = W.pull(keys); W.push(keys, grads)

    with dynaps.LocalCluster(servers=2, workers=2,
                             tables={"W": dynaps.TableSpec(num_keys=10_000, dim=16)}) as c:
        results = c.run(train_fn)

Names are imported lazily: ``import dynaps.contract`` (what the operator uses) does not
load numpy or ZeroMQ.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "connect": "dynaps.client.ps",
    "PS": "dynaps.client.ps",
    "Table": "dynaps.client.table",
    "Handle": "dynaps.client.handles",
    "Distribution": "dynaps.client.sampling",
    "LocalCluster": "dynaps.local.cluster",
    "TableSpec": "dynaps.contract",
    "InitSpec": "dynaps.contract",
    "UpdaterSpec": "dynaps.contract",
    "register_updater": "dynaps.store.updaters",
    "DynapsError": "dynaps.errors",
    "ConfigError": "dynaps.errors",
    "NotConnectedError": "dynaps.errors",
    "UsageError": "dynaps.errors",
    "UnknownTableError": "dynaps.errors",
    "KeyRangeError": "dynaps.errors",
    "DynapsTimeoutError": "dynaps.errors",
    "ClusterError": "dynaps.errors",
    "Drained": "dynaps.errors",
}

__all__ = [
    "PS",
    "ClusterError",
    "ConfigError",
    "Distribution",
    "Drained",
    "DynapsError",
    "DynapsTimeoutError",
    "Handle",
    "InitSpec",
    "KeyRangeError",
    "LocalCluster",
    "NotConnectedError",
    "Table",
    "TableSpec",
    "UnknownTableError",
    "UpdaterSpec",
    "UsageError",
    "connect",
    "register_updater",
]

if TYPE_CHECKING:
    from dynaps.client.handles import Handle
    from dynaps.client.ps import PS, connect
    from dynaps.client.sampling import Distribution
    from dynaps.client.table import Table
    from dynaps.contract import InitSpec, TableSpec, UpdaterSpec
    from dynaps.errors import (
        ClusterError,
        ConfigError,
        Drained,
        DynapsError,
        DynapsTimeoutError,
        KeyRangeError,
        NotConnectedError,
        UnknownTableError,
        UsageError,
    )
    from dynaps.local.cluster import LocalCluster
    from dynaps.store.updaters import register_updater


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dynaps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
