"""The SQL guard: what user SQL may and may not do (unit level; the HTTP answers are in tests/admin/test_sql.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from proxy_service.analytics import queries, sql_guard
from proxy_service.analytics.sql_guard import QueryFailed, QueryRejected, QueryTimeout
from proxy_service.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("guard") / "k.duckdb")
    cur = s.cursor()
    queries.install_safe_views(cur)
    cur.execute(
        "INSERT INTO keys (key_id, secret, label, status, created_at) VALUES ('k_1', 'AIzaTOPSECRET', 'one', "
        "'active', ?)",
        [datetime(2026, 1, 1)],
    )
    cur.execute("INSERT INTO settings VALUES ('access_tokens', '[\"tok-secret\"]', ?)", [datetime(2026, 1, 1)])
    cur.execute(
        "INSERT INTO requests (ts, request_id, model, status, outcome, latency_ms) "
        "SELECT TIMESTAMP '2026-01-01' + to_seconds(i), 'r' || i, 'm', 200, 'success', i FROM range(1000) t(i)"
    )
    cur.close()
    yield s
    s.close()


def run(store: Store, sql: str, timeout: float = 5.0, cap: int = 1000) -> sql_guard.QueryResult:
    return sql_guard.run(store, sql, timeout, cap)


def rejected(store: Store, sql: str) -> str:
    with pytest.raises(QueryRejected) as info:
        run(store, sql)
    return str(info.value)


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("DELETE FROM requests", "writes are not allowed (DELETE)"),
        ("insert into requests (ts, request_id) values (now(), 'x')", "writes are not allowed (INSERT)"),
        ("UPDATE keys SET label = 'x'", "writes are not allowed (UPDATE)"),
        ("DROP TABLE keys", "DDL is not allowed (DROP)"),
        ("CREATE TABLE t AS SELECT 1", "DDL is not allowed (CREATE)"),
        ("ALTER TABLE keys ADD COLUMN x INT", "DDL is not allowed (ALTER)"),
        ("PRAGMA version", "PRAGMA statements are not allowed"),
        ("SET threads = 1", "SET statements are not allowed"),
        ("RESET threads", "RESET statements are not allowed"),
        ("ATTACH '/tmp/x.db' AS x", "ATTACH is not allowed"),
        ("COPY requests TO '/tmp/x.csv'", "COPY is not allowed"),
        ("INSTALL httpfs", "INSTALL is not allowed"),
        ("LOAD httpfs", "LOAD is not allowed"),
        ("EXPORT DATABASE '/tmp/x'", "EXPORT is not allowed"),
        ("IMPORT DATABASE '/tmp'", "IMPORT is not allowed"),
        ("CALL pragma_version()", "CALL is not allowed"),
        ("CHECKPOINT", "CHECKPOINT is not allowed"),
        ("EXPLAIN SELECT 1", "EXPLAIN is not allowed"),
        ("DESCRIBE requests", "DESCRIBE is not supported"),
        ("SHOW TABLES", "SHOW is not supported"),
        ("SUMMARIZE requests", "SUMMARIZE is not supported"),
        ("BEGIN TRANSACTION", "transactions are not allowed"),
        ("SELECT 1; SELECT 2", "exactly one statement is allowed (found 2)"),
        ("SELECT 1; DROP TABLE keys", "exactly one statement is allowed (found 2)"),
        ("/* hi */ SELECT 1 ; -- c\n DELETE FROM keys", "exactly one statement is allowed (found 2)"),
        ("", "the query is empty"),
        ("  ;  -- nothing", "the query is empty"),
        ("SELECT * FROM read_csv('/etc/passwd')", "reading files, URLs or other SQL is not allowed (read_csv())"),
        ("SELECT * FROM read_parquet('x.parquet')", "reading files, URLs or other SQL is not allowed (read_parquet())"),
        ("SELECT * FROM read_text('/etc/hostname')", "reading files"),
        ("SELECT * FROM read_blob('keyrack.duckdb')", "reading files"),
        ("SELECT * FROM 'file.csv'", "reading files or URLs is not allowed ('file.csv')"),
        ("SELECT * FROM '/etc/passwd'", "reading files or URLs is not allowed"),
        ("SELECT * FROM 'https://example.com/x.parquet'", "reading files or URLs is not allowed"),
        ("SELECT * FROM glob('/etc/*')", "reading files, URLs or other SQL is not allowed (glob())"),
        ("SELECT * FROM query('SELECT secret FROM main.keys')", "reading files, URLs or other SQL is not allowed"),
        ("SELECT * FROM duckdb_secrets()", "table function duckdb_secrets() is not allowed"),
        ("SELECT * FROM duckdb_settings()", "table function duckdb_settings() is not allowed"),
        ("SELECT * FROM pragma_table_info('keys')", "table function pragma_table_info() is not allowed"),
        ("SELECT current_setting('threads')", "function current_setting() is not allowed"),
        ("SELECT getenv('HOME')", "function getenv() is not allowed"),
        ("SELECT nextval('s')", "function nextval() is not allowed"),
        ("SELECT write_log('x')", "function write_log() is not allowed"),
        ("SELECT pg_catalog.pg_sleep(1)", "qualified function names are not allowed"),
        ("SELECT secret FROM keys", "secret column is not available"),
        ("SELECT k.SECRET FROM keys k", "secret column is not available"),
        ("SELECT * FROM keys WHERE secret LIKE 'AIza%'", "secret column is not available"),
        ("SELECT * FROM settings", "the settings table is not available"),
        ("SELECT * FROM main.keys", "unknown table 'main.keys'"),
        ("SELECT * FROM main.settings", "the settings table is not available"),
        ("SELECT * FROM information_schema.tables", "unknown table 'information_schema.tables'"),
        ("SELECT * FROM preagg", "unknown table 'preagg'"),
        ("SELECT * FROM nonexistent", "unknown table 'nonexistent'"),
        ("SELECT * FROM k.main.keys", "database-qualified names are not allowed"),
        ("WITH settings AS (SELECT * FROM settings) SELECT * FROM settings", "a CTE may not be named 'settings'"),
        ("WITH a AS (SELECT * FROM settings), s2 AS (SELECT 1) SELECT * FROM a", "settings table is not available"),
        ("WITH a AS (SELECT * FROM b), b AS (SELECT 1 x) SELECT * FROM a", "unknown table 'b'"),
        ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x), x", "unknown table 'x'"),
        ("SELECT * FROM requests AT (VERSION => 1)", "time travel"),
        ("SELECT (SELECT max(secret) FROM keys)", "secret column is not available"),
        ("SELECT 1 UNION ALL SELECT * FROM read_csv('/etc/passwd')", "reading files"),
        ("PIVOT requests ON model USING count(*)", "PIVOT statements are not supported"),
    ],
)
def test_rejections_are_precise(store: Store, sql: str, why: str) -> None:
    assert why in rejected(store, sql)


def test_import_database_is_refused_before_duckdb_parses_it(store: Store, tmp_path: Path) -> None:
    # DuckDB's parser reads files for IMPORT DATABASE: the guard must refuse before parsing.
    (tmp_path / "schema.sql").write_text("CREATE TABLE pwned (x INT);")
    for sql in (
        f"IMPORT DATABASE '{tmp_path}'",
        f"SELECT 1; IMPORT DATABASE '{tmp_path}'",
        f"/* c */ import /* x */ database '{tmp_path}'",
        f"PRAGMA import_database('{tmp_path}')",
        f"SELECT xe'\\'; IMPORT/**/DATABASE '{tmp_path}'; --'",
        f"SELECT 1; CALL import_database('{tmp_path}')",
    ):
        assert "IMPORT is not allowed" in rejected(store, sql), sql
    # Without the belt, the statement heads still stop it before DuckDB parses anything.
    assert sql_guard.statement_heads("SELECT xe'\\'; IMPORT/**/DATABASE 'x'; --'") == ["select", "import"]


def test_lexer_agrees_with_duckdb_on_statement_boundaries() -> None:
    heads = sql_guard.statement_heads
    assert heads("SELECT 1 /* a /* nested */ ; DROP */") == ["select"]
    assert heads("SELECT 'a;b'; SELECT \"x;y\"") == ["select", "select"]
    assert heads("SELECT e'\\'' ; DROP TABLE x --'") == ["select", "drop"]
    assert heads("SELECT E'\\'; DROP' ; x") == ["select", "x"]
    assert heads("SELECT xe'\\'; DROP TABLE x --'") == ["select", "drop"]  # xe is an identifier, not E'...'
    assert heads("SELECT 1 AS a$b$ ; DROP") == ["select", "drop"]
    assert heads("SELECT 'a\\' ; DROP TABLE x --'") == ["select", "drop"]
    assert heads("SELECT $$ ; $$, $t$ ; $t$") == ["select"]
    assert heads("-- only a comment") == []
    with pytest.raises(QueryRejected, match="unterminated"):
        heads("SELECT 'open")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) AS n FROM requests",
        "from requests select model, count(*) group by all",
        "SELECT * FROM keys",
        "SELECT * FROM safe.keys",
        "WITH x AS (SELECT model FROM requests) SELECT count(*) FROM x",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT sum(n) FROM r",
        "WITH a AS (SELECT 1 AS v), b AS (SELECT v + 1 AS v FROM a) SELECT * FROM b",
        "WITH requests AS (SELECT 1 AS x) SELECT * FROM requests",
        "SELECT * FROM range(3) t(i), unnest([1, 2]) u(v)",
        "SELECT date_trunc('hour', ts) h, quantile_cont(latency_ms, 0.95), row_number() OVER () FROM requests "
        "GROUP BY h ORDER BY h",
        "SELECT extract(year FROM ts), model || 'x', model ILIKE '%M%', CAST(status AS VARCHAR), [1, 2][1], "
        "{'a': 1}.a, CASE WHEN status = 200 THEN 1 END, coalesce(NULL, 1), status IN (200, 429) FROM requests LIMIT 1",
        "SELECT 'secret' AS word, 'SELECT * FROM settings' AS text",
        "SELECT r.model, k.label FROM requests r LEFT JOIN keys k ON r.key_id = k.key_id LIMIT 5",
        "SELECT * FROM error_logs UNION ALL SELECT * FROM error_logs",
        "VALUES (1), (2)",
        "(SELECT 1)",
        "SELECT 1;",
    ],
)
def test_allowed_queries_run(store: Store, sql: str) -> None:
    result = run(store, sql)
    assert result.table.num_columns >= 1


def test_keys_star_has_no_secret(store: Store) -> None:
    result = run(store, "SELECT * FROM keys")
    assert "secret" not in result.table.column_names
    assert "AIzaTOPSECRET" not in str(result.table.to_pylist())
    assert result.table.column("label").to_pylist() == ["one"]


def test_row_cap_truncates(store: Store) -> None:
    result = run(store, "SELECT * FROM requests", cap=10)
    assert result.table.num_rows == 10 and result.truncated
    result = run(store, "SELECT * FROM requests", cap=1000)
    assert result.table.num_rows == 1000 and not result.truncated


def test_time_limit_interrupts(store: Store) -> None:
    with pytest.raises(QueryTimeout, match=r"interrupted after the 0\.3 s limit"):
        run(store, "SELECT count(*) FROM range(100000000000) a(i) WHERE i % 7 = 3", timeout=0.3)
    # The store is still usable afterwards.
    assert run(store, "SELECT 1").table.num_rows == 1


def test_duckdb_errors_are_reported(store: Store) -> None:
    with pytest.raises(QueryFailed, match="Binder Error"):
        run(store, "SELECT no_such_column FROM requests")
    with pytest.raises(QueryFailed, match="Parser Error"):
        run(store, "SELECT FROM WHERE")


def test_nothing_was_written(store: Store) -> None:
    cur = store.cursor()
    tables = {r[0] for r in cur.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "pwned" not in tables and "t" not in tables
    assert cur.execute("SELECT count(*) FROM keys").fetchone() == (1,)
    cur.close()
    assert not os.path.exists("/tmp/x.csv") or os.path.getmtime("/tmp/x.csv") < 0
