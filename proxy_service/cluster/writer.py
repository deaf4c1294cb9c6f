"""`LakeWriter`: the event writer for the lake — one DuckLake commit per interval, journaled, retried, bounded.

Same producer side as the embedded `EventWriter` (`record()` never blocks, `submit()` serialises jobs); what changes
is the flush:
- every `journal_interval_s` (default 0.1 s) the writer thread drains the queue into one Arrow table per event table,
  stamped with this replica's id, and appends it to a **journal file** under `<data_dir>/spill/` (Arrow IPC, written
  under a temporary name then renamed; not fsync'd: it survives the process being killed, not the machine losing
  power). So a SIGKILL loses at most the events recorded since the last journal write (one journal interval, plus
  the commit or job the writer thread was busy with meanwhile), not the whole commit window;
- every `commit_interval_s` (default 1 s, or `batch_rows`) the journaled tables are appended **in one transaction
  together with their rollup rows** (`before_commit` hooks): any reader on any replica sees the raw rows and the
  rollup agree at every snapshot, and several replicas' rollup rows simply add up (readers SUM; the elected
  compactor folds them later). After the COMMIT their journal files are deleted;
- a failed commit (PostgreSQL restarting, a conflict) rolls back; the tables stay and are retried with exponential
  backoff (0.25 s → 5 s). Nothing is dropped: past `max_carry_rows` waiting rows the in-memory copies are let go
  (counted as spilled) and the journal files alone hold them; files not in memory are committed first (oldest first)
  once the lake answers again, and at the next start if the process stopped or was killed before that;
- stop(): one last commit attempt whatever the backoff; what still cannot be committed stays in its journal files.
  So SIGTERM loses nothing. A kill between a COMMIT and the deletion of its journal files (microseconds) would
  commit those rows a second time at the next start: at-least-once, not exactly-once, in that window.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc

from proxy_service.events import _COLUMNS, _TABLE_OF, EventWriter
from proxy_service.store import derived_of

log = logging.getLogger("keyrack.cluster.writer")
T = TypeVar("T")
STAMPED = ("requests", "error_logs")  # tables with a `replica` column
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 5.0
JOURNAL_INTERVAL_S = 0.1
REPLAY_FILES = 64  # journal files committed per attempt (bounded, oldest first)


class LakeWriter(EventWriter):
    def __init__(
        self,
        store: Any,
        replica: str,
        spill_dir: Path,
        commit_interval_s: float = 1.0,
        batch_rows: int = 20_000,
        max_carry_rows: int = 100_000,
        init_lock: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        journal_interval_s: float = JOURNAL_INTERVAL_S,
    ) -> None:
        # The writer thread wakes every journal interval; commits happen every commit interval.
        super().__init__(store, flush_interval=min(journal_interval_s, commit_interval_s), batch_rows=batch_rows)
        self.commit_interval_s = commit_interval_s
        self.replica = replica
        self.spill_dir = spill_dir
        self.max_carry_rows = max_carry_rows
        self.init_lock = init_lock or contextlib.nullcontext
        self.dead_letter_path = spill_dir.parent / "dead_letters.jsonl"  # replica-local, not beside the lake
        # Called inside the commit's transaction with the tables about to be committed (the rollup fold). Raising
        # aborts the commit (retried later with the same rows).
        self.before_commit: list[Callable[[duckdb.DuckDBPyConnection, dict[str, pa.Table]], None]] = []
        self._carry: list[tuple[str, pa.Table, Path]] = []  # journaled, in memory, not committed yet
        self._carry_rows = 0
        self._commit_at = 0.0  # the next commit is due at this monotonic time
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN_S
        self._final = False
        self._seq = itertools.count()
        self.spilled_rows = 0
        self.last_error: str | None = None

    # -- producer side -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        if not self._started:
            # Startup jobs (rollup install/rebuild, safe views) run under the cluster-wide lock: two replicas
            # rebuilding the same empty rollup at once would both insert it.
            with self.init_lock():
                return super().submit(fn)
        return super().submit(fn)

    @property
    def depth(self) -> int:
        return self._queue.qsize() + self._carry_rows

    @property
    def healthy(self) -> bool:
        return self.alive and self.last_error is None

    def pending_spill(self) -> list[Path]:
        """Every journal file not committed yet (in memory or not), oldest first."""
        return sorted(self.spill_dir.glob("*.arrow")) if self.spill_dir.exists() else []

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        self._final = True  # the last flush ignores the backoff
        super().stop(timeout)
        if self._carry:
            self._spill_all()  # their journal files stay: committed at the next start

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything queued before this call is committed (or its commit failed: then it waits)."""

        def commit_now(cur: duckdb.DuckDBPyConnection) -> None:
            self._commit_at = 0.0  # the rows were journaled just before this job: commit them now
            self._flush(cur, {cls: [] for cls in _TABLE_OF}, 0)

        self.submit(commit_now).result(timeout)

    # -- writer thread -------------------------------------------------------------------------------------------
    def _flush(self, cur: duckdb.DuckDBPyConnection, pending: dict[type, list[Any]], count: int) -> int:
        if count:
            for cls, rows in pending.items():
                if rows:
                    table = _TABLE_OF[cls]
                    try:  # a value Arrow cannot take fails this batch only: its rows go to the dead-letter file
                        data: dict[str, Any] = {c: [getattr(r, c) for r in rows] for c in _COLUMNS[cls]}
                        if table in STAMPED:
                            data["replica"] = pa.array([self.replica] * len(rows), pa.string())
                        batch = pa.Table.from_pydict(data)
                        self._carry.append((table, batch, self._journal(table, batch)))
                        self._carry_rows += len(rows)
                    except Exception:
                        self.stats.failures += 1
                        log.exception("event batch for %s (%d rows) cannot be built; dead-lettered", table, len(rows))
                        self._dead_letter(table, rows)
                    rows.clear()
        now = time.monotonic()
        due = now >= self._commit_at or self._carry_rows >= self.batch_rows or self._final
        if due and (self._carry or self.pending_spill()) and (now >= self._retry_at or self._final):
            self._commit(cur)
            self._commit_at = time.monotonic() + self.commit_interval_s
        if self._carry_rows > self.max_carry_rows:
            self._spill_all()
        self.stats.last_flush_at = time.monotonic()
        return 0

    def _commit(self, cur: duckdb.DuckDBPyConnection) -> None:
        started = time.perf_counter()
        try:
            committed = self._replay_spill(cur) and bool(self._carry)
            if committed:
                self._write(cur, [(t, b) for t, b, _ in self._carry])
                for _, _, path in self._carry:
                    path.unlink(missing_ok=True)
        except Exception as exc:
            self.stats.failures += 1
            self.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            log.warning(
                "lake commit failed (%d rows wait, retry in %.2f s): %s",
                self._carry_rows,
                self._backoff,
                self.last_error,
            )
            self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
            return
        # The lake took a transaction: the outage is over, even when only spilled files were replayed (all rows of an
        # outage can be on disk; /readyz stayed "retrying" until the next live commit, forever on an idle replica).
        self._backoff, self._retry_at, self.last_error = BACKOFF_MIN_S, 0.0, None
        if not committed:
            return  # older journal files still wait: the in-memory ones follow them, in order
        for table, batch, _ in self._carry:
            self.stats.written[table] += batch.num_rows
        self._carry, self._carry_rows = [], 0
        self.stats.flushes += 1
        self.stats.last_flush_ms = (time.perf_counter() - started) * 1000

    def _write(self, cur: duckdb.DuckDBPyConnection, batches: list[tuple[str, pa.Table]]) -> None:
        tables: dict[str, pa.Table] = {}
        for table in dict.fromkeys(t for t, _ in batches):
            parts = [b for t, b in batches if t == table]
            tables[table] = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        cur.execute("BEGIN TRANSACTION")
        try:
            for table, batch in tables.items():
                cur.register("_lake_batch", batch)
                try:
                    derived = derived_of(table, batch.column_names)  # e.g. the latency buckets
                    cols = ", ".join(["*", *(f"{expr} AS {col}" for col, expr in derived.items())])
                    cur.execute(f"INSERT INTO {table} BY NAME SELECT {cols} FROM _lake_batch")
                finally:
                    cur.unregister("_lake_batch")
            for hook in self.before_commit:
                hook(cur, tables)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise

    # -- journal and spill ----------------------------------------------------------------------------------------
    def _journal(self, table: str, batch: pa.Table) -> Path:
        """Append `batch` to the journal: one file, complete under its final name or absent."""
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}-{table}"
        tmp = self.spill_dir / f"{name}.tmp"
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, batch.schema) as out:
            out.write_table(batch)
        path = self.spill_dir / f"{name}.arrow"
        os.replace(tmp, path)
        return path

    def _spill_all(self) -> None:
        """Let go of the waiting tables in memory (memory stays bounded); their journal files are committed later."""
        self.spilled_rows += self._carry_rows
        log.warning("spilled %d waiting event rows to %s", self._carry_rows, self.spill_dir)
        self._carry, self._carry_rows = [], 0

    def _replay_spill(self, cur: duckdb.DuckDBPyConnection) -> bool:
        """Commit the journal files that are not in memory (spilled, or left by a previous process), oldest first,
        at most REPLAY_FILES per call. True when none is left."""
        in_memory = {path for _, _, path in self._carry}
        waiting = [p for p in self.pending_spill() if p not in in_memory]
        if not waiting:
            return True
        batches = []
        for path in waiting[:REPLAY_FILES]:
            with pa.memory_map(str(path)) as source:
                batches.append((path.stem.rsplit("-", 1)[-1], ipc.open_file(source).read_all()))
        self._write(cur, batches)  # one transaction for all of them
        for path in waiting[:REPLAY_FILES]:
            path.unlink()
        for table, batch in batches:
            self.stats.written[table] += batch.num_rows
        log.info("committed %d journaled rows from %d files", sum(b.num_rows for _, b in batches), len(batches))
        return len(waiting) <= REPLAY_FILES
