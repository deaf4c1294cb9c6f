"""Gemini quota facts: the Pacific quota day, 429-body parsing, model limits and usage windows.

Pure and clock-free: every function takes ``now`` (epoch seconds) so callers and tests own time.
Not thread-safe; it is used from the single asyncio loop of the proxy.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "DEFAULT_LIMITS",
    "KIND_OF_DIM",
    "MAX_WAIT_S",
    "MINUTE_S",
    "MINUTE_WAIT_S",
    "PACIFIC",
    "QUOTA_IDS",
    "ModelLimits",
    "QuotaTracker",
    "QuotaViolation",
    "UsageWindow",
    "cooldown_until",
    "limits_for",
    "next_pacific_midnight",
    "pacific_day",
    "parse_rate_limit",
    "quota_violation",
    "stated_wait",
]

PACIFIC = ZoneInfo("America/Los_Angeles")
MINUTE_S = 60.0

# ---------------------------------------------------------------------------------------------------------
# The Pacific quota day


def pacific_day(now: float) -> datetime.date:
    """The Pacific calendar date (the Gemini quota day) at epoch ``now``."""
    return datetime.datetime.fromtimestamp(now, PACIFIC).date()


def _pacific_midnight(day: datetime.date) -> float:
    # DST switches happen at 02:00 in Los Angeles, so 00:00 always exists exactly once: no fold/gap handling.
    return datetime.datetime(day.year, day.month, day.day, tzinfo=PACIFIC).timestamp()


def pacific_day_start(now: float) -> float:
    """Epoch of the 00:00 America/Los_Angeles that began the quota day of ``now``."""
    return _pacific_midnight(pacific_day(now))


def next_pacific_midnight(now: float) -> float:
    """Epoch of the first 00:00 America/Los_Angeles strictly after ``now`` (23/25-hour days included)."""
    # Calendar arithmetic on the date, not "+24h", is what makes DST change days come out right.
    return _pacific_midnight(pacific_day(now) + datetime.timedelta(days=1))


# ---------------------------------------------------------------------------------------------------------
# 429 bodies

Kind = Literal["minute", "day", "tokens", "unknown"]
# Which violation wins when a 429 lists several: the one that keeps the quota closed longest.
_SEVERITY: dict[str, int] = {"unknown": 0, "minute": 1, "tokens": 2, "day": 3}


@dataclass(frozen=True)
class QuotaViolation:
    """What a 429 says: which limit tripped, how long to wait, and the limit's value when given."""

    kind: Kind
    quota_id: str | None
    retry_delay_s: float | None
    limit: int | None
    model: str | None


_UNKNOWN = QuotaViolation("unknown", None, None, None, None)
# What a wait Google states can mean: no quota of Google's resets later than the next Pacific midnight (at most 25 h
# away, on the day DST ends), and a per-minute one within two minutes. A larger stated wait is noise or hostile; it
# must not cool a key for ever, nor reach a timestamp or a Retry-After header.
MAX_WAIT_S = 25 * 3600.0
MINUTE_WAIT_S = 120.0

_PROTO_DURATION = re.compile(r"\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*s?\s*")
_RETRY_IN = re.compile(r"retry in\s+((?:\d+(?:\.\d+)?(?:ns|us|µs|μs|ms|s|m|h))+)", re.IGNORECASE)
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS: dict[str, float] = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
# "* Quota exceeded for metric: <metric>, limit: 10, model: gemini-2.5-flash"
_MSG_LIMIT = re.compile(
    r"(?:metric:\s*([^\s,]+),\s*)?limit:\s*(\d+)(?:,\s*model:\s*([A-Za-z0-9._\-/]+))?", re.IGNORECASE
)


def _classify(quota_id: str) -> Kind:
    q = quota_id.lower()
    if "perday" in q:
        return "day"
    if "perminute" in q:
        return "tokens" if "token" in q else "minute"
    return "unknown"


def _parse_duration(value: object) -> float | None:
    """A protobuf Duration in JSON ("37s", "1.5s") or object form ({"seconds", "nanos"})."""
    seconds: float | None = None
    if isinstance(value, str):
        m = _PROTO_DURATION.fullmatch(value)
        if m:
            seconds = float(m.group(1))
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, dict):
        s, n = value.get("seconds", 0), value.get("nanos", 0)
        try:
            seconds = float(s) + float(n) / 1e9
        except (TypeError, ValueError):
            return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _parse_message_delay(message: str) -> float | None:
    # The message uses Go-style durations ("37.312805215s"; "1m2s" and "850ms" are valid in that syntax).
    m = _RETRY_IN.search(message)
    if not m:
        return None
    return sum(float(num) * _GO_UNITS[unit] for num, unit in _GO_DURATION_PART.findall(m.group(1)))


