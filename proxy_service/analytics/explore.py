"""Explore: measures × up to two dimensions, with filters, a time range, top N and compare-with-previous-period.

The request (`Spec`) is validated here against allow-lists, so the only text assembled into SQL is identifiers and
fragments chosen from them; values travel as parameters (the "open in SQL" text inlines them as quoted literals for
display, see `sql_text`).

Sources (`plan`): whole local days and whole UTC hours come from the pre-aggregates (`preagg.py`, exact counters +
±2 % histograms) when they hold the query's set, the rest from raw `requests` rows. A top N of keys reads the top
keys alone and the query without the key, "(other)" being the difference (`_split`). Percentiles from raw rows
alone: a histogram per group or `quantile_disc` per group (`_raw_percentiles`). Time dimensions are local to the
display zone (DST-exact: the offset is a CASE over its changes), computed in integer microseconds (`_local`).
See docs/ARCHITECTURE.md, "Explore", for which shapes read what.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from proxy_service.analytics import preagg, preagg_read, queries
from proxy_service.analytics.answers import ResultTable, infer
from proxy_service.analytics.histogram import GAMMA, lb_sql, percentiles

OTHER = "(other)"
MAX_ROWS = 50_000
DRILL_LIMIT = 1000
# name → SQL over the summed counters
COUNTER_MEASURES: dict[str, str] = {
    "calls": "calls",
    "successes": "successes",
    "success_rate": "successes / nullif(calls, 0)",
    "error_rate": "1 - successes / nullif(calls, 0)",
    "exhausted": "exhausted",
    "attempts_per_call": "attempts / nullif(calls, 0)",
    "upstream_429s": "upstream_429s",
    "prompt_tokens": "prompt_tokens",
    "output_tokens": "output_tokens",
    "thinking_tokens": "thinking_tokens",
    "cached_tokens": "cached_tokens",
    "total_tokens": "total_tokens",
    "tokens_per_call": "total_tokens / nullif(calls, 0)",
    "request_bytes": "request_bytes",
    "response_bytes": "response_bytes",
    "avg_latency_ms": "latency_sum / nullif(latency_n, 0)",
    "avg_ttfb_ms": "ttfb_sum / nullif(ttfb_n, 0)",
    "cost_usd": "cost_sum",  # estimated spend (0 on the free tier)
    "list_cost_usd": "list_cost_sum",  # the same calls at list price
}
# name → (histogram metric, quantile)
PERCENTILE_MEASURES: dict[str, tuple[str, float]] = {
    "p50_latency_ms": ("l", 0.5),
    "p95_latency_ms": ("l", 0.95),
    "p99_latency_ms": ("l", 0.99),
    "p50_ttfb_ms": ("t", 0.5),
    "p95_ttfb_ms": ("t", 0.95),
}
MEASURES = (*COUNTER_MEASURES, *PERCENTILE_MEASURES)
TIME_BUCKETS = ("hour", "day", "week", "month")
CLOCK_DIMS = ("hour_of_day", "day_of_week")
TEXT_DIMS = (
    "model",
    "project",
    "key",
    "client",
    "surface",
    "operation",
    "stream",
    "outcome",
    "status",
    "resource",
    "tier",  # read from raw rows (not pre-aggregated): spend by tier is a question of a few days, not of years
)
DIMENSIONS = (*TEXT_DIMS, *CLOCK_DIMS, *TIME_BUCKETS)
DAY_DIMS = {"day_of_week", "day", "week", "month"}  # time dimensions a local day determines
_RAW_TEXT = {**preagg.RAW_DIMS, "key": "coalesce(key_id, '')", "tier": "coalesce(tier, '')"}
# A group's key in both the counters and the histogram (the same expression over d0, d1 of the same types).
GROUP_KEY = "hash(d0, d1)"
_SUM_TYPES = {s: ("DOUBLE" if s.endswith("_sum") else "BIGINT") for s in preagg.SUMS}


class ExploreTimeout(Exception):
    """The answer's deadline passed while Python built or encoded it (after the DuckDB read, which the cursor's
    interrupt bounds): the same 408 as an interrupted read."""


CHECK_EVERY = 4096  # rows built or encoded between two deadline checks


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ExploreTimeout


class ExploreError(ValueError):
    """A request Explore cannot answer; `field` names the part of the request at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Spec:
    measures: tuple[str, ...]
    dimensions: tuple[str, ...]
    lo: datetime  # naive UTC, inclusive
    hi: datetime  # naive UTC, exclusive
    filters: dict[str, list[Any]] = field(default_factory=dict)  # normalised: values as the dimension's SQL compares
    compare: bool = False
    top_n: int | None = None
    open_end: bool = (
        False  # `hi` is now: nothing newer exists, so the current hour may be read whole from the pre-aggregates
    )
    folded: tuple[str, ...] = ()  # dimensions whose every value reads as OTHER: not read from the rows at all


