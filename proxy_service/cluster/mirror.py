"""A replica-local mirror of the lake's pre-aggregate tables (`preagg.py`) and of the raw rows at stats' range edges, so that a stats read
makes no catalog round trip beyond one snapshot check.

On a DuckLake every table scan costs several PostgreSQL catalog queries (files, column statistics, delete files,
schema, inlined rows), and the stats summary scans the rollup many times (bench/cluster.py measures stats reads on a
lake against the embedded file). The mirror keeps a copy of each rollup table in a
DuckDB file of the replica's own, attached to its connection as `lake_mirror` (`lake_mirror.main.<table>`, with the
lake's `rowid`; started afresh at each start), and views without the row id in `lake_mirror.rollup`, which a
reader's search path puts before the lake's schema. A file rather than an in-memory table: compressed and paged
(a file holds a rollup table in a fraction of an in-memory table's size and scans it as fast as the embedded file
does; bench/cluster.py's stats reads go through it).

It follows the lake's snapshots: `catch_up()` reads the current snapshot id (one catalog query); if it moved, the
snapshots' change maps say which tables changed, and DuckLake's data change feed (`table_changes(table, from, to)`:
snapshot_id, rowid, change_type, then the columns) gives their rows. A row id is never reused, so a change is applied
as: drop every row id the feed names, insert the rows whose last change is an insert or an update's postimage
(compaction folds rows = deletes + inserts; retention = deletes; flushing inlined rows and merging files change
nothing). A table created, dropped or altered, or a failed feed (e.g. its start snapshot expired), reloads that table
whole at the current snapshot.

Raw edges: a stats range is whole rollup buckets plus, at its ends, parts of 15-minute buckets read from raw
`requests` rows (queries.split); on the lake such a scan costs a dozen catalog queries, more than the rest of the
read. `edges(ranges)` makes the mirror hold every lake row of those ranges' 15-minute buckets (fetched once at
the mirror's snapshot, then followed through the same change feed: late rows, retention and compaction apply), in
`lake_mirror.main.requests_edges`, least recently read buckets dropped beyond EDGE_BUCKETS / EDGE_ROWS or after
EDGE_IDLE_S. A summary needs ~4 buckets (the 1 min, 1 h and 24 h windows' starts, the current one), a range ~2.

Readers call `catch_up()` before reading, so an answer reflects every commit made before it (exact, like a lake
read); a daemon thread calls it every REFRESH_S so that a reader usually finds nothing to do. The snapshot check is
one statement on the catalog's PostgreSQL, outside a transaction (`max(snapshot_id)`: one round trip; DuckLake's
`current_snapshot()` opens a catalog transaction: 3 round trips). All the changes of one catch-up apply in one mirror transaction. Any failure leaves the
mirror unusable until a later catch-up succeeds; readers then use the lake itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from proxy_service.analytics import preagg
from proxy_service.analytics.buckets import floor_time
from proxy_service.analytics.preagg import TIERS
from proxy_service.analytics.queries import RAW_COLUMNS
from proxy_service.spill import invalidated
from proxy_service.store import closing, keep_invalidated

if TYPE_CHECKING:
    import pyarrow as pa

    from proxy_service.store import Ranges

log = logging.getLogger("keyrack.cluster.mirror")

DB = "lake_mirror"  # a DuckDB file of the replica's own: compressed, paged (in memory: far larger, and slower)
SCHEMA = f"{DB}.rollup"  # views, what readers see
DATA = f"{DB}.main"  # tables with the lake's row id
TABLES = (preagg.COUNTERS, preagg.HISTOGRAM)
RAW = "requests"  # the lake table whose rows at stats' range edges are mirrored
EDGES = f"{DATA}.requests_edges"  # those rows (RAW_COLUMNS and the lake's row id)
EDGE_GRAIN = min(TIERS)  # a raw part of a stats range lies within one bucket of the finest UTC grain
EDGE_BUCKETS = 96  # most buckets held; a read needing more (a long raw range) reads the lake
EDGE_ROWS = 2_000_000  # most rows held (the busiest buckets of a high-traffic cluster are big)
EDGE_IDLE_S = 3600.0  # a bucket no read used for this long is dropped at the next fetch
REFRESH_S = 1.0
_RESHAPE = ("created", "dropped", "altered", "renamed")  # change-map keys after which a table is reloaded whole
_ROLLUP_COLUMNS = "* EXCLUDE (snapshot_id, rowid, change_type)"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Mirror:
    def __init__(
        self, cursor: Callable[[], duckdb.DuckDBPyConnection], catalog: str, path: Path, meta_schema: str = "ducklake"
    ) -> None:
        self._cursor = cursor  # every name below is fully qualified
        self._catalog = catalog
        self._meta = f"__ducklake_metadata_{catalog}"  # the catalog database as DuckLake attached it
        self._meta_schema = meta_schema
        self._check: duckdb.DuckDBPyConnection | None = None  # the snapshot check's own cursor (under _lock)
        sql = f"SELECT max(snapshot_id) FROM {meta_schema}.ducklake_snapshot"
        # Outside a transaction: one statement instead of BEGIN / COPY / COMMIT (each a round trip)
        self._check_sql = f"SELECT * FROM postgres_query({_lit(self._meta)}, {_lit(sql)}, use_transaction => false)"
        self._path = self._first_path = path
        self._attached = False
        self._lock = threading.Lock()
        self._snapshot: int | None = None  # the lake snapshot the mirror holds; None: not usable
        self._ids: dict[str, str] = {}  # table → its DuckLake table id (as the change maps spell it)
        self._edges: dict[datetime, float] = {}  # edge bucket held → when a read last used it (monotonic)
        self._edges_valid = False  # EDGES exists and holds exactly the rows of the buckets in _edges
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.refreshes = 0
        self.reloads = 0
        self.edge_fetches = 0
        self.last_error: str | None = None

    @property
    def snapshot(self) -> int | None:
        return self._snapshot

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lake-mirror", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self._drop_check()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.catch_up()
            self._stop.wait(REFRESH_S)

    def catch_up(self) -> bool:
        """Bring the mirror to the lake's current snapshot; True if it is usable (it holds that snapshot)."""
        with self._lock:
            try:
                now = self._current()
                if now != self._snapshot or not self._attached:
                    with closing(self._cursor()) as cur:
                        self._catch_up(cur, now)
                self.last_error = None
                return True
            except Exception as exc:  # any failure: readers go to the lake until a catch-up succeeds
                self._snapshot = None
                self._drop_check(invalidated(exc))
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if text != self.last_error:
                    log.warning("lake mirror not usable: %s", text)
                self.last_error = text
                return False

    def _current(self) -> int:
        """The lake's latest snapshot id, read from the catalog's PostgreSQL (the lake's catalog always is) on a
        cursor kept for this: each read makes this check, and a fresh cursor would cost more. Not a prepared
        statement: postgres_query runs at bind time, EXECUTE would repeat its first answer."""
        if self._check is None:
            self._check = self._cursor()
        row = self._check.execute(self._check_sql).fetchone()
        if row is None or row[0] is None:
            raise RuntimeError("the lake has no snapshot")
        return int(row[0])

    def reset(self, generation: int) -> None:
        """Forget the attached file and snapshot (the connection it was attached to is gone: `LakeStore.reopen`);
        the next catch-up attaches a fresh file, named after the connection's `generation` (the old instance may
        be kept, holding the old file), and loads it whole."""
        with self._lock:
            self._drop_check()
            old = self._path
            self._path = self._first_path.with_name(f"{self._first_path.stem}.{generation}{self._first_path.suffix}")
            for stale in (old, old.with_name(old.name + ".wal")):
                stale.unlink(missing_ok=True)
            self._attached, self._snapshot = False, None
            self._edges.clear()
            self._edges_valid = False

    def _drop_check(self, keep: bool = False) -> None:
        """Let the snapshot check's cursor go; `keep`: its database was invalidated (never closed, see store.py)."""
        if self._check is not None:
            if keep:
                keep_invalidated(self._check)
            else:
                with contextlib.suppress(duckdb.Error):
                    self._check.close()
            self._check = None

    def _catch_up(self, cur: duckdb.DuckDBPyConnection, now: int) -> None:
        if not self._attached:  # a file left by an earlier run holds an unknown snapshot: start afresh
            self._path.parent.mkdir(parents=True, exist_ok=True)
            for stale in (self._path, self._path.with_name(self._path.name + ".wal")):
                stale.unlink(missing_ok=True)
            cur.execute(f"ATTACH {_lit(str(self._path))} AS {DB}")
            self._attached = True
        if self._snapshot is None:
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            self._ids = self._table_ids(cur)
            for table in TABLES:
                self._reload(cur, table, now)
            self._reset_edges(cur)
            self._snapshot = now
            return
        if now == self._snapshot:
            return
        changed: set[str] = set()
        reshaped: set[str] = set()
        names = {f"main.{t}": t for t in (*TABLES, RAW)} | {v: k for k, v in self._ids.items()}
        changes = cur.execute(
            f"SELECT changes FROM {self._catalog}.snapshots() WHERE snapshot_id > ? AND snapshot_id <= ?",
            [self._snapshot, now],
        ).fetchall()
        for (change_map,) in changes:
            for key, values in change_map.items():
                hit = {names[v] for v in values if v in names}
                changed |= hit
                if any(word in key for word in _RESHAPE):
                    reshaped |= hit
        if reshaped:
            self._ids = self._table_ids(cur)
        if RAW in changed and (RAW in reshaped or not self._edges_valid):
            self._reset_edges(cur)
        reload = {t for t in changed & reshaped if t != RAW}
        feeds: dict[str, pa.Table] = {}
        for table in sorted(changed - reload):
            if table == RAW and not self._edges:
                continue  # no edge held: nothing to follow
            columns = f"snapshot_id, rowid, change_type, {RAW_COLUMNS}" if table == RAW else "*"
            try:
                feeds[table] = cur.execute(
                    f"SELECT {columns} FROM {self._catalog}.table_changes(?, ?, ?)", [table, self._snapshot + 1, now]
                ).to_arrow_table()
            except duckdb.Error as exc:  # e.g. the feed's start snapshot was expired: start over for it
                log.info("lake mirror reloads %s: %s", table, str(exc).splitlines()[0])
                if table == RAW:
                    self._reset_edges(cur)
                else:
                    reload.add(table)
        self._apply(cur, feeds)
        for table in sorted(reload):
            self._reload(cur, table, now)
        self._snapshot = now
        self.refreshes += 1

    def _table_ids(self, cur: duckdb.DuckDBPyConnection) -> dict[str, str]:
        rows = cur.execute(
            f"SELECT table_name, table_id FROM {self._meta}.{self._meta_schema}.ducklake_table "
            "WHERE end_snapshot IS NULL"
        ).fetchall()
        return {name: str(tid) for name, tid in rows if name in (*TABLES, RAW)}

    def _reload(self, cur: duckdb.DuckDBPyConnection, table: str, snapshot: int) -> None:
        rows = cur.execute(
            f"SELECT rowid AS _rowid, * FROM {self._catalog}.main.{table} AT (VERSION => ?)", [snapshot]
        ).to_arrow_table()
        cur.register("_mirror_rows", rows)
        cur.execute("BEGIN")
        try:
            cur.execute(
                f"CREATE OR REPLACE TABLE {DATA}.{table} AS SELECT * FROM _mirror_rows ORDER BY grain, a, b, bucket"
            )
            cur.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.{table} AS SELECT * EXCLUDE (_rowid) FROM {DATA}.{table}")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.unregister("_mirror_rows")
        cur.execute(f"CHECKPOINT {DB}")  # compressed row groups (the write-ahead log holds them uncompressed)
        self.reloads += 1

    def _apply(self, cur: duckdb.DuckDBPyConnection, feeds: dict[str, pa.Table]) -> None:
        """Every table's changes in one mirror transaction: a reader's statement sees the rollup and the edges at
        one lake snapshot. A row id is never reused: drop every row id a feed names, insert the rows whose last
        change is an insert or an update's postimage (and, for the edges, whose bucket is held)."""
        feeds = {t: f for t, f in feeds.items() if f.num_rows}
        if not feeds:
            return
        cur.execute("BEGIN")
        try:
            for table, feed in feeds.items():
                target, columns = (EDGES, RAW_COLUMNS) if table == RAW else (f"{DATA}.{table}", _ROLLUP_COLUMNS)
                held, params = "", []
                if table == RAW:
                    held, params = (
                        " AND list_contains(?, time_bucket(to_seconds(?), ts))",
                        [list(self._edges), EDGE_GRAIN],
                    )
                cur.register("_mirror_feed", feed)
                try:
                    cur.execute(f"DELETE FROM {target} WHERE _rowid IN (SELECT rowid FROM _mirror_feed)")
                    # An update's pre- and postimage share a snapshot: the postimage is the row's state.
                    cur.execute(
                        f"INSERT INTO {target} BY NAME SELECT rowid AS _rowid, {columns} FROM _mirror_feed QUALIFY "
                        "row_number() OVER (PARTITION BY rowid ORDER BY snapshot_id DESC, "
                        "change_type = 'update_postimage' DESC) = 1 "
                        f"AND change_type IN ('insert', 'update_postimage'){held}",
                        params,
                    )
                finally:
                    cur.unregister("_mirror_feed")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- raw edges -------------------------------------------------------------------------------------------------
    def _reset_edges(self, cur: duckdb.DuckDBPyConnection) -> None:
        """An empty edge table shaped like the lake's columns (again after the lake's requests table changed)."""
        self._edges.clear()
        self._edges_valid = False
        cur.execute(
            f"CREATE OR REPLACE TABLE {EDGES} AS SELECT rowid AS _rowid, {RAW_COLUMNS} "
            f"FROM {self._catalog}.main.{RAW} LIMIT 0"
        )
        self._edges_valid = True

    @contextlib.contextmanager
    def edges(self, ranges: Ranges) -> Iterator[str | None]:
        """The table holding every lake `requests` row in `ranges` (columns `queries.RAW_COLUMNS`) at the mirror's
        snapshot, or None when the mirror cannot (not usable, too many rows or buckets, a failed fetch): read the
        lake. Held for the caller's block: no catch-up or eviction changes the table while the caller reads it."""
        with self._lock:
            try:
                usable = self._cover(ranges)
            except Exception as exc:  # e.g. the catalog is unreachable: this read goes to the lake
                self._edges_valid = False  # the table may hold part of a failed change: rebuilt on next use
                log.info("lake mirror edges not usable: %s", str(exc).splitlines()[0] if str(exc) else exc)
                usable = False
            yield EDGES if usable else None

    def _cover(self, ranges: Ranges) -> bool:
        if self._snapshot is None:
            return False
        want: set[datetime] = set()
        for lo, hi in ranges:
            b = floor_time(lo, EDGE_GRAIN)
            while b < hi:
                want.add(b)
                b += timedelta(seconds=EDGE_GRAIN)
                if len(want) > EDGE_BUCKETS:
                    return False
        clock = time.monotonic()
        missing = sorted(want - self._edges.keys()) if self._edges_valid else sorted(want)
        if missing:
            cur = self._cursor()
            try:
                if not self._edges_valid:
                    self._reset_edges(cur)
                if not self._fetch(cur, missing, want, clock):
                    return False
            finally:
                cur.close()
        for b in want:
            self._edges[b] = clock
        return True

    def _fetch(
        self, cur: duckdb.DuckDBPyConnection, missing: list[datetime], want: set[datetime], clock: float
    ) -> bool:
        """Add the lake's rows of `missing` buckets (read at the mirror's snapshot: the feed continues from there),
        after dropping idle buckets and, to stay within the limits, the least recently read ones not in `want`."""
        grain = timedelta(seconds=EDGE_GRAIN)
        runs: list[list[datetime]] = []
        for b in missing:  # contiguous buckets → one range; distant ones → their own scan (pruned by ts)
            if runs and runs[-1][1] == b:
                runs[-1][1] = b + grain
            else:
                runs.append([b, b + grain])
        scan = f"SELECT rowid AS _rowid, {RAW_COLUMNS} FROM {self._catalog}.main.{RAW} AT (VERSION => {int(self._snapshot or 0)}) WHERE ts >= ? AND ts < ?"
        rows = cur.execute(" UNION ALL ".join([scan] * len(runs)), [t for run in runs for t in run]).to_arrow_table()
        if rows.num_rows > EDGE_ROWS:
            return False
        lru = sorted((used, b) for b, used in self._edges.items() if b not in want)
        drop = [b for used, b in lru if clock - used > EDGE_IDLE_S]
        lru = [(used, b) for used, b in lru if b not in drop]
        while lru and len(self._edges) - len(drop) + len(missing) > EDGE_BUCKETS:
            drop.append(lru.pop(0)[1])
        self._drop(cur, drop)
        held = int(cur.execute(f"SELECT count(*) FROM {EDGES}").fetchone()[0])  # type: ignore[index]
        if held + rows.num_rows > EDGE_ROWS:
            sizes = dict(
                cur.execute(
                    f"SELECT time_bucket(to_seconds(?), ts), count(*) FROM {EDGES} GROUP BY 1", [EDGE_GRAIN]
                ).fetchall()
            )
            drop = []
            while lru and held + rows.num_rows > EDGE_ROWS:
                b = lru.pop(0)[1]
                drop.append(b)
                held -= sizes.get(b, 0)
            self._drop(cur, drop)
            if held + rows.num_rows > EDGE_ROWS:
                return False
        if len(self._edges) + len(missing) > EDGE_BUCKETS:
            return False
        cur.register("_mirror_edges", rows)
        try:
            cur.execute(f"INSERT INTO {EDGES} SELECT * FROM _mirror_edges")
        finally:
            cur.unregister("_mirror_edges")
        for b in missing:
            self._edges[b] = clock
        self.edge_fetches += 1
        return True

    def _drop(self, cur: duckdb.DuckDBPyConnection, buckets: list[datetime]) -> None:
        if not buckets:
            return
        grain = timedelta(seconds=EDGE_GRAIN)
        spans = " OR ".join("(ts >= ? AND ts < ?)" for _ in buckets)
        cur.execute(f"DELETE FROM {EDGES} WHERE {spans}", [t for b in buckets for t in (b, b + grain)])
        for b in buckets:
            self._edges.pop(b, None)

    def edge_buckets(self) -> list[datetime]:
        """The edge buckets held (their rows are the lake's)."""
        with self._lock:
            return sorted(self._edges) if self._edges_valid else []

    def size(self) -> dict[str, int]:
        """Rows per mirrored table, and the edge rows held (for the bench and the state page)."""
        cur = self._cursor()
        try:
            out = {t: int(cur.execute(f"SELECT count(*) FROM {DATA}.{t}").fetchone()[0]) for t in TABLES}  # type: ignore[index]
            out["requests_edges"] = int(cur.execute(f"SELECT count(*) FROM {EDGES}").fetchone()[0])  # type: ignore[index]
            return out
        finally:
            cur.close()
