"""Class 1 (issue 23): user SQL's sandbox holds when the allow-list misses. With the guard switched off (its check a
no-op), nothing sent to POST /admin/api/query reads a file, the main database (with the keys' secrets), the .env,
a URL, an extension or a setting: DuckDB itself refuses, and no answer or error carries their text. Real proxy,
real fake Gemini, real worker processes."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from proxy_service.analytics import sql_guard
from proxy_service.settings import Settings
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, P1_A, P1_B, P2_A, P3_A, POOL_KEYS, SCENARIO
from tests.servers import serve_gateway

CANARY = "canary-7f3e9a-not-for-sql"  # in the .env and /etc-like files the queries try to read
SECRETS = (P1_A, P1_B, P2_A, P3_A, CANARY, "root:x:0:0")


@dataclass
class Env:
    url: str
    data_dir: Path
    env_file: Path
    passwd: Path
    gateway: Any
    web: str  # a server that answers any GET with the canary, and counts the GETs
    hits: list[str]
    http: httpx.Client

    def query(self, sql: str) -> httpx.Response:
        return self.http.post("/admin/api/query", json={"sql": sql, "format": "json"})


def canary_files(root: Path) -> tuple[Path, Path]:
    """A .env and an /etc/passwd-shaped file, both holding the canary (the real /etc/passwd is read too)."""
    env_file = root / ".env"
    env_file.write_text(f"KEYRACK_ADMIN_TOKEN={CANARY}\n")
    passwd = root / "passwd"
    passwd.write_text(f"root:x:0:0:{CANARY}:/root:/bin/sh\n")
    return env_file, passwd


@contextlib.contextmanager
def canary_web() -> Iterator[tuple[str, list[str]]]:
    """A server that answers any GET with the canary; yields its URL and the paths it was asked for."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(f"a\n{CANARY}\n".encode())

        def log_message(self, *_args: Any) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{web.server_address[1]}", hits
    finally:
        web.shutdown()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("sandbox")
    data_dir = root / "data"
    env_file, passwd = canary_files(root)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        access_tokens=[CLIENT_TOKEN],
        api_keys=POOL_KEYS,
        recheck_interval_s=3600,
    )
    with canary_web() as (web_url, hits), serve_gateway(settings, SCENARIO) as (url, app):
        r = httpx.post(
            f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": CLIENT_TOKEN},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin, timeout=60) as client:
            yield Env(url, data_dir, env_file, passwd, app.state.gateway, web_url, hits, client)


@pytest.fixture
def guard_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allow-list switched off: only the engine's own sandbox stands."""
    monkeypatch.setattr(sql_guard, "check", lambda _cur, _sql: None)
    monkeypatch.setattr(sql_guard, "ENABLED", False, raising=False)


def attacks(env: Env) -> list[str]:
    web = env.web
    db = env.data_dir / "keyrack.duckdb"
    return [
        # files, by every reader
        "SELECT * FROM read_csv('/etc/passwd', header = false, sep = ':')",
        f"SELECT content FROM read_text('{env.env_file}')",
        f"SELECT * FROM read_csv_auto('{env.passwd}')",
        f"SELECT content FROM read_blob('{db}')",
        f"SELECT * FROM read_blob('{env.data_dir}/*')",
        f"SELECT * FROM glob('{env.data_dir}/**')",
        f"SELECT * FROM parquet_metadata('{db}')",
        f"SELECT * FROM read_json_auto('{env.data_dir}/../.env')",
        "SELECT * FROM read_text('/proc/self/environ')",
        f"SELECT * FROM '{env.passwd}'",
        f"SELECT * FROM sniff_csv('{env.env_file}')",
        # a value conversion error would quote the file's text
        f"SELECT * FROM read_csv('{env.env_file}', columns = {{'a': 'INTEGER'}}, header = false)",
        # URLs (the server answers any GET with the canary, and counts the GETs)
        f"SELECT * FROM read_csv('{web}/x.csv')",
        f"SELECT content FROM read_text('{web}/b')",
        f"SELECT * FROM '{web}/y.parquet'",
        f"SELECT * FROM read_parquet(['{web}/e.parquet'])",
        f"SELECT json_serialize_plan('SELECT * FROM read_blob(''{web}/d'')')",
        # other databases
        f"SELECT * FROM sqlite_scan('{db}', 'keys')",
        f"SELECT * FROM duckdb_scan('{db}')",
        f"ATTACH '{db}' AS stolen (READ_ONLY)",
        # SQL that binds SQL: the planner functions and friends
        f"SELECT json_serialize_plan('SELECT content FROM read_text(''{env.env_file}'')')",
        f"SELECT json_serialize_plan('SELECT * FROM read_csv(''{env.passwd}'', columns = {{''a'': ''INTEGER''}})')",
        f"SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM read_text(''{env.passwd}'')'))",
        f"SELECT * FROM query('SELECT content FROM read_blob(''{db}'')')",
        # settings and statements
        "SET enable_external_access = true",
        "SELECT 1; SET lock_configuration = false",
        "RESET allowed_paths",
        "PRAGMA enable_external_access",
        f"SET allowed_directories = ['{env.data_dir}']",
        f"COPY (SELECT 1) TO '{env.data_dir}/copied.csv'",
        f"EXPORT DATABASE '{env.data_dir}/exported'",
        f"IMPORT DATABASE '{env.data_dir}'",
        # extensions
        "LOAD httpfs",
        "INSTALL sqlite",
        "SELECT * FROM duckdb_extensions()",
    ]


def assert_refused(env: Env, sqls: list[str], secrets: tuple[str, ...] = SECRETS) -> None:
    """Every query refused (400, or a nested planner call's refusal as its value), no secret in any answer."""
    for sql in sqls:
        r = env.query(sql)
        leaked = [s for s in secrets if s in r.text]
        assert not leaked, (sql, leaked, r.text[:300])
        if r.status_code == 200:  # only a nested planner call answers, with the refusal as its value
            assert "disabled by configuration" in r.text or "error" in r.text, (sql, r.text[:300])
        else:
            assert r.status_code == 400, (sql, r.status_code, r.text[:300])


def test_with_the_guard_off_the_engine_refuses_every_read_outside_the_tables(env: Env, guard_off: None) -> None:
    assert_refused(env, attacks(env))
    assert not (env.data_dir / "copied.csv").exists() and not (env.data_dir / "exported").exists()
    assert env.hits == [], env.hits
    # The data tables are all there is, and they hold no secret.
    r = env.query("SELECT * FROM keys")
    assert r.status_code == 200 and "secret" not in [c["name"] for c in r.json()["columns"]], r.text[:300]
    assert len(r.json()["rows"]) == len(env.gateway.pool.keys)
    r = env.query("SELECT count(*) FROM requests WHERE outcome = 'success'")
    assert r.status_code == 200 and r.json()["rows"][0][0] >= 1


def test_the_workers_database_refuses_by_itself(env: Env) -> None:
    """The engine's settings alone, with no statement check in front: the worker's database as it opens it."""
    from proxy_service.analytics import sql_worker

    manifest = env.gateway.sandbox.fresh()
    con = sql_worker.open_database(manifest, 64, 1)
    try:
        for sql in (
            "SET enable_external_access = true",
            "SET lock_configuration = false",
            "SET memory_limit = '64GB'",
            "PRAGMA threads = 64",
            f"SET allowed_paths = ['{env.env_file}']",
            f"COPY (SELECT 1) TO '{env.data_dir}/copied2.csv'",
            f"ATTACH '{env.data_dir / 'keyrack.duckdb'}' AS stolen",
            "LOAD parquet2",
            "INSTALL httpfs",
            f"SELECT content FROM read_text('{env.env_file}')",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql).fetchall()
        assert not (env.data_dir / "copied2.csv").exists()
        assert con.execute("SELECT count(*) FROM keys").fetchone() == (len(env.gateway.pool.keys),)
    finally:
        con.close()