# -- validation ----------------------------------------------------------------------------------------------------
def _names(value: Any, allowed: Sequence[str], what: str, lo: int, hi: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ExploreError(f"{what} must be a list of names, e.g. [{allowed[0]!r}]", what)
    if not lo <= len(value) <= hi:
        raise ExploreError(f"{what}: give {lo} to {hi} names (got {len(value)})", what)
    for v in value:
        if v not in allowed:
            raise ExploreError(f"{what}: unknown name {v[:80]!r} (known: {', '.join(allowed)})", what)
    if len(set(value)) != len(value):
        raise ExploreError(f"{what}: each name at most once", what)
    return tuple(value)


def parse_spec(
    body: dict[str, Any], tz: ZoneInfo, now: datetime, labels: dict[str, str] | None = None
) -> tuple[Spec, str]:
    """A validated Spec and the answer format from an explore request body (see the contract)."""
    known = {"measures", "dimensions", "filters", "from", "to", "compare", "top_n", "format"}
    for name in body:
        if name not in known:
            raise ExploreError(f"unknown field {name[:80]!r} (known: {', '.join(sorted(known))})", name)
    measures = _names(body.get("measures"), MEASURES, "measures", 1, len(MEASURES))
    dimensions = _names(body.get("dimensions", []), DIMENSIONS, "dimensions", 0, 2)
    hi = _time(body.get("to"), "to") or now
    lo = _time(body.get("from"), "from") or hi - timedelta(days=7)
    if lo >= hi:
        raise ExploreError("from must be before to", "from")
    if hi - lo > timedelta(days=3660):
        raise ExploreError("the range may span at most 10 years", "from")
    compare = body.get("compare")
    if compare not in (None, "previous_period"):
        raise ExploreError(f"compare must be 'previous_period' or absent (got {str(compare)[:40]!r})", "compare")
    top_n = body.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= 1000):
        raise ExploreError("top_n must be an integer from 1 to 1000", "top_n")
    fmt = body.get("format", "json")
    if fmt not in ("json", "arrow"):
        raise ExploreError(f"format must be json or arrow (got {str(fmt)[:40]!r})", "format")
    filters = parse_filters(body.get("filters") or {}, tz, labels or {})
    return Spec(measures, dimensions, lo, hi, filters, compare == "previous_period", top_n, hi >= now), fmt


def _time(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ExploreError(f"{name} must be an ISO-8601 date or time such as 2026-01-31T12:00:00Z", name)
    text = value.strip()
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ExploreError(f"{name}: {value[:60]!r} is not an ISO-8601 date or time", name) from None
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def parse_filters(raw: Any, tz: ZoneInfo, labels: dict[str, str]) -> dict[str, list[Any]]:
    """{dimension: [values]} → values typed as each dimension's SQL expression compares them."""
    if not isinstance(raw, dict):
        raise ExploreError('filters must be an object like {"model": ["gemini-2.5-flash"]}', "filters")
    out: dict[str, list[Any]] = {}
    for dim, values in raw.items():
        where = f"filters.{str(dim)[:40]}"
        if dim not in DIMENSIONS:
            raise ExploreError(f"filters: unknown dimension {str(dim)[:80]!r} (known: {', '.join(DIMENSIONS)})", where)
        if not isinstance(values, list) or not values or len(values) > 10_000:
            raise ExploreError(f"{where} must be a list of 1 to 10,000 values", where)
        out[dim] = [_filter_value(dim, v, tz, where) for v in values]
        if dim == "client":  # a label stands for every client id that carries it
            ids = {i for i, label in labels.items() if label in out[dim]}
            out[dim] = sorted(set(out[dim]) | ids)
    return out


def _filter_value(dim: str, v: Any, tz: ZoneInfo, where: str) -> Any:
    if dim in TEXT_DIMS:
        if v is None:
            return ""
        if dim == "stream" and isinstance(v, bool):
            return "true" if v else "false"
        if dim == "status" and isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, str) and len(v) <= 1000:
            return v
        raise ExploreError(f"{where}: values must be strings of at most 1,000 characters or null", where)
    if dim in CLOCK_DIMS:
        top = 23 if dim == "hour_of_day" else 7
        if isinstance(v, int) and not isinstance(v, bool) and (0 if dim == "hour_of_day" else 1) <= v <= top:
            return v
        raise ExploreError(f"{where}: values must be integers ({'0-23' if top == 23 else '1 (Monday) to 7'})", where)
    t = _time(v, where) if isinstance(v, str) else None
    if t is None:
        raise ExploreError(f"{where}: values must be ISO-8601 bucket starts", where)
    return queries.floor_local(queries.to_local(t, tz), dim)  # local naive bucket start, as the SQL computes it


# -- SQL fragments -------------------------------------------------------------------------------------------------
@dataclass
class Frag:
    sql: str
    params: list[Any]


def _local(col: str, offs: queries.Offsets) -> Frag:
    """`col` (naive UTC) as local wall-clock microseconds since the epoch in the display zone. Integer arithmetic:
    cheaper on large files than adding an interval to the timestamp and truncating that (bench/explore.py)."""
    if not offs.changes:
        return Frag(f"(epoch_us({col}) + ?)", [offs.first * 1_000_000])
    whens, params, previous = [], [], offs.first
    for instant, offset in offs.changes:
        whens.append(f"WHEN {col} < ? THEN ?")
        params += [instant, previous * 1_000_000]
        previous = offset
    return Frag(f"(epoch_us({col}) + CASE {' '.join(whens)} ELSE ? END)", [*params, previous * 1_000_000])


