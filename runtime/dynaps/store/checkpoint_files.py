"""Checkpoints: every table, written by the nodes that own its keys, to one directory.

Layout (``path`` is the job's ``faultTolerance.checkpoint.path``, a shared volume)::

    path/ckpt-000007/W/node-3.npz     keys, values, state0..  (the keys node 3 owned)
    path/ckpt-000007/MANIFEST.json    id, epoch, tables, nodes, time: written last
    path/LATEST                       "ckpt-000007": written after the manifest

A checkpoint is taken while no key changes owner (homes hold new relocations and wait for
those in flight), so every key is written exactly once; values keep changing while it is
written, so it is a fuzzy snapshot, as usual for parameter servers.  A checkpoint without
its MANIFEST.json was interrupted and is never read.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from dynaps.errors import ConfigError
from dynaps.store.table_store import TableStore

LATEST = "LATEST"
MANIFEST = "MANIFEST.json"


def checkpoint_dir(root: str | Path, checkpoint_id: int) -> Path:
    return Path(root) / f"ckpt-{checkpoint_id:06d}"


_CHECKPOINT_NAME = re.compile(r"ckpt-[0-9]{6,}")


def contained(root: str | Path, path: str) -> Path:
    """``path`` (from a CHECKPOINT order) if it names a checkpoint directly under ``root``.

    Nodes write where the coordinator says, so the path is checked, not trusted: no
    ``..``, a ``ckpt-NNNNNN`` name, and still directly under the root once every symlink
    is resolved (a link planted in the volume cannot lead the write elsewhere). Raises
    ConfigError otherwise.
    """
    given = Path(path)
    if not root or ".." in given.parts or not _CHECKPOINT_NAME.fullmatch(given.name):
        raise ConfigError(f"checkpoint path {path!r} is not a checkpoint directory")
    base = Path(root).resolve()
    if given.parent.resolve() != base or given.resolve() != base / given.name:
        raise ConfigError(f"checkpoint path {path!r} is outside the checkpoint root {root!r}")
    return base / given.name


def write_owned(store: TableStore, node: int, directory: Path) -> int:
    """Write the keys ``node`` owns of ``store``'s table; returns how many."""
    keys = np.flatnonzero(store.loc == node).astype(np.int64)
    arrays: dict[str, Any] = {"keys": keys, "values": store.values.take(keys, axis=0)}
    for i, state in enumerate(store.states):
        arrays[f"state{i}"] = state.take(keys, axis=0)
    folder = directory / store.name
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".node-{node}.npz.tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, folder / f"node-{node}.npz")
    return len(keys)


def commit(root: str | Path, checkpoint_id: int, manifest: dict[str, Any]) -> Path:
    """Mark a complete checkpoint: its manifest, then LATEST (each written atomically)."""
    directory = checkpoint_dir(root, checkpoint_id)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"id": checkpoint_id, "time": time.time(), **manifest}
    _write_atomically(directory / MANIFEST, json.dumps(document, indent=2))
    _write_atomically(Path(root) / LATEST, directory.name)
    return directory


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def resolve(root: str | Path, which: str) -> Path | None:
    """The directory of checkpoint ``which`` ("latest" or a path); None if there is none yet."""
    if which in ("", "latest"):
        latest = Path(root) / LATEST
        if not latest.exists():
            return None
        directory = Path(root) / latest.read_text().strip()
    else:
        directory = Path(which)
    if not (directory / MANIFEST).exists():
        raise ConfigError(f"{directory} is not a complete dynaps checkpoint (no {MANIFEST})")
    return directory


def load_keys(store: TableStore, directory: Path, wanted: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Load the values of the keys ``wanted`` marks from a checkpoint; returns those found."""
    folder = directory / store.name
    if not folder.is_dir():
        raise ConfigError(f"checkpoint {directory} has no table {store.name!r}")
    found = []
    for path in sorted(folder.glob("node-*.npz")):
        with np.load(path) as data:
            keys = data["keys"]
            if len(keys) and int(keys.max()) >= store.spec.num_keys:
                raise ConfigError(f"{path} has keys beyond table {store.name!r}'s {store.spec.num_keys}")
            values = data["values"]
            if values.shape[1:] != (store.spec.dim,):
                raise ConfigError(
                    f"{path} has rows of {values.shape[1:]}, table {store.name!r} has dim {store.spec.dim}"
                )
            mask = wanted[keys]
            chosen = keys[mask]
            store.values[chosen] = values[mask]
            for i, state in enumerate(store.states):
                name = f"state{i}"
                if name in data:
                    state[chosen] = data[name][mask]
            found.append(chosen)
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)
