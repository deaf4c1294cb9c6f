"""The request rollup: exact pre-aggregates that keep the stats endpoints fast on tens of millions of rows.

Why: on 10M `requests` rows (2 cores) a plain hourly series with percentiles takes 0.8–2.5 s and a display-time-zone
conversion through ICU 5 s. The rollup answers the same questions from a small fraction of the rows.

Shape: two tiers, UTC 1-hour and UTC 15-minute buckets, each a pair of tables (several rows may exist per key
between compactions; readers always SUM):
- `rollup_requests[_1h]`: calls, successes, latency sum/count, token sums per `bucket` × `dim` ∈ all · model ·
  project · status × `val` (the dimension's value, '' for NULL);
- `rollup_latency[_1h]`: a log-bucket latency histogram for the same keys: `lb` = ceil(ln(latency_ms) / ln(GAMMA)),
  so p50/p95 read back as 2·GAMMA^lb/(GAMMA+1) are within ±2 % (GAMMA = 1.04) of the exact rank value.
The key dimension is not rolled up (1,000 sparse keys would make it as large as the raw table); per-key figures read
the raw rows.

Why these grains: every time zone in use today has a UTC offset that is a multiple of 15 minutes and changes it
(DST) at 15-minute-aligned instants, so every local hour/day/week/month boundary is a 15-minute boundary: any
display zone (Asia/Kolkata +5:30, Asia/Kathmandu +5:45...) gets exact buckets from the 15-minute tier without a
rebuild. Whole-hour zones (most) read the 1-hour tier, ~3x fewer rows. `queries.split` picks the coarsest tier that
fits and reads raw rows only for partial edges.

Exactness by construction: the writer calls `on_append` right after each batch lands in `requests`, on the writer
thread, so the rollup sees exactly the rows the table got, late or not. Folding costs ~100 ms of CPU whatever the
batch size, so appended batches are kept and folded together every `FOLD_EVERY_S` (or past `FOLD_ROWS` rows);
readers call `fold()` through the writer first, so what they read is always complete. `compact()` (a periodic writer job) merges
the partial rows of the buckets touched since its last run. At startup `install()` compares each tier's total with
`count(*)` of requests and rebuilds when they differ (first start on an old file, rows changed while the proxy was
stopped, a crash between the appends). If maintaining it ever fails, `stale` is set: readers fall back to the raw
table (slower, still exact) until the next job tick rebuilds it.

The explore cube (`cube.py`, all low-cardinality dimensions at once, hourly) lives and dies with the rollup: same
fold, compaction, trim, rebuild and staleness. Folds wait for the append after the requests one in a flush (attempts,
which the cube reads) or for a reader.
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from proxy_service import cube
from proxy_service.histogram import GAMMA

log = logging.getLogger("keyrack.rollup")
_EPOCH = datetime(1970, 1, 1)

VERSION = "3"  # 3: the explore cube (cube.py) is maintained with the rollup
TIERS: dict[int, tuple[str, str]] = {  # grain (s) → (counters table, histogram table), coarsest first
    3600: ("rollup_requests_1h", "rollup_latency_1h"),
    900: ("rollup_requests", "rollup_latency"),
}
FOLD_EVERY_S = 2.0  # at most ~5 % of a core at any traffic level (one fold ≈ 100 ms)
FOLD_ROWS = 100_000
_INTERVAL = {3600: "INTERVAL 1 HOUR", 900: "INTERVAL 15 MINUTE"}

_COUNTERS_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    bucket TIMESTAMP NOT NULL, dim VARCHAR NOT NULL, val VARCHAR NOT NULL, calls BIGINT, successes BIGINT,
    latency_sum DOUBLE, latency_n BIGINT, prompt_tokens BIGINT, output_tokens BIGINT, total_tokens BIGINT)"""