def _parse_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _error_object(body: bytes | str | dict[str, Any] | list[Any] | None) -> dict[str, Any] | None:
    obj: Any = body
    if isinstance(obj, bytes | bytearray):
        obj = obj.decode("utf-8", errors="replace")
    if isinstance(obj, str):
        obj = json.loads(obj)
    if isinstance(obj, list):
        # The OpenAI-compatible surface wraps the Google envelope in a one-element array.
        obj = next((item for item in obj if isinstance(item, dict)), None)
    if not isinstance(obj, dict):
        return None
    err = obj.get("error", obj)
    return err if isinstance(err, dict) else None


def parse_rate_limit(body: bytes | str | dict[str, Any] | list[Any] | None) -> QuotaViolation:
    """Read a Google 429 body; unreadable input gives kind "unknown". Never raises."""
    try:
        return _parse_rate_limit(body)
    except Exception:  # garbage in must never break the request path
        return _UNKNOWN


def _parse_rate_limit(body: bytes | str | dict[str, Any] | list[Any] | None) -> QuotaViolation:
    err = _error_object(body)
    if err is None:
        return _UNKNOWN
    message = err.get("message")
    message = message if isinstance(message, str) else ""
    details = err.get("details")
    details = details if isinstance(details, list) else []

    retry: float | None = None
    violations: list[dict[str, Any]] = []
    for d in details:
        if not isinstance(d, dict):
            continue
        type_ = d.get("@type")
        type_ = type_ if isinstance(type_, str) else ""
        # Matched by @type, never by position: the order of details varies between captures.
        if type_.endswith("RetryInfo") and retry is None:
            retry = _parse_duration(d.get("retryDelay"))
        elif type_.endswith("QuotaFailure"):
            vs = d.get("violations")
            if isinstance(vs, list):
                violations.extend(v for v in vs if isinstance(v, dict))
    if retry is None:
        retry = _parse_message_delay(message)
    if retry is not None:
        retry = min(retry, MAX_WAIT_S) if math.isfinite(retry) and retry >= 0 else None

    kind: Kind = "unknown"
    chosen: dict[str, Any] | None = None
    for v in violations:
        qid = v.get("quotaId")
        k = _classify(qid) if isinstance(qid, str) else "unknown"
        if chosen is None or _SEVERITY[k] > _SEVERITY[kind]:
            kind, chosen = k, v

    quota_id: str | None = None
    limit: int | None = None
    model: str | None = None
    metric: str | None = None
    if chosen is not None:
        qid = chosen.get("quotaId")
        quota_id = qid if isinstance(qid, str) else None
        limit = _parse_int(chosen.get("quotaValue"))
        dims = chosen.get("quotaDimensions")
        if isinstance(dims, dict) and isinstance(dims.get("model"), str):
            model = dims["model"]
        m = chosen.get("quotaMetric")
        metric = m if isinstance(m, str) else None

    if limit is None or model is None:
        lines = _MSG_LIMIT.findall(message)
        # Prefer the message line for the chosen violation's metric; otherwise the first one.
        line = next((ln for ln in lines if metric and ln[0] == metric), lines[0] if lines else None)
        if line is not None:
            if limit is None:
                limit = int(line[1])
            if model is None and line[2]:
                model = line[2].rstrip(".")

    return QuotaViolation(kind, quota_id, retry, limit, model)


def stated_wait(v: QuotaViolation, now: float) -> float | None:
    """The wait ``v`` states, capped to what its quota can mean (see MAX_WAIT_S); None when it states none."""
    if v.retry_delay_s is None:
        return None
    if v.kind in ("minute", "tokens"):
        return min(v.retry_delay_s, MINUTE_WAIT_S)
    return min(v.retry_delay_s, next_pacific_midnight(now) - now)


def cooldown_until(v: QuotaViolation, now: float, default_s: float) -> float:
    """When a (scope, model) that got ``v`` may be tried again."""
    if v.kind == "day":
        # A per-day 429 still carries a short retryDelay; only the Pacific midnight really clears it.
        return next_pacific_midnight(now)
    if v.kind in ("minute", "tokens"):
        delay = stated_wait(v, now)
        return now + max(1.0, default_s if delay is None else delay)
    return now + default_s


