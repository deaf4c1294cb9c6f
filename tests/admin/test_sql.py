"""Admin API: read-only SQL, schema and the Parquet export (proxy_service/admin/sql.py), and `keyrack snapshot`
asking the running proxy for that export."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from tests.admin.conftest import (
    P1_B,
    TOKEN,
    Env,
    assert_no_secret,
    error_of,
    req,
)


def test_query_json_and_arrow(env: Env) -> None:
    env.record(*(req(datetime(2025, 6, 1, 12), env.id_of(P1_B), model="m-top-a") for _ in range(3)))
    sql = "SELECT model, count(*) AS n FROM requests WHERE model = 'm-top-a' GROUP BY model"
    r = env.post("/query", {"sql": sql, "format": "json"}).json()
    assert r["columns"] == [{"name": "model", "type": "string"}, {"name": "n", "type": "int64"}]
    assert r["rows"] == [["m-top-a", 3]] and r["truncated"] is False
    r = env.post("/query", {"sql": sql})
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert r.headers["x-keyrack-truncated"] == "false" and float(r.headers["x-keyrack-elapsed-ms"]) >= 0
    assert pa.ipc.open_stream(io.BytesIO(r.content)).read_all().to_pylist() == [{"model": "m-top-a", "n": 3}]
    r = env.post("/query", {"sql": "SELECT * FROM keys", "format": "json"}).json()
    assert "secret" not in [c["name"] for c in r["columns"]] and r["rows"]


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("DELETE FROM requests", "writes are not allowed (DELETE)"),
        ("DROP TABLE keys", "DDL is not allowed (DROP)"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("PRAGMA database_list", "PRAGMA statements are not allowed"),
        ("SET threads = 1", "SET statements are not allowed"),
        ("ATTACH 'x.db'", "ATTACH is not allowed"),
        ("COPY requests TO 'x.csv'", "COPY is not allowed"),
        ("INSTALL httpfs", "INSTALL is not allowed"),
        ("LOAD httpfs", "LOAD is not allowed"),
        ("EXPORT DATABASE 'x'", "EXPORT is not allowed"),
        ("CALL duckdb_settings()", "CALL is not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "reading files"),
        ("SELECT * FROM read_parquet('data/exports/keys.parquet')", "reading files"),
        ("SELECT * FROM 'file.csv'", "reading files or URLs is not allowed"),
        ("SELECT * FROM glob('*')", "reading files"),
        ("SELECT * FROM 'https://example.com/data.parquet'", "reading files or URLs is not allowed"),
        ("SELECT secret FROM keys", "secret column is not available"),
        ("SELECT * FROM settings", "settings table is not available"),
        ("SELECT * FROM duckdb_secrets()", "duckdb_secrets() is not allowed"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings() is not allowed"),
        ("SELECT getenv('HOME')", "getenv() is not allowed"),
        ("SELECT current_setting('memory_limit')", "current_setting() is not allowed"),
        ("SELECT * FROM main.keys", "unknown table 'main.keys'"),
    ],
)
def test_hostile_sql_is_refused_precisely(env: Env, sql: str, why: str) -> None:
    r = env.post("/query", {"sql": sql, "format": "json"})
    e = error_of(r)
    assert r.status_code == 400 and e["field"] == "sql" and e["message"].startswith("query not allowed: ")
    assert why in e["message"]


def test_query_limits_and_errors(env: Env) -> None:
    env.http.patch("/admin/api/config", json={"query_row_cap": 5, "query_timeout_s": 0.3})
    try:
        r = env.post("/query", {"sql": "SELECT * FROM range(100) t(i)", "format": "json"}).json()
        assert len(r["rows"]) == 5 and r["truncated"] is True and r["row_cap"] == 5
        r = env.post("/query", {"sql": "SELECT * FROM range(100) t(i)"})
        assert r.headers["x-keyrack-truncated"] == "true" and r.headers["x-keyrack-rows"] == "5"
        r = env.post("/query", {"sql": "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 1"})
        assert r.status_code == 408 and "interrupted" in error_of(r)["message"]
    finally:
        env.post("/config/reset")
    r = env.post("/query", {"sql": "SELECT nope FROM requests"})
    assert r.status_code == 400 and "Binder Error" in error_of(r)["message"]
    for body, field in (({}, "sql"), ({"sql": "  "}, "sql"), ({"sql": "SELECT 1", "format": "csv"}, "format")):
        resp = env.post("/query", body)
        assert resp.status_code == 400 and error_of(resp)["field"] == field


def test_schema_lists_safe_tables(env: Env) -> None:
    tables = env.get("/schema").json()["tables"]
    assert set(tables) == {"requests", "attempts", "error_logs", "keys"}
    assert (
        "secret" not in {c["name"] for c in tables["keys"]}
        and {"name": "ts", "type": "TIMESTAMP"} in tables["requests"]
    )


def test_export_writes_parquet_snapshots(env: Env) -> None:
    r = env.post("/export").json()
    assert set(r["files"]) == {"requests", "attempts", "keys", "error_logs"}
    assert r["rows"]["keys"] == len(env.gw.pool.keys) and r["rows"]["requests"] > 0
    for table, path in r["files"].items():
        assert Path(path).parent == (env.data_dir / "exports").resolve() and Path(path).name == f"{table}.parquet"
    keys = duckdb.sql(f"SELECT * FROM '{r['files']['keys']}'")
    assert "secret" not in keys.columns
    assert not list((env.data_dir / "exports").glob("*.tmp.parquet"))


def test_snapshot_command_asks_the_running_proxy(env: Env) -> None:
    environ = {**os.environ, "KEYRACK_DATA_DIR": str(env.data_dir), "KEYRACK_ADMIN_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "proxy_service.cli", "snapshot", "--url", env.url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.data_dir,
    )
    assert done.returncode == 0, done.stderr
    assert f"(via {env.url})" in done.stdout and "requests" in done.stdout
    assert (env.data_dir / "exports" / "keys.parquet").exists()
    environ["KEYRACK_ADMIN_TOKEN"] = "wrong"
    done = subprocess.run(
        [sys.executable, "-m", "proxy_service.cli", "snapshot", "--url", env.url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.data_dir,
    )
    assert done.returncode == 1 and "refused the export: 401" in done.stderr


def test_query_json_handles_every_duckdb_type(env: Env) -> None:
    sql = (
        "SELECT DATE '2026-01-02' AS d, TIMESTAMP '2026-01-02 03:04:05.5' AS t, INTERVAL 90 MINUTE AS i, "
        "CAST(1.25 AS DECIMAL(6, 2)) AS dec, 'abc'::BLOB AS b, uuid() IS NOT NULL AS u, [1, 2] AS l, "
        "{'x': 1} AS s, 'nan'::DOUBLE AS nan, NULL AS n, TIME '10:11:12' AS tm"
    )
    r = env.post("/query", {"sql": sql, "format": "json"})
    assert r.status_code == 200, r.text
    row = dict(zip([c["name"] for c in r.json()["columns"]], r.json()["rows"][0], strict=True))
    assert row == {
        "d": "2026-01-02",
        "t": "2026-01-02T03:04:05.500Z",
        "i": 5400.0,
        "dec": 1.25,
        "b": "616263",
        "u": True,
        "l": [1, 2],
        "s": {"x": 1},
        "nan": None,
        "n": None,
        "tm": "10:11:12",
    }


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
