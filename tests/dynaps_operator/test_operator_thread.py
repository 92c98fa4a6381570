"""Starting and stopping the in-process operator leaves nothing open behind it.

Every connection the operator opened (kopf's watches, our Kubernetes client, the probe server)
must be closed before its event loop ends: a socket left to the garbage collector raises a
ResourceWarning in whatever test happens to run when the collector finds it.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import warnings
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from dynaps_operator.errors import OperatorConfigError
from dynaps_operator.runner import OperatorThread, operate
from dynaps_operator.settings import OperatorSettings
from tests.kube.kubelet import ProcessKubelet

ROUNDS = 5


def describe(message: warnings.WarningMessage) -> str:
    where = tracemalloc.get_object_traceback(message.source) if message.source is not None else None
    allocated = (
        "\n".join(where.format()) if where is not None else "(run with PYTHONTRACEMALLOC=25 to see where)"
    )
    return f"{message.category.__name__}: {message.message}\nallocated at:\n{allocated}"


def leaks_of(caught: list[warnings.WarningMessage]) -> list[str]:
    return [describe(m) for m in caught if issubclass(m.category, ResourceWarning)]


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_a_start_that_fails_closes_the_connections_it_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API server without the CRD (every path 404): operate() refuses to start, and the
    connection its client opened for the check is closed, not left to the garbage collector."""

    async def scenario() -> None:
        runner = web.AppRunner(web.Application())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        monkeypatch.setenv(
            "KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}"))
        )
        try:
            with pytest.raises(OperatorConfigError, match=r"CRD .* is not installed"):
                await operate(OperatorSettings(probe_host="127.0.0.1", probe_port=0))
        finally:
            await runner.cleanup()

    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(scenario())
        gc.collect()
    leaks = leaks_of(caught)
    assert not leaks, "\n\n".join(leaks)


@pytest.mark.e2e
@pytest.mark.slow
def test_start_and_stop_leave_no_socket_open(
    crd: str, kubeconfig: Path, process_kubelet: ProcessKubelet
) -> None:
    settings = OperatorSettings(
        probe_host="127.0.0.1", probe_port=0, poll_seconds=1.0, resync_seconds=10.0, instance="e2e-leak"
    )
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(ROUNDS):
            with OperatorThread(settings):
                pass
        gc.collect()
    leaks = leaks_of(caught)
    assert not leaks, "\n\n".join(leaks)