_HOUR_US, _DAY_US = 3_600_000_000, 86_400_000_000


def _text(spec: Spec) -> set[str]:
    """The text dimensions the query groups or filters by: the set of pre-aggregates it needs."""
    grouped = [d for d in spec.dimensions if d not in spec.folded]
    return {d for d in (*grouped, *spec.filters) if d in TEXT_DIMS}


def dim_sql(dim: str, part: Part, text: set[str], offs: queries.Offsets) -> Frag:
    """The dimension's value in a pre-aggregated row (of the set `text`) or a raw `requests` row."""
    if dim in TEXT_DIMS:
        return Frag(preagg.column_of(dim, text) if part.grain else _RAW_TEXT[dim], [])
    u = _local("bucket" if part.grain else "ts", offs)
    if dim == "hour_of_day":
        return Frag(f"({u.sql} // {_HOUR_US} % 24)", u.params)
    if dim == "day_of_week":  # 1970-01-01 was a Thursday: ISO 4
        return Frag(f"(({u.sql} // {_DAY_US} + 3) % 7 + 1)", u.params)
    if dim == "week":  # the Monday on or before the day
        day = f"{u.sql} // {_DAY_US}"
        return Frag(f"make_timestamp(({day} - ({day} + 3) % 7) * {_DAY_US})", [*u.params, *u.params])
    if dim == "month":
        return Frag(f"date_trunc('month', make_timestamp({u.sql}))", u.params)
    grain = _HOUR_US if dim == "hour" else _DAY_US
    return Frag(f"make_timestamp({u.sql} // {grain} * {grain})", u.params)


def _where(spec: Spec, part: Part, text: set[str], offs: queries.Offsets) -> Frag:
    params: list[Any] = []
    if part.grain:
        _, cond, params = preagg_read.scan(part.grain, text)
        clauses = [cond, "bucket >= ?", "bucket < ?"]
    else:
        clauses = ["ts >= ?", "ts < ?"]
    params += [part.lo, part.hi]
    for dim, values in spec.filters.items():
        if dim in TEXT_DIMS and not part.grain:
            f = _raw_filter(dim, values)
            clauses.append(f.sql)
            params += f.params
            continue
        d = dim_sql(dim, part, text, offs)
        clauses.append(f"list_contains(?, {d.sql})")
        params += [values, *d.params]
    return Frag(" AND ".join(clauses), params)


_RAW_COLUMN = {"client": "client_id", "key": "key_id", "resource": "resource_kind"}


def _raw_filter(dim: str, values: list[Any]) -> Frag:
    """A text dimension's filter on raw rows, on the column itself in its own type ('' stands for NULL): DuckDB
    evaluates it on the stored values, faster than comparing `coalesce(CAST(col AS VARCHAR), '')` (no cast per row)."""
    col = _RAW_COLUMN.get(dim, dim)
    typed: list[Any] = []
    for v in values:
        if dim == "stream" and v in ("true", "false"):
            typed.append(v == "true")
        elif dim == "status" and v.isascii() and v.isdigit() and str(int(v)) == v and int(v) < 2**15:
            typed.append(int(v))
        elif dim not in ("stream", "status"):
            typed.append(v)  # '' included: an empty text equals '' too
    clauses = [f"list_contains(?, {col})"] if typed else []
    clauses += [f"{col} IS NULL"] if "" in values else []
    return Frag(f"({' OR '.join(clauses)})" if clauses else "false", [typed] if typed else [])


# Raw columns whose text (`coalesce(CAST(col AS VARCHAR), '')`, one to one) costs more per row than grouping by
# the column itself: where the rows are grouped first, their text is made for the groups only.
NATIVE = ("status", "stream")
FEW_GROUPS = 500  # up to this many groups, raw-row percentiles come from histograms (see `_raw_percentiles`)


def _keyed(
    spec: Spec,
    part: Part,
    text: set[str],
    offs: queries.Offsets,
    tops: dict[str, list[str]],
    native: bool = False,
) -> list[Frag]:
    """The SELECT expressions d0, d1 (top-N dimensions fold the rest into OTHER). `native`: NATIVE dimensions of
    raw rows as the column itself (see `_native`)."""
    out = []
    for i, dim in enumerate(spec.dimensions):
        if dim in spec.folded:
            out.append(Frag(f"'{OTHER}' AS d{i}", []))
            continue
        if native and not part.grain and _native(spec, tops, i):
            out.append(Frag(f"{dim} AS d{i}", []))
            continue
        d = dim_sql(dim, part, text, offs)
        if dim in tops:
            d = Frag(
                f"CASE WHEN list_contains(?, {d.sql}) THEN {d.sql} ELSE '{OTHER}' END",
                [tops[dim], *d.params, *d.params],
            )
        out.append(Frag(f"{d.sql} AS d{i}", d.params))
    return out


