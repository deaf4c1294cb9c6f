"""All analytics SQL, parameterised: stats (summary, series, top), error-log search, key usage, the safe schema.

Values always travel as parameters; the only text ever assembled into SQL is identifiers and fragments chosen from
the allow-lists below. Times are naive UTC everywhere (as stored); the display time zone is applied here.

Stats read the UTC 1-hour and 15-minute pre-aggregates (`preagg.py`, through `preagg_read.scan`) for whole buckets
and the raw `requests` rows for partial edges, so figures are exact for counts and sums; p50/p95 come from the
pre-aggregates' log histograms (±2 %). Local buckets: the
UTC offset of the display zone over the queried range is a handful of constant segments (DST changes twice a
year), so a bucket is `date_trunc(g, t + offset(t))` with offset(t) a CASE over the segment boundaries, computed
in Python with zoneinfo — exact, and much cheaper than ICU's per-row `timezone()` (bench/analytics.py).
"""

from __future__ import annotations

import calendar
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import duckdb

from proxy_service.analytics import histogram
from proxy_service.analytics.answers import ResultTable
from proxy_service.analytics.buckets import floor_time
from proxy_service.analytics.preagg import TIERS
from proxy_service.analytics.preagg_read import scan
from proxy_service.store import PUBLIC_TABLES, StatsSource, hidden_columns, public_select

GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
GROUP_BYS: tuple[str, ...] = ("none", "model", "key", "project", "status")
MAX_BUCKETS = 20_000

# -- the safe schema (what user SQL sees) ------------------------------------------------------------------------
SAFE_SCHEMA = "safe"
SAFE_TABLES: dict[str, str] = {
    **{table: public_select(table) for table in PUBLIC_TABLES},
    # `client`: the operator's label for the client (config `client_labels`), else its id.
    "requests": f"SELECT r.* EXCLUDE ({', '.join(hidden_columns('requests'))}), coalesce(l.label, r.client_id) AS client "
    "FROM main.requests r "
    "LEFT JOIN main.client_labels l ON l.client_id = r.client_id",
}


def install_safe_views(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute("CREATE TABLE IF NOT EXISTS main.client_labels (client_id VARCHAR PRIMARY KEY, label VARCHAR)")
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SAFE_SCHEMA}")
    for name, body in SAFE_TABLES.items():
        cur.execute(f"CREATE OR REPLACE VIEW {SAFE_SCHEMA}.{name} AS {body}")


def set_client_labels(
    cur: duckdb.DuckDBPyConnection, labels: dict[str, str], table: str = "main.client_labels"
) -> None:
    """Keep the table behind `safe.requests.client` equal to the configured labels (writer thread). Cluster mode
    keeps it replica-local (`memory.main.client_labels`): it is derived from the config every replica has."""
    cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (client_id VARCHAR PRIMARY KEY, label VARCHAR)")
    cur.execute(f"DELETE FROM {table}")
    if labels:
        cur.executemany(f"INSERT INTO {table} VALUES (?, ?)", list(labels.items()))


def safe_schema(cur: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, str]]]:
    rows = cur.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
        "ORDER BY table_name, ordinal_position",
        [SAFE_SCHEMA],
    ).fetchall()
    out: dict[str, list[dict[str, str]]] = {name: [] for name in SAFE_TABLES}
    for table, column, dtype in rows:
        if table in out:
            out[table].append({"name": column, "type": dtype})
    return out


def catalog_names(cur: duckdb.DuckDBPyConnection) -> set[str]:
    """Every table and view name in the database, any schema (for the SQL guard's deny-list)."""
    return {r[0].lower() for r in cur.execute("SELECT DISTINCT table_name FROM information_schema.tables").fetchall()}


def builtin_functions(cur: duckdb.DuckDBPyConnection) -> set[str]:
    rows = cur.execute(
        "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
        "WHERE schema_name = 'main' AND function_type IN ('scalar', 'aggregate', 'macro')"
    ).fetchall()
    return {r[0] for r in rows}