# Keyrack's own 429s, in Google's terms: the quota id of each kind of limit (Google's ids without the tier suffix),
# so that a client reading `QuotaFailure` tells a per-day exhaustion from a per-minute limit as it does with Google's.
QUOTA_IDS: dict[str, str] = {
    "minute": "GenerateRequestsPerMinutePerProjectPerModel",
    "day": "GenerateRequestsPerDayPerProjectPerModel",
    "tokens": "GenerateContentInputTokensPerModelPerMinute",
}
KIND_OF_DIM: dict[str, Kind] = {"rpm": "minute", "rpd": "day", "tpm": "tokens"}


def quota_violation(kind: str, model: str, source: str, limit: int | None, quota_id: str | None) -> dict[str, Any]:
    """One `google.rpc.QuotaFailure` violation for a Keyrack refusal of `kind` ("minute" | "day" | "tokens") on
    `model`; `source` ("configured" | "learned" | "cooldown") names who set the limit in `quotaMetric`, `quota_id`
    (an upstream 429's own) wins over the generic id of the kind."""
    violation: dict[str, Any] = {
        "quotaMetric": f"keyrack/{source}_limit" if source != "cooldown" else "keyrack/upstream_429_cooldown",
        "quotaId": quota_id or QUOTA_IDS[kind],
        "quotaDimensions": {"location": "global", "model": model},
    }
    if limit is not None:
        violation["quotaValue"] = str(limit)
    return violation


# ---------------------------------------------------------------------------------------------------------
# Model limits


@dataclass(frozen=True)
class ModelLimits:
    """Requests/minute, requests/day, tokens/minute; None means unknown or unlimited."""

    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None


# Free tier, reference §6 (third-party Jan 2026 for 2.5, official ~May 2025 for 2.0): a starting point only,
# learned limits and configured overrides take over.
DEFAULT_LIMITS: dict[str, ModelLimits] = {
    "gemini-2.5-flash": ModelLimits(rpm=10, rpd=250, tpm=250_000),
    "gemini-2.5-flash-lite": ModelLimits(rpm=15, rpd=1000, tpm=250_000),
    "gemini-2.5-pro": ModelLimits(rpm=5, rpd=100, tpm=250_000),
    "gemini-2.0-flash": ModelLimits(rpm=15, rpd=1500, tpm=1_000_000),
    "gemini-2.0-flash-lite": ModelLimits(rpm=30, rpd=1500, tpm=1_000_000),
    # A guess: no dated source in the reference gives embedding limits.
    "gemini-embedding-001": ModelLimits(rpm=100, rpd=1000, tpm=None),
}

_UNLIMITED = ModelLimits()


def _strip_models(model: str) -> str:
    return model[7:] if model.startswith("models/") else model


def limits_for(model: str, overrides: Mapping[str, ModelLimits] | None = None) -> ModelLimits:
    """Configured or built-in limits of ``model`` by longest-prefix match; overrides win on equal names."""
    name = _strip_models(model)
    table: dict[str, ModelLimits] = dict(DEFAULT_LIMITS)
    default: ModelLimits | None = None
    if overrides:
        for key, lim in overrides.items():
            if key == "default":
                default = lim
            else:
                table[_strip_models(key)] = lim
    # Longest prefix so that dated/preview names inherit their family while "-lite" keeps its own entry.
    best = max((k for k in table if name.startswith(k)), key=len, default=None)
    if best is not None:
        return table[best]
    return default if default is not None else _UNLIMITED


def is_configured(model: str, overrides: Mapping[str, ModelLimits] | None) -> bool:
    """Whether `limits_for(model, overrides)` comes from the operator's overrides rather than the built-in table."""
    if not overrides:
        return False
    name = _strip_models(model)
    configured = {_strip_models(k) for k in overrides if k != "default"}
    matches = [k for k in (*DEFAULT_LIMITS, *configured) if name.startswith(k)]
    if not matches:
        return "default" in overrides
    longest = max(map(len, matches))
    return any(len(k) == longest and k in configured for k in matches)


# ---------------------------------------------------------------------------------------------------------
# Usage windows


# A window's dead prefix (entries pruned from the minute) is cut off once it is this long and at least as long as the
# live part: each cut moves at most as many entries as it drops.
_COMPACT_AT = 256