@dataclass(frozen=True)
class Part:
    """A piece of the range and where it is read: pre-aggregates of `grain` ('d' local days, '1h' hours) or raw
    rows ('')."""

    grain: str
    lo: datetime
    hi: datetime


def plan(spec: Spec, tz: ZoneInfo, zone: str | None, histogram: bool = False) -> tuple[queries.Offsets, list[Part]]:
    """Where each piece of the range is read from: whole local days from the day pre-aggregates when they hold the
    query's set (and, for time dimensions, are in its zone), whole hours from the hourly ones likewise, raw rows for
    the rest. `zone`: the zone of the pre-aggregates' days, None when they cannot be used (rebuilding)."""
    offs = queries.offsets(tz, spec.lo, spec.hi)
    text = _text(spec)
    timed = {d for d in (*spec.dimensions, *spec.filters) if d not in TEXT_DIMS}
    if zone is None:
        return offs, [Part("", spec.lo, spec.hi)]
    hour_ok = preagg.holds(preagg.HOUR, text, histogram) and (not timed or offs.aligned(3600))
    day_ok = preagg.holds(preagg.DAY, text, histogram) and (not timed or (zone == tz.key and timed <= DAY_DIMS))

    def edge(lo: datetime, hi: datetime) -> list[Part]:
        """[lo, hi) by whole hours (up to now: the current hour whole, nothing newer exists) and raw edges."""
        if lo >= hi:
            return []
        if not hour_ok:
            return [Part("", lo, hi)]
        a = queries.ceil_grain(lo, 3600)
        b = queries.ceil_grain(hi, 3600) if spec.open_end and hi == spec.hi else queries.floor_time(hi, 3600)
        if a >= b:
            return [Part("", lo, hi)]
        return [*([Part("", lo, a)] if lo < a else []), Part(preagg.HOUR, a, b), *([Part("", b, hi)] if b < hi else [])]

    if day_ok:
        starts = preagg.day_starts(ZoneInfo(zone), spec.lo, spec.hi)
        inner = [s for s in starts if s >= spec.lo and (s <= spec.hi or spec.open_end)]
        if len(inner) >= 2:
            a, b = inner[0], inner[-1]
            return offs, [*edge(spec.lo, a), Part(preagg.DAY, a, b), *edge(b, spec.hi)]
    return offs, edge(spec.lo, spec.hi)


def _sums(spec: Spec) -> list[str]:
    """The counters the requested measures read (calls always: it decides which groups exist)."""
    exprs = [COUNTER_MEASURES[m] for m in spec.measures if m in COUNTER_MEASURES]
    return [s for s in preagg.SUMS if s == "calls" or any(re.search(rf"\b{s}\b", e) for e in exprs)]


def _counter_parts(spec: Spec, offs: queries.Offsets, parts: list[Part], tops: dict) -> Frag:
    selects, params = [], []
    wanted, text = _sums(spec), _text(spec)
    for part in parts:
        keys = _keyed(spec, part, text, offs, tops)
        where = _where(spec, part, text, offs)
        cols = ", ".join([*(k.sql for k in keys), ""]) if keys else ""
        if part.grain:
            selects.append(f"SELECT {cols}{', '.join(wanted)} FROM {preagg.COUNTERS} WHERE {where.sql}")
            params += [p for k in keys for p in k.params] + where.params
        elif "upstream_429s" in spec.measures:  # the attempts lookup costs a join: only when asked for
            lookup = preagg.upstream_429s_sql("?", "?")
            sums = ", ".join(f"{preagg.RAW_SUMS[s]} AS {s}" for s in wanted)
            selects.append(
                f"SELECT {cols}{sums} FROM requests r LEFT JOIN ({lookup}) u USING (request_id) WHERE {where.sql}"
            )
            params += [p for k in keys for p in k.params] + [part.lo, part.hi] + where.params
        else:
            sums = ", ".join(f"{preagg.RAW_SUMS[s]} AS {s}" for s in wanted)
            selects.append(f"SELECT {cols}{sums} FROM requests r WHERE {where.sql}")
            params += [p for k in keys for p in k.params] + where.params
    return Frag(" UNION ALL ".join(selects), params)


# Top N of these dimensions is read in two parts instead of grouping every value: the top values alone (a filter:
# 10 of 1,000 keys are ~1 % of the raw rows) and the whole range with the dimension folded into OTHER (its set
# without `key`, from the pre-aggregates); "(other)" is the second minus the first, exactly (counters and histogram
# buckets subtract). Grouping 10M raw rows by key and an hour or a latency bucket took over a second (bench/explore.py).
SPLIT = ("key",)


def _split(spec: Spec, tops: dict[str, list[str]]) -> tuple[Spec, Spec, dict[str, list[str]], int] | None:
    """For a top N over a SPLIT dimension: the query of the top values alone, the one with the dimension folded
    wholly into OTHER, the other dimensions' tops and the dimension's position; None when nothing is folded."""
    i = next((i for i, d in enumerate(spec.dimensions) if d in SPLIT and d in tops), None)
    if i is None:
        return None
    dim = spec.dimensions[i]
    others = {d: v for d, v in tops.items() if d != dim}
    return replace(spec, filters={**spec.filters, dim: tops[dim]}), replace(spec, folded=(dim,)), others, i


