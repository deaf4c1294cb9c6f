"""The SQL worker: a child process that runs user SQL on its own, locked-down DuckDB (`python -m
proxy_service.analytics.sql_worker MEMORY_MB ADDRESS_SPACE_MB THREADS`).

It sees only the public snapshot the proxy writes (`sql_sandbox.Snapshot`: Parquet files of requests, attempts,
error_logs and keys without `secret`), through views in schema `safe` (and `main`). Its database is
in memory and opened with: `allowed_paths` = exactly those files, `enable_external_access=false` (no other file,
URL, ATTACH of a file, COPY, INSTALL or LOAD), extension autoinstall/autoload and community extensions off, no
temp directory, its own `memory_limit` and `threads`, then `lock_configuration=true` (no SET / PRAGMA / RESET can
undo any of it). The address space of the whole process is capped (`RLIMIT_AS`, set before DuckDB is imported),
so a value DuckDB builds outside its memory_limit fails the allocation here or kills this process, never the
proxy. Each snapshot generation gets a fresh database (the allowed paths cannot change once locked); the process
stays warm.

Protocol over stdin/stdout: frames of a 4-byte big-endian length and a payload. A request is one JSON frame; the
answer is a JSON header frame then one frame of the answer's body (empty unless the status is "ok"): an Arrow IPC
stream, or the query API's JSON answer when the request's `format` is "json". The worker writes both, so the proxy
process never loads pyarrow for user SQL. The
worker exits at end of input (the proxy closed the pipe or died).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from proxy_service.analytics import sql_guard

LENGTH = struct.Struct(">I")
SAFE = "safe"
PUBLIC = ("requests", "attempts", "error_logs", "keys")


def read_frame(stream: IO[bytes]) -> bytes | None:
    """One frame, or None at end of input."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(LENGTH.pack(len(payload)))
    stream.write(payload)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_database(snapshot: dict[str, Any], memory_mb: int, threads: int) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB that can read exactly the snapshot's files, and nothing else, ever."""
    import duckdb

    tables: dict[str, list[str]] = snapshot["tables"]
    files = [f for t in PUBLIC for f in tables[t]]
    con = duckdb.connect(
        ":memory:",
        config={
            "memory_limit": f"{int(memory_mb)}MiB",
            "threads": int(threads),
            "temp_directory": "",  # nothing spills to disk: a query that needs more memory fails
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_unsigned_extensions": False,
        },
    )
    try:
        con.execute(f"SET allowed_paths = [{', '.join(_literal(f) for f in files)}]")
        con.execute("SET enable_external_access = false")
        con.execute(f"CREATE SCHEMA {SAFE}")
        for table in PUBLIC:
            source = f"SELECT * FROM read_parquet([{', '.join(_literal(f) for f in tables[table])}])"
            # In `safe`, as in the proxy's database, and in `main`: a cursor starts with the default search path.
            con.execute(f"CREATE VIEW {SAFE}.{table} AS {source}")
            con.execute(f"CREATE VIEW main.{table} AS SELECT * FROM {SAFE}.{table}")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


