"""Issue 23, cluster mode: a replica runs user SQL in the sandbox's worker processes too, never on its lake connection.
With the guard switched off, every attack of the embedded sandbox test, and those a replica adds (the lake's Parquet
files, its catalog in PostgreSQL, the replica's mirror file, the catalogs its own connection has attached), is
refused by the worker's engine: no canary request, no secret in any answer. Ordinary queries answer exactly what the
in-process lake read (`sql_guard.run` on the replica's store, the old path) answers. A real replica (in process, so
the guard can be switched off), the local PostgreSQL and Redis, the fake upstream, real worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from proxy_service.analytics import sql_guard
from proxy_service.cluster.config import pg_conninfo
from proxy_service.settings import Settings
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, SCENARIO
from tests.reliability.test_sql_sandbox import SECRETS, Env, assert_refused, attacks, canary_files, canary_web
from tests.servers import serve_gateway

ORDINARY = (
    "SELECT * FROM requests ORDER BY request_id",
    "SELECT replica, client, model, outcome, count(*) AS n FROM requests GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM attempts ORDER BY request_id, attempt",
    "SELECT * FROM keys ORDER BY key_id",
    "SELECT k.project, count(a.*) AS n FROM keys k LEFT JOIN attempts a USING (key_id) GROUP BY 1 ORDER BY 1",
    "SELECT * FROM error_logs ORDER BY id",
)


@pytest.fixture
def replica(tmp_path: Path, lake_catalog: str, redis_url: str, redis_prefix: str) -> Iterator[tuple[Env, str]]:
    data_dir = tmp_path / "data"
    env_file, passwd = canary_files(tmp_path)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        access_tokens=[CLIENT_TOKEN],
        api_keys=POOL_KEYS,
        recheck_interval_s=3600,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        lake_catalog=lake_catalog,
        lake_data=str(tmp_path / "lake"),
        replica_id="sql1",
    )
    with canary_web() as (web, hits), serve_gateway(settings, SCENARIO) as (url, app):
        for model in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash"):
            r = httpx.post(
                f"{url}/v1beta/models/{model}:generateContent",
                headers={"x-goog-api-key": CLIENT_TOKEN},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin, timeout=120) as client:
            yield Env(url, data_dir, env_file, passwd, app.state.gateway, web, hits, client), str(tmp_path / "lake")


def cluster_attacks(env: Env, lake_data: str, catalog: str) -> list[str]:
    conninfo = pg_conninfo(catalog).replace("'", "''")
    mirror = env.data_dir / "lake-mirror.duckdb"
    return [
        # the lake's own files and the replica's mirror
        f"SELECT * FROM read_parquet('{lake_data}/**/*.parquet')",
        f"SELECT * FROM glob('{lake_data}/**')",
        f"SELECT content FROM read_blob('{mirror}')",
        f"ATTACH '{mirror}' AS m (READ_ONLY)",
        # the catalog and PostgreSQL (the keys' secrets live there)
        f"ATTACH 'ducklake:postgres:{conninfo}' AS stolen (READ_ONLY)",
        f"ATTACH '{conninfo}' AS stolen (TYPE postgres, READ_ONLY)",
        f"SELECT * FROM postgres_scan('{conninfo}', 'keyrack', 'keys')",
        "SELECT * FROM postgres_query('pg', 'SELECT secret FROM keyrack.keys')",
        f"SELECT json_serialize_plan('SELECT * FROM postgres_scan(''{conninfo}'', ''keyrack'', ''keys'')')",
        # the names the replica's own connection resolves: the worker has none of them
        "SELECT * FROM pg.keyrack.keys",
        "SELECT secret FROM pg.keyrack.keys",
        "SELECT * FROM lake.main.requests",
        "SELECT * FROM lake.main.journal_commits",
        "SELECT * FROM memory.safe.keys",
        "SELECT * FROM lake.snapshots()",
        "SELECT * FROM ducklake_table_insertions('lake', 'main', 'requests', 0, 100)",
        "LOAD ducklake",
        "LOAD postgres",
    ]


def arrow(env: Env, sql: str) -> pa.Table:
    r = env.http.post("/admin/api/query", json={"sql": sql, "format": "arrow"})
    assert r.status_code == 200, (sql, r.text[:300])
    return pa.ipc.open_stream(r.content).read_all()


def rows(table: pa.Table) -> tuple[list[str], list[tuple[Any, ...]]]:
    return [f"{f.name}:{f.type}" for f in table.schema], [tuple(r.values()) for r in table.to_pylist()]


def test_a_replica_runs_user_sql_in_the_sandbox_and_answers_as_before(
    replica: tuple[Env, str], lake_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, lake_data = replica
    gateway = env.gateway
    # Ordinary queries (the guard on): the same answer as the in-process lake read, column types included; this
    # replica's three calls are visible at once (its queued events are committed before the snapshot is refreshed).
    for sql in ORDINARY:
        got = rows(arrow(env, sql))
        want = rows(sql_guard.run(gateway.store, sql, 60, gateway.config.query_row_cap).table)
        assert got == want, sql
    assert rows(arrow(env, "SELECT count(*) AS n FROM requests"))[1] == [(3,)]
    assert gateway.sandbox.workers(), "the answers came from worker processes"
    assert (env.data_dir / "sql-sandbox").is_dir()

    # The guard switched off: the worker's engine alone refuses everything.
    monkeypatch.setattr(sql_guard, "check", lambda _cur, _sql: None)
    monkeypatch.setattr(sql_guard, "ENABLED", False)
    assert_refused(env, [*attacks(env), *cluster_attacks(env, lake_data, lake_catalog)], SECRETS)
    assert env.hits == [], env.hits
    assert not (env.data_dir / "copied.csv").exists() and not (env.data_dir / "exported").exists()
    r = env.query("SELECT * FROM keys")
    assert r.status_code == 200 and "secret" not in [c["name"] for c in r.json()["columns"]], r.text[:300]
    assert len(r.json()["rows"]) == len(gateway.pool.keys)