def _minus_tops(top: Frag, rest: Frag, i: int, n: int, values: list[str], keep: tuple[str, ...] = ()) -> Frag:
    """The rows of `top` (d0..d{n-1}, `keep`, `values`) as they are, again as OTHER in position `i` with `values`
    negated, and the rows of `rest`: summed per group, OTHER holds rest − top."""
    cols = [f"'{OTHER}' AS d{j}" if j == i else f"d{j}" for j in range(n)]
    cols += [*keep, *(f"-{v} AS {v}" for v in values)]
    sql = f"WITH t AS ({top.sql}) SELECT * FROM t UNION ALL SELECT {', '.join(cols)} FROM t UNION ALL {rest.sql}"
    return Frag(sql, [*top.params, *rest.params])


def _counters(
    cur: duckdb.DuckDBPyConnection, spec: Spec, tz: ZoneInfo, zone: str | None, tops: dict
) -> tuple[ResultTable, list[Part]]:
    split = _split(spec, tops)
    if split is None:
        offs, parts = plan(spec, tz, zone)
        union = _counter_parts(spec, offs, parts, tops)
    else:
        top, rest, others, i = split
        offs, top_parts = plan(top, tz, zone)
        _, rest_parts = plan(rest, tz, zone)
        parts = [*top_parts, *rest_parts]
        union = _minus_tops(
            _counter_parts(top, offs, top_parts, others),
            _counter_parts(rest, offs, rest_parts, others),
            i,
            len(spec.dimensions),
            _sums(spec),
        )
    n = len(spec.dimensions)
    dims = [f"d{i}" for i in range(n)]
    sums = ", ".join(f"CAST(coalesce(sum({s}), 0) AS {_SUM_TYPES[s]}) AS {s}" for s in _sums(spec))
    group = f" GROUP BY {', '.join(dims)}" if dims else ""
    blank = [f"'' AS d{i}" for i in range(n, 2)]  # the group key hashes two columns whatever the dimensions
    agg = f"SELECT {', '.join([*dims, *blank])}, {sums} FROM c{group}"
    measures = [f"{COUNTER_MEASURES[m]} AS {m}" for m in spec.measures if m in COUNTER_MEASURES]
    measures += [] if "calls" in spec.measures else ["calls"]
    sql = f"WITH c AS ({union.sql}) SELECT {', '.join([*dims, *measures])}, {GROUP_KEY} AS gk FROM ({agg}) "
    sql += "WHERE calls > 0"
    return ResultTable.fetch(cur.execute(sql, union.params)), parts


def _histogram(
    cur: duckdb.DuckDBPyConnection,
    spec: Spec,
    tz: ZoneInfo,
    zone: str | None,
    tops: dict,
    metric: str,
    by_key: bool = True,
) -> tuple[tuple[str, list[Any]], list[Part]]:
    """The histogram query per group: rows (gk, lb, n) when `by_key`, else (b, g, lb, n) (the groups' values), one
    per cell; its SQL and parameters."""
    split = _split(spec, tops)
    if split is None:
        offs, parts = plan(spec, tz, zone, histogram=True)
        rows = _histogram_parts(spec, offs, parts, tops, metric)
    else:
        top, rest, others, i = split
        offs, top_parts = plan(top, tz, zone, histogram=True)
        _, rest_parts = plan(rest, tz, zone, histogram=True)
        parts = [*top_parts, *rest_parts]
        rows = _minus_tops(
            _histogram_parts(top, offs, top_parts, others, metric),
            _histogram_parts(rest, offs, rest_parts, others, metric),
            i,
            2,
            ["n"],
            ("lb",),
        )
    union = f"WITH h AS ({rows.sql})"
    # A group's buckets can sum to 0 in OTHER (every call of it in the top values): left out, as are empty groups.
    if by_key:  # grouped by the hash alone: half the cost of grouping by the two texts on raw rows
        sql = f"{union}, k AS (SELECT {GROUP_KEY} AS gk, lb, n FROM h) SELECT gk, CAST(lb AS DOUBLE) AS lb, "
        sql += "CAST(sum(n) AS DOUBLE) AS n FROM k GROUP BY gk, lb HAVING sum(n) <> 0"
    else:  # grouped by the values (two groups' hashes collide, which is why this path runs)
        sql = f"{union} SELECT d0 AS b, d1 AS g, CAST(lb AS DOUBLE) AS lb, "
        sql += "CAST(sum(n) AS DOUBLE) AS n FROM h GROUP BY d0, d1, lb HAVING sum(n) <> 0"
    return (sql, rows.params), parts


