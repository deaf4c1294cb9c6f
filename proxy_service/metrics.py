"""Prometheus metrics. Counters are bumped on the request path (a dict lookup and a lock: ~1 µs); gauges that
describe state (keys by status, queue depth, writer lag) are computed when /metrics is scraped."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "keyrack_requests",
    "Client requests by surface, model and client-visible status",
    ["surface", "model", "status"],
    registry=REGISTRY,
)
ATTEMPTS = Counter("keyrack_upstream_attempts", "Upstream attempts by outcome", ["outcome"], registry=REGISTRY)
RATE_LIMITS = Counter(
    "keyrack_upstream_rate_limits",
    "Upstream 429s by quota kind (minute, day, tokens, unknown)",
    ["kind"],
    registry=REGISTRY,
)
_MODEL_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,64}$")


def model_label(model: str | None) -> str:
    """Client-chosen model names would make label cardinality unbounded: keep only plausible ids."""
    if not model:
        return "none"
    return model if _MODEL_RE.match(model) else "other"


class StateCollector(Collector):
    """Gauges read from live objects at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.read()
        keys = GaugeMetricFamily("keyrack_keys", "Upstream keys by status", labels=["status"])
        for status, n in state["keys"].items():
            keys.add_metric([status], n)
        yield keys
        yield GaugeMetricFamily("keyrack_event_queue_depth", "Events waiting for the writer", value=state["depth"])
        yield GaugeMetricFamily(
            "keyrack_event_flush_seconds", "Duration of the last event flush", value=state["flush_ms"] / 1000
        )
        yield GaugeMetricFamily(
            "keyrack_event_writer_lag_seconds", "Age of the oldest unwritten event batch", value=state["lag"]
        )
        yield GaugeMetricFamily("keyrack_events_written", "Events written since start", value=state["written"])
        yield GaugeMetricFamily("keyrack_event_write_failures", "Failed event flushes", value=state["failures"])