class Worker:
    def __init__(self, memory_mb: int, threads: int) -> None:
        self.memory_mb, self.threads = memory_mb, threads
        self.generation: int | None = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def database(self, snapshot: dict[str, Any]) -> duckdb.DuckDBPyConnection:
        if self.con is None or self.generation != snapshot["generation"]:
            if self.con is not None:
                self.con.close()
                self.con = None
            self.con = open_database(snapshot, self.memory_mb, self.threads)
            self.generation = snapshot["generation"]
        return self.con

    def handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        import duckdb

        from proxy_service.analytics import sql_guard

        if request.get("op") == "ping":
            return {"status": "ok", "pid": os.getpid()}, b""
        try:
            cur = self.database(request["snapshot"]).cursor()
        except MemoryError:
            return {"status": "too_costly", "message": "out of memory opening the snapshot"}, b""
        except duckdb.Error as exc:  # a snapshot file damaged (its disk failed): the proxy writes it again
            return {"status": "snapshot", "message": f"the SQL snapshot could not be opened: {exc}"}, b""
        try:
            result = sql_guard.execute(
                cur,
                request["sql"],
                float(request["timeout_s"]),
                int(request["row_cap"]),
                request.get("byte_cap"),
                guard=bool(request.get("guard", True)),
            )
            if request.get("format", "arrow") == "json":
                data = json_answer(result, int(request["row_cap"]), request.get("byte_cap"))
            else:
                data = _ipc(result.table)
        except sql_guard.QueryRejected as exc:
            return {"status": "rejected", "message": str(exc)}, b""
        except sql_guard.QueryTimeout as exc:
            return {"status": "timeout", "message": str(exc)}, b""
        except sql_guard.QueryTooCostly as exc:
            return {"status": "too_costly", "message": str(exc)}, b""
        except sql_guard.QueryFailed as exc:
            return {"status": "failed", "message": str(exc)}, b""
        except MemoryError:
            return {"status": "too_costly", "message": "the answer did not fit in the SQL worker's memory"}, b""
        finally:
            cur.close()
        header = {
            "status": "ok",
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed_ms,
            "rows": result.table.num_rows,
        }
        return header, data


def json_answer(result: sql_guard.QueryResult, row_cap: int, byte_cap: int | None) -> bytes:
    """The JSON answer of the query API, its rows cut where the encoded rows would pass `byte_cap` bytes (then
    `truncated`); each column's type as Arrow names it."""
    from proxy_service.analytics.answers import dumps

    cap = byte_cap if byte_cap is not None else 2**62
    table = result.table
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    parts: list[bytes] = []
    size, count, truncated = 0, 0, result.truncated
    for batch in table.to_batches(max_chunksize=1000):
        rows = [list(r.values()) for r in batch.to_pylist()]
        encoded = dumps(rows)[1:-1]  # a whole batch at once; row by row only for the batch that reaches the cap
        if size + len(encoded) + 1 <= cap:
            if encoded:
                parts.append(encoded)
            size, count = size + len(encoded) + 1, count + len(rows)
            continue
        for row in rows:
            one = dumps(row)
            if size + len(one) + 1 > cap:
                break
            parts.append(one)
            size, count = size + len(one) + 1, count + 1
        truncated = True
        break
    head = dumps({"columns": columns})[:-1]  # without its closing brace: the rows follow
    tail = dumps(
        {
            "truncated": truncated,
            "row_count": count,
            "row_cap": row_cap,
            "byte_cap": byte_cap,
            "elapsed_ms": round(result.elapsed_ms, 1),
        }
    )[1:]
    return head + b', "rows": [' + b",".join(parts) + b"], " + tail


def _ipc(table: pa.Table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def main(argv: list[str]) -> int:
    memory_mb, address_space_mb, threads = (int(a) for a in argv[:3])
    limit = address_space_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The protocol owns the real stdout; anything printed (by a library) goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    worker = Worker(memory_mb, threads)
    import duckdb
    import pyarrow  # noqa: F401  (loaded under the limit, before the first request)

    from proxy_service.analytics import sql_guard

    # Everything a first query loads (the function list, Arrow's IPC writer), loaded now: the worker is warm.
    warm = duckdb.connect(":memory:", config={"enable_external_access": False})
    sql_guard.warm(warm)
    _ipc(sql_guard.execute(warm, "SELECT 1 AS one", 60.0, 1).table)
    warm.close()

    while True:
        frame = read_frame(inp)
        if frame is None:
            return 0
        started = time.perf_counter()
        try:
            header, data = worker.handle(json.loads(frame))
        except MemoryError:
            header, data = {"status": "too_costly", "message": "the SQL worker ran out of memory"}, b""
        header.setdefault("worker_ms", round((time.perf_counter() - started) * 1000, 1))
        write_frame(out, json.dumps(header).encode())
        write_frame(out, data)
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