def _histogram_parts(spec: Spec, offs: queries.Offsets, parts: list[Part], tops: dict, metric: str) -> Frag:
    """The histogram rows (d0, d1, lb, n) of every part, one SELECT each."""
    selects, params = [], []
    col = "latency_ms" if metric == "l" else "ttfb_ms"  # and its stored bucket, latency_lb / ttfb_lb
    n, text = len(spec.dimensions), _text(spec)
    for part in parts:
        keys = _keyed(spec, part, text, offs, tops)
        where = _where(spec, part, text, offs)
        cols = ", ".join([*(k.sql for k in keys), *(f"'' AS d{i}" for i in range(n, 2))])
        if part.grain:
            selects.append(f"SELECT {cols}, lb, n FROM {preagg.HISTOGRAM} WHERE metric = ? AND {where.sql}")
            params += [p for k in keys for p in k.params] + [metric, *where.params]
        else:
            selects.append(
                f"SELECT {cols}, coalesce({col.removesuffix('_ms')}_lb, {lb_sql(col)}) AS lb, 1 AS n FROM requests "
                f"WHERE {col} IS NOT NULL AND {where.sql}"
            )
            params += [p for k in keys for p in k.params] + where.params
    return Frag(" UNION ALL ".join(selects), params)


def _tops(cur: duckdb.DuckDBPyConnection, spec: Spec, tz: ZoneInfo, zone: str | None) -> dict[str, list[str]]:
    """The top_n values by calls of each text dimension (time dimensions are never folded)."""
    out: dict[str, list[str]] = {}
    if spec.top_n is None:
        return out
    for dim in spec.dimensions:
        if dim not in TEXT_DIMS:
            continue
        one = replace(spec, dimensions=(dim,), measures=("calls",))
        table, _ = _counters(cur, one, tz, zone, {})
        ranked = sorted(
            zip(table.column("d0"), table.column("calls"), strict=True),
            key=lambda r: (-r[1], r[0]),
        )
        if len(ranked) > spec.top_n:
            out[dim] = [v for v, _ in ranked[: spec.top_n]]
    return out


# -- answering -----------------------------------------------------------------------------------------------------
@dataclass
class Answer:
    columns: list[str]
    rows: list[list[Any]]
    source: str  # cube | raw | mixed
    timezone: str
    lo: datetime
    hi: datetime
    compare_lo: datetime | None = None
    compare_hi: datetime | None = None
    types: dict[str, str] = field(default_factory=dict)


def _native(spec: Spec, tops: dict[str, list[str]], i: int) -> bool:
    """Whether dimension `i` is read as its raw column, its text made after grouping (not when folded by top N)."""
    dim = spec.dimensions[i]
    return dim in NATIVE and dim not in tops and dim not in spec.folded


def _raw_percentiles(
    cur: duckdb.DuckDBPyConnection,
    spec: Spec,
    offs: queries.Offsets,
    parts: list[Part],
    tops: dict[str, list[str]],
    metric: str,
    qs: tuple[float, ...],
    groups: int,
) -> dict[tuple, tuple[float | None, ...]]:
    """Percentiles per group (d0, d1 values as the counters give them) when every part is raw rows. Many `groups`:
    DuckDB's `quantile_disc` of the rows' stored latency bucket, read back as a histogram's is (±2 %); on large files
    faster than a histogram per group (hour × project: millions of (group, bucket) cells). Few: that histogram,
    grouped by the values (sorting millions of values per group costs more than its ~150 cells)."""
    col = "latency_ms" if metric == "l" else "ttfb_ms"
    n, text = len(spec.dimensions), _text(spec)
    selects, params = [], []
    for part in parts:
        keys = _keyed(spec, part, text, offs, tops, native=True)
        where = _where(spec, part, text, offs)
        cols = "".join(f"{k.sql}, " for k in keys)
        selects.append(
            f"SELECT {cols}coalesce({col.removesuffix('_ms')}_lb, {lb_sql(col)}) AS lb FROM requests "
            f"WHERE {col} IS NOT NULL AND {where.sql}"
        )
        params += [p for k in keys for p in k.params] + where.params
    dims = [f"d{i}" for i in range(n)]
    shown = [f"coalesce(CAST(d{i} AS VARCHAR), '') AS d{i}" if _native(spec, tops, i) else f"d{i}" for i in range(n)]
    rows = " UNION ALL ".join(selects)
    if groups <= FEW_GROUPS:  # a histogram per group, as few cells as the quantiles' sorts would cost
        blank = [f"'' AS d{i}" for i in range(n, 2)]
        cells = f"SELECT {', '.join([*shown, *blank])}, lb, n FROM (SELECT {''.join(f'{d}, ' for d in dims)}lb, "
        cells += f"count(*) AS n FROM ({rows}) GROUP BY ALL)"
        sql = f"SELECT d0 AS b, d1 AS g, CAST(lb AS DOUBLE) AS lb, CAST(n AS DOUBLE) AS n FROM ({cells})"
        found = percentiles(cur, sql, params, qs, ("b", "g"))
        return {(b, g)[:n]: v for (b, g), v in found.items()}
    inner = f"SELECT {''.join(f'{d}, ' for d in dims)}quantile_disc(lb, ?) AS q FROM ({rows})"
    inner += f" GROUP BY {', '.join(dims)}" if dims else ""
    values = ", ".join(f"2 * pow({GAMMA}, q[{i + 1}]) / {GAMMA + 1}" for i in range(len(qs)))  # as `read_back`
    got = cur.execute(
        f"SELECT {''.join(f'{d}, ' for d in shown)}{values} FROM ({inner}) WHERE q IS NOT NULL", [list(qs), *params]
    )
    return {tuple(r[:n]): tuple(r[n:]) for r in got.fetchall()}


