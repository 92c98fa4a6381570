"""The plot of ``bench/scale.py``'s figures against N (matplotlib, when installed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def _pick(phase: str, figure: str) -> Callable[[dict[str, Any]], float | None]:
    """Reads one figure of a result (None where that phase did not complete)."""

    def value(result: dict[str, Any]) -> float | None:
        part = result.get(phase)
        return None if part is None else float(part[figure])

    return value


def plot(results: list[dict[str, Any]], path: Path) -> str:
    """A 2x2 figure of the figures against N; returns what was written (or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    done = [r for r in results if "steady" in r]
    if not done:
        return "no size completed: no plot"
    sizes = [r["nodes"] for r in done]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    Series = list[tuple[str, Callable[[dict[str, Any]], float | None]]]
    panels: list[tuple[Any, str, Series]] = [
        (
            axes[0][0],
            "coordinator CPU s per s, steady heartbeats",
            [("CPU s/s", _pick("steady", "coordinator_cpu_per_s"))],
        ),
        (
            axes[0][1],
            "seconds until every endpoint sees RUNNING",
            [("registration", _pick("registration", "all_running_s"))],
        ),
        (
            axes[1][0],
            "seconds until every endpoint has the membership",
            [(e, _pick(e, "reach_s")) for e in ("join", "leave", "loss")]
            + [("+10 % servers settled", _pick("scale_out", "settle_s"))],
        ),
        (
            axes[1][1],
            "bytes the nodes received until settled",
            [(e, _pick(e, "settle_bytes_to_nodes")) for e in ("join", "leave", "loss", "scale_out")],
        ),
    ]
    for ax, title, series in panels:
        for label, value in series:
            points = [(n, value(r)) for n, r in zip(sizes, done, strict=True)]
            points = [(n, v) for n, v in points if v is not None and v > 0]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes N (half servers, half workers)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"dynaps control plane against N simulated nodes (heartbeat {done[0]['heartbeat_ms']} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
