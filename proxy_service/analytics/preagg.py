"""The pre-aggregates: one family of exact counters and log-bucket histograms that Trends (stats), Explore, alert
backtests and forecasts all read, kept in step with `requests` by the writer (`rollup.py` owns the lifecycle).

Two tables, one row per (`bucket`, `grain`, set, value) between compactions (readers always SUM):
- `preagg`: counters (calls, successes, exhausted, attempts, upstream 429s, token and byte sums, latency / TTFB
  sums and counts);
- `preagg_hist`: log-bucket histograms (`metric` 'l' latency, 't' time to first byte; `lb` = ceil(ln(v) /
  ln(GAMMA)), percentiles read back within ±2 %, see `histogram.py`).
A set is named by its dimensions `a` ≤ `b` (in DIMS order, then `key`; '' when absent) and their values `av`, `bv`
('' for NULL). What each `grain` keeps:
- '15m' (UTC quarter hours) and '1h' (UTC hours): the total and each single dimension; histograms of the total and
  of the stats dimensions (model, project, status) — '1h' for whole-hour display zones and forecasts, '15m' for
  zones with :30/:45 offsets (every zone in use today changes its offset at 15-minute-aligned instants, so every
  local hour/day/week/month boundary is a 15-minute boundary) and alert backtests; '15m' keeps latency histograms
  only (its readers, the stats and backtests, read no TTFB; Explore reads '1h' and 'd');
- 'd' (local days of the display zone: `bucket` is the UTC instant of its local midnight, the zone is in
  `rollup_meta`, a change rebuilds): every single dimension and every pair (9 + 36 sets, plus the total), the key
  alone and with each of KEY_PAIRS; histograms per single dimension.
Why pairs and no more: a cube over all dimensions at once does not shrink on real traffic (keys rotate across
projects, so project × client × model × ... occurs about once per call); one dimension or a pair stays small
(model × client: at most 5 × 50 values a day). Not here: `key` × `client` (as large as the raw rows), `key`'s
histograms, histograms of pairs, three dimensions at once; per-key stats read the raw rows.

Upstream 429s live in `attempts`: a request's attempts are recorded before the request itself, so when rows are
folded every one of their attempts is already in the table; the fold looks them up in the rows' time span.
Readers build their filters with `preagg_read.py` (the one reader module); this module is the writer's side:
`insert` (fold), `compact`, `trim`, `reset`, `cluster`, `install` (which drops the tables of the two families this
one replaced: an old file then rebuilds from `requests` because its counts no longer agree).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import combinations, pairwise
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from proxy_service.analytics.histogram import lb_sql

COUNTERS = "preagg"
HISTOGRAM = "preagg_hist"
# Tables of older layouts, dropped at install: the stats rollup (two tiers), the explore pre-aggregates, and the
# all-dimensions cube of rollup version 3.
OBSOLETE_TABLES = (
    "rollup_requests",
    "rollup_latency",
    "rollup_requests_1h",
    "rollup_latency_1h",
    "explore_agg",
    "explore_hist",
    "cube_1h",
    "cube_hist_1h",
)
DIMS = ("model", "project", "client", "surface", "operation", "stream", "outcome", "status", "resource")
# How each dimension is computed from a `requests` row ('' for NULL, so that it can be grouped and compared).
RAW_DIMS = {
    "model": "coalesce(model, '')",
    "project": "coalesce(project, '')",
    "client": "coalesce(client_id, '')",
    "surface": "coalesce(surface, '')",
    "operation": "coalesce(operation, '')",
    "stream": "coalesce(CAST(stream AS VARCHAR), '')",
    "outcome": "coalesce(outcome, '')",
    "status": "coalesce(CAST(status AS VARCHAR), '')",
    "resource": "coalesce(resource_kind, '')",
}
SUMS = (
    "calls",
    "successes",
    "exhausted",
    "attempts",
    "upstream_429s",
    "prompt_tokens",
    "output_tokens",
    "thinking_tokens",
    "cached_tokens",
    "total_tokens",
    "request_bytes",
    "response_bytes",
    "latency_sum",
    "latency_n",
    "ttfb_sum",
    "ttfb_n",
    "cost_sum",
    "list_cost_sum",
)
# Per-row values of the counters, over `requests` aliased r and the upstream-429 lookup aliased u.
RAW_SUMS = {
    "calls": "1",
    "successes": "CAST(r.outcome = 'success' AS INTEGER)",
    "exhausted": "CAST(r.outcome = 'exhausted' AS INTEGER)",
    "attempts": "coalesce(r.attempts, 0)",
    "upstream_429s": "coalesce(u.n429, 0)",
    "prompt_tokens": "coalesce(r.prompt_tokens, 0)",
    "output_tokens": "coalesce(r.output_tokens, 0)",
    "thinking_tokens": "coalesce(r.thinking_tokens, 0)",
    "cached_tokens": "coalesce(r.cached_tokens, 0)",
    "total_tokens": "coalesce(r.total_tokens, 0)",
    "request_bytes": "coalesce(r.request_bytes, 0)",
    "response_bytes": "coalesce(r.response_bytes, 0)",
    "latency_sum": "coalesce(r.latency_ms, 0)",
    "latency_n": "CAST(r.latency_ms IS NOT NULL AS INTEGER)",
    "ttfb_sum": "coalesce(r.ttfb_ms, 0)",
    "ttfb_n": "CAST(r.ttfb_ms IS NOT NULL AS INTEGER)",
    "cost_sum": "coalesce(r.cost_usd, 0)",
    "list_cost_sum": "coalesce(r.list_cost_usd, 0)",
}
# A request's attempts end within this long after it started (the call deadline is far shorter).
ATTEMPT_SLACK = "INTERVAL 1 HOUR"
QUARTER, HOUR, DAY = "15m", "1h", "d"
GRAINS = (QUARTER, HOUR, DAY)
TIERS = {3600: HOUR, 900: QUARTER}  # the UTC grains by length in seconds, coarsest first
STATS_DIMS = ("model", "project", "status")  # the stats' (Trends, alerts) dimensions, with histograms per UTC grain
# The dimensions kept per local day with `key` (1,000 keys × these: ~20,000 rows a day). Not `client`: keys rotate
# over every client, so key × client is as large as the raw rows.
KEY_PAIRS = ("model", "project", "surface", "operation", "stream", "outcome", "status")


def _sets(most: int, dims: tuple[str, ...] = DIMS) -> list[tuple[str, ...]]:
    return [s for n in range(most + 1) for s in combinations(dims, n)]


# grain → the dimension sets kept: counters, histograms.
COUNTER_SETS = {QUARTER: _sets(1), HOUR: _sets(1), DAY: _sets(2)}
HISTOGRAM_SETS = {QUARTER: _sets(1, STATS_DIMS), HOUR: _sets(1, STATS_DIMS), DAY: _sets(1)}


def holds(grain: str, dims: set[str], histogram: bool) -> bool:
    """Whether the `grain` rows keep the set `dims` (for counters, or for histograms too)."""
    if dims - {*DIMS, "key"}:  # a dimension read from raw rows only (Explore's `tier`)
        return False
    if "key" in dims:  # counters per local day only, of the key alone or with one of KEY_PAIRS
        return (
            grain == DAY
            and not histogram
            and (dims == {"key"} or (len(dims) == 2 and dims - {"key"} <= set(KEY_PAIRS)))
        )
    return tuple(d for d in DIMS if d in dims) in (HISTOGRAM_SETS if histogram else COUNTER_SETS)[grain]


def set_of(dims: set[str]) -> tuple[str, str]:
    """The (a, b) names of the set of `dims` as stored."""
    s = [d for d in (*DIMS, "key") if d in dims]
    return ([*s, "", ""])[0], ([*s, "", ""])[1]


def column_of(dim: str, dims: set[str]) -> str:
    """The column holding `dim`'s value in the rows of the set `dims`."""
    return "av" if set_of(dims)[0] == dim else "bv"


