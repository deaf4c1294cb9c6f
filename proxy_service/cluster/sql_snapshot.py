"""User SQL's snapshot in cluster mode: the public tables of the lake as Parquet files under `<data dir>/sql-sandbox/`,
for the same sandboxed workers as the embedded proxy (`analytics/sql_sandbox.py`, `sql_worker.py`). A worker has no
network, no catalog and no extension: it reads these files only, so the replica writes them from the lake.

The rows are what the in-process lake read gave user SQL before (`lake.SAFE_VIEWS`: requests with its `client`
label from the replica's labels, attempts, error_logs, and keys from PostgreSQL with every replica's counter deltas,
without `secret`); `Sandbox.fresh` first commits this replica's queued events, so a query sees every call it answered
before it, as the embedded one does.

Refresh follows the lake's snapshots. DuckLake gives every row a row id when first inserted and keeps it when the
row only moves (inlined rows flushed, files merged, rows rewritten by compaction), and its change feed
`ducklake_table_insertions(catalog, schema, table, from, to)` lists the rows inserted between two snapshots without
those moves (DuckLake's row-lineage and data-change-feed documentation; checked here with flush and merge). So each
append table's delta is the feed from the last refreshed snapshot to the current one, read like the table itself; the
whole table is written again (read `AT (VERSION => now)`) when its row count says rows were deleted (retention, a
clear of error logs), when the feed fails (its start snapshot expired: a replica with no query for longer than the
lake keeps snapshots), or on new client labels. Every read of one refresh is pinned to one lake snapshot; the keys are
small and compared by hash, as in the embedded snapshot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import duckdb

from proxy_service.analytics.sql_sandbox import APPEND_TABLES, Snapshot, TableFiles
from proxy_service.cluster.lake import CATALOG, KEYS_SELECT, SAFE_VIEWS, LakeStore

log = logging.getLogger("keyrack.cluster.sql")


def _source(table: str) -> str:
    return f"FROM {CATALOG}.main.{table}"


class LakeSnapshot(Snapshot):
    """`Snapshot` fed from the lake (blocking; any thread)."""

    def __init__(self, store: LakeStore, directory: Path) -> None:
        super().__init__(store, directory)
        self.lake: LakeStore = store
        self.lake_snapshot: int | None = None  # the lake snapshot the append tables' files hold
        self.full_writes = 0  # tables written whole (first refresh, deletes, expired feed, labels)
        self.delta_writes = 0

    def refresh(self) -> dict[str, Any]:
        with self._lock:
            started = time.perf_counter()
            self._check_files()
            cur = self.lake.cursor()
            try:
                row = cur.execute(f"SELECT max(snapshot_id) FROM {CATALOG}.snapshots()").fetchone()
                now = int(row[0]) if row and row[0] is not None else 0
                labels = hash(tuple(cur.execute(f"SELECT * FROM {self.store.client_labels} ORDER BY 1").fetchall()))
                if labels != self._labels and "requests" in self._tables:
                    self._dropped["requests"] = self._tables.pop("requests")
                self._labels = labels
                changed = False
                for table in APPEND_TABLES:
                    changed |= self._lake_table(cur, table, now)
                self.lake_snapshot = now
                changed |= self._small(cur, "keys", KEYS_SELECT + " ORDER BY key_id")
            finally:
                cur.close()
            if changed:
                self.generation += 1
            self._purge()
            self.last_refresh_ms = (time.perf_counter() - started) * 1000
            return self.manifest()

    def _lake_table(self, cur: duckdb.DuckDBPyConnection, table: str, now: int) -> bool:
        state = self._tables.get(table)
        body = SAFE_VIEWS[table]
        source = _source(table)
        since = self.lake_snapshot
        if state is not None and since is not None:
            if now == since:
                return False
            feed = f"FROM ducklake_table_insertions('{CATALOG}', 'main', '{table}', {since + 1}, {now})"
            try:
                row = cur.execute(
                    f"SELECT (SELECT count(*) {source} AT (VERSION => {now})), (SELECT count(*) {feed})"
                ).fetchone()
            except duckdb.Error as exc:  # e.g. the feed's start snapshot was expired: the whole table again
                log.info("SQL snapshot writes %s whole: %s", table, str(exc).splitlines()[0])
            else:
                total, new = (int(row[0]), int(row[1])) if row else (0, 0)
                if total == state.rows + new:  # nothing deleted: the feed's rows are the new ones
                    if not new:
                        return False
                    delta = self._copy(cur, body.replace(source, f"FROM (SELECT * {feed})"), table)
                    state.files.append(delta)
                    state.rows = total
                    self.delta_writes += 1
                    self._merge_deltas(cur, table, state)
                    return True
        # First refresh, rows deleted, an expired feed or new labels: the whole table at the snapshot `now`.
        row = cur.execute(f"SELECT count(*) {source} AT (VERSION => {now})").fetchone()
        base = self._copy(cur, body.replace(source, f"FROM (SELECT * {source} AT (VERSION => {now}))"), table)
        old = self._dropped.pop(table, None) if state is None else state
        if old is not None:
            self._retire(old.files)
        self._tables[table] = TableFiles([base], int(row[0]) if row else 0)
        self.full_writes += 1
        return True
