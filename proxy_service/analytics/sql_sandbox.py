"""Where user SQL runs: warm worker processes (`sql_worker`) over a Parquet snapshot of the public tables, never the
proxy's own database (a cluster replica writes the snapshot from the lake: `cluster/sql_snapshot.LakeSnapshot`).

`Snapshot` keeps `<data dir>/sql-sandbox/` (0700) equal to what user SQL may see: requests, attempts, error_logs
and keys as the `safe` views give them (no secret, no derived columns; requests with its `client` label). A refresh runs
in one read transaction on its own cursor (the writer keeps appending meanwhile). The three append-only tables are
brought up to date by a delta file of the rows whose `rowid` is past the last refresh's; the table's row count
tells whether anything was deleted since (retention, a clear of error logs), and then the table is exported again
whole (requests too when the client labels changed). The keys are written again when their rows changed. Many deltas are merged into one.
Replaced files are deleted only once no query can still read them.

`Sandbox.run` makes each query see everything written before it (the writer is flushed, then the snapshot is
refreshed, one refresh at a time), then hands it to an idle worker and waits at most the time limit plus a grace.
A worker that does not answer by then is killed (408) and one that dies (its address space cap, the OOM killer)
answers `query_too_costly`; either way a fresh worker is started in the background and the proxy goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from proxy_service.analytics import queries, sql_guard
from proxy_service.analytics.sql_worker import LENGTH
from proxy_service.events import EventWriter
from proxy_service.store import PUBLIC_TABLES, Store, private_dir, private_file, public_select

log = logging.getLogger("keyrack.sql")

APPEND_TABLES = ("requests", "attempts", "error_logs")
MAX_DELTAS = 12  # past this many delta files a table's deltas are merged into one
RETIRE_S = 700.0  # a replaced file outlives the longest query (query_timeout_s ≤ 600 s) before it is deleted
GRACE_S = 2.0  # past the time limit, how long a worker has to answer its interrupt before it is killed
ADDRESS_HEADROOM_MB = 1024  # a worker's address space: its DuckDB memory_limit plus this (Python, DuckDB, Arrow)
WORKER_WAIT_S = 60.0  # how long a query waits for an idle worker (one being started after a kill)
FLUSH_WAIT_S = 10.0


@dataclass(frozen=True)
class Answer:
    """A query's answer as the worker wrote it: `body` is an Arrow IPC stream, or the query API's JSON answer."""

    body: bytes
    rows: int
    truncated: bool
    elapsed_ms: float


class SandboxUnavailable(RuntimeError):
    """No SQL worker could be had (answered 503)."""


@dataclass
class TableFiles:
    files: list[Path] = field(default_factory=list)
    rows: int = 0  # rows the files hold (append tables)
    next_rowid: int = 0  # rows with a rowid from here on are not in the files yet
    digest: int | None = None  # small tables: the rows' hash when written


class Snapshot:
    """The public tables as Parquet files under `directory`, refreshed on demand (blocking; any thread)."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store = store
        self.directory = directory
        private_dir(directory)
        for stale in directory.iterdir():  # a previous run's files: nothing reads them any more
            if stale.is_file():
                stale.unlink(missing_ok=True)
        self.generation = 0
        self._tables: dict[str, TableFiles] = {}
        self._retired: list[tuple[float, Path]] = []
        self._labels: int | None = None
        self._dropped: dict[str, TableFiles] = {}  # tables to write whole again (their files retired once they are)
        self._seq = 0
        self._lock = threading.Lock()
        self.last_refresh_ms = 0.0

    def manifest(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "tables": {t: [str(f) for f in self._tables[t].files] for t in PUBLIC_TABLES},
        }

    def refresh(self) -> dict[str, Any]:
        """Bring the files up to date with the database and return the manifest the worker opens."""
        with self._lock:
            started = time.perf_counter()
            self._check_files()
            cur = self.store.cursor()
            try:
                cur.execute("BEGIN TRANSACTION")
                try:
                    # requests.client comes from the labels: new labels, the whole table again.
                    labels = hash(tuple(cur.execute(f"SELECT * FROM {self.store.client_labels} ORDER BY 1").fetchall()))
                    if labels != self._labels and "requests" in self._tables:
                        self._dropped["requests"] = self._tables.pop("requests")
                    self._labels = labels
                    changed = False
                    for table in APPEND_TABLES:
                        changed |= self._append_table(cur, table)
                    changed |= self._small(cur, "keys", public_select("keys") + " ORDER BY key_id")
                finally:
                    cur.execute("COMMIT")
            finally:
                cur.close()
            if changed:
                self.generation += 1
            self._purge()
            self.last_refresh_ms = (time.perf_counter() - started) * 1000
            return self.manifest()

    def _check_files(self) -> None:
        """Files gone (the data disk failed and was mounted again, or someone cleaned the directory): those tables
        are written whole again."""
        private_dir(self.directory)
        for name, state in list(self._tables.items()):
            if not all(f.exists() for f in state.files):
                log.warning("SQL snapshot files of %s are missing: writing the table again", name)
                self._dropped[name] = self._tables.pop(name)

    def _merge_deltas(self, cur: duckdb.DuckDBPyConnection, table: str, state: TableFiles) -> None:
        """Past MAX_DELTAS delta files, merge them into one (a worker opens fewer files)."""
        if len(state.files) > MAX_DELTAS + 1:
            listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in state.files[1:])
            merged = self._copy(cur, f"SELECT * FROM read_parquet([{listed}])", table)
            self._retire(state.files[1:])
            state.files = [state.files[0], merged]

    def invalidate(self) -> None:
        """Write every table again at the next refresh (a worker could not open the files)."""
        with self._lock:
            for name in list(self._tables):
                self._dropped[name] = self._tables.pop(name)

    def _file(self, table: str) -> Path:
        self._seq += 1
        return self.directory / f"{table}.{self._seq}.parquet"

    def _copy(self, cur: duckdb.DuckDBPyConnection, select: str, table: str, params: list[Any] | None = None) -> Path:
        final = self._file(table)
        tmp = final.with_suffix(".tmp")
        try:
            target = str(tmp).replace("'", "''")
            cur.execute(f"COPY ({select}) TO '{target}' (FORMAT parquet, COMPRESSION snappy)", params or [])
            private_file(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _retire(self, files: list[Path]) -> None:
        now = time.monotonic()
        self._retired.extend((now, f) for f in files)

    def _purge(self) -> None:
        cutoff = time.monotonic() - RETIRE_S
        keep = []
        for at, path in self._retired:
            if at < cutoff:
                path.unlink(missing_ok=True)
            else:
                keep.append((at, path))
        self._retired = keep

    def _append_table(self, cur: duckdb.DuckDBPyConnection, table: str) -> bool:
        state = self._tables.get(table)
        # As user SQL sees it in the proxy's database (requests with its `client` label), alias `r` where joined.
        select = queries.SAFE_TABLES[table]
        rowid = "r.rowid" if table == "requests" else "rowid"
        if state is not None:
            row = cur.execute(f"SELECT count(*), max(rowid) FROM main.{table}").fetchone()
            total, top = row if row else (0, None)
            if total == state.rows and (top is None or int(top) + 1 == state.next_rowid):
                return False  # nothing appended, nothing deleted
            row = cur.execute(f"SELECT count(*) FROM main.{table} WHERE rowid >= ?", [state.next_rowid]).fetchone()
            new = int(row[0]) if row else 0
            if total == state.rows + new:  # nothing deleted: the new rows are the ones past next_rowid
                if not new:
                    return False
                delta = self._copy(cur, f"{select} WHERE {rowid} >= ?", table, [state.next_rowid])
                state.files.append(delta)
                state.rows, state.next_rowid = total, int(top) + 1
                self._merge_deltas(cur, table, state)
                return True
        # First refresh, rows were deleted, or new labels: the whole table again.
        row = cur.execute(f"SELECT count(*), max(rowid) FROM main.{table}").fetchone()
        total, top = row if row else (0, None)
        base = self._copy(cur, select, table)
        old = self._dropped.pop(table, None) if state is None else state
        if old is not None:
            self._retire(old.files)
        self._tables[table] = TableFiles([base], int(total), int(top) + 1 if top is not None else 0)
        return True

    def _small(self, cur: duckdb.DuckDBPyConnection, name: str, select: str) -> bool:
        digest = hash(tuple(cur.execute(select).fetchall()))
        state = self._tables.get(name)
        if state is not None and state.digest == digest:
            return False
        path = self._copy(cur, select, name)
        old = self._dropped.pop(name, None) if state is None else state
        if old is not None:
            self._retire(old.files)
        self._tables[name] = TableFiles([path], digest=digest)
        return True


class _Died(Exception):
    pass


class _Late(Exception):
    pass


class _Damaged(Exception):
    """The worker could not open the snapshot's files."""


class WorkerProcess:
    """One `sql_worker` child and its pipes; one request at a time."""

    def __init__(self, memory_mb: int, threads: int) -> None:
        address_mb = memory_mb + ADDRESS_HEADROOM_MB
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy_service.analytics.sql_worker", str(memory_mb), str(address_mb), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C at the proxy's terminal is the proxy's to handle
        )
        self.address_mb = address_mb

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, payload: dict[str, Any], deadline: float | None) -> tuple[dict[str, Any], bytes]:
        data = json.dumps(payload).encode()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(LENGTH.pack(len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _Died from None
        header = json.loads(self._frame(deadline))
        return header, self._frame(deadline)

    def _frame(self, deadline: float | None) -> bytes:
        (size,) = LENGTH.unpack(self._read(LENGTH.size, deadline))
        return self._read(size, deadline)

    def _read(self, n: int, deadline: float | None) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        parts: list[bytes] = []
        while n:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise _Late
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise _Late
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                raise _Died
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()
        else:
            with contextlib.suppress(OSError):
                if self.proc.stdout is not None:
                    self.proc.stdout.close()


class Sandbox:
    """The snapshot and a pool of warm workers; `run` is blocking (call it from a worker thread)."""

    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        directory: Path,
        workers: int,
        memory_mb: int,
        threads: int,
        snapshot: Callable[[Any, Path], Snapshot] = Snapshot,
        snapshot_at_start: bool = True,
    ) -> None:
        # `snapshot`: how the files are made from `store` (the cluster's lake: cluster/sql_snapshot.LakeSnapshot).
        # `snapshot_at_start` False: the first query writes it (a replica: see cluster/node.py's make_sandbox).
        self.snapshot = snapshot(store, directory)
        self.snapshot_at_start = snapshot_at_start
        self.writer = writer
        self.size, self.memory_mb, self.threads = workers, memory_mb, threads
        self._idle: queue.Queue[WorkerProcess] = queue.Queue()
        self._all: set[WorkerProcess] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._starting = 0  # workers being started (under _lock)
        self.restarts = 0

    def start(self) -> None:
        """Write the first snapshot in the background. The workers start with the first query and stay warm: a
        gateway whose SQL page is never used does not hold their memory."""
        if not self.snapshot_at_start:
            return
        threading.Thread(target=self.refresh_quietly, name="keyrack-sql-snapshot", daemon=True).start()

    def refresh_quietly(self) -> None:
        """Refresh the snapshot ahead of the next query (at start, after retention deleted rows); a failure is
        logged, and the next query tries again."""
        try:
            self.snapshot.refresh()
        except Exception as exc:  # a storage fault, a full disk: the query that needs it will say so
            log.warning("SQL snapshot refresh failed: %s", exc)

    def _replace(self) -> None:
        with self._lock:
            self._starting += 1
        self._start_one()

    def _ensure_workers(self) -> None:
        """Start the workers the pool lacks (the first query, or after a failed start)."""
        with self._lock:
            missing = 0 if self._closed else max(0, self.size - len(self._all) - self._starting)
            self._starting += missing
        for _ in range(missing):
            self._start_one()

    def _start_one(self) -> None:
        threading.Thread(target=self._spawn, name="keyrack-sql-worker-start", daemon=True).start()

    def _spawn(self) -> None:
        try:
            worker = WorkerProcess(self.memory_mb, self.threads)
        except OSError:
            log.exception("cannot start an SQL worker")
            with self._lock:
                self._starting -= 1
            return
        with self._lock:
            self._starting -= 1
            if self._closed:
                worker.close()
                return
            self._all.add(worker)
        try:
            worker.request({"op": "ping"}, time.monotonic() + WORKER_WAIT_S)
        except (_Died, _Late, ValueError):
            log.error("an SQL worker did not start (exit %s)", worker.proc.poll())
            self._drop(worker)
            return
        self._idle.put(worker)

    def _drop(self, worker: WorkerProcess) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.close()

    def workers(self) -> list[int]:
        """The live workers' process ids."""
        with self._lock:
            return [w.pid for w in self._all if w.alive()]

    def fresh(self) -> dict[str, Any]:
        """The snapshot, up to date with everything written before this call."""
        if self.writer.alive:
            with contextlib.suppress(Exception):  # a stuck or failing writer: the snapshot of what is stored
                self.writer.flush(FLUSH_WAIT_S)
        try:
            return self.snapshot.refresh()
        except (duckdb.Error, OSError) as exc:  # its disk full or failing (a StorageFault passes: 503 as such)
            text = str(exc).strip().splitlines()
            raise SandboxUnavailable(
                f"the SQL snapshot could not be written: {text[0] if text else type(exc).__name__}"
            ) from None

    def run(self, sql: str, timeout_s: float, row_cap: int, byte_cap: int | None, fmt: str = "arrow") -> Answer:
        """Run `sql` in a worker, which answers in `fmt` ("arrow" or "json")."""
        try:
            return self._run(sql, timeout_s, row_cap, byte_cap, fmt)
        except _Damaged as exc:
            log.warning("%s; writing the whole snapshot again", exc)
            self.snapshot.invalidate()
        try:
            return self._run(sql, timeout_s, row_cap, byte_cap, fmt)
        except _Damaged as exc:
            raise SandboxUnavailable(str(exc)) from None

    def _run(self, sql: str, timeout_s: float, row_cap: int, byte_cap: int | None, fmt: str) -> Answer:
        self._ensure_workers()
        manifest = self.fresh()
        try:
            worker = self._idle.get(timeout=WORKER_WAIT_S)
        except queue.Empty:
            raise SandboxUnavailable("no SQL worker is available (see the proxy log)") from None
        request = {
            "op": "query",
            "sql": sql,
            "timeout_s": timeout_s,
            "row_cap": row_cap,
            "byte_cap": byte_cap,
            "guard": sql_guard.ENABLED,
            "format": fmt,
            "snapshot": manifest,
        }
        keep = False
        try:
            header, data = worker.request(request, time.monotonic() + timeout_s + max(GRACE_S, timeout_s / 5))
            keep = True
        except _Late:
            log.warning("SQL worker %d ignored the %g s limit: killed", worker.pid, timeout_s)
            raise sql_guard.QueryTimeout(
                f"{sql_guard.timeout_message(timeout_s)}; it did not stop when interrupted, so its worker "
                "process was ended"
            ) from None
        except _Died:
            code = worker.proc.poll()
            log.warning("SQL worker %d died during a query (exit %s)", worker.pid, code)
            raise sql_guard.QueryTooCostly(
                f"the query took more memory than the SQL worker may use ({worker.address_mb} MB of address "
                f"space, DuckDB memory_limit {self.memory_mb} MB), and its worker process was ended"
            ) from None
        finally:
            if keep and worker.alive():
                self._idle.put(worker)
            else:
                self._drop(worker)
                self.restarts += 1
                if not self._closed:
                    self._replace()
        status, message = header.get("status"), str(header.get("message", ""))
        if status == "ok":
            return Answer(data, int(header["rows"]), bool(header["truncated"]), float(header["elapsed_ms"]))
        if status == "rejected":
            raise sql_guard.QueryRejected(message)
        if status == "timeout":
            raise sql_guard.QueryTimeout(message)
        if status == "too_costly":
            raise sql_guard.QueryTooCostly(message)
        if status == "snapshot":
            raise _Damaged(message)
        raise sql_guard.QueryFailed(message)
