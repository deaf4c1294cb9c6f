"""Cluster fixtures: a fresh PostgreSQL database per test (dropped after) and a Redis key prefix of its own per test.

They use the local services (127.0.0.1:5432 trust as `postgres`, 127.0.0.1:6379), or KEYRACK_TEST_PG_URL /
KEYRACK_TEST_REDIS_URL. `make test` (.ci/run) starts throwaway instances when a machine has none; a missing
service fails the test loudly, it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
import redis

from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS
from tests.reliability.harness import Proc, clean_env, wait_http
from tests.reliability.harness import start as spawn

PG_URL = os.environ.get("KEYRACK_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("KEYRACK_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def pg_admin(url: str = PG_URL) -> duckdb.DuckDBPyConnection:
    from proxy_service.cluster.config import pg_conninfo
    from proxy_service.cluster.lake import _lit, load_extensions

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    load_extensions(con)
    try:
        con.execute(f"ATTACH {_lit(pg_conninfo(url + '/postgres'))} AS pgadmin (TYPE postgres)")
    except duckdb.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} ({exc}); run `make test`, which starts one", False)
    return con


@contextlib.contextmanager
def database(url: str = PG_URL) -> Iterator[str]:
    name = f"keyrack_test_{secrets.token_hex(4)}"
    con = pg_admin(url)
    con.execute(f"CALL postgres_execute('pgadmin', 'CREATE DATABASE {name}', use_transaction => false)")
    try:
        yield f"{url}/{name}"
    finally:
        con.execute("DETACH pgadmin")
        con.close()
        con = pg_admin(url)
        con.execute(
            f"CALL postgres_execute('pgadmin', 'DROP DATABASE IF EXISTS {name} WITH (FORCE)', use_transaction => false)"
        )
        con.close()


@pytest.fixture
def lake_catalog() -> Iterator[str]:
    with database() as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    """This test's own KEYRACK_REDIS_PREFIX: test runs going on at the same time (other worktrees) share the Redis
    database, and must neither see nor flush each other's pool state or leader lease."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def redis_url(redis_prefix: str) -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run `make test`, which starts one", False)
    yield REDIS_URL
    with contextlib.suppress(redis.RedisError):
        for key in client.scan_iter(f"{redis_prefix}:*"):
            client.delete(key)
    client.close()


@dataclass
class Replica:
    proc: Proc
    url: str
    dir: Path


@pytest.fixture
def start_replica(
    tmp_path: Path, lake_catalog: str, redis_url: str, redis_prefix: str
) -> Iterator[Callable[..., Replica]]:
    """Start `keyrack serve` replicas (real processes on 127.0.0.1) sharing one lake, one catalog and one Redis."""
    procs: list[Proc] = []
    count = 0

    def start(upstream_url: str, where: Path | None = None, **settings: Any) -> Replica:
        """`where`: a previous replica's directory, to restart it with its data dir (journal, spill files)."""
        nonlocal count
        count += 1
        where = where or tmp_path / f"replica{count}"
        options: dict[str, Any] = {
            "upstream_url": upstream_url,
            "admin_token": ADMIN_TOKEN,
            "access_tokens": CLIENT_TOKEN,
            "api_keys": POOL_KEYS,
            "recheck_interval_s": 3600,
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "lake_catalog": lake_catalog,
            "lake_data": str(tmp_path / "lake"),
            "replica_id": f"r{count}",
            **settings,
        }
        env = clean_env(data_dir=str(where / "data"), **options)
        proc = spawn(["serve", "--port", "0"], env, where / "proxy.log", where)
        procs.append(proc)
        # Generous: several replica processes start at once on a loaded 2-core CI machine.
        port = proc.wait_for(r"event=startup .*?port=(\d+)", timeout=150).group(1)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, timeout=60)
        return Replica(proc, url, where)

    try:
        yield start
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop(signal.SIGTERM, 20)
            proc.kill()
