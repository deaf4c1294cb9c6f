"""Alert rules: the model, field-named validation, the metric catalogue and the default rule set.

A rule compares one metric over a trailing window with a threshold. Rules that `group_by` a dimension (model,
project, key) are evaluated per label set: one state machine per value of the dimension.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

OPS = (">", ">=", "<", "<=")
SEVERITIES = ("info", "warning", "critical")
FILTERS = ("model", "project", "key", "client", "surface")
GROUP_BYS = ("", "model", "project", "key")
OUTCOMES = ("upstream_error", "exhausted", "stream_error", "client_error", "proxy_error", "cancelled", "unauthorized")
MIN_WINDOW_S, MAX_WINDOW_S = 10, 6 * 3600  # live windows are read from time-bounded rows: keep them bounded
MAX_FOR_S = MAX_REPEAT_S = 7 * 86400
MAX_THRESHOLD = 1e12
MAX_CHANNELS = 20
_NAME_RE = re.compile(r"^[^\x00-\x1f]{1,100}$")
_FILTER_RE = re.compile(r"^[0-9A-Za-z_\-.:/@]{1,128}$")


@dataclass(frozen=True)
class Metric:
    name: str
    source: str  # requests · attempts · pool · quota · flaps · volume
    unit: str  # ratio · ms · count · pct · x · usd
    description: str
    group_bys: tuple[str, ...]  # the dimensions it can be split by
    backtest: bool  # the rollups hold its history


_REQ_GROUPS = ("", "model", "project", "key")
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("success_rate", "requests", "ratio", "Share of calls that succeeded", _REQ_GROUPS, True),
        Metric("error_rate", "requests", "ratio", "Share of calls that failed (any class)", _REQ_GROUPS, True),
        Metric("upstream_error_rate", "requests", "ratio", "Share of calls failed by upstream", _REQ_GROUPS, False),
        Metric(
            "exhausted_rate", "requests", "ratio", "Share of calls refused with Keyrack's own 429", _REQ_GROUPS, True
        ),
        Metric("stream_error_rate", "requests", "ratio", "Share of calls broken mid-stream", _REQ_GROUPS, False),
        Metric(
            "client_error_rate",
            "requests",
            "ratio",
            "Share of calls rejected as the client's fault",
            _REQ_GROUPS,
            False,
        ),
        Metric("upstream_429_rate", "attempts", "ratio", "Share of upstream attempts answered 429", _REQ_GROUPS, False),
        Metric("attempts_per_call", "requests", "x", "Upstream attempts per call", _REQ_GROUPS, False),
        Metric("p95_latency_ms", "requests", "ms", "95th percentile call latency", _REQ_GROUPS, True),
        Metric("p95_ttft_ms", "requests", "ms", "95th percentile time to first streamed byte", _REQ_GROUPS, False),
        Metric("calls", "requests", "count", "Calls in the window", _REQ_GROUPS, True),
        Metric("spend_usd", "requests", "usd", "Estimated spend in the window (USD, paid tier)", _REQ_GROUPS, False),
        Metric(
            "calls_vs_last_week",
            "volume",
            "x",
            "Calls in the window ÷ the same window one week earlier",
            ("", "model", "project"),
            True,
        ),
        Metric("active_keys", "pool", "count", "Keys usable now (not cooling)", ("", "project"), False),
        Metric("cooling_keys", "pool", "count", "Active keys waiting out a rate limit", ("", "project"), False),
        Metric("invalid_keys", "pool", "count", "Keys upstream rejects as invalid", ("", "project"), False),
        Metric("disabled_keys", "pool", "count", "Keys disabled (manually or by failures)", ("", "project"), False),
        Metric(
            "usable_capacity_pct",
            "quota",
            "pct",
            "Per-minute capacity of usable keys as % of the model's recent demand",
            ("", "model"),
            False,
        ),
        Metric(
            "quota_day_usage_pct",
            "quota",
            "pct",
            "Requests today as % of the daily limit, per project and model",
            ("", "project", "model"),
            False,
        ),
        Metric(
            "exhaustion_before_reset_min",
            "quota",
            "min",
            "Minutes by which the daily quota of a (project, model) is projected to run out before the Pacific reset "
            "at its current rate (0: it lasts)",
            ("", "project", "model"),
            False,
        ),
        Metric("key_flaps", "flaps", "count", "Invalid ↔ active changes of a key in the last hour", ("", "key"), False),
        Metric(
            "client_limit_use_pct",
            "clients",
            "pct",
            "The most used of a client's own limits, in % (calls or tokens per minute, day, month; calls at once); "
            "filter by client id for one client, else the fullest client",
            ("",),
            False,
        ),
    )
}
_RATE_OUTCOME = {
    "upstream_error_rate": "upstream_error",
    "exhausted_rate": "exhausted",
    "stream_error_rate": "stream_error",
    "client_error_rate": "client_error",
}


class RuleError(ValueError):
    """A bad rule field; `field` names it (the admin API answers 422 with it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    metric: str
    op: str
    threshold: float
    window_s: int
    for_s: int = 0
    severity: str = "warning"
    channels: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    group_by: str = ""
    repeat_s: int = 3600
    enabled: bool = True
    description: str = ""

    def breached(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False  # no data is not a breach (a rate over zero calls has no value)
        t = self.threshold
        return {">": value > t, ">=": value >= t, "<": value < t, "<=": value <= t}[self.op]

    @property
    def outcome(self) -> str | None:
        """The error class a class-specific rate counts."""
        return _RATE_OUTCOME.get(self.metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "window_s": self.window_s,
            "for_s": self.for_s,
            "severity": self.severity,
            "channels": list(self.channels),
            "filters": dict(self.filters),
            "group_by": self.group_by,
            "repeat_s": self.repeat_s,
            "enabled": self.enabled,
            "description": self.description,
        }


_FIELDS = (
    "id",
    "name",
    "metric",
    "op",
    "threshold",
    "window_s",
    "for_s",
    "severity",
    "channels",
    "filters",
    "group_by",
    "repeat_s",
    "enabled",
    "description",
)
_REQUIRED = ("name", "metric", "op", "threshold", "window_s")


def _shown(v: Any) -> str:
    """A number as an error message may quote it (a JSON integer can have thousands of digits)."""
    text = repr(v)
    return text if len(text) <= 24 else f"{text[:12]}… ({len(text)} characters)"


def _int(data: dict[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    v = data.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise RuleError(name, f"must be a whole number of seconds, not {_shown(v)}")
    if not lo <= v <= hi:  # compared exactly: an integer past a float's range never becomes one
        raise RuleError(name, f"must be between {lo} and {hi} seconds (got {_shown(v)})")
    return int(v)


class NameTaken(RuleError):
    """Another rule has this name (the admin API answers 409)."""


def parse_rule(data: Any, *, base: Rule | None = None, known_channels: set[str] | None = None) -> Rule:
    """Validate a rule body (a full one, or a patch over `base`). Raises RuleError naming the first bad field."""
    if not isinstance(data, dict):
        raise RuleError("body", "must be a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise RuleError(unknown[0], f"unknown rule field (allowed: {', '.join(_FIELDS[1:])})")
    if base is not None:
        data = {**base.to_dict(), **{k: v for k, v in data.items() if k != "id"}}
    for name in _REQUIRED:
        if name not in data or data[name] is None:
            raise RuleError(name, "is required")
    name = data["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name.strip() or "\x00"):
        raise RuleError("name", "must be 1–100 printable characters")
    metric = data["metric"]
    if metric not in METRICS:
        raise RuleError("metric", f"unknown metric {str(metric)[:64]!r} (known: {', '.join(METRICS)})")
    op = data["op"]
    if op not in OPS:
        raise RuleError("op", f"must be one of {' '.join(OPS)} (got {str(op)[:16]!r})")
    threshold = data["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise RuleError("threshold", "must be a finite number")
    if isinstance(threshold, float) and not math.isfinite(threshold):
        raise RuleError("threshold", "must be a finite number")
    if not -MAX_THRESHOLD <= threshold <= MAX_THRESHOLD:
        raise RuleError("threshold", f"must be within ±{MAX_THRESHOLD:g}")
    window_s = _int(data, "window_s", MIN_WINDOW_S, MAX_WINDOW_S)
    for_s = _int(data, "for_s", 0, MAX_FOR_S, 0)
    repeat_s = _int(data, "repeat_s", 0, MAX_REPEAT_S, 3600)
    severity = data.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RuleError("severity", f"must be one of {', '.join(SEVERITIES)}")
    channels = data.get("channels", [])
    if not isinstance(channels, list) or len(channels) > MAX_CHANNELS or not all(isinstance(c, str) for c in channels):
        raise RuleError("channels", f"must be a list of at most {MAX_CHANNELS} channel ids")
    if known_channels is not None:
        missing = [c for c in channels if c not in known_channels]
        if missing:
            raise RuleError("channels", f"unknown channel id {missing[0][:64]!r}")
    filters = data.get("filters") or {}
    if not isinstance(filters, dict):
        raise RuleError("filters", f"must be an object with some of {', '.join(FILTERS)}")
    for k, v in filters.items():
        if k not in FILTERS:
            raise RuleError(f"filters.{str(k)[:32]}", f"unknown filter (allowed: {', '.join(FILTERS)})")
        if not isinstance(v, str) or not _FILTER_RE.match(v):
            raise RuleError(f"filters.{k}", "must be 1–128 characters of letters, digits and _-.:/@")
    group_by = data.get("group_by") or ""
    if group_by not in GROUP_BYS:
        raise RuleError("group_by", f"must be one of none, {', '.join(GROUP_BYS[1:])}")
    spec = METRICS[metric]
    if group_by not in spec.group_bys:
        allowed = ", ".join(g or "none" for g in spec.group_bys)
        raise RuleError("group_by", f"{metric} can be grouped by {allowed}")
    if spec.source == "pool" and set(filters) - {"project"}:
        raise RuleError("filters", f"{metric} takes only the project filter")
    if spec.source == "clients" and set(filters) - {"client"}:
        raise RuleError("filters", f"{metric} takes only the client filter")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError("enabled", "must be true or false")
    description = data.get("description") or ""
    if not isinstance(description, str) or len(description) > 500:
        raise RuleError("description", "must be text of at most 500 characters")
    rule_id = base.id if base is not None else str(data.get("id") or uuid.uuid4().hex[:12])
    return Rule(
        id=rule_id,
        name=name.strip(),
        metric=metric,
        op=op,
        threshold=float(threshold),
        window_s=window_s,
        for_s=for_s,
        severity=severity,
        channels=tuple(dict.fromkeys(channels)),
        filters=tuple(sorted(filters.items())),
        group_by=group_by,
        repeat_s=repeat_s,
        enabled=enabled,
        description=description,
    )


def default_rules() -> list[Rule]:
    """The shipped rule set: sensible thresholds, all disabled until an operator turns them on."""
    specs: list[dict[str, Any]] = [
        {
            "id": "default-invalid-keys",
            "name": "Invalid keys",
            "metric": "invalid_keys",
            "op": ">",
            "threshold": 0,
            "window_s": 60,
            "for_s": 60,
            "severity": "warning",
        },
        {
            "id": "default-no-active-keys",
            "name": "No usable keys",
            "metric": "active_keys",
            "op": "<",
            "threshold": 1,
            "window_s": 60,
            "for_s": 30,
            "severity": "critical",
        },
        {
            "id": "default-success-rate",
            "name": "Success rate below 90 %",
            "metric": "success_rate",
            "op": "<",
            "threshold": 0.9,
            "window_s": 300,
            "for_s": 120,
            "severity": "critical",
        },
        {
            "id": "default-exhausted",
            "name": "Keyrack refusing calls (own 429)",
            "metric": "exhausted_rate",
            "op": ">",
            "threshold": 0.05,
            "window_s": 300,
            "for_s": 60,
            "severity": "warning",
        },
        {
            "id": "default-upstream-429",
            "name": "Upstream 429 storm",
            "metric": "upstream_429_rate",
            "op": ">",
            "threshold": 0.3,
            "window_s": 300,
            "for_s": 60,
            "severity": "warning",
        },
        {
            "id": "default-p95-latency",
            "name": "p95 latency above 30 s",
            "metric": "p95_latency_ms",
            "op": ">",
            "threshold": 30_000,
            "window_s": 600,
            "for_s": 300,
            "severity": "warning",
        },
        {
            "id": "default-traffic-drop",
            "name": "Traffic dropped vs last week",
            "metric": "calls_vs_last_week",
            "op": "<",
            "threshold": 0.3,
            "window_s": 3600,
            "for_s": 900,
            "severity": "info",
        },
        {
            "id": "default-quota-day",
            "name": "Daily quota 90 % used",
            "metric": "quota_day_usage_pct",
            "op": ">=",
            "threshold": 90,
            "window_s": 60,
            "for_s": 0,
            "severity": "warning",
            "group_by": "project",
        },
        {
            "id": "default-key-flaps",
            "name": "Key flapping",
            "metric": "key_flaps",
            "op": ">",
            "threshold": 3,
            "window_s": 3600,
            "for_s": 0,
            "severity": "info",
            "group_by": "key",
        },
    ]
    return [parse_rule({**s, "enabled": False}) for s in specs]