def serialize_sql(cur: duckdb.DuckDBPyConnection, sql: str) -> str:
    row = cur.execute("SELECT json_serialize_sql(CAST(? AS VARCHAR))", [sql]).fetchone()
    return str(row[0]) if row else ""


# -- time limits ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(cur: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[threading.Event]:
    """Interrupt `cur` once `seconds` have passed, and again every INTERRUPT_EVERY_S until the block ends (a read of
    several statements must not start the next one unbounded). Yields the event set when the limit passed."""
    fired, done = threading.Event(), threading.Event()

    def stop() -> None:
        if done.wait(seconds):
            return
        fired.set()
        while not done.is_set():
            with contextlib.suppress(Exception):
                cur.interrupt()
            done.wait(INTERRUPT_EVERY_S)

    timer = threading.Thread(target=stop, name="keyrack-time-limit", daemon=True)
    timer.start()
    try:
        yield fired
    finally:
        done.set()


INTERRUPT_EVERY_S = 0.05


# -- time helpers ------------------------------------------------------------------------------------------------
def to_local(t: datetime, tz: ZoneInfo) -> datetime:
    return t.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    return local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def floor_local(t: datetime, g: str) -> datetime:
    if g == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if g == "day":
        return day
    if g == "week":
        return day - timedelta(days=day.weekday())  # ISO weeks start on Monday, as DuckDB's date_trunc
    return day.replace(day=1)


def next_local(t: datetime, g: str) -> datetime:
    if g == "hour":
        return t + timedelta(hours=1)
    if g == "day":
        return t + timedelta(days=1)
    if g == "week":
        return t + timedelta(days=7)
    return (t.replace(day=28) + timedelta(days=4)).replace(day=1)


def ceil_grain(t: datetime, grain: int) -> datetime:
    f = floor_time(t, grain)
    return f if f == t else f + timedelta(seconds=grain)


@dataclass(frozen=True)
class Offsets:
    """The zone's UTC offset over a range: `first` (seconds), then `changes` = [(utc instant, new offset)]."""

    first: int
    changes: tuple[tuple[datetime, int], ...]

    def aligned(self, grain: int) -> bool:
        """Every offset and change instant falls on `grain` seconds: local buckets are unions of rollup buckets.

        True at 15 minutes for every zone in use today, at 1 hour for whole-hour zones."""
        return self.first % grain == 0 and all(o % grain == 0 and floor_time(t, grain) == t for t, o in self.changes)