class UsageWindow:
    """Requests and tokens of one (scope, model): a sliding 60 s window and the Pacific-day request count."""

    __slots__ = (
        "_day_end",
        "_expires",
        "_o_day",
        "_o_req",
        "_o_tok",
        "_o_until",
        "_req",
        "_req_h",
        "_today",
        "_tok_h",
        "_tok_n",
        "_tok_sum",
        "_tok_t",
    )

    def __init__(self) -> None:
        # The window's entries are `array[head:]`: pruning moves the head, and the dead prefix is cut off once it is
        # as long as the live part. 8 bytes an entry instead of a deque's pointer to a float or int object (32-36):
        # at a thousand requests a second the minute windows hold tens of thousands of entries.
        self._req = array("d")  # request times, ascending
        self._req_h = 0
        self._tok_t = array("d")  # token entries' times, ascending, and their counts
        self._tok_n = array("q")
        self._tok_h = 0
        self._tok_sum = 0
        self._expires = math.inf  # no entry leaves the minute before this (the per-request calls check only this)
        self._today = 0
        self._day_end = -math.inf  # forces the first call to compute the current quota day
        # Cluster mode: other replicas' calls as Redis last counted them (0 when embedded). The minute figures hold
        # until `_o_until` (60 s after the count), the day's until the day ends.
        self._o_req = self._o_tok = self._o_day = 0
        self._o_until = -math.inf

    def _prune(self, now: float) -> None:
        # `t + 60 <= now` (not `t <= now - 60`) so that a request at t is gone at exactly t + 60, the same
        # float that next_minute_slot() reports.
        if now < self._expires:
            return
        req, h = self._req, self._req_h
        n = len(req)
        while h < n and req[h] + MINUTE_S <= now:
            h += 1
        if h >= _COMPACT_AT and h + h >= n:
            del req[:h]
            h = 0
        self._req_h = h
        expires = req[h] + MINUTE_S if h < len(req) else math.inf
        tok_t, h = self._tok_t, self._tok_h
        n = len(tok_t)
        if h < n and tok_t[h] + MINUTE_S <= now:
            tok_n, dropped = self._tok_n, 0
            while h < n and tok_t[h] + MINUTE_S <= now:
                dropped += tok_n[h]
                h += 1
            self._tok_sum -= dropped
            if h >= _COMPACT_AT and h + h >= n:
                del tok_t[:h]
                del tok_n[:h]
                h = 0
            self._tok_h = h
        if h < len(tok_t) and tok_t[h] + MINUTE_S < expires:
            expires = tok_t[h] + MINUTE_S
        self._expires = expires

    def _roll_day(self, now: float) -> None:
        # Only a forward move past the day's end resets; a small backwards clock step keeps today's count.
        if now >= self._day_end:
            self._day_end = next_pacific_midnight(now)
            self._today = self._o_day = 0

    def record(self, now: float, tokens: int = 0) -> None:
        """Count one request at ``now`` (and its tokens, when already known)."""
        self._roll_day(now)
        self._prune(now)
        req = self._req
        # Keep the window sorted even if callers' clocks interleave, so pruning from the left stays exact.
        t = now if len(req) == self._req_h or now >= req[-1] else req[-1]
        req.append(t)
        if t + MINUTE_S < self._expires:
            self._expires = t + MINUTE_S
        self._today += 1
        if tokens > 0:
            self.add_tokens(now, tokens)

    def forget_last(self, now: float) -> None:
        """Un-count the newest request: it was refused (429), and a refused request uses no quota upstream."""
        self._prune(now)
        if len(self._req) > self._req_h:
            self._req.pop()
        if self._today > 0 and now < self._day_end:
            self._today -= 1

    def observe_shared(self, requests: int, tokens: int, today: int, now: float) -> None:
        """Cluster mode: the window as Redis counts it for every replica; what is not this replica's own counts as
        the others' share, so ranking and the shown usage are cluster-wide."""
        self._roll_day(now)
        self._prune(now)
        self._o_req = max(0, requests - (len(self._req) - self._req_h))
        self._o_tok = max(0, tokens - self._tok_sum)
        self._o_day = max(0, today - self._today)
        self._o_until = now + MINUTE_S

    def restore(self, today: int, recent: list[float], now: float) -> None:
        """Add calls made before a restart: `today` on the current quota day, `recent` their times in the last 60 s."""
        self._roll_day(now)
        self._today += today
        live = self._req[self._req_h :]
        self._req = array("d", sorted([*live, *(t for t in recent if t + MINUTE_S > now)]))
        self._req_h = 0
        if self._req:
            self._expires = min(self._expires, self._req[0] + MINUTE_S)

    def add_tokens(self, now: float, tokens: int) -> None:
        """Add tokens learned from an answer to the minute window."""
        if tokens <= 0:
            return
        self._prune(now)
        tok_t = self._tok_t
        t = now if len(tok_t) == self._tok_h or now >= tok_t[-1] else tok_t[-1]
        tok_t.append(t)
        if t + MINUTE_S < self._expires:
            self._expires = t + MINUTE_S
        self._tok_n.append(tokens)
        self._tok_sum += tokens

    def requests_last_minute(self, now: float) -> int:
        """Requests in the 60 s before ``now``."""
        self._prune(now)
        return len(self._req) - self._req_h + (self._o_req if now < self._o_until else 0)

    def tokens_last_minute(self, now: float) -> int:
        """Tokens in the 60 s before ``now``."""
        self._prune(now)
        return self._tok_sum + (self._o_tok if now < self._o_until else 0)

    def requests_today(self, now: float) -> int:
        """Requests since the last Pacific midnight."""
        self._roll_day(now)
        return self._today + self._o_day

    def next_minute_slot(self, now: float) -> float:
        """When the oldest request leaves the minute window (``now`` if the window is empty)."""
        self._prune(now)
        return self._req[self._req_h] + MINUTE_S if len(self._req) > self._req_h else now

    def day_end(self, now: float) -> float:
        """The next Pacific midnight (cached)."""
        self._roll_day(now)
        return self._day_end

    def free_fraction(self, rpm: int | None, rpd: int | None, tpm: int | None, now: float) -> float:
        """Free fraction of the tightest given limit, clamped to [0, 1]; 1.0 when all are None."""
        # The per-request hot path: one prune, no helper calls.
        h = 1.0
        if rpm is not None or tpm is not None:
            self._prune(now)
            shared = now < self._o_until
            if rpm is not None:
                if rpm <= 0:
                    return 0.0
                f = (rpm - (len(self._req) - self._req_h) - (self._o_req if shared else 0)) / rpm
                if f < h:
                    h = f
            if tpm is not None:
                if tpm <= 0:
                    return 0.0
                f = (tpm - self._tok_sum - (self._o_tok if shared else 0)) / tpm
                if f < h:
                    h = f
        if rpd is not None:
            if rpd <= 0:
                return 0.0
            if now >= self._day_end:
                self._roll_day(now)
            f = (rpd - self._today - self._o_day) / rpd
            if f < h:
                h = f
        return h if h > 0.0 else 0.0

    def requests_below_at(self, limit: int, now: float) -> float:
        """When fewer than ``limit`` requests remain in the minute window."""
        self._prune(now)
        excess = len(self._req) - self._req_h - limit
        if excess < 0:
            return now
        return self._req[self._req_h + excess] + MINUTE_S

    def tokens_below_at(self, limit: int, now: float) -> float:
        """When fewer than ``limit`` tokens remain in the minute window."""
        self._prune(now)
        remaining = self._tok_sum
        if remaining < limit:
            return now
        tok_t, tok_n = self._tok_t, self._tok_n
        for i in range(self._tok_h, len(tok_t)):
            remaining -= tok_n[i]
            if remaining < limit:
                return tok_t[i] + MINUTE_S
        return now  # unreachable: the sum drops to 0 < limit

    def idle(self, now: float) -> bool:
        """Nothing left worth keeping: empty minute window and no requests counted today."""
        self._prune(now)
        return (
            len(self._req) == self._req_h
            and len(self._tok_t) == self._tok_h
            and (self._today == 0 or now >= self._day_end)
        )