def _period(
    cur: duckdb.DuckDBPyConnection,
    spec: Spec,
    tz: ZoneInfo,
    zone: str | None,
    tops: dict | None,
    deadline: float | None = None,
) -> tuple:
    if tops is None:
        tops = _tops(cur, spec, tz, zone)
    table, parts = _counters(cur, spec, tz, zone, tops)
    n = len(spec.dimensions)
    columns = [table.column(f"d{i}") for i in range(n)]
    keys = list(zip(*columns, strict=True)) if n else [()] * table.num_rows
    if len(keys) > MAX_ROWS:
        raise ExploreError(f"the answer would have more than {MAX_ROWS:,} rows: use top_n or a coarser time", "top_n")
    values: dict[tuple, dict[str, Any]] = {}
    data = {m: table.column(m) for m in COUNTER_MEASURES if m in spec.measures}
    for k, key in enumerate(keys):
        if not k % CHECK_EVERY:
            check_deadline(deadline)
        values[key] = {m: col[k] for m, col in data.items()}
    metrics = sorted({PERCENTILE_MEASURES[m][0] for m in spec.measures if m in PERCENTILE_MEASURES})
    gk_of = dict(zip(keys, table.column("gk"), strict=True))
    by_key = len(set(gk_of.values())) == len(gk_of)  # two groups' hashes collide (~1e-10): group by their values
    for metric in metrics:
        wanted = [m for m in spec.measures if PERCENTILE_MEASURES.get(m, ("", 0))[0] == metric]
        qs = tuple(PERCENTILE_MEASURES[m][1] for m in wanted)
        offs, raw_parts = plan(spec, tz, zone, histogram=True)
        if _split(spec, tops) is None and not any(p.grain for p in raw_parts):  # raw rows only
            by_values = _raw_percentiles(cur, spec, offs, raw_parts, tops, metric, qs, len(values))
            parts = [*parts, *raw_parts]
            for key, row in values.items():
                for m, v in zip(wanted, by_values.get(key) or (None,) * len(wanted), strict=True):
                    row[m] = v
            continue
        (hist, hist_params), hist_parts = _histogram(cur, spec, tz, zone, tops, metric, by_key)
        parts = [*parts, *hist_parts]
        found = percentiles(cur, hist, hist_params, qs, ("gk",) if by_key else ("b", "g"))
        for key, row in values.items():
            got = found.get((gk_of[key],) if by_key else (*key, "", "")[:2])
            for m, v in zip(wanted, got or (None,) * len(wanted), strict=True):
                row[m] = v
    sources = {"cube" if p.grain else "raw" for p in parts}
    return values, tops, "mixed" if len(sources) > 1 else sources.pop() if sources else "cube"


def answer(
    cur: duckdb.DuckDBPyConnection,
    spec: Spec,
    tz: ZoneInfo,
    labels: dict[str, str] | None = None,
    zone: str | None = "UTC",
    deadline: float | None = None,
) -> Answer:
    """`zone`: the zone of the pre-aggregates' local days (`Rollup.zone`); None reads raw rows only. Past `deadline`
    (time.monotonic()) the Python steps after each read stop with ExploreTimeout."""
    values, tops, source = _period(cur, spec, tz, zone, None, deadline)
    columns = [*spec.dimensions, *spec.measures]
    ans = Answer(columns, [], source, tz.key, spec.lo, spec.hi)
    prev: dict[tuple, dict[str, Any]] = {}
    if spec.compare:
        span = spec.hi - spec.lo
        ans.compare_lo, ans.compare_hi = spec.lo - span, spec.lo
        prev, _, _ = _period(
            cur, replace(spec, lo=spec.lo - span, hi=spec.lo, open_end=False), tz, zone, tops, deadline
        )
        prev = _align(prev, spec, tz)
        columns += [f"{m}_{s}" for m in spec.measures for s in ("prev", "delta")]
    keys = _sorted(set(values) | (set(prev) if spec.compare else set()))
    shown: dict[tuple[str, Any], Any] = {}  # each dimension value converted once (time buckets: zone arithmetic)
    for k, key in enumerate(keys):
        if not k % CHECK_EVERY:
            check_deadline(deadline)
        cur_row, prev_row = values.get(key, {}), prev.get(key, {})
        row = []
        for d, v in zip(spec.dimensions, key, strict=True):
            if (d, v) not in shown:
                shown[d, v] = _out(d, v, tz, labels or {})
            row.append(shown[d, v])
        row += [_num(cur_row.get(m), m) for m in spec.measures]
        for m in spec.measures if spec.compare else ():
            a, b = _num(cur_row.get(m), m), _num(prev_row.get(m), m)
            row += [b, None if a is None or b is None else a - b]
        ans.rows.append(row)
    return ans


