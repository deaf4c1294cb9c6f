"""Storage faults in the writer, in process: the spill keeps rows in order and exactly once, within its caps (memory,
then a directory), across a stop; dead letters avoid the failing disk; faults are told from bad rows; a released
store refuses cursors until reopened. The real disks (a full tmpfs, an ext4 turned read-only) are in
tests/reliability/test_storage_faults.py; here the fault is raised where DuckDB raises it, the append."""

from __future__ import annotations

import errno
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from proxy_service.events import Columns, EventWriter, RequestEvent
from proxy_service.spill import Spill, fault_reason, needs_reopen
from proxy_service.store import StorageFault, Store

FULL = duckdb.IOException('IO Error: Could not write file "/data/keyrack.duckdb.wal": No space left on device')


class FailingDisk(EventWriter):
    """The writer over a disk that fails while `failing` is set (its appends raise what DuckDB raises)."""

    failing = False

    def _append(self, cur: duckdb.DuckDBPyConnection, table: str, batch: Columns) -> None:
        if self.failing:
            raise FULL
        super()._append(cur, table, batch)


def event(rid: str, tokens: Any = 1) -> RequestEvent:
    now = datetime.now(UTC).replace(tzinfo=None)
    return RequestEvent(
        ts=now,
        request_id=rid,
        client_id=None,
        surface="gemini",
        operation="x",
        model=None,
        stream=False,
        total_tokens=tokens,
    )


def wait(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def stored(store: Store) -> list[str]:
    cur = store.cursor()
    try:
        return [r[0] for r in cur.execute("SELECT request_id FROM requests ORDER BY rowid").fetchall()]
    finally:
        cur.close()


def test_a_fault_spills_in_order_and_the_spill_is_written_once_when_the_disk_is_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "data" / "keyrack.duckdb")
    writer = FailingDisk(store, flush_interval=0.02)
    writer.start()
    try:
        writer.record(event("before"))
        wait(lambda: stored(store) == ["before"])
        assert writer.storing and writer.storage_state() == "ok"
        writer.failing = True
        for i in range(40):
            writer.record(event(f"during-{i:02d}"))
            time.sleep(0.005)
        wait(lambda: writer.spill.rows == 40)
        assert not writer.storing and writer.storage_state() == "storage: disk full"
        assert stored(store) == ["before"]  # reads still work: the database itself is fine
        writer.failing = False
        writer.record(event("after"))
        wait(lambda: writer.storing)
        wait(lambda: len(stored(store)) == 42)
        assert stored(store) == ["before", *(f"during-{i:02d}" for i in range(40)), "after"]
        assert writer.stats.dropped == 0 and writer.stats.dead_letters == 0
    finally:
        writer.stop()
        store.close()


def test_past_the_memory_cap_batches_go_to_the_spill_dir_and_past_its_cap_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    spill = Spill(memory_rows=5, memory_bytes=2**20, directory=tmp_path / "spill", directory_bytes=2_000)
    for i in range(40):
        spill.push("requests", {"request_id": [f"r{i}"], "ts": [datetime(2026, 1, 1, 0, 0, i)]})
    on_disk = sorted((tmp_path / "spill").glob("*.spill.json"))
    assert spill.mem_rows == 5 and len(on_disk) > 0 and spill.dropped > 0
    assert spill.rows + spill.dropped == 40 and spill.rows == 5 + len(on_disk)
    taken = spill.take(1_000)
    loaded = [b.load()[1]["request_id"][0] for b in taken]
    assert loaded == [f"r{i}" for i in range(spill.rows)]  # oldest first, memory then disk
    assert taken[-1].load()[1]["ts"] == [datetime(2026, 1, 1, 0, 0, spill.rows - 1)]
    for b in taken:
        spill.done(b)
    assert spill.rows == 0 and not list((tmp_path / "spill").glob("*.spill.json"))


