"""The DuckDB file's storage choices that the proxy's memory depends on (bench/memory.py has the figures)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from proxy_service.settings import DUCKDB_BLOCK_SIZE
from proxy_service.store import Store


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