def upstream_429s_sql(lo: str, hi: str) -> str:
    """Per request id, its upstream 429 answers, for requests that started in [lo, hi) (SQL expressions)."""
    return (
        "SELECT request_id, count(*) AS n429 FROM attempts "
        f"WHERE ts >= {lo} AND ts < {hi} + {ATTEMPT_SLACK} AND upstream_status = 429 GROUP BY request_id"
    )


def day_starts(tz: ZoneInfo, lo: datetime, hi: datetime) -> list[datetime]:
    """The UTC instants of the local midnights from the one at or before `lo` to the first after `hi` (naive UTC)."""
    day = lo.replace(tzinfo=UTC).astimezone(tz).date()
    out: list[datetime] = []
    while not out or out[-1] <= hi:
        out.append(datetime.combine(day, time(), tzinfo=tz).astimezone(UTC).replace(tzinfo=None))
        day += timedelta(days=1)
    return out


def day_of(tz: ZoneInfo, t: datetime) -> tuple[datetime, datetime]:
    """The local day holding `t`: its start and end (naive UTC)."""
    starts = day_starts(tz, t, t)
    return starts[-2], starts[-1]


_KEYS = (
    "bucket TIMESTAMP NOT NULL, grain VARCHAR NOT NULL, a VARCHAR NOT NULL, av VARCHAR NOT NULL, "
    "b VARCHAR NOT NULL, bv VARCHAR NOT NULL"
)
_DDL = [
    f"CREATE TABLE IF NOT EXISTS {COUNTERS} ({_KEYS}, "
    + ", ".join(f"{s} {'DOUBLE' if s.endswith('_sum') else 'BIGINT'}" for s in SUMS)
    + ")",
    # metric: 'l' latency, 't' time to first byte.
    f"CREATE TABLE IF NOT EXISTS {HISTOGRAM} ({_KEYS}, metric VARCHAR NOT NULL, lb SMALLINT NOT NULL, n BIGINT)",
]
_DIM_LIST = ", ".join(DIMS)


