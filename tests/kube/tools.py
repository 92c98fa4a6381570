"""kubectl and helm against a test cluster: one place for both the control plane with the process
kubelet (tests/kube/controlplane.py) and the real node (tests/kube/node.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


class ClusterTools:
    """``bin_dir`` holds kubectl and helm; ``kubeconfig`` reaches the cluster; helm keeps its
    state under ``root``. :meth:`wrap` lets a cluster run them elsewhere (a network namespace)."""

    bin_dir: Path
    root: Path
    kubeconfig: Path
    tool_timeout: float = 120

    def wrap(self, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def env(self) -> dict[str, str]:
        """The environment for kubectl and helm: KUBECONFIG set, our binaries first on PATH, and
        helm's state kept inside the root instead of the user's home."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        for kind in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{kind}_HOME"] = str(self.root / "helm" / kind.lower())
        return env

    def run_tool(
        self, tool: str, *args: str, check: bool = True, input_text: str | None = None, timeout: float = 0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.wrap([str(self.bin_dir / tool), *args]),
            capture_output=True,
            text=True,
            env=self.env(),
            input=input_text,
            timeout=timeout or self.tool_timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def answer(self, tool: str, *args: str, timeout: float) -> str | None:
        """What ``tool args`` prints, or None when it fails or takes over ``timeout`` seconds
        (it is killed then): for readiness probes, whose caller waits until its own deadline,
        so that one slow answer on a loaded machine is "not ready yet", not an error."""
        try:
            result = self.run_tool(tool, *args, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return result.stdout if result.returncode == 0 else None

    def kubectl(self, *args: str, **kw: bool | str | float | None) -> subprocess.CompletedProcess[str]:
        return self.run_tool("kubectl", *args, **kw)  # type: ignore[arg-type]

    def helm(self, *args: str, **kw: bool | str | float | None) -> subprocess.CompletedProcess[str]:
        return self.run_tool("helm", *args, **kw)  # type: ignore[arg-type]
