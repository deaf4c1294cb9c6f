"""`LakeWriter`: the event writer for the lake — a local journal every 0.1 s, one DuckLake commit per interval,
exactly once, retried, bounded.

Same producer side as the embedded `EventWriter` (`record()` never blocks, `submit()` serialises jobs), plus
`count_keys()` for the per-key counters. Two threads share the work, so a slow lake never delays the journal:
- the **journal thread** (the base class's writer thread) wakes every `journal_interval_s` (default 0.1 s), drains the
  queue into one Arrow table per event table (stamped with this replica's id) and writes each to a **journal file**
  under `<data_dir>/spill/` (Arrow IPC, written under a temporary name then renamed; not fsync'd: it survives the
  process being killed, not the machine losing power). It never waits for the lake: a SIGKILL loses at most the
  events recorded since its last tick. Jobs (`submit()`) are passed on to the committer in queue order, after the
  events queued before them are journaled;
- the **committer thread** commits the journaled tables every `commit_interval_s` (default 1 s, or `batch_rows`),
  **in one transaction together with their rollup rows** (`before_commit` hooks) and with the ids of their journal
  files (`journal_commits`: one row per writer and commit, the files' sequence numbers). Any reader sees raw rows
  and rollup agree at every snapshot; several replicas' rollup rows simply add up (readers SUM; the leader folds
  them). After the COMMIT the files are deleted, and it runs the jobs.

Exactly once: a journal file's id is `(writer, seq)`, `writer` naming this process's journal (its start time and a
random part). Before committing files it did not just write (left by a previous process, spilled, or after an
attempt whose outcome is unknown — a connection lost during COMMIT) the committer reads which of their ids
`journal_commits` already holds and deletes those files instead of committing them again. A kill between a COMMIT
and the deletion of its files therefore commits nothing twice. The table is append-only for the writers (a DuckLake
delete conflicts with every concurrent insert into its table); the leader's compaction drops ids older than
`lake.JOURNAL_KEEP`.

Failures: a failed commit rolls back; the tables stay and are retried with exponential backoff (0.25 s → 5 s).
Nothing is dropped: past `max_carry_rows` waiting rows the in-memory copies are let go (counted as spilled) and the
journal files alone hold them, committed first (oldest first) once the lake answers, or at the next start.

stop(): the journal thread journals everything queued (local, fast: it does not wait for the lake), then the
committer makes one last attempt for at most `stop_commit_s`; what it could not commit stays journaled for the next
start. So SIGTERM loses nothing, however slow the lake.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc

from proxy_service.events import COLUMNS, STOP, TABLE_OF, EventWriter, WriteJob, WriterUnavailable
from proxy_service.spill import invalidated
from proxy_service.store import derived_of, keep_invalidated

log = logging.getLogger("keyrack.cluster.writer")
T = TypeVar("T")
STAMPED = ("requests", "error_logs", "key_counts")  # tables with a `replica` column
KEY_COUNTS = "key_counts"  # per-key counter deltas, committed with the events they count
JOURNAL_COMMITS = "journal_commits"
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.25, 5.0
JOURNAL_INTERVAL_S = 0.1
STOP_COMMIT_S = 25.0  # the last commit attempt at stop (journaled first: a kill meanwhile loses nothing)
REPLAY_FILES = 64  # journal files committed per attempt (bounded, oldest first)
KEY_COUNTS_SCHEMA = pa.schema(
    [
        ("key_id", pa.string()),
        ("requests", pa.int64()),
        ("successes", pa.int64()),
        ("total_failures", pa.int64()),
        ("ts", pa.timestamp("us")),
    ]
)


@dataclass
class Journaled:
    """A journal file: its table, its rows (None once spilled), its path and its id."""

    table: str
    batch: pa.Table | None
    path: Path | None  # None: it could not be written (the disk): committed from memory only
    writer: str
    seq: int

    @property
    def rows(self) -> int:
        return self.batch.num_rows if self.batch is not None else 0


def file_id(path: Path) -> tuple[str, int, str]:
    """A journal file's (writer, seq, table) from its name `<writer>-<seq>-<table>.arrow` (also the old naming,
    `<time>-<pid>-<seq>-<table>`, whose writer is then `<time>-<pid>`)."""
    base, table = path.stem.rsplit("-", 1)
    writer, seq = base.rsplit("-", 1)
    return writer, int(seq), table


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
        super().__init__(store, flush_interval=min(journal_interval_s, commit_interval_s), batch_rows=batch_rows)
        self.commit_interval_s = commit_interval_s
        self.replica = replica
        self.spill_dir = spill_dir
        self.max_carry_rows = max_carry_rows
        self.init_lock = init_lock or contextlib.nullcontext
        self.dead_letter_path = spill_dir.parent / "dead_letters.jsonl"  # replica-local, not beside the lake
        self.stop_commit_s = STOP_COMMIT_S
        # Called inside the commit's transaction with the tables about to be committed (the rollup fold). Raising
        # aborts the commit (retried later with the same rows).
        self.before_commit: list[Callable[[duckdb.DuckDBPyConnection, dict[str, pa.Table]], None]] = []
        self.writer_id = f"{time.time_ns():020d}.{secrets.token_hex(4)}"
        self._seq = itertools.count()
        self._counts: dict[str, list[int]] = {}  # key id → [requests, successes, failures] not journaled yet
        self._counts_lock = threading.Lock()
        self._handoff: queue.SimpleQueue[Any] = queue.SimpleQueue()  # journal thread → committer (files, jobs)
        self._committer = threading.Thread(target=self._commit_loop, name="keyrack-lake-committer", daemon=True)
        self._committer_cur: duckdb.DuckDBPyConnection | None = None
        self._released: set[Path] = set()  # this writer's journal files whose rows are no longer in memory
        # Committer thread's state
        self._carry: list[Journaled] = []  # journaled, in memory, not committed yet
        self._carry_rows = 0
        self._commit_at = 0.0  # the next commit is due at this monotonic time
        self._retry_at = 0.0
        self._backoff = BACKOFF_MIN_S
        self._doubt = False  # the last attempt failed: its files may have been committed anyway
        self._final = False
        self._abandoned = False  # stop() gave up waiting: the committer leaves everything to the journal
        self.spilled_rows = 0
        self.skipped_files = 0  # journal files found already committed (not committed again)
        self.last_error: str | None = None
        self._invalidated = False  # DuckDB invalidated the store's instance: reopened before the next attempt

    # -- producer side -------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        if not self._started:
            # Startup jobs (rollup install/rebuild, safe views) run under the cluster-wide lock: two replicas
            # rebuilding the same empty rollup at once would both insert it.
            with self.init_lock():
                return super().submit(fn)
        return super().submit(fn)

    def count_keys(self, deltas: dict[str, tuple[int, int, int]]) -> None:
        """Add per-key counter deltas (requests, successes, failures): journaled with the next tick's events and
        committed with them, once (any thread)."""
        with self._counts_lock:
            for kid, delta in deltas.items():
                have = self._counts.setdefault(kid, [0, 0, 0])
                for i, d in enumerate(delta):
                    have[i] += d

    @property
    def depth(self) -> int:
        return self._queue.qsize() + self._carry_rows

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and (self._committer.is_alive() or not self._started)

    @property
    def healthy(self) -> bool:
        return self.alive and self.last_error is None

    def pending_spill(self) -> list[Path]:
        """Every journal file not committed yet (in memory or not), oldest first (names start with their writer's
        start time)."""
        return sorted(self.spill_dir.glob("*.arrow")) if self.spill_dir.exists() else []

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        self._committer.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Journal everything queued, then give the lake one last attempt (at most `stop_commit_s`, or `timeout`)."""
        if not self._started:
            return
        self._queue.put(STOP)
        self._wake.set()
        # Journaling is local and never waits for the lake: this returns as fast as the disk writes.
        self._thread.join(max(timeout, 60.0))
        if self._thread.is_alive():
            log.error("the journal thread did not finish: events queued since its last tick may be lost")
        self._committer.join(min(timeout, self.stop_commit_s))
        if self._committer.is_alive():  # a slow lake: stop the attempt, the journal keeps the rows
            self._abandoned = True
            cur = self._committer_cur
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.interrupt()
            self._committer.join(5.0)
            log.warning(
                "lake commit not finished at stop; %d journal files are committed at the next start",
                len(self.pending_spill()),
            )
        self._started = False

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything queued before this call is committed (or its commit failed: then it waits)."""

        def commit_now(cur: duckdb.DuckDBPyConnection) -> None:
            self._commit_at = 0.0
            self._tick(cur)

        self.submit(commit_now).result(timeout)

    # -- journal thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        pending: dict[type, list[Any]] = {cls: [] for cls in TABLE_OF}
        stopping = False
        get = self._queue.get_nowait
        while True:
            if not stopping:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            try:
                count = 0
                while True:  # drain in queue order (after STOP too: late producers' items are journaled)
                    try:
                        item = get()
                    except queue.Empty:
                        break
                    if item is STOP:
                        stopping = True
                    elif isinstance(item, WriteJob):
                        self._journal(pending)  # the job comes after the events queued before it
                        count = 0
                        self._handoff.put(item)
                    else:
                        pending[type(item)].append(item)
                        count += 1
                        if count >= self.batch_rows:
                            self._journal(pending)
                            count = 0
                self._journal(pending)
            except Exception:  # never reached by design (each step is guarded): the thread must not die anyway
                log.exception("event journal loop failed; continuing")
            self.stats.last_flush_at = time.monotonic()
            if stopping:
                break
        self._handoff.put(STOP)

    def _journal(self, pending: dict[type, list[Any]]) -> None:
        """Write the pending rows and counter deltas to journal files and hand them to the committer."""
        for cls, rows in pending.items():
            if not rows:
                continue
            table = TABLE_OF[cls]
            try:  # a value Arrow cannot take fails this batch only: its rows go to the dead-letter file
                data: dict[str, Any] = {c: [getattr(r, c) for r in rows] for c in COLUMNS[cls]}
                if table in STAMPED:
                    data["replica"] = pa.array([self.replica] * len(rows), pa.string())
                batch = pa.Table.from_pydict(data)
            except Exception:
                self.stats.failures += 1
                log.exception("event batch for %s (%d rows) cannot be built; dead-lettered", table, len(rows))
                self._dead_letter(table, rows)
            else:
                self._handoff.put(self._write_file(table, batch))
            rows.clear()
        with self._counts_lock:
            counts, self._counts = self._counts, {}
        counts = {k: v for k, v in counts.items() if any(v)}
        if counts:
            now = datetime.now(UTC).replace(tzinfo=None)
            batch = pa.Table.from_pydict(
                {
                    "key_id": list(counts),
                    "requests": [v[0] for v in counts.values()],
                    "successes": [v[1] for v in counts.values()],
                    "total_failures": [v[2] for v in counts.values()],
                    "ts": [now] * len(counts),
                },
                schema=KEY_COUNTS_SCHEMA,
            ).append_column("replica", pa.array([self.replica] * len(counts), pa.string()))
            self._handoff.put(self._write_file(KEY_COUNTS, batch))

    def _write_file(self, table: str, batch: pa.Table) -> Journaled:
        """One journal file, complete under its final name or absent. A disk that refuses it leaves the rows in
        memory only (committed from there; logged)."""
        seq = next(self._seq)
        name = f"{self.writer_id}-{seq:09d}-{table}"
        try:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.spill_dir / f"{name}.tmp"
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, batch.schema) as out:
                out.write_table(batch)
            path: Path | None = self.spill_dir / f"{name}.arrow"
            os.replace(tmp, path)  # type: ignore[arg-type]
        except OSError as exc:
            log.error("journal write failed (%s): %d %s rows wait in memory only", exc, batch.num_rows, table)
            path = None
        return Journaled(table, batch, path, self.writer_id, seq)

    # -- committer thread ----------------------------------------------------------------------------------------
    def _commit_loop(self) -> None:
        cur = self._committer_cur = self.store.cursor()
        generation = self.store.generation
        stopping = False
        while not stopping and not self._abandoned:
            wait = max(self._commit_at, self._retry_at) - time.monotonic()
            try:
                item = self._handoff.get(timeout=min(max(wait, 0.01), 1.0))
            except queue.Empty:
                item = None
            try:
                if self._invalidated and time.monotonic() >= self._retry_at:
                    self._reopen()
                if generation != self.store.generation:  # a new connection: the old, invalidated one's cursor
                    keep_invalidated(cur)  # is never closed (see store.py)
                    cur = self._committer_cur = self.store.cursor()
                    generation = self.store.generation
                while item is not None:
                    if self._abandoned:  # stop() gave up: no more lake work (the store is closing)
                        if isinstance(item, WriteJob) and not item.future.done():
                            with contextlib.suppress(InvalidStateError):
                                item.future.set_exception(WriterUnavailable("the writer stopped before this job ran"))
                        stopping = stopping or item is STOP
                    elif item is STOP:
                        stopping = self._final = True
                    elif isinstance(item, WriteJob):
                        self._tick(cur)  # a commit that is due goes first (as the embedded writer flushes first)
                        self._run_job(cur, item)
                    else:
                        self._carry.append(item)
                        self._carry_rows += item.rows
                    try:
                        item = self._handoff.get_nowait()
                    except queue.Empty:
                        item = None
                self._tick(cur)
            except Exception:  # never reached by design (each step is guarded): the thread must not die anyway
                log.exception("lake committer loop failed; continuing")
        self._committer_cur = None
        with contextlib.suppress(Exception):
            cur.close()

    def _tick(self, cur: duckdb.DuckDBPyConnection) -> None:
        if self._abandoned:
            return
        now = time.monotonic()
        due = now >= self._commit_at or self._carry_rows >= self.batch_rows or self._final
        if due and (self._carry or self._waiting_files()) and (now >= self._retry_at or self._final):
            self._commit(cur)
            self._commit_at = time.monotonic() + self.commit_interval_s
        if self._carry_rows > self.max_carry_rows:
            self._spill_all()

    def _waiting_files(self) -> list[Path]:
        """Journal files to commit from disk: a previous process's, and this one's released from memory (never one
        the journal thread has just written and not handed over yet)."""
        return [p for p in self.pending_spill() if p in self._released or not p.name.startswith(self.writer_id)]

    def _commit(self, cur: duckdb.DuckDBPyConnection) -> None:
        started = time.perf_counter()
        try:
            if self._doubt:  # the last attempt may have committed after all (its answer was lost)
                self._drop_committed(cur)
            committed = self._replay_spill(cur) and bool(self._carry)
            if committed:
                self._write(cur, self._carry)
        except Exception as exc:
            self._doubt = True
            self._invalidated = self._invalidated or invalidated(exc)
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
        self._doubt = False
        # The lake took a transaction: the outage is over, even when only spilled files were replayed (all rows of an
        # outage can be on disk; /readyz stayed "retrying" until the next live commit, forever on an idle replica).
        self._backoff, self._retry_at, self.last_error = BACKOFF_MIN_S, 0.0, None
        if not committed:
            return  # older journal files still wait: the in-memory ones follow them, in order
        self._done(self._carry)
        self._carry, self._carry_rows = [], 0
        self.stats.flushes += 1
        self.stats.last_flush_ms = (time.perf_counter() - started) * 1000

    def _run_job(self, cur: duckdb.DuckDBPyConnection, job: WriteJob) -> None:
        fn = job.fn

        def watched(c: duckdb.DuckDBPyConnection) -> Any:
            try:
                return fn(c)
            except Exception as exc:
                self._invalidated = self._invalidated or invalidated(exc)
                raise

        job.fn = watched
        job.settle(cur, log_failure=True)

    def _reopen(self) -> None:
        """DuckDB invalidated this replica's instance (see `LakeStore.reopen`): a new one, tried at each retry (with
        the commits' backoff) until PostgreSQL answers. The journal keeps every row meanwhile."""
        try:
            self.store.reopen()
        except Exception as exc:
            self.last_error = "reopening DuckDB: " + (
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            )
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
            log.warning("%s (retry in %.2f s)", self.last_error, self._backoff)
            return
        self._invalidated = False
        log.warning("DuckDB invalidated its database (an internal error in an extension): opened a new one")

    def _done(self, files: list[Journaled]) -> None:
        for j in files:
            if j.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    j.path.unlink()
                self._released.discard(j.path)
            if j.table in self.stats.written:
                self.stats.written[j.table] += j.rows

    def _write(self, cur: duckdb.DuckDBPyConnection, files: list[Journaled]) -> None:
        """Append the files' rows, their rollup rows and their ids in one transaction."""
        tables: dict[str, pa.Table] = {}
        for table in dict.fromkeys(j.table for j in files):
            parts = [j.batch for j in files if j.table == table and j.batch is not None]
            if parts:
                tables[table] = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        ids: dict[str, list[int]] = {}
        for j in files:
            ids.setdefault(j.writer, []).append(j.seq)
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
            now = datetime.now(UTC).replace(tzinfo=None)
            for writer, seqs in ids.items():
                cur.execute(f"INSERT INTO {JOURNAL_COMMITS} VALUES (?, ?, ?, ?)", [writer, seqs, self.replica, now])
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                cur.execute("ROLLBACK")
            raise

    # -- exactly once ---------------------------------------------------------------------------------------------
    def _committed(self, cur: duckdb.DuckDBPyConnection, writers: set[str]) -> set[tuple[str, int]]:
        """Which journal ids of `writers` the lake holds."""
        if not writers:
            return set()
        rows = cur.execute(
            f"SELECT writer, unnest(seqs) FROM {JOURNAL_COMMITS} WHERE list_contains(?, writer)", [sorted(writers)]
        ).fetchall()
        return {(w, int(s)) for w, s in rows}

    def _drop_committed(self, cur: duckdb.DuckDBPyConnection) -> None:
        """After an attempt with an unknown outcome: the waiting tables it did commit are done, not committed again."""
        done = self._committed(cur, {j.writer for j in self._carry})
        if not done:
            return
        kept = [j for j in self._carry if (j.writer, j.seq) not in done]
        committed = [j for j in self._carry if (j.writer, j.seq) in done]
        self._done(committed)
        self.skipped_files += len(committed)
        log.info("%d journal files were committed by an attempt that seemed to fail: not committed again", len(done))
        self._carry, self._carry_rows = kept, sum(j.rows for j in kept)

    def _replay_spill(self, cur: duckdb.DuckDBPyConnection) -> bool:
        """Commit the journal files that are not in memory (spilled, or left by a previous process), oldest first,
        at most REPLAY_FILES per call, skipping (and deleting) those already committed. True when none is left."""
        waiting = self._waiting_files()
        if not waiting:
            return True
        chunk = [(p, *file_id(p)) for p in waiting[:REPLAY_FILES]]
        done = self._committed(cur, {w for _, w, _, _ in chunk})
        files = []
        skipped = 0
        for path, writer, seq, table in chunk:
            if (writer, seq) in done:
                path.unlink(missing_ok=True)
                self._released.discard(path)
                skipped += 1
                continue
            with pa.memory_map(str(path)) as source:
                files.append(Journaled(table, ipc.open_file(source).read_all(), path, writer, seq))
        if files:
            self._write(cur, files)  # one transaction for all of them
            self._done(files)
            log.info("committed %d journaled rows from %d files", sum(j.rows for j in files), len(files))
        if skipped:
            self.skipped_files += skipped
            log.info("%d journal files were already committed: deleted, not committed again", skipped)
        return len(waiting) <= REPLAY_FILES

    def _spill_all(self) -> None:
        """Let go of the waiting tables in memory (memory stays bounded); their journal files are committed later.
        Tables whose file could not be written stay in memory."""
        kept = [j for j in self._carry if j.path is None]
        self._released.update(j.path for j in self._carry if j.path is not None)
        gone = self._carry_rows - sum(j.rows for j in kept)
        self.spilled_rows += gone
        log.warning("spilled %d waiting event rows to %s", gone, self.spill_dir)
        self._carry, self._carry_rows = kept, sum(j.rows for j in kept)