def offsets(tz: ZoneInfo, lo: datetime, hi: datetime) -> Offsets:
    def off(epoch: int) -> int:
        delta = datetime.fromtimestamp(epoch, tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    a, end = calendar.timegm(lo.timetuple()), calendar.timegm(hi.timetuple()) + 1
    first = current = off(a)
    changes: list[tuple[datetime, int]] = []
    while a < end:
        b = min(a + 86400, end)
        if off(b) != current:
            x, y = a, b  # off(x) == current != off(y): bisect to the second
            while y - x > 1:
                m = (x + y) // 2
                x, y = (m, y) if off(m) == current else (x, m)
            current = off(y)
            changes.append((datetime.fromtimestamp(y, UTC).replace(tzinfo=None), current))
        a = b
    return Offsets(first, tuple(changes))


def _bucket_sql(col: str, g: str, offs: Offsets) -> tuple[str, list[Any]]:
    """`date_trunc(g, col + offset(col))`: the local bucket start of a naive-UTC column."""
    if not offs.changes:
        return f"date_trunc(?, {col} + to_seconds(?))", [g, offs.first]
    whens, params = [], []
    previous = offs.first
    for instant, offset in offs.changes:
        whens.append(f"WHEN {col} < ? THEN ?")
        params += [instant, previous]
        previous = offset
    return f"date_trunc(?, {col} + to_seconds(CASE {' '.join(whens)} ELSE ? END))", [g, *params, previous]


# -- the aggregation engine --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    source: Literal["rollup", "raw"]
    lo: datetime
    hi: datetime
    grain: int = 0


def split(lo: datetime, hi: datetime, grains: Sequence[int]) -> list[Part]:
    """[lo, hi) as whole buckets of the coarsest tier, then finer tiers, then raw rows for what is left at the edges."""
    if lo >= hi:
        return []
    if not grains:
        return [Part("raw", lo, hi)]
    a, b = ceil_grain(lo, grains[0]), floor_time(hi, grains[0])
    if a >= b:
        return split(lo, hi, grains[1:])
    return [*split(lo, a, grains[1:]), Part("rollup", a, b, grains[0]), *split(b, hi, grains[1:])]


_RAW_GROUP = {
    "none": "''",
    "model": "coalesce(model, '')",
    "project": "coalesce(project, '')",
    "status": "coalesce(CAST(status AS VARCHAR), '')",
    "key": "coalesce(key_id, '')",
}
_PREAGG_COUNTERS = (
    "bucket, av, calls, successes, latency_sum, latency_n, prompt_tokens, output_tokens, total_tokens, cost_sum, "
    "list_cost_sum"
)
_PREAGG_HIST = "bucket, av, lb, n"
_PREAGG_SET: dict[str, set[str]] = {"none": set(), "model": {"model"}, "project": {"project"}, "status": {"status"}}
_LB = histogram.lb_sql("latency_ms")
_COUNTERS = """
    SELECT b AS bucket, g AS "group", CAST(sum(calls) AS BIGINT) AS calls, CAST(sum(successes) AS BIGINT) AS successes,
           CAST(sum(calls) - sum(successes) AS BIGINT) AS failures, sum(successes) / sum(calls) AS success_rate,
           sum(latency_sum) / nullif(sum(latency_n), 0) AS avg_latency_ms,
           CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT) AS prompt_tokens,
           CAST(coalesce(sum(output_tokens), 0) AS BIGINT) AS output_tokens,
           CAST(coalesce(sum(total_tokens), 0) AS BIGINT) AS total_tokens,
           coalesce(sum(cost_sum), 0) AS cost_usd, coalesce(sum(list_cost_sum), 0) AS list_cost_usd
    FROM c GROUP BY b, g ORDER BY b, g"""
_HISTOGRAM = """
    SELECT b, g, CAST(lb AS DOUBLE) AS lb, CAST(sum(n) AS DOUBLE) AS n FROM h GROUP BY b, g, lb"""


def aggregate(
    cur: duckdb.DuckDBPyConnection,
    parts: Sequence[tuple[Part, tuple[str, list[Any]], tuple[str, list[Any]]]],
    group: str,
    key_ids: list[str] | None = None,
    percentiles: bool = True,
    source: StatsSource | None = None,
) -> ResultTable:
    """Counters and latency percentiles per (bucket, group) over the union of `parts`; raw rows from `source`
    (default: the cursor's `requests`).

    Each part comes with its bucket expression over the rollup's `bucket` column and over the raw `ts` column.
    Each rollup table is scanned once per query (a materialised CTE over the union of its parts' ranges), raw rows
    once per cluster of nearby parts, whatever the number of parts: on a DuckLake (cluster mode) every scan costs
    a handful of catalog round trips, so a scan per part made the summary much slower than the same data in a
    DuckDB file (bench/cluster.py compares the two).
    """
    graw = _RAW_GROUP[group]
    key_filter, key_params = ("", []) if key_ids is None else (" AND list_contains(?, key_id)", [key_ids])
    raw_scan = _raw_clusters([p for p, _, _ in parts if p.source == "raw"])
    scans: dict[str, tuple[str, list[Part]]] = {}  # CTE name → (table, the parts it serves)
    counters, hists, c_params, h_params = [], [], [], []
    for part, (b_rollup, p_rollup), (b_raw, p_raw) in parts:
        if part.source == "rollup":
            grain = TIERS[part.grain]
            c_scan, h_scan = f"_s_counters_{grain}", f"_s_hist_{grain}"
            scans.setdefault(c_scan, (f"counters:{grain}", []))[1].append(part)
            scans.setdefault(h_scan, (f"hist:{grain}", []))[1].append(part)
            where, wp = " WHERE bucket >= ? AND bucket < ?", [part.lo, part.hi]
            counters.append(
                f"SELECT {b_rollup} AS b, av AS g, calls, successes, latency_sum, latency_n, prompt_tokens, "
                f"output_tokens, total_tokens, cost_sum, list_cost_sum FROM {c_scan}{where}"
            )
            hists.append(f"SELECT {b_rollup} AS b, av AS g, lb, n FROM {h_scan}{where}")
            c_params += [*p_rollup, *wp]
            h_params += [*p_rollup, *wp]
        else:
            name = f"_s_requests_{raw_scan[id(part)]}"
            scans.setdefault(name, ("requests", []))[1].append(part)
            where, wp = " WHERE ts >= ? AND ts < ?", [part.lo, part.hi]
            counters.append(
                f"SELECT {b_raw} AS b, {graw} AS g, 1 AS calls, CAST(outcome = 'success' AS INTEGER) AS successes, "
                "latency_ms AS latency_sum, CAST(latency_ms IS NOT NULL AS INTEGER) AS latency_n, prompt_tokens, "
                "output_tokens, total_tokens, coalesce(cost_usd, 0) AS cost_sum, "
                f"coalesce(list_cost_usd, 0) AS list_cost_sum FROM {name}{where}"
            )
            hists.append(
                f"SELECT {b_raw} AS b, {graw} AS g, {_LB} AS lb, 1 AS n FROM {name}{where} AND latency_ms IS NOT NULL"
            )
            c_params += [*p_raw, *wp]
            h_params += [*p_raw, *wp]

    src = source or StatsSource()
    raws = [p for p, _, _ in parts if p.source == "raw"]
    prefetch = bool(raws) and sum((p.hi - p.lo for p in raws), timedelta()) <= RAW_PREFETCH
    raw_source = _RAW_ROWS if prefetch else src.raw

    def ctes(names: list[str], raw_table: str = raw_source, columns: str = "*") -> tuple[str, list[Any]]:
        out: list[str] = []
        params: list[Any] = []
        for name in names:
            table, ranges = scans[name]
            if table == "requests":
                column, extra, extra_params, wanted = "ts", key_filter, key_params, columns
            else:  # "counters:<grain>" or "hist:<grain>"
                kind, grain = table.split(":")
                table, cond, extra_params = scan(grain, _PREAGG_SET[group], "l" if kind == "hist" else None)
                column, extra = "bucket", f" AND {cond}"
                # The pre-aggregates are wider than what the stats read: a materialised scan keeps only these.
                wanted = _PREAGG_HIST if kind == "hist" else _PREAGG_COUNTERS
            # The bounding range is what the scan can prune row groups / files with (an OR of ranges is not pushed
            # down); the OR keeps only the parts' rows.
            # A scan that serves one part is inlined (materialising a large rollup range slows the embedded file down).
            spans = " OR ".join(f"({column} >= ? AND {column} < ?)" for _ in ranges)
            how = "MATERIALIZED" if len(ranges) > 1 else "NOT MATERIALIZED"
            source_table = raw_table if table == "requests" else table
            out.append(
                f"{name} AS {how} (SELECT {wanted} FROM {source_table} WHERE {column} >= ? AND {column} < ? "
                f"AND ({spans}){extra})"
            )
            params += [min(p.lo for p in ranges), max(p.hi for p in ranges)]
            params += [v for p in ranges for v in (p.lo, p.hi)] + extra_params
        return ", ".join(out), params

    if prefetch:
        # The raw edges are short: read their rows once for both queries (on a lake each scan costs catalog round
        # trips, and the second query would repeat them), into a temporary table of this cursor's own.
        # A cluster replica's mirror holds them locally (no catalog round trip); else they come from `src.raw`.
        names = [n for n, (t, _) in scans.items() if t == "requests"]
        edges = src.edges([(p.lo, p.hi) for p in raws]) if src.edges else contextlib.nullcontext(None)
        with edges as held:
            r_with, r_params = ctes(names, held or src.raw, RAW_COLUMNS)
            cur.execute(
                f"CREATE OR REPLACE TEMP TABLE {_RAW_ROWS} AS "
                f"WITH {r_with} {' UNION ALL '.join(f'SELECT * FROM {n}' for n in names)}",
                r_params,
            )
    try:
        c_with, c_with_params = ctes([n for n, (t, _) in scans.items() if not t.startswith("hist:")])
        table = ResultTable.fetch(
            cur.execute(f"WITH {c_with}, c AS ({' UNION ALL '.join(counters)}){_COUNTERS}", [*c_with_params, *c_params])
        )
        if not percentiles:
            return table
        h_with, h_with_params = ctes([n for n, (t, _) in scans.items() if not t.startswith("counters:")])
        found = histogram.percentiles(
            cur,
            f"WITH {h_with}, h AS ({' UNION ALL '.join(hists)}) {_HISTOGRAM}",
            [*h_with_params, *h_params],
            (0.5, 0.95),
            ("b", "g"),
        )
    finally:
        if prefetch:
            cur.execute(f"DROP TABLE IF EXISTS temp.{_RAW_ROWS}")
    keys = zip(table.column("bucket"), table.column("group"), strict=True)
    p50, p95 = zip(*(found.get(k, (None, None)) for k in keys), strict=True) if table.num_rows else ((), ())
    table.set("p50_latency_ms", "float64", list(p50))
    table.set("p95_latency_ms", "float64", list(p95))
    return table


RAW_CLUSTER = timedelta(hours=2)  # raw parts closer than this share one scan
RAW_PREFETCH = timedelta(hours=6)  # raw parts this short in all are read once for both queries (the rollup's edges)
_RAW_ROWS = "_aggregate_raw_rows"
RAW_COLUMNS = (
    "ts, model, project, status, key_id, outcome, latency_ms, prompt_tokens, output_tokens, total_tokens, cost_usd, "
    "list_cost_usd"
)


def _raw_clusters(parts: list[Part]) -> dict[int, int]:
    """id(part) → its scan number: raw parts whose bounding range stays within RAW_CLUSTER share a scan (the
    summary's 1 min and 1 h edges), distant ones (a 90-day range's two edges) get their own, pruned, scan."""
    out: dict[int, int] = {}
    cluster, lo = -1, datetime.min
    for part in sorted(parts, key=lambda p: p.lo):
        if cluster < 0 or part.hi - lo > RAW_CLUSTER:
            cluster, lo = cluster + 1, part.lo
        out[id(part)] = cluster
    return out


# -- stats -------------------------------------------------------------------------------------------------------
WINDOWS = ("1m", "1h", "24h", "month")
_WINDOW_SPAN = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "24h": timedelta(hours=24)}
_EMPTY_WINDOW = {
    "calls": 0,
    "successes": 0,
    "failures": 0,
    "success_rate": None,
    "avg_latency_ms": None,
    "p95_latency_ms": None,
    "prompt_tokens": 0,
    "output_tokens": 0,
    "total_tokens": 0,
    "cost_usd": 0.0,
    "list_cost_usd": 0.0,
}