def _sets_values(sets: dict[str, list[tuple[str, ...]]], grains: tuple[str, ...]) -> str:
    """The sets as a VALUES list (grain, a, b): each leaf row is expanded once per set, then summed."""
    rows = [f"('{g}', '{(*s, '', '')[0]}', '{(*s, '', '')[1]}')" for g in grains for s in sets[g]]
    return f"(VALUES {', '.join(rows)}) s(grain, a, b)"


def _value_of(name: str) -> str:
    """The value of the dimension a set names in column `name` ('' when it names none)."""
    whens = " ".join(f"WHEN '{d}' THEN l.{d}" for d in DIMS)
    return f"CASE s.{name} {whens} ELSE '' END"


_SET_KEYS = f"CASE s.grain WHEN '{QUARTER}' THEN l.bq WHEN '{HOUR}' THEN l.bh ELSE l.bd END, s.grain, s.a, {_value_of('a')}, s.b, {_value_of('b')}"


def _bucket_d(starts: list[datetime], col: str = "ts") -> tuple[str, list[Any]]:
    """The local-day bucket of `col` given the day starts around the rows (a CASE; rows span a day or a few)."""
    if len(starts) == 2:
        return "CAST(? AS TIMESTAMP)", [starts[0]]
    whens, params = [], []
    for a, b in pairwise(starts):
        whens.append(f"WHEN {col} < ? THEN CAST(? AS TIMESTAMP)")
        params += [b, a]
    return f"CASE {' '.join(whens)} END", params


