"""The lifecycle of the pre-aggregates (`preagg.py`): one fold, one compaction, one trim, one rebuild path.

Why: on tens of millions of `requests` rows a plain hourly series with percentiles, or an Explore slice by two
dimensions, reads every row; the pre-aggregates answer the same questions from a small fraction of them
(bench/analytics.py, bench/explore.py measure both on the same file).

Exactness by construction: the writer calls `on_append` right after each batch lands in `requests`, on the writer
thread, so the pre-aggregates see exactly the rows the table got, late or not. A fold's CPU cost barely depends on
the batch size, so appended batches are kept and folded together every `FOLD_EVERY_S` (or past `FOLD_ROWS` rows);
folds wait for the append after the requests one in a flush (attempts, which the upstream-429 counters read), and
readers call `fold()` through the writer first, so what they read is always complete. `compact()` (a periodic writer
job) merges the partial rows of the buckets touched since its last run. `trim()` follows retention. At startup
`install()` compares each grain's total with `count(*)` of requests and rebuilds when they differ (first start on an
old file — whose obsolete tables `preagg.install` drops —, rows changed while the proxy was stopped, a crash between
the appends) or when the layout version or the display zone changed; when they agree, the install marks the last
hour as touched, so the first compaction merges what the previous process folded after its last one. If maintaining
them ever fails, `stale` is set: readers fall back to the raw table (slower, still exact) until the next job tick
rebuilds them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import duckdb

from proxy_service.analytics import preagg
from proxy_service.analytics.buckets import floor_time
from proxy_service.events import Columns, insert_columns
from proxy_service.store import utcnow

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("keyrack.rollup")

# 4: explore pre-aggregates per local day replace the all-dimensions cube; 5: + per key; 6: + key pairs;
# 7: one family (`preagg`) for stats, Explore, alerts and forecasts; 8: + the resource kind (files, caches, Live...);
# 9: + spend sums (cost_sum, list_cost_sum)
VERSION = "9"
FOLD_EVERY_S = 2.0  # a small, fixed share of a core at any traffic level (bench/analytics.py times reads with folds)
FOLD_ROWS = 100_000
INLINE_CHUNK_DAYS = 7
_META_DDL = "CREATE TABLE IF NOT EXISTS rollup_meta (name VARCHAR PRIMARY KEY, value VARCHAR)"
# Sources: the batches just appended (a temp table, or an Arrow table registered under this name on the writer
# cursor) or one chunk of the whole table.
_BATCH = "_rollup_batch"
_CHUNK = "_rollup_chunk"


def _insert(
    cur: duckdb.DuckDBPyConnection, source: str, tz: ZoneInfo, span: tuple[datetime, datetime] | None = None
) -> None:
    """Fold the `requests` rows in table `source` into the pre-aggregates."""
    preagg.insert(cur, source, tz, span=span)


def _meta(cur: duckdb.DuckDBPyConnection, name: str) -> str | None:
    row = cur.execute("SELECT value FROM rollup_meta WHERE name = ?", [name]).fetchone()
    return str(row[0]) if row else None


def fold_batch(cur: duckdb.DuckDBPyConnection, batch: pa.Table) -> None:
    """Insert the pre-aggregate rows of `batch` (rows about to be appended to `requests`); raises on failure.

    Cluster mode calls it inside the transaction that appends the batch, so the rollup and the raw rows of a lake
    agree at every snapshot whatever the number of writers. The local days are those of the zone the tables were
    built for (`rollup_meta`)."""
    tz = ZoneInfo(_meta(cur, "zone") or "UTC")
    cur.register(_BATCH, batch)
    try:
        _insert(cur, _BATCH, tz)
    finally:
        cur.unregister(_BATCH)


@dataclass
class _Rebuild:
    """A rebuild in progress: `chunks` (local days, oldest first) still to read from `requests`.

    Rows appended meanwhile are folded as usual when they fall before `done_to` (their day is rebuilt) or at or after
    `until` (newer than every row at the start); the rest are left to the chunk of their day, which reads them from
    `requests` when it runs. So every row is counted once, however late it arrives."""

    chunks: list[tuple[datetime, datetime]]
    total: int
    done_to: datetime
    until: datetime
    started: float
    trim_due: datetime | None = None


class Rollup:
    """Maintains the pre-aggregates; all methods that write run on the event writer's thread."""

    def __init__(self, zone: str = "UTC") -> None:
        self.zone = zone  # the local days of the explore pre-aggregates
        self.stale = False
        self.background = False  # rebuild in chunks (driven by `rebuild_step`) rather than in one go
        self.rebuilding: _Rebuild | None = None
        self._touched: set[datetime] = set()  # buckets (any grain) appended to since the last compaction
        self._lock = threading.Lock()
        self._pending: Columns = {}  # rows appended to `requests`, not folded yet, per column (writer thread only)
        self._pending_rows = 0
        self._folded_at = time.monotonic()

    @property
    def usable(self) -> bool:
        """Whether the tables agree with `requests` (else readers read raw rows)."""
        return not self.stale and self.rebuilding is None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @property
    def progress(self) -> float | None:
        """The share of a rebuild done (0..1), None when none runs."""
        r = self.rebuilding
        return None if r is None else round(1 - len(r.chunks) / max(r.total, 1), 3)

    # -- setup ---------------------------------------------------------------------------------------------------
    def install(self, cur: duckdb.DuckDBPyConnection, background: bool = False) -> None:
        """Create the tables and make sure they agree with `requests` (rebuild when they don't).

        `background`: only start the rebuild here (a few fast deletes); the caller then runs `rebuild_step` on the
        writer thread until it returns False, and readers go raw meanwhile. Otherwise rebuild before returning."""
        self.background = background
        cur.execute(_META_DDL)
        preagg.install(cur)
        # One snapshot for all the counts: on a lake, other replicas commit between two statements.
        cur.execute("BEGIN TRANSACTION")
        try:
            raw = cur.execute("SELECT count(*) FROM requests").fetchone()
            n = raw[0] if raw else 0
            agree = all(calls == n for calls in preagg.total_calls(cur).values())
        finally:
            cur.execute("COMMIT")
        if _meta(cur, "version") != VERSION or _meta(cur, "zone") != self.zone or not agree:
            self.rebuild(cur)
        elif background:
            # A previous process may have folded rows after its last compaction (stopped or killed between two):
            # the next compaction merges the last hour's buckets, where those rows are (late ones included).
            last = cur.execute("SELECT max(ts) FROM requests").fetchone()
            if last is not None and last[0] is not None:
                self.touch(last[0] - timedelta(hours=1), last[0])

    def rebuild(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Recompute everything from `requests`: in chunks by the caller when `background`, else now."""
        self.start_rebuild(cur)
        while not self.background and self.rebuild_step(cur):
            pass

    def start_rebuild(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Empty the tables and plan the chunks (one local day each, oldest first)."""
        cur.execute("BEGIN TRANSACTION")
        try:
            preagg.reset(cur)
            cur.execute("DELETE FROM rollup_meta WHERE name IN ('version', 'zone')")
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        span = cur.execute("SELECT min(ts), max(ts) FROM requests").fetchone()
        self._pending, self._pending_rows = {}, 0  # the chunks read them from `requests`
        with self._lock:
            self._touched.clear()
        self.stale = False
        chunks: list[tuple[datetime, datetime]] = []
        until = utcnow()
        if span is not None and span[0] is not None:
            until = span[1] + timedelta(microseconds=1)
            starts = preagg.day_starts(self.tz, span[0], span[1])
            # One local day per chunk in the background (the writer waits for one chunk at most); a week at a time
            # inline, where nothing waits and fewer, larger statements are faster.
            days = [a for a in starts if a < until] + [until]
            step = 1 if self.background else INLINE_CHUNK_DAYS
            chunks = [(days[i], days[min(i + step, len(days) - 1)]) for i in range(0, len(days) - 1, step)]
        self.rebuilding = _Rebuild(chunks, len(chunks), chunks[0][0] if chunks else until, until, time.perf_counter())
        log.info("rollup rebuild started: %d day(s) of rows", len(chunks))
        if not chunks:
            self.rebuild_step(cur)

    def rebuild_step(self, cur: duckdb.DuckDBPyConnection) -> bool:
        """Rebuild the next chunk (writer thread; a chunk is small enough that appends do not wait long behind it). Returns whether chunks remain."""
        r = self.rebuilding
        if r is None:
            return False
        if r.chunks:
            lo, hi = r.chunks[0]
            cur.execute("BEGIN TRANSACTION")
            try:
                cur.execute(
                    f"CREATE OR REPLACE TEMP TABLE {_CHUNK} AS SELECT * FROM requests WHERE ts >= ? AND ts < ?",
                    [lo, hi],
                )
                _insert(cur, _CHUNK, self.tz)
                cur.execute(f"DROP TABLE {_CHUNK}")
                cur.execute("COMMIT")
            except Exception:
                cur.execute("ROLLBACK")
                self.stale, self.rebuilding = True, None
                log.exception("rollup rebuild failed; readers stay on raw rows until the next attempt")
                return False
            r.chunks.pop(0)
            r.done_to = hi
            if r.chunks:
                return True
        cur.execute("BEGIN TRANSACTION")
        try:
            preagg.cluster(cur)  # once, on the whole history
            # Delete + insert rather than INSERT OR REPLACE: a DuckLake table (cluster mode) has no primary key.
            cur.execute("DELETE FROM rollup_meta WHERE name IN ('version', 'zone')")
            cur.execute("INSERT INTO rollup_meta VALUES ('version', ?), ('zone', ?)", [VERSION, self.zone])
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            self.stale, self.rebuilding = True, None
            log.exception("rollup rebuild failed; readers stay on raw rows until the next attempt")
            return False
        self.rebuilding = None
        log.info("rollup rebuilt in %.1f s (%d day(s))", time.perf_counter() - r.started, r.total)
        if r.trim_due is not None:
            self.trim(cur, r.trim_due)
        return False

    def rezone(self, cur: duckdb.DuckDBPyConnection, zone: str) -> None:
        """The display zone changed: the local days of the explore pre-aggregates are rebuilt for the new one."""
        if zone != self.zone:
            self.zone = zone
            self.rebuild(cur)

    # -- maintenance (writer thread) -------------------------------------------------------------------------------
    def on_append(self, cur: duckdb.DuckDBPyConnection, table: str, batch: Columns) -> None:
        """EventWriter hook: keep the batch just appended to `requests`; fold when enough has gathered.

        Folds only after another table's append: a flush appends requests first, then the attempts the upstream-429 counters need
        for those requests (a request's attempts are recorded before it)."""
        if self.stale:
            return
        if table == "requests":
            rows = len(batch.get("ts", ()))
            if rows:
                if self._pending:
                    for name, values in batch.items():
                        self._pending[name].extend(values)
                else:
                    self._pending = batch  # the writer hands its lists over (it builds new ones per batch)
                self._pending_rows += rows
            return
        if self._pending_rows >= FOLD_ROWS or time.monotonic() - self._folded_at >= FOLD_EVERY_S:
            self.fold(cur)

    def fold(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Fold every pending batch into the rollup (writer thread; readers submit it before reading)."""
        self._folded_at = time.monotonic()
        if not self._pending:
            return
        batch, self._pending, self._pending_rows = self._pending, {}, 0
        if self.stale:
            return
        try:
            r = self.rebuilding
            if r is not None:  # rows of days not rebuilt yet are left to their chunk (see _Rebuild)
                keep = [i for i, t in enumerate(batch["ts"]) if t < r.done_to or t >= r.until]
                if not keep:
                    return
                if len(keep) < len(batch["ts"]):
                    batch = {name: [values[i] for i in keep] for name, values in batch.items()}
            # Buckets and span in Python, from the distinct minutes: a query each would cost the writer more.
            ts = batch["ts"]
            span = (min(ts), max(ts))
            minutes = {t.replace(second=0, microsecond=0) for t in ts}
            buckets = preagg.touched({floor_time(m, 900) for m in minutes}, span[0], span[1], self.tz)
            # A temp table with the columns of `requests` (their types, so the folds read what the table got).
            cur.execute(f"CREATE OR REPLACE TEMP TABLE {_BATCH} AS SELECT * FROM requests LIMIT 0")
            try:
                insert_columns(cur, _BATCH, batch)
                _insert(cur, _BATCH, self.tz, span)
            finally:
                cur.execute(f"DROP TABLE IF EXISTS {_BATCH}")
        except Exception:
            # The raw rows are in; the rollup no longer matches them. Readers go raw until the rebuild.
            self.stale, self.rebuilding = True, None
            log.exception("rollup update failed; falling back to raw rows until it is rebuilt")
            return
        with self._lock:
            self._touched.update(buckets)

    def touch(self, lo: datetime, hi: datetime) -> None:
        """Mark [lo, hi] as appended to, so that the next `compact` merges whatever partial rows its buckets hold:
        those a previous process folded after its last compaction (the explore bench reuses its files)."""
        quarters = [
            floor_time(lo, 900) + timedelta(minutes=15 * i) for i in range(int((hi - lo) / timedelta(minutes=15)) + 2)
        ]
        with self._lock:
            self._touched.update(preagg.touched(set(quarters), lo, hi, self.tz))

    def compact(self, cur: duckdb.DuckDBPyConnection) -> int:
        """Merge the partial rows of the buckets touched since the last call; rebuild if stale. Returns the bucket
        instants merged (any grain)."""
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
            preagg.compact(cur, sorted(touched))
            cur.execute("COMMIT")
        except Exception:
            # A lake commit that failed (a conflict with another replica's insert) has already ended its
            # transaction: ROLLBACK then raises, and the touched buckets must be kept all the same.
            with contextlib.suppress(duckdb.Error):
                cur.execute("ROLLBACK")
            with self._lock:
                self._touched.update(touched)
            raise
        return len(touched)

    def trim(self, cur: duckdb.DuckDBPyConnection, before: datetime) -> None:
        """Retention: drop buckets older than `before`, an hour boundary (as the raw cutoff is). During a rebuild,
        after it (a chunk may already hold rows older than `before`)."""
        if self.rebuilding is not None:
            self.rebuilding.trim_due = before
            return
        self.fold(cur)  # the pending rows are in `requests`: the day recomputed below must not count them twice
        preagg.trim(cur, before, self.tz)
