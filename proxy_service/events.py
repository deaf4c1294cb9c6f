"""Call events and the writer: request path → in-memory queue → one writer thread → batched column appends.

The request path only builds a small record and puts it on a queue (no I/O). The writer thread drains the queue
every `flush_interval` seconds or as soon as `batch_rows` records wait, turns each table's records into one list
per column and appends them with a single `INSERT` (`insert_columns`: no pyarrow in the proxy process). Other
database work that must be serialised with the appends (key upserts, settings, deletes, retention) is sent to the
same thread with `submit()`.

The thread must outlive anything: a batch that cannot be built or appended goes, row by row, to the dead-letter
file (`dead_letters.jsonl` next to the database, 0600), counted in `stats.dead_letters`; an exception anywhere
else in the loop is logged and the loop goes on.

A storage fault is not a bad batch (`spill.fault_reason`: a read-only or full disk, I/O errors, a database DuckDB
invalidated after a failed checkpoint): the writer enters its fault state (`fault`, answered by /readyz and
`keyrack_event_store_ok`), keeps every batch in the bounded `Spill` (memory, then a directory on another disk),
and every PROBE_S tries the store again on this same thread — reopening it first when DuckDB invalidated it or the
disk went read-only (`Store.release`: the file is let go, so the disk can be remounted) — then writes the spill,
oldest first, before anything newer. Jobs meanwhile fail with `StorageFault` (admin: 503 with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from proxy_service.spill import Batch, Spill, fault_reason, needs_reopen
from proxy_service.store import StorageFault, Store, derived_of

log = logging.getLogger("keyrack.events")
T = TypeVar("T")
WRITE_TIMEOUT_S = 15.0  # how long an admin action waits for the writer before answering 503
PROBE_S = 0.5  # while the store fails, how often the writer tries it again


def disk_refusal(db: Path, sync: bool = False) -> OSError | None:
    """What the database's file system answers to a one-byte write (and, with `sync`, its sync) now: None when it
    takes it. Asked before every write the writer hands DuckDB (a flush, a job), and with `sync` (a new block, synced)
    before DuckDB is tried again after a fault: DuckDB 1.5 aborts the whole process when a commit's WAL write succeeds and its sync then fails
    (the WAL truncate of its rollback throws where no exception may), which is what a disk that failed since the last
    commit does (ext4 `errors=remount-ro`: the next write is refused at once, the sync of earlier buffered bytes too).
    Cheap without `sync` (open, one byte, close); a disk failing *inside* a commit is still DuckDB's to survive
    (docs/storage.md)."""
    if str(db) == ":memory:":
        return None
    try:
        # With `sync`, a block written anew (truncated first): a full disk refuses it until space is free again.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if sync else 0)
        fd = os.open(db.parent / f".{db.name}.probe", flags, 0o600)
        try:
            os.pwrite(fd, bytes(4096) if sync else b"\0", 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None


class WriterUnavailable(RuntimeError):
    """The event writer is not running or did not answer in time (admin answers 503: nothing was confirmed)."""


@dataclass(slots=True)
class RequestEvent:
    ts: datetime
    request_id: str
    client_id: str | None
    surface: str
    operation: str
    model: str | None
    stream: bool
    status: int = 0
    outcome: str = "success"
    attempts: int = 0
    key_id: str | None = None
    project: str | None = None
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    error_status: str | None = None
    error_message: str | None = None
    resource_kind: str | None = None  # file, cachedContent, batch, operation, live (resources.KINDS)
    resource_id: str | None = None  # the resource's name (files/abc), when the call names or made one
    client_label: str | None = None
    refusal: str | None = None  # why Keyrack refused the call: client_limit, client_model, priority, pool
    served_model: str | None = None  # the model that answered (the asked one, an alias's target or a fallback)
    tier: str | None = None  # the billing tier of the project that served ("free" / "paid")
    cost_usd: float | None = None  # estimated: 0 on the free tier
    list_cost_usd: float | None = None  # what the call costs at list price, whatever the tier


@dataclass(slots=True)
class AttemptEvent:
    ts: datetime
    request_id: str
    attempt: int
    key_id: str
    project: str | None
    model: str | None
    upstream_status: int | None
    outcome: str
    latency_ms: float
    error_status: str | None = None
    quota_id: str | None = None
    retry_delay_s: float | None = None


@dataclass(slots=True)
class ErrorEvent:
    id: str
    ts: datetime
    request_id: str | None
    key_id: str | None
    model: str | None
    status: int | None
    error_type: str
    message: str
    upstream_body: str | None = None
    stack_trace: str | None = None
    request_body: str | None = None


TABLE_OF: dict[type, str] = {RequestEvent: "requests", AttemptEvent: "attempts", ErrorEvent: "error_logs"}
COLUMNS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in TABLE_OF}
Event = RequestEvent | AttemptEvent | ErrorEvent


@dataclass
class WriterStats:
    written: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TABLE_OF.values()})
    flushes: int = 0  # read by bench/event_writer.py (rows per flush)
    last_flush_ms: float = 0.0
    last_flush_at: float = 0.0
    failures: int = 0
    dead_letters: int = 0  # rows written to the dead-letter file instead of their table
    dropped: int = 0  # rows lost: the store failed and the spill was full, or no dead-letter file could take them


class WriteJob:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()

    def settle(self, cur: duckdb.DuckDBPyConnection, log_failure: bool = False) -> None:
        """Run the job and hand its outcome to the future. The job runs even when its waiter gave up (a timed-out
        `run()` or a task cancelled at shutdown cancels the future through `asyncio.wrap_future`): the write is still
        wanted, only nobody reads the answer, so a cancelled future is left as it is."""
        try:
            result = self.fn(cur)
        except Exception as exc:
            if log_failure and not isinstance(exc, StorageFault):  # a fault is logged once, by the writer
                log.exception("database job failed")  # fire-and-forget callers would never see it otherwise
            if not self.future.cancelled():
                with contextlib.suppress(InvalidStateError):  # cancelled between the check and here
                    self.future.set_exception(exc)
            return
        if not self.future.cancelled():
            with contextlib.suppress(InvalidStateError):
                self.future.set_result(result)


STOP = object()
_EPOCH = datetime(1970, 1, 1)  # stored times are naive UTC
_MICROSECOND = timedelta(microseconds=1)
Columns = dict[str, list[Any]]  # a batch of rows as one list per column, in the table's column names


def insert_columns(cur: duckdb.DuckDBPyConnection, table: str, columns: Columns, *, replace: bool = False) -> None:
    """Append a batch given as equal-length column lists in one statement (`INSERT OR REPLACE` with `replace`).

    Each column travels as one JSON text that DuckDB casts to a list of the table column's type and unnests side by
    side with the others (timestamps as epoch microseconds); a value a column cannot take (an int past its range)
    fails the whole statement. Why not the alternatives: an Arrow table is faster to convert but loads pyarrow and
    numpy into the proxy at start, with no dashboard attached too (docs/ARCHITECTURE.md, "Memory", says why that
    was not taken; bench/memory.py measures the RSS); binding the Python lists themselves as LIST parameters makes DuckDB
    look up `pandas.NA` for every value, which either imports pandas or, with pandas kept out
    (`server.without_pandas`), costs a failed import per value. bench/event_writer.py measures this append against
    the Arrow one in the same run."""
    types = dict(cur.execute(f"SELECT column_name, column_type FROM (DESCRIBE {table})").fetchall())
    names, picks, docs = list(columns), [], []
    for i, name in enumerate(names, 1):
        values = columns[name]
        if types[name] == "TIMESTAMP":
            values = [None if t is None else (t - _EPOCH) // _MICROSECOND for t in values]
            picks.append(f"unnest(list_transform(CAST(${i} AS JSON)::BIGINT[], us -> make_timestamp(us)))")
        else:
            picks.append(f"unnest(CAST(${i} AS JSON)::{types[name]}[])")
        docs.append(json.dumps(values, ensure_ascii=False))
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    derived = derived_of(table, names)  # columns the store derives (e.g. the latency buckets)
    selects = ", ".join(f"{pick} AS {name}" for pick, name in zip(picks, names, strict=True))
    into = ", ".join([*names, *derived])
    cur.execute(
        f"{verb} INTO {table} ({into}) SELECT {', '.join(['*', *derived.values()])} FROM (SELECT {selects})", docs
    )


class EventWriter:
    """The single writer. `record()` is safe from any thread and never blocks on the database."""

    def __init__(
        self, store: Store, flush_interval: float = 0.25, batch_rows: int = 5000, spill: Spill | None = None
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.batch_rows = batch_rows
        self.stats = WriterStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="keyrack-writer", daemon=True)
        self._started = False
        self._wake = threading.Event()  # producers that cannot wait for the flush interval set it
        self.write_timeout = WRITE_TIMEOUT_S
        memory = str(store.path) == ":memory:"
        self.dead_letter_path: Path | None = None if memory else store.path.parent / "dead_letters.jsonl"
        # Called on the writer thread right after a batch is appended: (cursor, table, the batch's columns). Used to
        # keep derived tables (the stats rollup) exactly in step with the appends. A hook must not raise nor change
        # the lists (they are the writer's; a hook that keeps them owns them from then on).
        self.after_append: list[Callable[[duckdb.DuckDBPyConnection, str, Columns], None]] = []
        # Storage faults (writer thread): the reason while the store refuses writes, the batches kept meanwhile.
        self.spill = spill if spill is not None else Spill()  # an empty Spill is falsy (len 0)
        self.fault: str | None = None
        self._probe_at = 0.0
        self._cur: duckdb.DuckDBPyConnection | None = None
        self._cur_generation = -1

    # -- producer side -------------------------------------------------------------------------------------------
    def record(self, event: Event) -> None:
        self._queue.put(event)
        if self._queue.qsize() >= self.batch_rows and not self._wake.is_set():
            self._wake.set()

    def submit(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        """Run `fn(cursor)` on the writer thread after the events queued before it are written."""
        job = WriteJob(fn)
        if not self._started:  # before start (startup, tools): run inline, nothing else writes yet
            cur = self.store.cursor()
            try:
                job.settle(cur)
            finally:
                cur.close()
            return job.future
        self._queue.put(job)
        self._wake.set()
        return job.future

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float | None = None) -> T:
        """`submit(fn)` and await its result, for code on the event loop: never waits forever for a stuck or dead
        writer (WriterUnavailable). On a timeout the job may still run later; the caller reports it unconfirmed."""
        if self._started and not self.alive:
            raise WriterUnavailable("the event writer is not running (see the proxy log); nothing was written")
        if self.fault is not None:  # a change that lands in the middle of a fault would be luck, not a save
            raise StorageFault(self.fault)
        future = asyncio.wrap_future(self.submit(fn))
        timeout = self.write_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise WriterUnavailable(
                f"the event writer did not answer within {timeout:g} s (queue depth {self.depth}); "
                "the change is not confirmed"
            ) from None

    @property
    def alive(self) -> bool:
        """The writer thread is running (readiness: events can be recorded)."""
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def storing(self) -> bool:
        """Events reach the database now: no storage fault, and nothing spilled waits to be written."""
        return self.fault is None and not len(self.spill)

    def storage_state(self) -> str:
        """`ok`, or why events are not being stored (readiness answers it)."""
        if self.fault is not None:
            return f"storage: {self.fault}"
        if len(self.spill):
            return f"storage: writing {self.spill.rows} spilled event rows"
        return "ok"

    def lag_seconds(self) -> float:
        """Seconds since the last flush while events wait (0 when the queue is empty)."""
        if self._queue.empty() or not self.stats.last_flush_at:
            return 0.0
        return max(0.0, time.monotonic() - self.stats.last_flush_at)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self.stats.last_flush_at = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then end the thread."""
        if not self._started:
            return
        self._queue.put(STOP)
        self._wake.set()
        self._thread.join(timeout)
        self._started = False

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything queued before this call is written."""
        self.submit(lambda _cur: None).result(timeout)

    # -- writer thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        pending: dict[type, list[Any]] = {cls: [] for cls in TABLE_OF}
        count = 0
        stopping = False
        get = self._queue.get_nowait
        while True:
            # Sleep until the flush interval is over or a producer asks (a full batch, a job, stop). Blocking on the
            # queue instead would wake this thread for every event: a thread switch and a GIL hand-over per event,
            # paid by the request path.
            if not stopping:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            try:
                self._recover()
                while True:  # drain in queue order (after STOP too: late producers' items are written)
                    try:
                        item = get()
                    except queue.Empty:
                        break
                    if item is STOP:
                        stopping = True
                    elif isinstance(item, WriteJob):
                        count = self._flush(pending, count)
                        self._job(item)
                    else:
                        pending[type(item)].append(item)
                        count += 1
                        if count >= self.batch_rows:
                            count = self._flush(pending, count)
                count = self._flush(pending, count)
            except Exception:  # never reached by design (each step is guarded): the thread must not die anyway
                log.exception("event writer loop failed; continuing")
                count = self._flush(pending, count)
            if stopping:
                break
        self._final_spill()
        self._drop_cursor()

    def _final_spill(self) -> None:
        """At stop: one last try to store the spill; what still cannot be goes to the spill directory (taken up at
        the next start), never dropped silently."""
        if not len(self.spill):
            return
        self._probe_at = 0.0
        with contextlib.suppress(Exception):
            self._recover()
        if len(self.spill):
            lost = self.spill.persist()
            self.stats.dropped += lost
            log.error(
                "stopping with the store still failing (%s): %d event rows left in %s for the next start, %d lost",
                self.fault,
                self.spill.rows,
                self.spill.directory,
                lost,
            )

    def _cursor(self) -> duckdb.DuckDBPyConnection | None:
        """The writer's cursor on the store's current connection (a new one after a reopen); None while released."""
        store = self.store
        if self._cur is not None and self._cur_generation == store.generation and store.released is None:
            return self._cur
        self._drop_cursor()
        try:
            self._cur = store.cursor()
        except Exception:
            return None
        self._cur_generation = store.generation
        return self._cur

    def _drop_cursor(self) -> None:
        if self._cur is not None:
            with contextlib.suppress(Exception):
                self._cur.close()
            self._cur = None

    def _disk_refusal(self) -> tuple[str, OSError] | None:
        """A storage fault's reason and error when the data disk refuses a write now (see `disk_refusal`)."""
        exc = disk_refusal(self.store.path)
        if exc is None:
            return None
        return fault_reason(exc) or f"the data disk refuses writes ({exc.strerror})", exc

    def _run_job(self, cur: duckdb.DuckDBPyConnection, job: WriteJob) -> None:
        job.settle(cur, log_failure=True)

    def _job(self, job: WriteJob) -> None:
        """Run a job; a storage fault fails it with StorageFault (the admin API answers 503 with the reason) and puts
        the writer in its fault state."""
        cur = self._cursor()
        if cur is None:
            exc = StorageFault(self.store.released or self.fault or "the database is closed")
            if not job.future.cancelled():
                with contextlib.suppress(InvalidStateError):
                    job.future.set_exception(exc)
            return
        if (refused := self._disk_refusal()) is not None:
            self._enter_fault(refused[0], refused[1])
            if not job.future.cancelled():
                with contextlib.suppress(InvalidStateError):
                    job.future.set_exception(StorageFault(refused[0]))
            return
        fn = job.fn

        def fault_aware(c: duckdb.DuckDBPyConnection) -> Any:
            try:
                return fn(c)
            except Exception as exc:
                reason = fault_reason(exc)
                if reason is None:
                    raise
                self._enter_fault(reason, exc)
                raise StorageFault(reason) from exc

        job.fn = fault_aware
        self._run_job(cur, job)

    def _flush(self, pending: dict[type, list[Any]], count: int) -> int:
        if not count:
            self.stats.last_flush_at = time.monotonic()
            return 0
        started = time.perf_counter()
        for cls, rows in pending.items():
            if not rows:
                continue
            table = TABLE_OF[cls]
            try:
                # Inside the protection: a value the column cannot take (an int past its range) fails this batch only.
                batch = {c: [getattr(r, c) for r in rows] for c in COLUMNS[cls]}
            except Exception:
                self.stats.failures += 1
                log.exception("event batch for %s (%d rows) cannot be built; dead-lettered", table, len(rows))
                self._dead_letter(table, rows)
            else:
                # While the store fails, or its spill is not written yet (order), rows join the spill's tail.
                if self.fault is not None or len(self.spill) or not self._store(table, batch):
                    self._keep(table, batch)
            rows.clear()
        if len(self.spill) and self.fault is None:
            self._recover()
        self.stats.flushes += 1
        self.stats.last_flush_ms = (time.perf_counter() - started) * 1000
        self.stats.last_flush_at = time.monotonic()
        return 0

    def _store(self, table: str, batch: Columns, dead_letter: bool = True) -> bool | None:
        """Append one batch. False on a storage fault (then the writer is in its fault state and the caller keeps
        the batch); a batch the table refuses (a bad value) is dead-lettered, counted and logged: True — or, without
        `dead_letter`, left to the caller: None."""
        cur = self._cursor()
        if cur is None:
            self._enter_fault(self.store.released or "the database is closed", None)
            return False
        if (refused := self._disk_refusal()) is not None:
            self._enter_fault(refused[0], refused[1])
            return False
        try:
            self._append(cur, table, batch)
        except Exception as exc:
            reason = fault_reason(exc)
            if reason is not None:
                self._enter_fault(reason, exc)
                return False
            if not dead_letter:
                return None
            # A failed append is counted, logged loudly and kept in the dead-letter file, never swallowed.
            self.stats.failures += 1
            log.exception("event flush failed for %s; rows go to the dead-letter file", table)
            self._dead_letter(table, rows_of(batch))
            return True
        self.stats.written[table] += len(next(iter(batch.values()), []))
        for hook in self.after_append:
            try:
                hook(cur, table, batch)
            except Exception as exc:
                log.exception("after-append hook failed for %s", table)
                reason = fault_reason(exc)
                if reason is not None:
                    self._enter_fault(reason, exc)
        return True

    def _keep(self, table: str, batch: Columns) -> None:
        if not self.spill.push(table, batch):
            rows = len(next(iter(batch.values()), []))
            self.stats.dropped += rows
            log.error(
                "EVENTS LOST: %d %s rows dropped, the store fails (%s) and the spill is full (%d rows held; "
                "set KEYRACK_EVENT_SPILL_DIR to a directory on another disk, or raise its caps)",
                rows,
                table,
                self.fault,
                self.spill.rows,
            )

    def _enter_fault(self, reason: str, exc: BaseException | None) -> None:
        if self.fault is None:
            log.error(
                "storage fault (%s): events are kept in the spill and written once the store takes writes again",
                reason,
            )
        self.fault = reason
        self.stats.failures += 1
        self._probe_at = time.monotonic() + PROBE_S
        if exc is not None and needs_reopen(exc) and self.store.released is None:
            self._drop_cursor()
            self.store.release(reason)  # an invalidated database is useless; a read-only disk needs remounting

    def _recover(self) -> None:
        """Write the spill, oldest first, once the store takes writes again (probed every PROBE_S while it fails;
        a released or invalidated database is reopened first)."""
        if self.fault is None and not len(self.spill):
            return
        if self.fault is not None:
            now = time.monotonic()
            if now < self._probe_at:
                return
            self._probe_at = now + PROBE_S
            if disk_refusal(self.store.path, sync=True) is not None:
                return  # DuckDB is not touched while its disk refuses a small synced write (see disk_refusal)
            if self.store.released is not None:
                try:
                    self.store.reopen()
                except Exception as exc:
                    self.fault = fault_reason(exc) or self.fault
                    return
                log.warning("database reopened after a storage fault (%s)", self.fault)
        # Several batches at a time, merged per table (the tables in a flush's order): one append per table
        # instead of one per spilled flush, so a long fault's spill is written in seconds.
        while taken := self.spill.take(self.batch_rows):
            groups: dict[str, tuple[list[Batch], Columns]] = {}
            for batch in taken:
                try:
                    table, columns = batch.load()
                except Exception:
                    self.stats.dropped += batch.rows
                    log.exception("EVENTS LOST: an unreadable spilled batch of %d rows", batch.rows)
                    self.spill.done(batch)
                    continue
                held, merged = groups.setdefault(table, ([], {}))
                held.append(batch)
                for name, values in columns.items():
                    merged.setdefault(name, []).extend(values)
            order = [t for t in TABLE_OF.values() if t in groups] + [t for t in groups if t not in TABLE_OF.values()]
            for table in order:
                held, merged = groups[table]
                done = self._store(table, merged, dead_letter=len(held) == 1)
                if done is None:  # a bad row in the merge: batch by batch, so it takes only its own batch along
                    for batch in held:
                        if not self._store(table, batch.load()[1]):
                            return
                        self.spill.done(batch)
                    continue
                if not done:
                    return  # still failing: the fault state is back, probed again later
                for batch in held:
                    self.spill.done(batch)
        if self.fault is not None:
            log.warning("storage recovered (was: %s): every spilled event row is written", self.fault)
        self.fault = None

    def _append(self, cur: duckdb.DuckDBPyConnection, table: str, batch: Columns) -> None:
        insert_columns(cur, table, batch)  # a method: bench/event_writer.py times an Arrow append in its place

    def _dead_letter(self, table: str, rows: list[Any]) -> None:
        """Append `rows` as JSON lines ({"table": ..., "row": {...}}) to the dead-letter file (created 0600): next to
        the database, or in the spill directory while the data disk fails (never onto the failing disk)."""
        lines = "".join(
            json.dumps(
                {"table": table, "row": r if isinstance(r, dict) else asdict(r)}, default=str, ensure_ascii=False
            )
            + "\n"
            for r in rows
        )
        targets = [self.dead_letter_path] if self.fault is None else []
        targets.append(self.spill.dead_letter_path())
        for path in targets:
            if path is None:
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="utf-8") as f:
                    f.write(lines)
            except Exception:
                log.exception("could not write %d %s rows to %s", len(rows), table, path)
                continue
            self.stats.dead_letters += len(rows)
            return
        self.stats.dropped += len(rows)
        log.error("EVENTS LOST: %d %s rows had no dead-letter file to go to", len(rows), table)


def rows_of(batch: Columns) -> list[dict[str, Any]]:
    """A column batch back as one dict per row (for the dead-letter file)."""
    names = list(batch)
    return [dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True)]
