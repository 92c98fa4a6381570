"""A :class:`~dynaps.observe.view.JobView` as text: what ``dynaps status`` prints.

Throughput has two origins: a metric a program reports that is already a rate (its name
ends in ``per_s``, ``_rate`` or ``throughput``), and counters that grow between two samples
of ``--watch`` (a metric named like ``steps`` or ``samples`` or ``*_total``, and the data
shards the workers finished), divided by the seconds between the samples.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from dynaps.observe.view import JobView, Member

MAX_MEMBERS = 20  # per role; more are summarised by state, so a big job stays readable
BAR = 30  # characters of the progress bar

# a metric that counts work done: its growth per second is a throughput
COUNTER = re.compile(
    r"(^|[_.])(steps?|samples?|examples?|batch(es)?|iterations?|updates?|tokens?|records?|rows|"
    r"pushes|pulls|processed)$|_total$"
)
RATE = re.compile(r"(per_s|per_sec|per_second|_rate|throughput)$")  # already a rate


@dataclass(frozen=True)
class Sample:
    """A view and when it was read (seconds on any one clock)."""

    at: float
    view: JobView


def throughput(previous: Sample | None, current: Sample) -> dict[str, float]:
    """What grows per second: reported rates as they are, counters between the two samples."""
    rates = {name: value for name, value in current.view.metrics.items() if RATE.search(name)}
    if previous is None or current.at <= previous.at:
        return rates
    seconds = current.at - previous.at
    before = previous.view.metrics
    for name, value in current.view.metrics.items():
        # a counter that went down was reset (a restarted program): no rate this time
        if COUNTER.search(name) and name in before and value >= before[name]:
            rates[f"{name}/s"] = (value - before[name]) / seconds
    if current.view.data_shards:
        done = sum(
            now - previous.view.data_shards.get(epoch, (0, 0))[0]
            for epoch, (now, _) in current.view.data_shards.items()
        )
        if done >= 0:
            rates["data shards/s"] = done / seconds
    return rates


def number(value: float) -> str:
    return f"{value:.6g}"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress(view: JobView) -> str:
    """Where training is: epochs of the reported total, else the latest data epoch's shards."""
    epoch, epochs = view.metrics.get("epoch"), view.metrics.get("epochs")
    if epoch is not None and epochs:
        return f"epoch {number(epoch)} of {number(epochs)} {_bar(epoch / epochs)}"
    if view.data_shards:
        latest = max(view.data_shards)
        done, total = view.data_shards[latest]
        return f"data epoch {latest}: {done} of {total} shards done {_bar(done / total if total else 0.0)}"
    if epoch is not None:
        return f"epoch {number(epoch)}"
    return ""


def _bar(fraction: float) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * BAR)
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {fraction * 100:.0f} %"


def render(view: JobView, now: float, rates: dict[str, float] | None = None) -> str:
    """The text of ``dynaps status``; ``now`` is unix seconds (for ages)."""
    lines = [_headline(view, now)]
    if view.message:
        lines.append(f"  {view.message}")
    if view.conditions:
        lines.append("Conditions:")
        rows = [
            (c.type, c.status, c.reason, f"{duration(now - c.since)} ago" if c.since else "", c.message)
            for c in view.conditions
        ]
        lines += _table(rows)
    lines += _members(view)
    lines.append(f"Shards: {_shards(view)}")
    line = progress(view)
    if line:
        lines.append(f"Progress: {line}")
    if rates:
        lines.append("Throughput: " + ", ".join(f"{name} {number(v)}" for name, v in sorted(rates.items())))
    if view.metrics:
        lines.append("Metrics: " + "  ".join(f"{k}={number(v)}" for k, v in sorted(view.metrics.items())))
    if view.last_checkpoint:
        lines.append(f"Last checkpoint: {view.last_checkpoint}")
    lines += _losses(view)
    if view.events:
        lines.append("Events (latest):")
        lines += [f"  {event}" for event in view.events]
    return "\n".join(lines) + "\n"


def _headline(view: JobView, now: float) -> str:
    head = f"Job {view.job or '?'} ({view.where})  phase {view.phase}"
    if view.started is not None:
        end = view.finished if view.finished is not None else now
        head += f"  {'ran' if view.finished is not None else 'running for'} {duration(end - view.started)}"
    if view.restarts:
        head += f"  {view.restarts} pod restart{'s' if view.restarts != 1 else ''}"
    return head


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]


def _members(view: JobView) -> list[str]:
    lines = ["Members:"]
    if not view.members:
        lines.append("  none yet")
    for role in ("coordinator", "server", "worker"):
        mine = [m for m in view.members if m.role == role]
        plural = f"{role}s"
        count = view.counts.get(plural)
        if count is None and not mine:
            continue
        if count is not None:
            summary = f"  {plural}: {count.ready}/{count.desired} ready"
            if count.finished:
                summary += f", {count.finished} finished"
            lines.append(summary)
        lines += _member_lines(mine, view.shards_per_server if role == "server" else {})
    others = [m for m in view.members if m.role not in ("coordinator", "server", "worker")]
    lines += _member_lines(others, {})
    return lines


def _member_lines(members: list[Member], shards: dict[str, int]) -> list[str]:
    if not members:
        return []
    shown = members[:MAX_MEMBERS]
    rows = [
        (m.name, m.role, m.state + (f", {shards[m.name]} shards" if m.name in shards else "")) for m in shown
    ]
    lines = ["  " + line for line in _table(rows)]
    rest = Counter(m.state for m in members[MAX_MEMBERS:])
    if rest:
        lines.append(
            f"    ... {sum(rest.values())} more: "
            + ", ".join(f"{n} {state}" for state, n in rest.most_common())
        )
    return lines


def _shards(view: JobView) -> str:
    counts = view.shards_per_server
    if not counts:
        return "no shard map yet"
    values = list(counts.values())
    text = (
        f"{sum(values)} on {len(values)} server{'s' if len(values) != 1 else ''} "
        f"({min(values)} to {max(values)} each), shard map epoch {view.shard_epoch}"
    )
    listed = {m.name for m in view.members}
    unlisted = {name: n for name, n in counts.items() if name not in listed}
    if unlisted:
        text += "; " + ", ".join(f"{name}: {n}" for name, n in sorted(unlisted.items()))
    text += f"; {view.migrations_in_flight} migrations in flight, {view.unsynced_shards} not yet replicated"
    return text


def _losses(view: JobView) -> list[str]:
    if not view.loss_entries and not view.losses:
        return ["Data loss: none"]
    entries = max(view.loss_entries, len(view.losses))
    lines = [
        f"Data loss: {entries} recover{'ies' if entries != 1 else 'y'} restored {view.loss_keys} keys "
        "from other than a synced replica:"
    ]
    return lines + [f"  {loss}" for loss in view.losses]
