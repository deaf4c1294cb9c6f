"""Prometheus metrics. Counters are bumped on the request path (a dict lookup and a lock); gauges that
describe state (keys by status, queue depth, writer lag) are computed when /metrics is scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from proxy_service import known_models

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
# Whole-request latency as the client sees it (for a stream: until its last byte), by surface.
REQUEST_SECONDS = Histogram(
    "keyrack_request_duration_seconds",
    "Client request latency (streams: until the last byte) by surface",
    ["surface"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
FIRST_BYTE_SECONDS = Histogram(
    "keyrack_stream_first_byte_seconds",
    "Time to the first streamed byte, by surface",
    ["surface"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
CLIENT_REFUSALS = Counter(
    "keyrack_client_refusals",
    "Calls refused by their client's own policy, by reason (client_limit, client_model, priority)",
    ["reason"],
    registry=REGISTRY,
)
UNTRUSTED = Counter(
    "keyrack_untrusted_requests",
    "Refused calls that carried what anyone can send: unauthenticated, or with a model name that is no model id",
    ["kind"],
    registry=REGISTRY,
)


_admitted: set[str] = set()


def model_label(model: str | None, served: bool = False) -> str:
    """Model names are chosen by clients: a label only for a model Keyrack knows (`known_models`: built in, or
    served before to an authenticated client — `served` says this call was: the relay passes "other" for
    unauthenticated calls and junk names), so made-up names never grow the label set; everything else is "other"."""
    if not model:
        return "none"
    if model in _admitted or model == "other":
        return model
    if known_models.is_known(model) or (served and known_models.learn(model)):
        _admitted.add(model)  # known for good (the known set only grows): bounded like it
        return model
    return "other"


def observe_request(
    surface: str, model: str | None, status: int, latency_ms: float, ttfb_ms: float | None = None
) -> None:
    """Count one finished client request (called once per request, when it is recorded)."""
    REQUESTS.labels(surface, model_label(model, 200 <= status < 300), str(status)).inc()
    REQUEST_SECONDS.labels(surface).observe(max(0.0, latency_ms) / 1000)
    if ttfb_ms is not None:
        FIRST_BYTE_SECONDS.labels(surface).observe(max(0.0, ttfb_ms) / 1000)


class StateCollector(Collector):
    """Gauges read from live objects at scrape time."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
        written = state["written"]
        if isinstance(written, dict):  # by table
            fam = CounterMetricFamily("keyrack_events_written", "Event rows written since start", labels=["table"])
            for table, n in written.items():
                fam.add_metric([table], n)
            yield fam
        else:
            yield CounterMetricFamily("keyrack_events_written", "Event rows written since start", value=written)
        yield CounterMetricFamily("keyrack_event_write_failures", "Failed event flushes", value=state["failures"])
        if "dead_letters" in state:
            yield CounterMetricFamily(
                "keyrack_event_dead_letters",
                "Event rows the writer could not append, kept in the data dir's dead-letter file",
                value=state["dead_letters"],
            )
        if "writer_alive" in state:
            yield GaugeMetricFamily(
                "keyrack_event_writer_alive",
                "1 while the event writer thread runs and its events reach the database",
                value=int(state["writer_alive"]),
            )
        if "store_ok" in state:
            yield GaugeMetricFamily(
                "keyrack_event_store_ok",
                "1 while events reach the database; 0 during a storage fault and until its spill is written",
                value=int(state["store_ok"]),
            )
            yield GaugeMetricFamily(
                "keyrack_event_spill_rows",
                "Event rows held (memory and spill dir) until the store takes writes",
                value=state["spill_rows"],
            )
            yield CounterMetricFamily(
                "keyrack_events_dropped",
                "Event rows lost: the store failed and every spill place was full (see the proxy log)",
                value=state["dropped"],
            )
        if "paid_spend" in state:
            spend = GaugeMetricFamily(
                "keyrack_paid_spend_usd",
                "Estimated spend on paid projects this Pacific quota day: this process's and the other replicas'",
                labels=["by"],
            )
            for by, usd in state["paid_spend"].items():
                spend.add_metric([by], usd)
            yield spend
        if "in_flight" in state:
            yield GaugeMetricFamily(
                "keyrack_upstream_in_flight", "Upstream calls in progress", value=state["in_flight"]
            )
        if state.get("duckdb_memory"):
            duckdb_memory = GaugeMetricFamily(
                "keyrack_duckdb_memory_bytes",
                "Memory DuckDB accounts for, by tag (duckdb_memory(); read every few seconds)",
                labels=["tag"],
            )
            for tag, n in sorted(state["duckdb_memory"].items()):
                duckdb_memory.add_metric([tag], n)
            yield duckdb_memory
        if "ready" in state:
            yield GaugeMetricFamily("keyrack_ready", "1 when the proxy is ready to serve", value=int(state["ready"]))
        if "cluster" in state:  # cluster mode: which replica answers, how many are alive, Redis degraded
            c = state["cluster"]
            info = GaugeMetricFamily("keyrack_replica_info", "This replica's id (cluster mode)", labels=["replica"])
            info.add_metric([c["replica"]], 1)
            yield info
            yield GaugeMetricFamily(
                "keyrack_cluster_replicas", "Replicas alive at the last heartbeat", value=c["replicas"]
            )
            yield GaugeMetricFamily(
                "keyrack_cluster_redis_degraded",
                "1 while Redis is unreachable (local limits at 1/N)",
                value=int(c["redis_degraded"]),
            )
            yield GaugeMetricFamily(
                "keyrack_cluster_leader",
                "1 on the replica elected to run the cluster-wide jobs (alerts, retention, compaction)",
                value=int(c["leader"]),
            )
            yield GaugeMetricFamily(
                "keyrack_lake_spilled_rows",
                "Event rows spilled to local files since start",
                value=c["lake_spilled_rows"],
            )
            rejected = CounterMetricFamily(
                "keyrack_cluster_rejected",
                "Bus messages and Redis values ignored as not the cluster's own (forged, stale, replayed), by reason",
                labels=["reason"],
            )
            for reason, n in sorted(c.get("rejected", {}).items()):
                rejected.add_metric([reason], n)
            yield rejected
            yield CounterMetricFamily(
                "keyrack_cluster_leases_taken_back",
                "Leader leases taken over because no live leader held them (forged, or not renewed)",
                value=c.get("leases_taken_back", 0),
            )
        if "started_at" in state:
            yield GaugeMetricFamily(
                "keyrack_start_time_seconds", "Unix time the proxy started", value=state["started_at"]
            )
