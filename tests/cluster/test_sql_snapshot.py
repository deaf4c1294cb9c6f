"""Cluster user SQL's snapshot (cluster/sql_snapshot.py) stays equal to what the in-process lake read gave user SQL
(`sql_guard.run` on the lake store's `safe` views) through appends (delta files from DuckLake's insertion feed),
inlined rows flushed and files merged (rows moved, nothing rewritten), retention (the table written again), label
changes and an expired feed; and a real worker process answers from it. A real lake on the local PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from proxy_service.analytics import queries, sql_guard, sql_worker
from proxy_service.analytics.rollup import Rollup
from proxy_service.analytics.sql_sandbox import Answer, Sandbox
from proxy_service.cluster.config import ClusterConfig
from proxy_service.cluster.lake import LABELS, LakeStore, compact_lake
from proxy_service.cluster.sql_snapshot import LakeSnapshot
from proxy_service.cluster.writer import LakeWriter

T0 = datetime(2026, 3, 1)
ORDINARY = (
    "SELECT * FROM requests ORDER BY request_id",
    "SELECT client, model, count(*) AS n, avg(latency_ms) AS ms FROM requests GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM attempts ORDER BY request_id",
    "SELECT * FROM error_logs ORDER BY id",
    "SELECT * FROM keys ORDER BY key_id",
    "SELECT r.model, count(a.*) FROM requests r JOIN attempts a USING (request_id) GROUP BY 1 ORDER BY 1",
)


def table(answer: Answer) -> pa.Table:
    """The worker's Arrow answer, read (the test process may load pyarrow; the proxy does not)."""
    return pa.ipc.open_stream(answer.body).read_all()


@pytest.fixture
def lake(tmp_path: Path, lake_catalog: str) -> Iterator[LakeStore]:
    store = LakeStore(
        ClusterConfig("redis://unused", lake_catalog, str(tmp_path / "lake"), "s1"), contextlib.nullcontext
    )
    cur = store.cursor()
    store.install_safe_views(cur)
    cur.execute(
        "INSERT INTO pg.keyrack.keys (key_id, secret, label, project, status, requests, successes, total_failures) "
        "VALUES ('k1', 'AIzaSy-secret-one', 'one', 'p1', 'active', 0, 0, 0), "
        "('k2', 'AIzaSy-secret-two', 'two', 'p2', 'active', 0, 0, 0)"
    )
    cur.close()
    try:
        yield store
    finally:
        store.close()


def append(store: LakeStore, start: int, n: int) -> None:
    """`n` calls, one commit per table (more than DuckLake inlines for big `n`, inlined for small ones)."""
    cur = store.cursor()
    cur.execute(
        "INSERT INTO requests (ts, request_id, client_id, model, status, outcome, latency_ms, replica) "
        "SELECT ?::TIMESTAMP + to_seconds(i), 'r' || lpad(i::VARCHAR, 6, '0'), 'c' || (i % 3), 'm' || (i % 4), "
        "200, 'success', i, 's1' FROM range(?, ?) t(i)",
        [T0, start, start + n],
    )
    cur.execute(
        "INSERT INTO attempts (ts, request_id, attempt, key_id, outcome) "
        "SELECT ?::TIMESTAMP + to_seconds(i), 'r' || lpad(i::VARCHAR, 6, '0'), 1, 'k' || (1 + i % 2), 'success' "
        "FROM range(?, ?) t(i)",
        [T0, start, start + n],
    )
    cur.execute(
        "INSERT INTO error_logs (id, ts, request_id, status, message, replica) "
        "SELECT 'e' || i, ?::TIMESTAMP + to_seconds(i), 'r' || i, 500, 'boom ' || i, 's1' FROM range(?, ?) t(i) "
        "WHERE i % 10 = 0",
        [T0, start, start + n],
    )
    cur.close()


def answers(rows_of: Any) -> list[tuple[list[str], list[tuple[Any, ...]]]]:
    out = []
    for sql in ORDINARY:
        table = rows_of(sql)
        out.append(([f"{f.name}:{f.type}" for f in table.schema], [tuple(r.values()) for r in table.to_pylist()]))
    return out