_LATENCY_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    bucket TIMESTAMP NOT NULL, dim VARCHAR NOT NULL, val VARCHAR NOT NULL, lb SMALLINT NOT NULL, n BIGINT)"""
_META_DDL = "CREATE TABLE IF NOT EXISTS rollup_meta (name VARCHAR PRIMARY KEY, value VARCHAR)"

# One row per request with the grouping columns normalised ('' for NULL).
_BASE = """
    SELECT time_bucket({interval}, ts) AS bucket, coalesce(model, '') AS model,
           coalesce(project, '') AS project, coalesce(CAST(status AS VARCHAR), '') AS status,
           outcome = 'success' AS ok, latency_ms, prompt_tokens, output_tokens, total_tokens,
           CAST(ceil(ln(greatest(latency_ms, 0.01)) / ln({gamma})) AS SMALLINT) AS lb
    FROM {source}"""
_DIM_CASE = """CASE WHEN grouping(model) = 0 THEN 'model' WHEN grouping(project) = 0 THEN 'project'
                    WHEN grouping(status) = 0 THEN 'status' ELSE 'all' END"""
# ORDER BY dim, bucket: a rebuilt table is clustered so that a query for one dimension skips the others' row groups.
_INSERT_COUNTERS = f"""
    INSERT INTO {{counters}}
    WITH base AS ({_BASE})
    SELECT bucket, {_DIM_CASE}, coalesce(model, project, status, ''), count(*), count(*) FILTER (WHERE ok),
           sum(latency_ms), count(latency_ms), sum(prompt_tokens), sum(output_tokens), sum(total_tokens)
    FROM base GROUP BY GROUPING SETS ((bucket), (bucket, model), (bucket, project), (bucket, status))
    ORDER BY 2, 1"""
_INSERT_LATENCY = f"""
    INSERT INTO {{latency}}
    WITH base AS ({_BASE} WHERE latency_ms IS NOT NULL)
    SELECT bucket, {_DIM_CASE}, coalesce(model, project, status, ''), lb, count(*)
    FROM base GROUP BY GROUPING SETS ((bucket, lb), (bucket, model, lb), (bucket, project, lb), (bucket, status, lb))
    ORDER BY 2, 1"""
# Sources: the batch just appended (registered under this name on the writer cursor) or the whole table.
_BATCH = "_rollup_batch"
_SOURCES = {"batch": _BATCH, "requests": "requests"}
_IN_TOUCHED = "WHERE bucket BETWEEN ? AND ? AND list_contains(?, bucket)"
_COMPACT_COUNTERS = f"""
    CREATE OR REPLACE TEMP TABLE _rollup_c AS
    SELECT bucket, dim, val, sum(calls)::BIGINT, sum(successes)::BIGINT, sum(latency_sum), sum(latency_n)::BIGINT,
           sum(prompt_tokens)::BIGINT, sum(output_tokens)::BIGINT, sum(total_tokens)::BIGINT
    FROM {{counters}} {_IN_TOUCHED} GROUP BY ALL"""
_COMPACT_LATENCY = f"""
    CREATE OR REPLACE TEMP TABLE _rollup_l AS
    SELECT bucket, dim, val, lb, sum(n)::BIGINT FROM {{latency}} {_IN_TOUCHED} GROUP BY ALL"""


def _insert(cur: duckdb.DuckDBPyConnection, source: str) -> None:
    for grain, (counters, latency) in TIERS.items():
        base = {"interval": _INTERVAL[grain], "gamma": GAMMA, "source": _SOURCES[source]}
        cur.execute(_INSERT_COUNTERS.format(counters=counters, **base))
        cur.execute(_INSERT_LATENCY.format(latency=latency, **base))
    cube.insert(cur, _SOURCES[source])


def floor_time(t: datetime, grain_s: int) -> datetime:
    """The start of the `grain_s`-second bucket holding `t` (naive UTC), buckets aligned on the epoch as DuckDB's
    time_bucket aligns them for grains that divide a day. The one flooring rule for the rollup, the analytics
    queries and retention."""
    s = calendar.timegm(t.timetuple())
    return _EPOCH + timedelta(seconds=s - s % grain_s)


def fold_batch(cur: duckdb.DuckDBPyConnection, batch: pa.Table) -> None:
    """Insert the rollup rows of `batch` (rows about to be appended to `requests`); raises on failure.

    Cluster mode calls it inside the transaction that appends the batch, so the rollup and the raw rows of a lake
    agree at every snapshot whatever the number of writers."""
    cur.register(_BATCH, batch)
    try:
        _insert(cur, "batch")
    finally:
        cur.unregister(_BATCH)


class Rollup:
    """Maintains the rollup tables; all methods that write run on the event writer's thread."""

    def __init__(self) -> None:
        self.stale = False
        self._touched: set[datetime] = set()  # 15-minute buckets appended to since the last compaction
        self._lock = threading.Lock()
        self._pending: list[pa.Table] = []  # appended to `requests`, not folded yet (writer thread only)
        self._pending_rows = 0
        self._folded_at = time.monotonic()

    @property
    def usable(self) -> bool:
        return not self.stale

    # -- setup ---------------------------------------------------------------------------------------------------
    def install(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Create the tables and make sure they agree with `requests` (rebuild when they don't)."""
        cur.execute(_META_DDL)
        for counters, latency in TIERS.values():
            cur.execute(_COUNTERS_DDL.format(table=counters))
            cur.execute(_LATENCY_DDL.format(table=latency))
        cube.install(cur)
        row = cur.execute("SELECT value FROM rollup_meta WHERE name = 'version'").fetchone()
        raw = cur.execute("SELECT count(*) FROM requests").fetchone()
        agree = (
            all(
                cur.execute(f"SELECT coalesce(sum(calls), 0) FROM {counters} WHERE dim = 'all'").fetchone() == raw
                for counters, _ in TIERS.values()
            )
            and (cube.total_calls(cur),) == raw
        )
        if row is None or row[0] != VERSION or not agree:
            self.rebuild(cur)

    def rebuild(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Recompute everything from `requests` in one transaction (≈20 s per 10M rows on 2 cores)."""
        started = time.perf_counter()
        cur.execute("BEGIN TRANSACTION")
        try:
            for counters, latency in TIERS.values():
                cur.execute(f"DELETE FROM {counters}")
                cur.execute(f"DELETE FROM {latency}")
            cube.reset(cur)
            _insert(cur, "requests")
            # Delete + insert rather than INSERT OR REPLACE: a DuckLake table (cluster mode) has no primary key.
            cur.execute("DELETE FROM rollup_meta WHERE name = 'version'")
            cur.execute("INSERT INTO rollup_meta VALUES ('version', ?)", [VERSION])
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        self._pending, self._pending_rows = [], 0  # the rebuild read them from `requests`
        with self._lock:
            self._touched.clear()
        self.stale = False
        log.info("rollup rebuilt in %.1f s", time.perf_counter() - started)

    # -- maintenance (writer thread) -------------------------------------------------------------------------------
    def on_append(self, cur: duckdb.DuckDBPyConnection, table: str, batch: pa.Table) -> None:
        """EventWriter hook: keep the batch just appended to `requests`; fold when enough has gathered.

        Folds only after another table's append: a flush appends requests first, then the attempts the cube needs
        for those requests (a request's attempts are recorded before it)."""
        if self.stale:
            return
        if table == "requests":
            if batch.num_rows:
                self._pending.append(batch)
                self._pending_rows += batch.num_rows
            return
        if self._pending_rows >= FOLD_ROWS or time.monotonic() - self._folded_at >= FOLD_EVERY_S:
            self.fold(cur)

    def fold(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fold every pending batch into the rollup (writer thread; readers submit it before reading)."""
        self._folded_at = time.monotonic()
        if not self._pending:
            return
        pending, self._pending, self._pending_rows = self._pending, [], 0
        if self.stale:
            return
        try:
            # Batches built from Python rows may type an all-NULL column as `null`, or whole numbers as int64 where
            # another batch has doubles: promote to the common schema (the table casts on insert the same way).
            batch = pa.concat_tables(pending, promote_options="permissive")
            cur.register(_BATCH, batch)
            try:
                buckets = cur.execute(f"SELECT DISTINCT time_bucket(INTERVAL 15 MINUTE, ts) FROM {_BATCH}").fetchall()
                _insert(cur, "batch")
            finally:
                cur.unregister(_BATCH)
        except Exception:
            # The raw rows are in; the rollup no longer matches them. Readers go raw until the rebuild.
            self.stale = True
            log.exception("rollup update failed; falling back to raw rows until it is rebuilt")
            return
        with self._lock:
            self._touched.update(b for (b,) in buckets)

    def compact(self, cur: duckdb.DuckDBPyConnection) -> int:
        """Merge the partial rows of the buckets touched since the last call; rebuild if stale. Returns buckets."""
        self.fold(cur)
        if self.stale:
            self.rebuild(cur)
            return 0
        with self._lock:
            touched, self._touched = self._touched, set()
        if not touched:
            return 0
        cur.execute("BEGIN TRANSACTION")
        try:
            for grain, (counters, latency) in TIERS.items():
                buckets = sorted({floor_time(b, grain) for b in touched})
                params = [buckets[0], buckets[-1], buckets]
                cur.execute(_COMPACT_COUNTERS.format(counters=counters), params)
                cur.execute(_COMPACT_LATENCY.format(latency=latency), params)
                cur.execute(f"DELETE FROM {counters} {_IN_TOUCHED}", params)
                cur.execute(f"DELETE FROM {latency} {_IN_TOUCHED}", params)
                cur.execute(f"INSERT INTO {counters} SELECT * FROM _rollup_c")
                cur.execute(f"INSERT INTO {latency} SELECT * FROM _rollup_l")
            cube.compact(cur, sorted({floor_time(b, 3600) for b in touched}))
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            with self._lock:
                self._touched.update(touched)
            raise
        finally:
            cur.execute("DROP TABLE IF EXISTS _rollup_c")
            cur.execute("DROP TABLE IF EXISTS _rollup_l")
        return len(touched)

    def trim(self, cur: duckdb.DuckDBPyConnection, before: datetime) -> None:
        """Retention: drop buckets older than `before`, an hour boundary (as the raw cutoff is)."""
        for counters, latency in TIERS.values():
            cur.execute(f"DELETE FROM {counters} WHERE bucket < ?", [before])
            cur.execute(f"DELETE FROM {latency} WHERE bucket < ?", [before])
        cube.trim(cur, before)
