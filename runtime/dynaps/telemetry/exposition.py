"""Metric families declared once, and ``GET /metrics`` of a registry.

A process's metrics are read when they are scraped, not kept as Prometheus objects on the
request path: the data plane counts in plain integers it already keeps (a
``prometheus_client`` Counter takes a lock per increment), and a
:class:`prometheus_client.registry.Collector` of the process turns them into families at
scrape time.  Each family is declared by a :class:`Family` in one table per process kind,
which the docs (docs/metrics.md) and the chart's dashboard test read too.

Names follow Prometheus' conventions: ``dynaps_`` first, base units (seconds, bytes) in the
name, counters end in ``_total`` (prometheus_client appends it).

``/metrics`` needs no token (docs/security.md): it holds counts, table names and the names
and values a training program reports, never keys, values or secrets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dynaps.telemetry import bounded_http

MAX_CONNECTIONS = 8  # Prometheus scrapes with one connection; a person with curl is another
READ_TIMEOUT = 5.0  # seconds one socket read may wait
REQUEST_DEADLINE = 15.0  # seconds one connection may live

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    """One metric family: ``name`` (a counter's without ``_total``), its kind, what it
    means, and its labels."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()

    def new(self) -> Metric:
        """An empty family to add samples to (``add_metric``)."""
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=self.labels)
        return HistogramMetricFamily(self.name, self.help, labels=self.labels)

    @property
    def samples(self) -> tuple[str, ...]:
        """The names its samples carry in the exposition (what a query names)."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


def families_by_name(families: Iterable[Family]) -> dict[str, Family]:
    """``families`` keyed by name; a name declared twice is a bug."""
    table: dict[str, Family] = {}
    for family in families:
        if family.name in table:
            raise ValueError(f"metric family {family.name} declared twice")
        table[family.name] = family
    return table


class Scrape:
    """The families of one table (name -> :class:`Family`), filled sample by sample
    during one scrape."""

    def __init__(self, families: Mapping[str, Family]) -> None:
        self._families = families
        self._metrics = {name: family.new() for name, family in families.items()}

    def add(self, name: str, value: float, *labels: str) -> None:
        """A counter's or gauge's sample; ``labels`` in the family's order."""
        family = self._families[name]
        self._metrics[name].add_sample(
            family.samples[0], dict(zip(family.labels, labels, strict=True)), value
        )

    def histogram(
        self, name: str, bounds: Sequence[float], cumulative: Sequence[int], total: float, *labels: str
    ) -> None:
        """A histogram: ``cumulative`` counts, one per bound then +Inf, and their ``total``."""
        metric = self._metrics[name]
        assert isinstance(metric, HistogramMetricFamily)
        les = [repr(float(bound)) for bound in bounds] + ["+Inf"]
        buckets = [(le, float(count)) for le, count in zip(les, cumulative, strict=True)]
        metric.add_metric(list(labels), buckets, total)

    def metrics(self) -> Iterator[Metric]:
        """The families that got samples."""
        return (metric for metric in self._metrics.values() if metric.samples)


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (what ``/metrics`` answers)."""
    return generate_latest(registry)


CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class MetricsServer:
    """``GET /metrics`` of ``registry`` on ``host:port`` (0: any free port), bounded like
    the coordinator's endpoint, on its own thread until :meth:`close`."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._listener = bounded_http.Listener(
            (host, port), _handler(registry), MAX_CONNECTIONS, REQUEST_DEADLINE, "dynaps-metrics"
        )
        self.port = self._listener.port

    def close(self) -> None:
        self._listener.close()


def _handler(registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(bounded_http.BoundedHandler):
        server_version = "dynaps"
        timeout = READ_TIMEOUT  # StreamRequestHandler sets it on the socket

        def log_message(self, format: str, *args: Any) -> None:
            bounded_http.log.debug("metrics: " + format, *args)

        def do_GET(self) -> None:
            if self.path.partition("?")[0] == "/metrics":
                code, body, content_type = HTTPStatus.OK, render(registry), CONTENT_TYPE
            else:
                code, body, content_type = HTTPStatus.NOT_FOUND, b"only /metrics here\n", "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