def insert(
    cur: duckdb.DuckDBPyConnection,
    source: str,
    tz: ZoneInfo,
    grains: tuple[str, ...] = GRAINS,
    span: tuple[datetime, datetime] | None = None,
) -> None:
    """Fold the rows of `source` (a table or registered batch of `requests` rows) into the pre-aggregates.

    Two steps: the rows are summed per (hour, local day, all nine dimensions) — the leaves, far fewer than the rows
    on real traffic — then each leaf is expanded once per kept set and summed again. One plain GROUP BY each: a
    GROUPING SETS of every kept set costs a lot to plan and run even on one row (bench/explore.py times the fold). `span`: the rows' min and max `ts` when the
    caller knows them (a fold: one query less)."""
    if span is None:
        row = cur.execute(f"SELECT min(ts), max(ts) FROM {source}").fetchone()
        if row is None or row[0] is None:
            return
        span = (row[0], row[1])
    bucket_d, params_d = _bucket_d(day_starts(tz, span[0], span[1]), "r.ts")
    keys = (
        f"time_bucket(INTERVAL 15 MINUTE, r.ts) AS bq, time_bucket(INTERVAL 1 HOUR, r.ts) AS bh, {bucket_d} AS bd, "
        + ", ".join(f"{expr} AS {d}" for d, expr in RAW_DIMS.items())
    )
    params = [span[0], span[1] + timedelta(microseconds=1), *params_d]
    sums = ", ".join(f"sum({expr}) AS {s}" for s, expr in RAW_SUMS.items())
    cur.execute(
        f"""INSERT INTO {COUNTERS}
        WITH u AS ({upstream_429s_sql("?", "?")}),
             l AS (SELECT {keys}, {sums} FROM {source} r LEFT JOIN u USING (request_id) GROUP BY ALL)
        SELECT {_SET_KEYS}, {", ".join(f"sum(l.{s})" for s in SUMS)}
        FROM l, {_sets_values(COUNTER_SETS, grains)} GROUP BY ALL""",
        params,
    )
    if DAY in grains:  # per key, alone and with each of KEY_PAIRS: leaves per (day, key, those dimensions)
        kdims = ", ".join(f"{RAW_DIMS[d]} AS {d}" for d in KEY_PAIRS)
        sets = ", ".join(["('key', '')", *(f"('{d}', 'key')" for d in KEY_PAIRS)])
        whens = " ".join(f"WHEN '{d}' THEN k.{d}" for d in KEY_PAIRS)
        cur.execute(
            f"""INSERT INTO {COUNTERS}
            WITH u AS ({upstream_429s_sql("?", "?")}),
                 k AS (SELECT {bucket_d} AS bd, coalesce(r.key_id, '') AS key_id, {kdims}, {sums}
                       FROM {source} r LEFT JOIN u USING (request_id) GROUP BY ALL)
            SELECT k.bd, '{DAY}', s.a, CASE s.a WHEN 'key' THEN k.key_id {whens} END, s.b,
                   CASE s.b WHEN 'key' THEN k.key_id ELSE '' END, {", ".join(f"sum(k.{s})" for s in SUMS)}
            FROM k, (VALUES {sets}) s(a, b) GROUP BY ALL""",
            params,
        )
    cur.execute(
        f"""INSERT INTO {HISTOGRAM}
        WITH l AS (SELECT {keys}, 'l' AS metric, {lb_sql("r.latency_ms")} AS lb, count(*) AS n FROM {source} r
                   WHERE r.latency_ms IS NOT NULL GROUP BY ALL
                   UNION ALL
                   SELECT {keys}, 't', {lb_sql("r.ttfb_ms")}, count(*) FROM {source} r
                   WHERE r.ttfb_ms IS NOT NULL GROUP BY ALL)
        SELECT {_SET_KEYS}, l.metric, l.lb, sum(l.n) FROM l, {_sets_values(HISTOGRAM_SETS, grains)}
        WHERE l.metric = 'l' OR s.grain <> '{QUARTER}' GROUP BY ALL""",
        [*params_d, *params_d],
    )


def install(cur: duckdb.DuckDBPyConnection) -> None:
    for table in OBSOLETE_TABLES:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    for ddl in _DDL:
        cur.execute(ddl)
    # Counters added since a table was made (the spend sums): added here, filled by the rebuild the layout version
    # change starts. On a lake another replica may add one first.
    have = {r[0] for r in cur.execute(f"SELECT * FROM {COUNTERS} LIMIT 0").description or ()}
    for s in SUMS:
        if s not in have:
            try:
                cur.execute(f"ALTER TABLE {COUNTERS} ADD COLUMN {s} {'DOUBLE' if s.endswith('_sum') else 'BIGINT'}")
            except duckdb.Error:
                if s not in {r[0] for r in cur.execute(f"SELECT * FROM {COUNTERS} LIMIT 0").description or ()}:
                    raise