def test_a_stop_during_a_fault_leaves_the_spill_for_the_next_start(tmp_path: Path) -> None:
    db, spill_dir = tmp_path / "data" / "keyrack.duckdb", tmp_path / "spill"
    store = Store(db)
    writer = FailingDisk(store, flush_interval=0.02, spill=Spill(memory_rows=4, directory=spill_dir))
    writer.failing = True
    writer.start()
    for i in range(10):  # one batch each: the first 4 in memory, the rest in the spill dir
        writer.record(event(f"r{i}"))
        wait(lambda i=i: writer.spill.rows == i + 1)  # type: ignore[misc]
    writer.stop()
    store.close()
    assert writer.spill.rows == 10 and len(list(spill_dir.glob("*.spill.json"))) == 10 and writer.stats.dropped == 0

    store = Store(db)  # the next start: the disk is fine again
    restarted = EventWriter(store, flush_interval=0.02, spill=Spill(directory=spill_dir))
    assert not restarted.storing  # not ready before the leftovers are written
    restarted.start()
    try:
        restarted.record(event("new"))
        wait(lambda: restarted.storing and len(stored(store)) == 11)
        assert stored(store) == [*(f"r{i}" for i in range(10)), "new"]
        assert not list(spill_dir.glob("*.spill.json"))
    finally:
        restarted.stop()
        store.close()


def test_dead_letters_during_a_fault_go_to_the_spill_dir_never_to_the_failing_disk(tmp_path: Path) -> None:
    store = Store(tmp_path / "data" / "keyrack.duckdb")
    spill_dir = tmp_path / "spill"
    writer = FailingDisk(store, flush_interval=0.02, spill=Spill(directory=spill_dir))
    writer.start()
    try:
        writer.failing = True
        for n, e in enumerate((event("x"), event("bad", 10**30), event("y")), 1):  # three flushes, three batches
            writer.record(e)  # "bad": no column can take it, found when the spill is written
            wait(lambda n=n: writer.spill.rows == n)  # type: ignore[misc]
        writer.failing = False
        wait(lambda: writer.storing)
        assert writer.stats.dead_letters == 1 and stored(store) == ["x", "y"]  # only the bad row's own batch
        assert not (tmp_path / "data" / "dead_letters.jsonl").exists()
        lines = (spill_dir / "dead_letters.jsonl").read_text().splitlines()
        assert json.loads(lines[0])["row"]["request_id"] == "bad"
    finally:
        writer.failing = False
        writer.stop()
        store.close()


@pytest.mark.parametrize(
    ("exc", "reason", "reopen"),
    [
        (OSError(errno.EROFS, "Read-only file system"), "read-only file system", True),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full", False),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk full", False),
        (OSError(errno.ENOENT, "No such file"), None, False),
        (FULL, "disk full", False),
        (
            duckdb.TransactionException('Failed to commit: Could not write file "x.wal": Read-only file system'),
            "read-only file system",
            True,
        ),
        (
            duckdb.IOException(
                'Database "k" has been invalidated because checkpointing failed. Original error: '
                'Could not write file "k": No space left on device'
            ),
            "disk full",
            True,
        ),
        (
            duckdb.FatalException("database has been invalidated because of a previous fatal error"),
            "database invalidated",
            True,
        ),
        (duckdb.ConversionException("Could not convert string 'x' to INT32"), None, False),
        (duckdb.CatalogException("Table with name requests does not exist!"), None, False),
        (ValueError("bad"), None, False),
    ],
)
def test_storage_faults_are_told_from_bad_rows(exc: BaseException, reason: str | None, reopen: bool) -> None:
    assert fault_reason(exc) == reason
    assert needs_reopen(exc) is reopen


def test_a_released_store_refuses_cursors_until_reopened_and_never_reopens_a_missing_file(tmp_path: Path) -> None:
    db = tmp_path / "data" / "keyrack.duckdb"
    store = Store(db)
    try:
        store.release("read-only file system")
        with pytest.raises(StorageFault, match="storage: read-only file system"):
            store.cursor()
        db.rename(tmp_path / "data" / "moved.duckdb")
        with pytest.raises(StorageFault, match="missing"):
            store.reopen()
        assert not db.exists()  # no empty database started in its place
        (tmp_path / "data" / "moved.duckdb").rename(db)
        generation = store.generation
        store.reopen()
        assert store.released is None and store.generation == generation + 1
        cur = store.cursor()
        assert cur.execute("SELECT count(*) FROM requests").fetchone() == (0,)
        cur.close()
    finally:
        store.close()