def same(store: LakeStore, snap: LakeSnapshot) -> dict[str, Any]:
    """The worker's database on the snapshot answers every ordinary query as the in-process lake read did."""
    manifest = snap.refresh()
    before = answers(lambda sql: sql_guard.run(store, sql, 60, 1_000_000).table)
    con = sql_worker.open_database(manifest, 128, 1)
    try:
        after = answers(lambda sql: sql_guard.execute(con.cursor(), sql, 60, 1_000_000).table)
    finally:
        con.close()
    for (cols_a, rows_a), (cols_b, rows_b), sql in zip(before, after, ORDINARY, strict=True):
        assert cols_a == cols_b, sql
        assert rows_a == rows_b, sql
    return manifest


def test_the_lake_snapshot_follows_appends_moves_retention_and_labels_and_answers_like_the_lake(
    lake: LakeStore, tmp_path: Path
) -> None:
    snap = LakeSnapshot(lake, tmp_path / "sql-sandbox")
    append(lake, 0, 300)
    manifest = same(lake, snap)
    assert snap.full_writes == 3 and snap.delta_writes == 0
    assert all("secret" not in f for files in manifest["tables"].values() for f in files)

    # Appends: one delta file per table from the insertion feed (two commits since the last refresh), nothing
    # written whole; then small commits that DuckLake inlines into the catalog.
    append(lake, 300, 200)
    append(lake, 500, 5)
    manifest = same(lake, snap)
    assert snap.full_writes == 3 and snap.delta_writes == 3
    append(lake, 510, 4)
    manifest = same(lake, snap)
    assert snap.full_writes == 3 and snap.delta_writes == 6
    assert len(manifest["tables"]["requests"]) == 3

    # Nothing new: nothing written, the same generation (the workers keep their database).
    generation = manifest["generation"]
    assert same(lake, snap)["generation"] == generation and snap.delta_writes == 6

    # The leader's compaction flushes the inlined rows and merges files: rows move, row ids stay, no new row.
    cur = lake.cursor()
    rollup = Rollup()
    rollup.install(cur)
    result = compact_lake(cur, rollup)
    cur.close()
    assert result["flushed_tables"] >= 1
    assert same(lake, snap)["generation"] == generation
    assert snap.full_writes == 3 and snap.delta_writes == 6

    # Retention deletes rows: those tables are written whole again (the old files retired, not yet deleted).
    cur = lake.cursor()
    cur.execute("DELETE FROM requests WHERE ts < ?", [T0 + timedelta(seconds=100)])
    cur.close()
    old = manifest["tables"]["requests"]
    manifest = same(lake, snap)
    assert snap.full_writes == 4 and len(manifest["tables"]["requests"]) == 1
    assert manifest["tables"]["requests"] != old and all(Path(f).exists() for f in old)

    # New client labels: requests written whole (its `client` column comes from them).
    cur = lake.cursor()
    queries.set_client_labels(cur, {"c1": "team one"}, LABELS)
    cur.close()
    same(lake, snap)
    assert snap.full_writes == 5

    # Keys change in PostgreSQL (no lake snapshot): the keys file is written again.
    cur = lake.cursor()
    cur.execute("UPDATE pg.keyrack.keys SET status = 'disabled' WHERE key_id = 'k2'")
    cur.close()
    assert same(lake, snap)["generation"] > generation

    # A feed that cannot be read (its start snapshot expired): the tables are written whole, the answers the same.
    append(lake, 1000, 50)
    snap.lake_snapshot = -5  # as if the snapshot it holds were expired long ago
    writes = snap.full_writes
    same(lake, snap)
    assert snap.full_writes > writes


def test_a_worker_process_answers_from_the_lake_snapshot(lake: LakeStore, tmp_path: Path) -> None:
    append(lake, 0, 120)
    writer = LakeWriter(lake, "s1", tmp_path / "spill", 0.2)  # not started: nothing queued to flush
    sandbox = Sandbox(lake, writer, tmp_path / "sql-sandbox", 1, 128, 1, LakeSnapshot)
    try:
        result = sandbox.run("SELECT count(*) AS n, count(DISTINCT client) AS c FROM requests", 60, 100, None)
        assert table(result).to_pylist() == [{"n": 120, "c": 3}]
        assert sandbox.workers(), "the answer came from a worker process"
        append(lake, 120, 30)
        result = sandbox.run("SELECT count(*) AS n FROM requests", 60, 100, None)
        assert table(result).to_pylist() == [{"n": 150}]
    finally:
        sandbox.close()