def total_calls(cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Calls in the totals of each grain (each equals count(*) of `requests` when complete)."""
    rows = dict(
        cur.execute(f"SELECT grain, CAST(sum(calls) AS BIGINT) FROM {COUNTERS} WHERE a = '' GROUP BY grain").fetchall()
    )
    return {g: int(rows.get(g) or 0) for g in GRAINS}


def reset(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"DELETE FROM {COUNTERS}")
    cur.execute(f"DELETE FROM {HISTOGRAM}")


def cluster(cur: duckdb.DuckDBPyConnection) -> None:
    """Rewrite both tables ordered by (grain, set, [metric,] bucket) (after a rebuild, inside its transaction): a
    query reads one set, and DuckDB skips the row groups whose zone maps exclude it. Folds append the newest after."""
    for table, order in ((COUNTERS, "grain, a, b, bucket"), (HISTOGRAM, "grain, a, b, metric, bucket")):
        cur.execute(f"CREATE OR REPLACE TEMP TABLE _preagg_sorted AS SELECT * FROM {table} ORDER BY {order}")
        cur.execute(f"DELETE FROM {table}")
        cur.execute(f"INSERT INTO {table} SELECT * FROM _preagg_sorted")
        cur.execute("DROP TABLE _preagg_sorted")


def touched(quarters: set[datetime], lo: datetime, hi: datetime, tz: ZoneInfo) -> set[datetime]:
    """The buckets rows fall in: their quarter hours, those quarters' hours and the local days of [lo, hi] (their time
    span). Compaction merges every grain's rows of these instants (any extra one is merged harmlessly)."""
    hours = {q.replace(minute=0) for q in quarters}
    return quarters | hours | set(day_starts(tz, lo, hi)[:-1])


_IN_TOUCHED = "WHERE bucket BETWEEN ? AND ? AND list_contains(?, bucket)"


def compact(cur: duckdb.DuckDBPyConnection, buckets: list[datetime]) -> None:
    """Merge the partial rows of the given buckets (inside the caller's transaction), written back in the tables'
    sort order (`cluster`), so that the newest rows' zone maps separate the grains and sets too."""
    params = [buckets[0], buckets[-1], buckets]
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _preagg_c AS SELECT bucket, grain, a, av, b, bv, "
        + ", ".join(f"sum({s})::{'DOUBLE' if s.endswith('_sum') else 'BIGINT'}" for s in SUMS)
        + f" FROM {COUNTERS} {_IN_TOUCHED} GROUP BY ALL ORDER BY grain, a, b, bucket",
        params,
    )
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _preagg_h AS SELECT bucket, grain, a, av, b, bv, metric, lb, sum(n)::BIGINT "
        f"FROM {HISTOGRAM} {_IN_TOUCHED} GROUP BY ALL ORDER BY grain, a, b, metric, bucket",
        params,
    )
    try:
        cur.execute(f"DELETE FROM {COUNTERS} {_IN_TOUCHED}", params)
        cur.execute(f"DELETE FROM {HISTOGRAM} {_IN_TOUCHED}", params)
        cur.execute(f"INSERT INTO {COUNTERS} SELECT * FROM _preagg_c")
        cur.execute(f"INSERT INTO {HISTOGRAM} SELECT * FROM _preagg_h")
    finally:
        cur.execute("DROP TABLE IF EXISTS _preagg_c")
        cur.execute("DROP TABLE IF EXISTS _preagg_h")


def trim(cur: duckdb.DuckDBPyConnection, before: datetime, tz: ZoneInfo) -> None:
    """Retention at `before` (the raw rows older than it are gone). The local day `before` falls in is recomputed
    from the raw rows it has left, so that every stored day agrees with `requests`."""
    for table in (COUNTERS, HISTOGRAM):
        cur.execute(f"DELETE FROM {table} WHERE bucket < ?", [before])
    start, end = day_of(tz, before)
    if start == before:
        return
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _preagg_trim AS SELECT * FROM requests WHERE ts >= ? AND ts < ?", [before, end]
    )
    try:
        insert(cur, "_preagg_trim", tz, grains=(DAY,))
    finally:
        cur.execute("DROP TABLE IF EXISTS _preagg_trim")