def summary(
    cur: duckdb.DuckDBPyConnection,
    tz: ZoneInfo,
    now: datetime,
    use_rollup: bool = True,
    source: StatsSource | None = None,
) -> dict[str, Any]:
    """Rolling 1 min / 1 h / 24 h and the calendar month so far (in `tz`)."""
    finest = min(TIERS)
    hi = floor_time(now, finest) + timedelta(seconds=finest)  # the current bucket, whole: nothing is newer
    starts = {w: now - span for w, span in _WINDOW_SPAN.items()}
    starts["month"] = to_utc(floor_local(to_local(now, tz), "month"), tz)
    parts = []
    for window, lo in starts.items():
        label = ("?", [window])
        parts += [(part, label, label) for part in split(lo, hi, tuple(TIERS) if use_rollup else ())]
    rows = {r["bucket"]: r for r in aggregate(cur, parts, "none", source=source).rows()}
    out = {}
    for window in WINDOWS:
        r = rows.get(window)
        out[window] = _EMPTY_WINDOW.copy() if r is None else {k: _round(r[k], k) for k in _EMPTY_WINDOW}
    return out


def spend_outlook(windows: dict[str, Any], tz: ZoneInfo, now: datetime) -> dict[str, float]:
    """The month's estimated spend so far and at month end if the last 24 hours' rate holds (USD), from `summary`'s
    windows: the same figures for the list price beside."""
    month_start = floor_local(to_local(now, tz), "month")
    left_h = (to_utc(next_local(month_start, "month"), tz) - now).total_seconds() / 3600
    out = {}
    for name in ("cost_usd", "list_cost_usd"):
        month, day = float(windows["month"][name] or 0), float(windows["24h"][name] or 0)
        out[f"month_{name}"] = round(month, 6)
        out[f"month_end_{name}"] = round(month + day / 24 * max(0.0, left_h), 6)
    return out