def _num(v: Any, m: str) -> Any:
    if v is None:
        return 0 if m in COUNTER_MEASURES and COUNTER_MEASURES[m] == m else None
    return round(v, 10 if m.endswith("cost_usd") else 6) if isinstance(v, float) else v  # a call costs < $0.001


def _sorted(keys: set[tuple]) -> list[tuple]:
    """The rows' keys in display order: by value, OTHER and null last. Each value's place is computed once (an
    hour × 10 answer has 20,000 keys but 2,000 values)."""
    places: dict[Any, tuple] = {}

    def place(v: Any) -> tuple:
        p = places.get(v)
        if p is None:
            text = isinstance(v, str)
            p = places[v] = (v == OTHER, v is None, v if text else "", 0 if text else v)
        return p

    return sorted(keys, key=lambda key: tuple(map(place, key)))


def _align(prev: dict[tuple, dict], spec: Spec, tz: ZoneInfo) -> dict[tuple, dict]:
    """Previous-period rows keyed like the current ones: time buckets match by position (the k-th bucket)."""
    span = spec.hi - spec.lo
    for i, dim in enumerate(spec.dimensions):
        if dim in TIME_BUCKETS:
            mapping = dict(
                zip(_buckets(spec.lo - span, spec.lo, dim, tz), _buckets(spec.lo, spec.hi, dim, tz), strict=False)
            )
            prev = {(*k[:i], mapping[k[i]], *k[i + 1 :]): v for k, v in prev.items() if k[i] in mapping}
    return prev


def _buckets(lo: datetime, hi: datetime, g: str, tz: ZoneInfo) -> list[datetime]:
    """The local start of every `g` bucket that overlaps [lo, hi)."""
    t, end, out = queries.floor_local(queries.to_local(lo, tz), g), queries.to_local(hi, tz), []
    while t < end:
        out.append(t)
        t = queries.next_local(t, g)
    return out


def _out(dim: str, v: Any, tz: ZoneInfo, labels: dict[str, str]) -> Any:
    if v == OTHER:
        return v
    if dim in TIME_BUCKETS:
        return queries.to_utc(v, tz).replace(tzinfo=UTC).astimezone(tz).isoformat()
    if dim in CLOCK_DIMS:
        return v
    if v == "":
        return None
    if dim == "status":
        return int(v)
    if dim == "stream":
        return v == "true"
    if dim == "client":
        return labels.get(v, v)
    return v


def to_columns(ans: Answer, deadline: float | None = None) -> ResultTable:
    """The answer as a table for its Arrow form: each column's type read from its values (only nulls: null)."""
    data: list[list[Any]] = []
    for i in range(len(ans.columns)):  # column by column, the deadline checked between them
        check_deadline(deadline)
        data.append([r[i] for r in ans.rows])
    return ResultTable(list(ans.columns), [infer(col) for col in data], data)


# -- drill-down ----------------------------------------------------------------------------------------------------
CALL_COLUMNS = (
    "ts",
    "request_id",
    "client_id",
    "model",
    "key_id",
    "project",
    "surface",
    "operation",
    "stream",
    "status",
    "outcome",
    "attempts",
    "latency_ms",
    "ttfb_ms",
    "total_tokens",
    "request_bytes",
    "response_bytes",
    "resource_kind",
    "resource_id",
    "error_message",
)


def calls(cur: duckdb.DuckDBPyConnection, spec: Spec, tz: ZoneInfo, limit: int = 100) -> list[dict[str, Any]]:
    """The calls behind a cell: `spec.filters` already holds the cell's dimension values."""
    offs = queries.offsets(tz, spec.lo, spec.hi)
    where = _where(spec, Part("", spec.lo, spec.hi), set(), offs)
    sql = (
        f"SELECT {', '.join('r.' + c for c in CALL_COLUMNS)}, e.error_id FROM requests r LEFT JOIN "
        "(SELECT request_id, min(id) AS error_id FROM error_logs WHERE ts >= ? AND ts < ? + INTERVAL 1 HOUR "
        f"GROUP BY request_id) e USING (request_id) WHERE {where.sql} "
        "ORDER BY r.ts DESC LIMIT ?"
    )
    return queries._dicts(cur.execute(sql, [spec.lo, spec.hi, *where.params, limit]))


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, datetime):
        return f"TIMESTAMP '{v.isoformat(sep=' ')}'"
    if isinstance(v, list):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return "'" + str(v).replace("'", "''") + "'"


def sql_text(spec: Spec, tz: ZoneInfo, limit: int = DRILL_LIMIT) -> str:
    """The drill-down as one SELECT over the SQL page's `requests`, values inlined as literals (display only)."""
    offs = queries.offsets(tz, spec.lo, spec.hi)
    where = _where(spec, Part("", spec.lo, spec.hi), set(), offs)
    parts = where.sql.split("?")
    text = parts[0] + "".join(_literal(p) + rest for p, rest in zip(where.params, parts[1:], strict=True))
    text = text.replace(" AND ", "\n  AND ")
    return f"SELECT {', '.join(CALL_COLUMNS)}\nFROM requests\nWHERE {text}\nORDER BY ts DESC\nLIMIT {limit}"
