"""`LakeWriter`: the event writer for the lake — one DuckLake commit per interval, retried, bounded, spilled.

Same producer side as the embedded `EventWriter` (`record()` never blocks, `submit()` serialises jobs); what changes
is the flush:
- every `commit_interval_s` (default 1 s, or `batch_rows`) the rows gathered become one Arrow table per event table,
  stamped with this replica's id, and are appended **in one transaction together with their rollup rows**
  (`before_commit` hooks): any reader on any replica sees the raw rows and the rollup agree at every snapshot, and
  several replicas' rollup rows simply add up (readers SUM; the elected compactor folds them later);
- a failed commit (PostgreSQL restarting, a conflict) rolls back; the batches stay and are retried with exponential
  backoff (0.25 s → 10 s). Nothing is dropped: past `max_carry_rows` waiting rows the oldest batches are spilled to
  Arrow IPC files under `<data_dir>/spill/` (written to a temporary name, then renamed), which are committed first
  once the lake answers again, and at the next start if the process stopped before that;
- stop(): one last commit attempt whatever the backoff; what still cannot be committed is spilled. So SIGTERM loses
  nothing; SIGKILL loses at most the rows gathered since the last commit (≤ one interval) plus those of a failing
  commit that were not spilled yet.
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

log = logging.getLogger("keyrack.cluster.writer")
T = TypeVar("T")
STAMPED = ("requests", "error_logs")  # tables with a `replica` column
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 10.0


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
    ) -> None:
        super().__init__(store, flush_interval=commit_interval_s, batch_rows=batch_rows)
        self.replica = replica
        self.spill_dir = spill_dir
        self.max_carry_rows = max_carry_rows
        self.init_lock = init_lock or contextlib.nullcontext
        self.dead_letter_path = spill_dir.parent / "dead_letters.jsonl"  # replica-local, not beside the lake
        # Called inside the commit's transaction with the tables about to be committed (the rollup fold). Raising
        # aborts the commit (retried later with the same rows).
        self.before_commit: list[Callable[[duckdb.DuckDBPyConnection, dict[str, pa.Table]], None]] = []
        self._carry: list[tuple[str, pa.Table]] = []
        self._carry_rows = 0
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
        return self.alive and not self._carry_rows and not self.pending_spill()

    def pending_spill(self) -> list[Path]:
        return sorted(self.spill_dir.glob("*.arrow")) if self.spill_dir.exists() else []

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        self._final = True  # the last flush ignores the backoff
        super().stop(timeout)
        if self._carry:
            self._spill_all()

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
                        self._carry.append((table, pa.Table.from_pydict(data)))
                        self._carry_rows += len(rows)
                    except Exception:
                        self.stats.failures += 1
                        log.exception("event batch for %s (%d rows) cannot be built; dead-lettered", table, len(rows))
                        self._dead_letter(table, rows)
                    rows.clear()
        now = time.monotonic()
        if (self._carry or self.pending_spill()) and (now >= self._retry_at or self._final):
            self._commit(cur)
        if self._carry_rows > self.max_carry_rows:
            self._spill_all()
        self.stats.last_flush_at = time.monotonic()
        return 0

    def _commit(self, cur: duckdb.DuckDBPyConnection) -> None:
        started = time.perf_counter()
        try:
            self._replay_spill(cur)
            if self._carry:
                self._write(cur, self._carry)
        except Exception as exc:
            self.stats.failures += 1
            self.last_error = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            self._retry_at = time.monotonic() + self._backoff
            log.warning("lake commit failed (%d rows wait, retry in %.2f s): %s", self._carry_rows, self._backoff,
                        self.last_error)  # fmt: skip
            self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
            return
        for table, batch in self._carry:
            self.stats.written[table] += batch.num_rows
        self._carry, self._carry_rows = [], 0
        self._backoff, self._retry_at, self.last_error = BACKOFF_MIN_S, 0.0, None
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
                    cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _lake_batch")
                finally:
                    cur.unregister("_lake_batch")
            for hook in self.before_commit:
                hook(cur, tables)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise

    # -- spill ---------------------------------------------------------------------------------------------------
    def _spill_all(self) -> None:
        """Move every waiting batch to disk (memory stays bounded; the files are committed first later)."""
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        for table, batch in self._carry:
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}-{table}"
            tmp = self.spill_dir / f"{name}.tmp"
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, batch.schema) as out:
                out.write_table(batch)
            os.replace(tmp, self.spill_dir / f"{name}.arrow")
            self.spilled_rows += batch.num_rows
        log.warning("spilled %d waiting event rows to %s", self._carry_rows, self.spill_dir)
        self._carry, self._carry_rows = [], 0

    def _replay_spill(self, cur: duckdb.DuckDBPyConnection) -> None:
        for path in self.pending_spill()[:64]:  # bounded per commit; the rest on the next ones
            table = path.stem.rsplit("-", 1)[-1]
            with pa.memory_map(str(path)) as source:
                batch = ipc.open_file(source).read_all()
            self._write(cur, [(table, batch)])
            path.unlink()
            self.stats.written[table] += batch.num_rows
            log.info("committed %d spilled rows from %s", batch.num_rows, path.name)
