"""The DuckDB file's storage choices that the proxy's memory depends on (bench/memory.py has the figures), and its
derived columns: the latency buckets are set as rows are appended and on the migration that adds them, and neither
user SQL nor exports see them; columns added later (spend) reach older files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from proxy_service.analytics import queries, snapshot
from proxy_service.analytics.histogram import lb_sql
from proxy_service.events import EventWriter, RequestEvent
from proxy_service.settings import DUCKDB_BLOCK_SIZE, DUCKDB_ROW_GROUP_SIZE
from proxy_service.store import ADDED, DERIVED, SCHEMA, Store
from tests.analytics.test_queries import event


def block_size(store: Store) -> int:
    cur = store.cursor()
    try:
        return int(cur.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0])  # type: ignore[index]
    finally:
        cur.close()


def test_a_new_file_gets_small_blocks_and_an_existing_file_keeps_its_own(tmp_path: Path) -> None:
    new = Store(tmp_path / "new.duckdb")
    assert block_size(new) == DUCKDB_BLOCK_SIZE == 65_536
    new.close()
    reopened = Store(tmp_path / "new.duckdb", block_size=262_144)
    assert block_size(reopened) == 65_536  # fixed when the file was made
    reopened.close()

    # A file made with DuckDB's default (256 KB, every Keyrack file before this choice) opens as it is, data intact.
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE TABLE requests (ts TIMESTAMP NOT NULL, request_id VARCHAR NOT NULL)")
    con.execute("INSERT INTO requests VALUES (TIMESTAMP '2026-01-01 00:00:00', 'r1')")
    con.close()
    old = Store(tmp_path / "old.duckdb")
    assert block_size(old) == 262_144
    cur = old.cursor()
    assert cur.execute("SELECT request_id FROM requests").fetchall() == [("r1",)]
    cur.close()
    old.close()


def row_groups(cur: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(cur.execute(f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')").fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("size", [DUCKDB_ROW_GROUP_SIZE, 4_096])
def test_the_file_is_written_in_row_groups_of_the_configured_size(tmp_path: Path, size: int) -> None:
    """Every cursor works in the file (attached under its own name), and rows land in row groups of `size` rows, in
    a new file and after reopening an existing one (DuckDB does not keep the size in the file)."""
    path = tmp_path / "k.duckdb"
    for round_ in range(2):
        store = Store(path, row_group_size=size)
        cur = store.cursor()
        assert cur.execute("SELECT current_database()").fetchone() == ("k",)
        cur.execute("INSERT INTO requests (ts, request_id) SELECT now(), 'r' || i FROM range(40000) t(i)")
        cur.execute("CHECKPOINT")
        rows = 40_000 * (round_ + 1)
        assert cur.execute("SELECT count(*) FROM requests").fetchone() == (rows,)
        assert row_groups(cur, "requests") == -(-rows // size)
        cur.close()
        store.close()
    assert duckdb.connect(str(path)).execute("SELECT count(*) FROM requests").fetchone() == (80_000,)  # in the file


def test_memory_is_duckdbs_own_account_by_tag(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb")
    cur = store.cursor()
    before = store.memory().get("IN_MEMORY_TABLE", 0)
    # Rows appended and not yet checkpointed live in memory, in blocks DuckDB accounts for.
    cur.execute("INSERT INTO requests (ts, request_id) SELECT now(), 'r' || i FROM range(5000) t(i)")
    after = store.memory()
    assert after["IN_MEMORY_TABLE"] > before
    assert all(isinstance(n, int) and n > 0 for n in after.values())
    cur.close()
    store.close()


def test_trim_cache_evicts_cached_table_blocks_beyond_the_keep_and_restores_the_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb", memory_limit="256MB")
    cur = store.cursor()
    limit = cur.execute("SELECT current_setting('memory_limit')").fetchone()
    cur.execute("CREATE TABLE t AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(300000)")
    cur.execute("CHECKPOINT")
    cur.execute("SELECT count(DISTINCT s), sum(i) FROM t").fetchall()  # reads every block: all of them cached
    cached = store.memory()["BASE_TABLE"]
    assert cached > 4 * 2**20
    evicted = store.trim_cache(cur, keep=2 * 2**20)
    left = store.memory().get("BASE_TABLE", 0)
    assert left <= 2 * 2**20 and evicted >= cached - 2 * 2**20
    assert cur.execute("SELECT current_setting('memory_limit')").fetchone() == limit  # set back
    # The data is all there, read again from the file.
    assert cur.execute("SELECT count(DISTINCT s), sum(i) FROM t").fetchone() == (300_000, 300_000 * 299_999 // 2)
    assert store.trim_cache(cur, keep=64 * 2**20) == 0  # under the keep: nothing to do
    cur.close()
    store.close()
    unlimited = Store(tmp_path / "u.duckdb")  # no limit configured: DuckDB's own, left alone
    cur = unlimited.cursor()
    assert unlimited.trim_cache(cur, keep=0) == 0
    cur.close()
    unlimited.close()


NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
EXPECTED = (  # rows whose buckets are wrong: NULL where the latency is, its bucket where it is not
    "SELECT count(*) FROM requests WHERE latency_lb IS DISTINCT FROM (CASE WHEN latency_ms IS NOT NULL THEN "
    f"{lb_sql('latency_ms')} END) OR ttfb_lb IS DISTINCT FROM (CASE WHEN ttfb_ms IS NOT NULL THEN {lb_sql('ttfb_ms')} END)"
)


def _event(i: int, ttfb: float | None) -> RequestEvent:
    return event(NOW - timedelta(seconds=i), i, latency_ms=[0.0, 0.4, 12.5, 1e9][i % 4], ttfb_ms=ttfb)


def test_appended_rows_carry_their_latency_buckets(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb")
    writer = EventWriter(store, flush_interval=0.05)
    writer.start()
    for i in range(40):
        writer.record(_event(i, None if i % 3 == 0 else 7.0 * i))
    writer.stop(timeout=30)
    cur = store.cursor()
    assert cur.execute("SELECT count(*), count(latency_lb), count(ttfb_lb) FROM requests").fetchone() == (40, 40, 26)
    assert cur.execute(EXPECTED).fetchone() == (0,)
    store.close()


def test_a_file_from_before_the_buckets_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    old = SCHEMA["requests"].replace(", latency_lb SMALLINT, ttfb_lb SMALLINT", "")
    assert "latency_lb" not in old
    con.execute(f"CREATE TABLE requests ({old})")
    con.execute(
        "INSERT INTO requests (ts, request_id, latency_ms, ttfb_ms) SELECT TIMESTAMP '2026-01-01' + INTERVAL (i) "
        "SECOND, 'r' || i, CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.7 END, i * 0.3 FROM range(1000) t(i)"
    )
    con.close()
    store = Store(path)
    cur = store.cursor()
    assert cur.execute("SELECT count(latency_lb), count(ttfb_lb) FROM requests").fetchone() == (800, 1000)
    assert cur.execute(EXPECTED).fetchone() == (0,)
    store.close()
    Store(path).close()  # opening again changes nothing


def test_a_file_from_before_the_resource_columns_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    old = SCHEMA["requests"].split(", latency_lb SMALLINT")[0]
    assert "resource_kind" not in old
    con.execute(f"CREATE TABLE requests ({old})")
    con.execute("INSERT INTO requests (ts, request_id, operation) VALUES (TIMESTAMP '2026-01-01', 'r1', 'x')")
    con.close()
    store = Store(path)
    cur = store.cursor()
    columns = dict(cur.execute("SELECT column_name, column_type FROM (DESCRIBE requests)").fetchall())
    assert {c: columns[c] for c in ADDED["requests"]} == ADDED["requests"]
    assert cur.execute("SELECT request_id, resource_kind, resource_id FROM requests").fetchall() == [("r1", None, None)]
    cur.execute("INSERT INTO requests (ts, request_id, resource_kind) VALUES (TIMESTAMP '2026-01-02', 'r2', 'file')")
    store.close()
    store = Store(path)  # opening again changes nothing
    assert store.cursor().execute("SELECT count(resource_kind) FROM requests").fetchone() == (1,)
    store.close()


def test_user_sql_and_exports_do_not_see_derived_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb")
    writer = EventWriter(store, flush_interval=0.05)
    writer.start()
    writer.record(_event(1, 3.0))
    writer.flush()
    cur = store.cursor()
    queries.install_safe_views(cur)
    visible = {r[0] for r in cur.execute("DESCRIBE safe.requests").fetchall()}
    assert "latency_ms" in visible and "client" in visible
    assert not visible & set(DERIVED["requests"])
    export = writer.submit(lambda c: snapshot.export(c, tmp_path / "exports")).result()
    exported = {
        r[0] for r in cur.execute("DESCRIBE SELECT * FROM read_parquet(?)", [export.files["requests"]]).fetchall()
    }
    assert "latency_ms" in exported and not exported & set(DERIVED["requests"])
    writer.stop()
    store.close()


@pytest.mark.parametrize("table", list(DERIVED))
def test_derived_columns_are_in_the_schema_of_new_files(table: str) -> None:
    assert all(f"{col} SMALLINT" in SCHEMA[table] for col in DERIVED[table])


def test_the_connection_checkpoints_at_every_4_mb_of_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb", "256MB", 2)
    cur = store.cursor()
    settings = dict(
        cur.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('wal_autocheckpoint', 'memory_limit', 'threads')"
        ).fetchall()
    )
    assert settings == {"wal_autocheckpoint": "4.0 MiB", "memory_limit": "244.1 MiB", "threads": "2"}
    cur.close()
    store.close()


def test_the_data_dir_is_closed_but_a_shared_directory_is_left_as_it_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    Store(data / "k.duckdb").close()
    assert data.stat().st_mode & 0o777 == 0o700
    assert (data / "k.duckdb").stat().st_mode & 0o777 == 0o600
    shared = tmp_path / "shared"  # like /tmp: a database file put straight into it must not close it to others
    shared.mkdir()
    shared.chmod(0o1777)
    Store(shared / "k.duckdb").close()
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert (shared / "k.duckdb").stat().st_mode & 0o777 == 0o600


def test_a_file_from_before_the_added_columns_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    columns = [c.strip() for c in SCHEMA["requests"].split(",")]
    old = ", ".join(c for c in columns if c.split()[0] not in ADDED["requests"])
    assert "cost_usd" not in old and "served_model" not in old and "resource_kind" not in old
    con.execute(f"CREATE TABLE requests ({old})")
    con.execute("INSERT INTO requests (ts, request_id) VALUES (TIMESTAMP '2026-01-01', 'old')")
    con.close()
    store = Store(path)
    cur = store.cursor()
    types = dict(cur.execute("SELECT column_name, column_type FROM (DESCRIBE requests)").fetchall())
    assert {c: types[c] for c in ADDED["requests"]} == ADDED["requests"]
    assert {c: ADDED["requests"][c] for c in ("served_model", "tier", "cost_usd", "list_cost_usd")} == {
        "served_model": "VARCHAR",
        "tier": "VARCHAR",
        "cost_usd": "DOUBLE",
        "list_cost_usd": "DOUBLE",
    }
    assert cur.execute("SELECT cost_usd, tier FROM requests").fetchall() == [(None, None)]
    store.close()
    Store(path).close()  # opening again changes nothing