# ---------------------------------------------------------------------------------------------------------
# The tracker

_DIM_OF_KIND: dict[str, str] = {"minute": "rpm", "day": "rpd", "tokens": "tpm"}


class _Entry:
    __slots__ = ("hard", "learned", "rpd", "rpm", "tpm", "version", "window", "zero_until")

    def __init__(self) -> None:
        self.window = UsageWindow()
        self.learned: dict[str, int] = {}  # this scope's own learned limits by dimension
        self.zero_until = 0.0  # a learned "limit: 0" blocks the scope until this Pacific midnight
        # Resolved limits cached for the hot path; valid while version == tracker version.
        self.version = -1
        self.rpm: int | None = None
        self.rpd: int | None = None
        self.tpm: int | None = None
        # The subset that may refuse a call: configured or learned, never the built-in table's guess.
        self.hard = _UNLIMITED


class QuotaTracker:
    """Usage and limits per (scope, model); scope is a project name or, for project-less keys, a key id.

    Two views of the limits: the effective ones (learned > configured > built-in table) order the choice between
    keys (`headroom`); the hard ones (learned > configured, never the table) are the only ones that refuse a call
    (`available_at`). The built-in free-tier table is a guess: a paid project has far higher limits.
    """

    # Drop idle entries when the table grows past this (then past twice its live size): keeps memory bounded
    # under churn of scopes/models while staying amortised O(1).
    _PRUNE_FLOOR = 4096

    def __init__(self, overrides: Mapping[str, ModelLimits] | None = None) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._model_learned: dict[str, dict[str, int]] = {}  # model-wide learned defaults
        self._base: dict[str, tuple[ModelLimits, bool]] = {}  # per model: (limits_for(), configured?) cache
        self._overrides: dict[str, ModelLimits] = {}
        self._guess_disproven: set[str] = set()  # models whose built-in limits proved too low
        self._version = 0
        self._prune_at = self._PRUNE_FLOOR
        self.set_overrides(overrides)

    def set_overrides(self, overrides: Mapping[str, ModelLimits] | None) -> None:
        """Replace the configured per-model limits (learned limits still win)."""
        self._overrides = dict(overrides or {})
        self._base.clear()
        self._version += 1

    # -- bookkeeping

    def _entry(self, scope: str, model: str, now: float) -> _Entry:
        key = (scope, model)
        e = self._entries.get(key)
        if e is None:
            if len(self._entries) >= self._prune_at:
                self.prune(now)
                self._prune_at = max(self._PRUNE_FLOOR, 2 * len(self._entries))
            e = self._entries[key] = _Entry()
        return e

    def prune(self, now: float) -> int:
        """Forget (scope, model) pairs with no recent usage and nothing learned; returns how many."""
        dead = []
        for k, e in self._entries.items():
            if e.zero_until and now >= e.zero_until:
                self._resolve(e, k[1], now)  # an expired "limit: 0" must not pin the entry forever
            if not e.learned and not e.zero_until and e.window.idle(now):
                dead.append(k)
        for k in dead:
            del self._entries[k]
        return len(dead)

    def _base_limits(self, model: str) -> tuple[ModelLimits, bool]:
        """(configured or built-in limits of `model`, whether they are configured)."""
        base = self._base.get(model)
        if base is None:
            configured = is_configured(model, self._overrides)
            if model in self._guess_disproven and not configured:
                base = (_UNLIMITED, False)
            else:
                base = (limits_for(model, self._overrides), configured)
            self._base[model] = base
        return base

    def disprove_guess(self, model: str) -> None:
        """A call succeeded past the built-in table's limit: this user's tier is higher, so the table is ignored
        for `model` from now on (configured limits still hold, and a 429 teaches the real one)."""
        self._guess_disproven.add(_strip_models(model))
        self._base.clear()
        self._version += 1

    def note_success(self, scope: str, model: str, now: float) -> None:
        """An answer came back on (scope, model): if the window already holds more than a built-in (guessed) limit
        allows, the guess is wrong for this user and is dropped."""
        model = _strip_models(model)
        if model in self._guess_disproven:
            return
        base, configured = self._base_limits(model)
        e = self._entries.get((scope, model))
        if configured or e is None:
            return
        own, ml = e.learned, self._model_learned.get(model, {})
        w = e.window
        beyond = (
            ("rpm" not in own and "rpm" not in ml and base.rpm is not None and w.requests_last_minute(now) > base.rpm)
            or ("rpd" not in own and "rpd" not in ml and base.rpd is not None and w.requests_today(now) > base.rpd)
            or ("tpm" not in own and "tpm" not in ml and base.tpm is not None and w.tokens_last_minute(now) > base.tpm)
        )
        if beyond:
            self.disprove_guess(model)

    def _model_limits(self, model: str) -> ModelLimits:
        """Effective limits for a scope that learned nothing itself."""
        base, _ = self._base_limits(model)
        ml = self._model_learned.get(model)
        if not ml:
            return base
        return ModelLimits(ml.get("rpm", base.rpm), ml.get("rpd", base.rpd), ml.get("tpm", base.tpm))

    def _model_hard(self, model: str) -> ModelLimits:
        """Hard limits for a scope that learned nothing itself: learned model-wide > configured; no table guess."""
        base, configured = self._base_limits(model)
        b = base if configured else _UNLIMITED
        ml = self._model_learned.get(model)
        if not ml:
            return b
        return ModelLimits(ml.get("rpm", b.rpm), ml.get("rpd", b.rpd), ml.get("tpm", b.tpm))

    def _resolve(self, e: _Entry, model: str, now: float) -> None:
        if e.zero_until and now >= e.zero_until:
            # The "no quota" verdict lasts one quota day; then the scope gets one more chance.
            e.zero_until = 0.0
            e.learned = {d: v for d, v in e.learned.items() if v != 0}
        m = self._model_limits(model)
        own = e.learned
        e.rpm = own.get("rpm", m.rpm)
        e.rpd = own.get("rpd", m.rpd)
        e.tpm = own.get("tpm", m.tpm)
        h = self._model_hard(model)
        e.hard = ModelLimits(own.get("rpm", h.rpm), own.get("rpd", h.rpd), own.get("tpm", h.tpm))
        e.version = self._version

    def _ready(self, scope: str, model: str, now: float) -> _Entry | None:
        e = self._entries.get((scope, model))
        if e is not None and (e.version != self._version or (e.zero_until and now >= e.zero_until)):
            self._resolve(e, model, now)
        return e

    # -- recording and learning

    def record(self, scope: str, model: str, now: float, tokens: int = 0) -> None:
        """Count one request sent on (scope, model)."""
        self._entry(scope, _strip_models(model), now).window.record(now, tokens)

    def observe_shared(self, scope: str, model: str, requests: int, tokens: int, today: int, now: float) -> None:
        """Cluster mode: (scope, model)'s minute and day counts as Redis has them for every replica."""
        self._entry(scope, _strip_models(model), now).window.observe_shared(requests, tokens, today, now)

    def restore(self, scope: str, model: str, today: int, recent: list[float], now: float) -> None:
        """Seed (scope, model) with the calls it made before a restart (the windows live in memory)."""
        self._entry(scope, _strip_models(model), now).window.restore(today, recent, now)

    def forget(self, scope: str, model: str, now: float) -> None:
        """Un-count a request recorded on (scope, model) that upstream refused with a 429.

        Upstream counts only admitted calls. Left counted, a refused call keeps its slot "used" for 60 s (one lost
        request per 429) and inflates a limit learned from observed usage by one. The newest entry is removed: the
        refused call's own entry or one at most one 429 round trip younger.
        """
        e = self._entries.get((scope, _strip_models(model)))
        if e is not None:
            e.window.forget_last(now)

    def add_tokens(self, scope: str, model: str, now: float, tokens: int) -> None:
        """Add the tokens of an answer to (scope, model)'s minute window."""
        self._entry(scope, _strip_models(model), now).window.add_tokens(now, tokens)

    def learn(self, scope: str, model: str, violation: QuotaViolation, now: float) -> None:
        """Learn a limit from a 429: its quotaValue, else the usage observed when it tripped."""
        model = _strip_models(model)
        dim = _DIM_OF_KIND.get(violation.kind)
        if violation.limit == 0:
            # No quota at all for this scope (e.g. no free tier for the model). Kept per scope, not
            # model-wide: another project (billing on) may have quota, and a wrong guess locks out every key.
            e = self._entry(scope, model, now)
            e.zero_until = next_pacific_midnight(now)
            if dim is not None:
                e.learned[dim] = 0
            self._version += 1
            return
        if dim is None:
            return  # "unknown" says nothing about any dimension
        value = violation.limit
        if value is None:
            e0 = self._entries.get((scope, model))
            if e0 is None:
                return
            w = e0.window
            value = (
                w.requests_last_minute(now)
                if dim == "rpm"
                else w.tokens_last_minute(now)
                if dim == "tpm"
                else w.requests_today(now)
            )
            if value <= 0:
                return  # nothing observed (e.g. after a restart): learning 0 would block the scope
        self._entry(scope, model, now).learned[dim] = value
        # Tiers are usually the same across a user's projects: a good guess for scopes that learned nothing.
        self._model_learned.setdefault(model, {})[dim] = value
        self._version += 1

    # -- queries

    def scopes(self) -> list[tuple[str, str]]:
        """The (scope, model) pairs with recorded usage or learned limits (read-only; for alert rules)."""
        return list(self._entries)

    def limits(self, scope: str, model: str) -> ModelLimits:
        """Effective limits: learned for the scope > learned model-wide > override > built-in.

        A learned ``limit: 0`` shows as 0 until a call that takes ``now`` sees that its day is over.
        """
        model = _strip_models(model)
        e = self._entries.get((scope, model))
        if e is None:
            return self._model_limits(model)
        m = self._model_limits(model)
        own = e.learned
        return ModelLimits(own.get("rpm", m.rpm), own.get("rpd", m.rpd), own.get("tpm", m.tpm))

    def sources(self, scope: str, model: str) -> dict[str, str | None]:
        """`limit_source` of each dimension: {"rpm": ..., "rpd": ..., "tpm": ...}."""
        return {dim: self.limit_source(scope, model, dim) for dim in ("rpm", "rpd", "tpm")}

    def headroom(self, scope: str, model: str, now: float) -> float:
        """Free fraction of the tightest known dimension, in [0, 1]; 1.0 when no limit is known."""
        if model.startswith("models/"):
            model = model[7:]
        e = self._entries.get((scope, model))
        if e is None:
            lim = self._model_limits(model)
            return 0.0 if lim.rpm == 0 or lim.rpd == 0 or lim.tpm == 0 else 1.0
        if e.version != self._version or e.zero_until:
            if now < e.zero_until:
                return 0.0
            self._resolve(e, model, now)
        return e.window.free_fraction(e.rpm, e.rpd, e.tpm, now)

    def available_at(self, scope: str, model: str, now: float) -> float:
        """``now`` when no hard (configured or learned) limit of (scope, model) is used up, else the epoch when the
        last one that is frees up. The built-in table never delays a call, so it plays no part here."""
        model = _strip_models(model)
        e = self._ready(scope, model, now)
        if e is None:
            h = self._model_hard(model)
            return next_pacific_midnight(now) if 0 in (h.rpm, h.rpd, h.tpm) else now
        if e.zero_until and now < e.zero_until:
            return e.zero_until
        w = e.window
        rpm, rpd, tpm = e.hard.rpm, e.hard.rpd, e.hard.tpm
        if 0 in (rpm, rpd, tpm):
            # A configured zero never clears by itself; look again on the next quota day.
            return w.day_end(now)
        at = now
        if rpd is not None and w.requests_today(now) >= rpd:
            at = max(at, w.day_end(now))
        if rpm is not None:
            at = max(at, w.requests_below_at(rpm, now))
        if tpm is not None:
            at = max(at, w.tokens_below_at(tpm, now))
        return at

    def refusal(self, scope: str, model: str, now: float) -> tuple[str, int, float] | None:
        """The hard limit that refuses (scope, model) at ``now``: (dimension, its value, when it frees up), the one
        that frees up last (as `available_at`); None when no hard limit is used up."""
        model = _strip_models(model)
        e = self._ready(scope, model, now)
        if e is None:
            h = self._model_hard(model)
            dim = next((d for d in ("rpd", "rpm", "tpm") if getattr(h, d) == 0), None)
            return None if dim is None else (dim, 0, next_pacific_midnight(now))
        if e.zero_until and now < e.zero_until:
            return (next((d for d, v in e.learned.items() if v == 0), "rpd"), 0, e.zero_until)
        w, hard = e.window, e.hard
        dim = next((d for d in ("rpd", "rpm", "tpm") if getattr(hard, d) == 0), None)
        if dim is not None:
            return (dim, 0, w.day_end(now))
        found: tuple[str, int, float] | None = None
        if hard.rpd is not None and w.requests_today(now) >= hard.rpd:
            found = ("rpd", hard.rpd, w.day_end(now))
        for dim, limit, at in (
            ("rpm", hard.rpm, w.requests_below_at(hard.rpm, now) if hard.rpm is not None else now),
            ("tpm", hard.tpm, w.tokens_below_at(hard.tpm, now) if hard.tpm is not None else now),
        ):
            if limit is not None and at > now and (found is None or at > found[2]):
                found = (dim, limit, at)
        return found

    def usage(self, scope: str, model: str, now: float) -> dict[str, int | float | str | None]:
        """Used and limit per dimension plus headroom, for the admin API."""
        model = _strip_models(model)
        e = self._ready(scope, model, now)  # expire a stale "limit: 0" before reporting limits
        lim = self.limits(scope, model)
        w = e.window if e is not None else None
        src = self.sources(scope, model)
        return {
            "rpm_used": w.requests_last_minute(now) if w else 0,
            "rpm_limit": lim.rpm,
            "rpd_used": w.requests_today(now) if w else 0,
            "rpd_limit": lim.rpd,
            "tpm_used": w.tokens_last_minute(now) if w else 0,
            "tpm_limit": lim.tpm,
            "headroom": self.headroom(scope, model, now),
            "rpm_source": src["rpm"],
            "rpd_source": src["rpd"],
            "tpm_source": src["tpm"],
            # Seconds until a hard limit lets a call through (0: now); cooldowns after a 429 are the pool's.
            "available_in_s": max(0.0, self.available_at(scope, model, now) - now),
        }

    # -- read-only views for the forecasts (never on the request path)

    def pairs(self) -> list[tuple[str, str]]:
        """Every (scope, model) the tracker holds state for."""
        return list(self._entries)

    def limit_source(self, scope: str, model: str, dim: str) -> str | None:
        """Where the effective `dim` limit ("rpm" | "rpd" | "tpm") of (scope, model) comes from: "learned" (a 429),
        "configured" (the operator), "builtin" (the free-tier table), or None when no limit is known."""
        model = _strip_models(model)
        e = self._entries.get((scope, model))
        if (e is not None and dim in e.learned) or dim in self._model_learned.get(model, {}):
            return "learned"
        base, configured = self._base_limits(model)
        if getattr(base, dim) is None:
            return None
        # "builtin" orders the choice only; "configured" and "learned" limits are the ones that refuse.
        return "configured" if configured else "builtin"