def series_range(
    g: str, tz: ZoneInfo, start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[lo, hi) in UTC covering whole local buckets; defaults to a sensible span ending now."""
    default_span = {
        "hour": timedelta(hours=48),
        "day": timedelta(days=30),
        "week": timedelta(weeks=12),
        "month": timedelta(days=365),
    }[g]
    end = end or now
    start = start or end - default_span
    lo_local = floor_local(to_local(start, tz), g)
    end_local = to_local(end, tz)
    hi_local = floor_local(end_local, g)
    if hi_local < end_local or hi_local == lo_local:
        hi_local = next_local(hi_local, g)
    return to_utc(lo_local, tz), to_utc(hi_local, tz)


def series(
    cur: duckdb.DuckDBPyConnection,
    g: str,
    group_by: str,
    tz: ZoneInfo,
    lo: datetime,
    hi: datetime,
    *,
    use_rollup: bool = True,
    limit: int = 10,
    source: StatsSource | None = None,
) -> ResultTable:
    """Rows {bucket (local start, tz-aware), group, calls, successes, failures, success_rate, latencies, tokens}.

    `lo`/`hi` must be local bucket boundaries (see `series_range`). group_by=key keeps the `limit` busiest keys.
    """
    offs = offsets(tz, lo, hi)
    grains = tuple(g for g in TIERS if offs.aligned(g)) if use_rollup and group_by != "key" else ()
    key_ids = top_key_ids(cur, lo, hi, limit, source) if group_by == "key" else None
    if key_ids == []:
        key_ids = [""]  # no key was used in the range: an empty answer, with a typed list parameter
    bucket_rollup, bucket_raw = _bucket_sql("bucket", g, offs), _bucket_sql("ts", g, offs)
    parts = [(p, bucket_rollup, bucket_raw) for p in split(lo, hi, grains)]
    table = aggregate(cur, parts, group_by, key_ids, source=source)
    return _localise(table, tz)


def top_key_ids(
    cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime, limit: int, source: StatsSource | None = None
) -> list[str]:
    rows = cur.execute(
        f"SELECT key_id FROM {(source or StatsSource()).raw} WHERE ts >= ? AND ts < ? AND key_id IS NOT NULL "
        "GROUP BY key_id ORDER BY count(*) DESC, key_id LIMIT ?",
        [lo, hi, limit],
    ).fetchall()
    return [r[0] for r in rows]


def top(
    cur: duckdb.DuckDBPyConnection,
    dim: str,
    lo: datetime,
    hi: datetime,
    limit: int,
    use_rollup: bool = True,
    source: StatsSource | None = None,
) -> list[dict[str, Any]]:
    """The busiest keys or models in [lo, hi)."""
    group = "key" if dim == "key" else "model"
    label = ("?", [""])
    parts = [(p, label, label) for p in split(lo, hi, tuple(TIERS) if use_rollup and group != "key" else ())]
    rows = aggregate(cur, parts, group, percentiles=False, source=source).rows()
    rows.sort(key=lambda r: (-r["calls"], r["group"]))
    fields = [k for k in _EMPTY_WINDOW if k != "p95_latency_ms"]
    return [{"name": r["group"] or None, **{k: _round(r[k]) for k in fields}} for r in rows[:limit]]


def _localise(table: ResultTable, tz: ZoneInfo) -> ResultTable:
    """Local naive bucket starts → the instants they denote, in the display zone (typed so in Arrow too)."""
    cache = {t: to_utc(t, tz).replace(tzinfo=UTC).astimezone(tz) for t in set(table.column("bucket"))}
    table.set("bucket", f"timestamp:{tz.key}", [cache[t] for t in table.column("bucket")])
    table.set("group", "string", [g or None for g in table.column("group")])
    return table


def _round(v: Any, name: str = "") -> Any:
    if not isinstance(v, float):
        return v
    return round(v, 8 if name.endswith("cost_usd") else 4)  # a minute's spend is fractions of a cent


# -- error logs --------------------------------------------------------------------------------------------------
ERROR_FILTERS: dict[str, Callable[[Any], tuple[str, list[Any]]]] = {
    "from": lambda v: ("ts >= ?", [v]),
    "to": lambda v: ("ts < ?", [v]),
    "key_id": lambda v: ("key_id = ?", [v]),
    "model": lambda v: ("model = ?", [v]),
    "status": lambda v: ("status = ?", [v]),
    "error_type": lambda v: ("error_type = ?", [v]),
    "request_id": lambda v: ("request_id = ?", [v]),
    "q": lambda v: (
        "(contains(lower(coalesce(message, '')), ?) OR contains(lower(coalesce(upstream_body, '')), ?))",
        [str(v).lower()] * 2,
    ),
}
_ERROR_LIST_COLUMNS = "id, ts, request_id, key_id, model, status, error_type, left(message, 500) AS message"


def _error_where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for name, value in filters.items():
        clause, p = ERROR_FILTERS[name](value)
        clauses.append(clause)
        params += p
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def error_page(
    cur: duckdb.DuckDBPyConnection, filters: dict[str, Any], page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    where, params = _error_where(filters)
    total_row = cur.execute(f"SELECT count(*) FROM error_logs{where}", params).fetchone()
    rel = cur.execute(
        f"SELECT {_ERROR_LIST_COLUMNS} FROM error_logs{where} ORDER BY ts DESC, id LIMIT ? OFFSET ?",
        [*params, page_size, (page - 1) * page_size],
    )
    return _dicts(rel), int(total_row[0]) if total_row else 0


def error_entry(cur: duckdb.DuckDBPyConnection, error_id: str) -> dict[str, Any] | None:
    rows = _dicts(cur.execute("SELECT * FROM error_logs WHERE id = ?", [error_id]))
    return rows[0] if rows else None


def delete_errors(cur: duckdb.DuckDBPyConnection, filters: dict[str, Any]) -> int:
    """Delete the entries matching `filters` (same names as the search; `ids` = a list of ids)."""
    filters = dict(filters)
    ids = filters.pop("ids", None)
    if ids is not None and not ids:
        return 0
    where, params = _error_where(filters)
    if ids is not None:
        where = (where + " AND " if where else " WHERE ") + "list_contains(?, id)"
        params.append(list(ids))
    row = cur.execute(f"DELETE FROM error_logs{where}", params).fetchone()
    return int(row[0]) if row else 0


# -- keys --------------------------------------------------------------------------------------------------------
def usage_by_model(cur: duckdb.DuckDBPyConnection, key_id: str) -> list[dict[str, Any]]:
    rel = cur.execute(
        "SELECT model, count(*) AS calls, count(*) FILTER (WHERE outcome = 'success') AS successes, "
        "count(*) FILTER (WHERE outcome <> 'success') AS failures, avg(latency_ms) AS avg_latency_ms, "
        "CAST(coalesce(sum(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, "
        "CAST(coalesce(sum(output_tokens), 0) AS BIGINT) AS output_tokens, "
        "CAST(coalesce(sum(total_tokens), 0) AS BIGINT) AS total_tokens, max(ts) AS last_ts "
        "FROM requests WHERE key_id = ? GROUP BY model ORDER BY calls DESC, model",
        [key_id],
    )
    return _dicts(rel)


def recent_calls(cur: duckdb.DuckDBPyConnection, key_id: str, limit: int = 20) -> list[dict[str, Any]]:
    rel = cur.execute(
        "SELECT ts, request_id, surface, operation, model, stream, status, outcome, attempts, latency_ms, "
        "ttfb_ms, total_tokens, error_status, error_message FROM requests WHERE key_id = ? "
        "ORDER BY ts DESC LIMIT ?",
        [key_id, limit],
    )
    return _dicts(rel)


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# -- quota windows after a restart -------------------------------------------------------------------------------------
# Attempts that reached Google and counted there: a 429, a 5xx or a failed connection is un-counted on the spot
# (Pool.rate_limited / Pool.failed), timeouts and answers stay counted. countTokens has its own quota bucket.
_QUOTA_USAGE = """
    SELECT coalesce(a.project, a.key_id) AS scope,
           CASE WHEN c.request_id IS NULL THEN a.model ELSE a.model || '#count' END AS model,
           count(*) AS today, list(a.ts ORDER BY a.ts) FILTER (WHERE a.ts > ?) AS recent
    FROM attempts a
    LEFT JOIN (SELECT request_id FROM requests WHERE ts > ? - INTERVAL 1 HOUR AND operation = 'countTokens') c
        USING (request_id)
    WHERE a.ts >= ? AND a.ts < ? AND a.model IS NOT NULL AND a.key_id IS NOT NULL
      AND a.outcome NOT IN ('rate_limited', 'server_error', 'connection_error')
    GROUP BY ALL"""


def paid_spend(cur: duckdb.DuckDBPyConnection, since: float) -> float:
    """Estimated spend (USD) on paid projects since `since` (epoch): what paid_daily_cap_usd counts against."""
    start = datetime.fromtimestamp(since, UTC).replace(tzinfo=None)
    row = cur.execute(
        "SELECT coalesce(sum(cost_usd), 0) FROM requests WHERE ts >= ? AND tier = 'paid'", [start]
    ).fetchone()
    return float(row[0]) if row else 0.0


def quota_usage(
    cur: duckdb.DuckDBPyConnection, day_start: float, recent: float, until: float
) -> list[tuple[str, str, int, list[datetime]]]:
    """Upstream calls per (scope, quota model) in [day_start, until) (epochs): the count, and the times (naive UTC)
    of those after `recent` — what the in-memory quota windows held (rebuilt after a restart)."""
    day, after, end = (datetime.fromtimestamp(t, UTC).replace(tzinfo=None) for t in (day_start, recent, until))
    rows = cur.execute(_QUOTA_USAGE, [after, day, day, end]).fetchall()
    return [(scope, model, int(n), list(times or [])) for scope, model, n, times in rows]
