"""Checkpoints: every table, written by the nodes that own its keys, to one directory.

Layout (``path`` is the job's ``faultTolerance.checkpoint.path``, a shared volume)::

    path/ckpt-000007/W/node-3.npz     keys, values, state0..  (the keys node 3 owned)
    path/ckpt-000007/MANIFEST.json    id, epoch, tables, nodes, time: written last
    path/LATEST                       "ckpt-000007": written after the manifest

A checkpoint is taken while no key changes owner (homes hold new relocations and wait for
those in flight), so every key is written exactly once; values keep changing while it is
written, so it is a fuzzy snapshot, as usual for parameter servers.  A checkpoint without
its MANIFEST.json was interrupted and is never read.

Whoever can write the volume may plant symbolic links in it, so every write goes through
directory descriptors opened one component at a time below the root with ``O_NOFOLLOW``
(:func:`_below`), and each file is written to a fresh temporary (``O_EXCL``, a link in its
place is removed first) renamed over the final name: a link on the way is refused, never
followed, and there is no window between a check and the write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

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


@contextlib.contextmanager
def _below(root: str | Path, names: list[str]) -> Iterator[int]:
    """A descriptor of the directory ``root/names...``, each name made if missing and opened
    with ``O_NOFOLLOW``: a symbolic link on the way raises ConfigError. (The root itself is
    the configured path, a mount point or a link to one: made if missing, opened as it is.)"""
    os.makedirs(root, exist_ok=True)
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
    try:
        for name in names:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fds[-1])
            try:
                fds.append(
                    os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fds[-1])
                )
            except OSError as exc:  # ELOOP: a link; ENOTDIR: a file (or a link to one)
                raise ConfigError(f"{name} in checkpoint root {root} is a link or not a directory") from exc
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _write_in(folder: int, name: str, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``name`` in the directory ``folder`` atomically: a fresh temporary, renamed."""
    temporary = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=folder)  # a leftover, or a planted link (not its target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(temporary, flags, 0o666, dir_fd=folder), "wb") as handle:
        write(handle)
    os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)


def write_owned(store: TableStore, node: int, directory: Path) -> int:
    """Write the keys ``node`` owns of ``store``'s table into ``directory`` (a checkpoint
    directly under the root, as :func:`contained` returns it); returns how many."""
    keys = np.flatnonzero(store.loc == node).astype(np.int64)
    arrays: dict[str, Any] = {"keys": keys, "values": store.values.take(keys, axis=0)}
    for i, state in enumerate(store.states):
        arrays[f"state{i}"] = state.take(keys, axis=0)
    with _below(directory.parent, [directory.name, store.name]) as folder:
        _write_in(folder, f"node-{node}.npz", lambda handle: np.savez(handle, **arrays))
    return len(keys)


def commit(root: str | Path, checkpoint_id: int, manifest: dict[str, Any]) -> Path:
    """Mark a complete checkpoint: its manifest, then LATEST (each written atomically)."""
    directory = checkpoint_dir(root, checkpoint_id)
    document = {"id": checkpoint_id, "time": time.time(), **manifest}
    with _below(root, [directory.name]) as folder:
        _write_in(folder, MANIFEST, lambda handle: handle.write(json.dumps(document, indent=2).encode()))
    with _below(root, []) as folder:
        _write_in(folder, LATEST, lambda handle: handle.write(directory.name.encode()))
    return directory


def resolve(root: str | Path, which: str) -> Path | None:
    """The directory of checkpoint ``which`` ("latest" or a path); None if there is none yet.

    LATEST must name a checkpoint directly under ``root`` (:func:`contained`): whoever can
    write the volume must not point a restore at another job's checkpoint."""
    if which in ("", "latest"):
        latest = Path(root) / LATEST
        if not latest.exists():
            return None
        directory = contained(root, str(Path(root) / latest.read_text().strip()))
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
