"""The SQL sandbox's snapshot stays equal to what user SQL sees in the proxy's own database (the `safe` views) through
appends (delta files, merged past a few), deletes (the table written again), label changes and lost files; and the
worker answers from it. A real store, a real worker process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from proxy_service.analytics import queries, sql_sandbox
from proxy_service.analytics.sql_sandbox import Answer, Sandbox
from proxy_service.events import EventWriter
from proxy_service.store import Store

T0 = datetime(2026, 3, 1)


def table(answer: Answer) -> pa.Table:
    """The worker's Arrow answer, read (the test process may load pyarrow; the proxy does not)."""
    return pa.ipc.open_stream(answer.body).read_all()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[tuple[Store, Sandbox]]:
    store = Store(tmp_path / "keyrack.duckdb")
    cur = store.cursor()
    queries.install_safe_views(cur)
    cur.close()
    sandbox = Sandbox(store, EventWriter(store), tmp_path / "sql-sandbox", 1, 128, 1)
    sandbox.start()
    try:
        yield store, sandbox
    finally:
        sandbox.close()
        store.close()


def append(store: Store, start: int, n: int) -> None:
    cur = store.cursor()
    cur.execute(
        "INSERT INTO requests (ts, request_id, client_id, model, status, outcome, latency_ms) "
        "SELECT ?::TIMESTAMP + to_seconds(i), 'r' || i, 'c' || (i % 3), 'm' || (i % 4), 200, 'success', i "
        "FROM range(?, ?) t(i)",
        [T0, start, start + n],
    )
    cur.execute(
        "INSERT INTO attempts (ts, request_id, attempt, outcome) SELECT ?::TIMESTAMP, 'r' || i, 1, 'success' "
        "FROM range(?, ?) t(i)",
        [T0, start, start + n],
    )
    cur.close()


def same(store: Store, sandbox: Sandbox) -> None:
    sql = "SELECT * FROM requests ORDER BY request_id"
    cur = store.cursor()
    cur.execute(f"SET search_path = '{queries.SAFE_SCHEMA}'")
    want = cur.execute(sql).fetchall()
    want_attempts = cur.execute("SELECT count(*) FROM attempts").fetchall()
    cur.close()
    got = table(sandbox.run(sql, 30, 1_000_000, None))
    rows: list[tuple[Any, ...]] = [tuple(r.values()) for r in got.to_pylist()]
    assert rows == want
    assert table(sandbox.run("SELECT count(*) FROM attempts", 30, 10, None)).to_pylist()[0] == {
        "count_star()": want_attempts[0][0]
    }


def test_the_snapshot_follows_appends_deletes_labels_and_lost_files(box: tuple[Store, Sandbox]) -> None:
    store, sandbox = box
    append(store, 0, 500)
    same(store, sandbox)
    for i in range(sql_sandbox.MAX_DELTAS + 3):  # deltas, then merged
        append(store, 1000 + 10 * i, 10)
        same(store, sandbox)
    assert len(sandbox.snapshot.manifest()["tables"]["requests"]) <= sql_sandbox.MAX_DELTAS + 1
    cur = store.cursor()
    cur.execute("DELETE FROM requests WHERE ts < ?", [T0 + timedelta(seconds=100)])  # retention-like
    cur.close()
    append(store, 5000, 7)
    same(store, sandbox)
    cur = store.cursor()
    queries.set_client_labels(cur, {"c1": "billing"})
    cur.close()
    same(store, sandbox)
    assert table(sandbox.run("SELECT count(*) AS n FROM requests WHERE client = 'billing'", 30, 10, None)).to_pylist()[
        0
    ]["n"]
    for f in sandbox.snapshot.manifest()["tables"]["requests"]:  # the disk lost them
        Path(f).unlink()
    same(store, sandbox)
    first = sandbox.snapshot.manifest()["tables"]["keys"][0]
    Path(first).write_bytes(b"")  # damaged in place: the worker cannot open it, the snapshot is written again
    same(store, sandbox)


def test_the_snapshot_holds_no_secret(box: tuple[Store, Sandbox]) -> None:
    store, sandbox = box
    cur = store.cursor()
    cur.execute("INSERT INTO keys (key_id, secret, status) VALUES ('k_1', 'AIza-the-secret-itself', 'active')")
    cur.close()
    manifest = sandbox.fresh()
    for files in manifest["tables"].values():
        for f in files:
            assert b"AIza-the-secret-itself" not in Path(f).read_bytes()
            assert "secret" not in duckdb.sql(f"SELECT * FROM read_parquet('{f}')").columns


def test_workers_start_with_the_first_query_and_stay_warm(box: tuple[Store, Sandbox]) -> None:
    store, sandbox = box
    append(store, 0, 10)
    assert sandbox.workers() == []  # a gateway whose SQL page is never used holds no worker
    first = sandbox.run("SELECT count(*) AS n FROM requests", 10, 100, None)
    assert table(first).to_pylist() == [{"n": 10}]
    pids = sandbox.workers()
    assert len(pids) == 1
    sandbox.run("SELECT 1 AS one", 10, 100, None)
    assert sandbox.workers() == pids  # the same warm worker, no start per query
