"""What user SQL may do: exactly one read-only SELECT over requests, attempts, error_logs and keys (without its
secret), within a time limit and a row cap.

Design, and why (DuckDB facts as measured in the team's stack notes, re-checked on 1.5.5):

Two walls, each meant to hold alone. The outer one is where the query runs. In the embedded proxy it never touches
the proxy's own database: `sql_sandbox` hands it to a warm worker process (`sql_worker`) whose in-memory DuckDB reads
only a Parquet snapshot of the public tables (the keys without `secret`), with `allowed_paths` = exactly those files,
`enable_external_access=false`, extension autoload/autoinstall and community extensions off, no temp directory, its
own memory_limit and threads, then `lock_configuration=true`; the process's address space is capped (RLIMIT_AS).
So whatever function a query calls — a planner function that binds nested SQL, a file reader, a URL, ATTACH, an
extension — DuckDB itself refuses, and no error can carry text from outside the four tables. A value DuckDB builds
outside its memory_limit fails inside the worker (query_too_costly), and a function that ignores the interrupt is
ended with its worker past the time limit plus a grace (408); the proxy starts a fresh worker and goes on. Only
the statement-type rule (`select_only`: one SELECT as DuckDB's parser classifies it, so no COPY over a snapshot file)
runs there when this guard is switched off (`ENABLED`, for tests). A cluster replica runs user SQL the same way, over a
snapshot it writes from the lake (`cluster/sql_snapshot.py`): no worker reaches the lake's catalog or the network.

Why a snapshot rather than the database file: DuckDB lets no second process open a file one process holds
read-write, and `enable_external_access=false` cannot be set on the proxy's connection (it disables the Python
replacement scans the writer uses, and with `allowed_directories` it would still let `read_blob()` read the database
file itself, secrets and all). Each snapshot generation gets a fresh database in the worker, since a locked
configuration cannot widen `allowed_paths`.

The inner wall is this allow-list, admitted in four checks, each fail-closed; the query sees the `safe` tables
(`safe.keys` has no `secret` column), bare or `safe.`-qualified:

1. a lexical pre-screen (a small lexer that splits statements exactly as DuckDB does: nested comments, E'' strings,
   $$ quotes — fuzzed against `extract_statements`): every statement must start with SELECT / WITH / FROM /
   VALUES / TABLE / "(". It runs before DuckDB's parser sees the text because that parser is not side-effect free:
   `IMPORT DATABASE 'dir'` and `PRAGMA import_database('dir')` read files while being *parsed*
   (`extract_statements` included); a regex refuses those words anywhere as a second belt;
2. `extract_statements`: exactly one statement, of type SELECT;
3. the parsed tree (`json_serialize_sql`) is walked in full: every table reference must be one of the four safe
   tables (bare or `safe.`-qualified) or a CTE visible at that point (CTE bodies see only earlier CTEs, themselves
   only when recursive — stricter than DuckDB, whose `WITH settings AS (SELECT * FROM settings)` reads the real
   table); CTEs may not reuse the name of any other table or view. Table functions are refused (read_csv, glob,
   query, duckdb_settings(), pragma_*...) except range / generate_series / unnest; every scalar, aggregate and
   window function must be a built-in of schema main that touches no state (current_setting, nextval, write_log...
   are refused); any column reference named `secret` is refused; DESCRIBE / SHOW / SUMMARIZE / PIVOT statements
   (which cannot be serialised) are refused;
4. execution (`execute`): a timer thread calls `cursor.interrupt()` after `query_timeout_s`; results stream as Arrow
   record batches and stop one row past `query_row_cap`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from proxy_service.analytics import queries
from proxy_service.store import SECRET_COLUMNS, Store

if TYPE_CHECKING:
    import pyarrow as pa

ALLOWED_TABLES = frozenset(queries.SAFE_TABLES)
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
DENIED_FUNCTIONS = frozenset(
    {
        "current_setting",
        "nextval",
        "currval",
        "setval",
        "write_log",
        "getvariable",
        "setseed",
        "current_query",
        "json_execute_serialized_sql",
        "parse_duckdb_log_message",
    }
)
FORBIDDEN_COLUMNS = frozenset(c for cols in SECRET_COLUMNS.values() for c in cols)
# Scalar functions whose result size is given by an argument. DuckDB builds such a value whole, outside its
# memory_limit (a big `range(n)` list alone takes gigabytes), so the size must be a small integer constant.
# name → index of the size argument (None: range-like, every argument is a bound).
SIZED_FUNCTIONS: dict[str, int | None] = {
    "range": None,
    "generate_series": None,
    "repeat": 1,
    "lpad": 1,
    "rpad": 1,
    "list_resize": 1,
    "array_resize": 1,
}
MAX_GENERATED = 100_000
# The allow-list is checked when True. Tests switch it off to show that the engine's own sandbox (sql_worker) holds
# alone; nothing else changes it.
ENABLED = True
MAX_SQL_CHARS = 100_000
_STARTS = {"select", "with", "from", "values", "table", "("}
_WHY_NOT = {
    "insert": "writes are not allowed (INSERT)",
    "update": "writes are not allowed (UPDATE)",
    "delete": "writes are not allowed (DELETE)",
    "merge": "writes are not allowed (MERGE)",
    "truncate": "writes are not allowed (TRUNCATE)",
    "create": "DDL is not allowed (CREATE)",
    "drop": "DDL is not allowed (DROP)",
    "alter": "DDL is not allowed (ALTER)",
    "comment": "DDL is not allowed (COMMENT)",
    "pragma": "PRAGMA statements are not allowed",
    "set": "SET statements are not allowed",
    "reset": "RESET statements are not allowed",
    "use": "USE statements are not allowed",
    "attach": "ATTACH is not allowed",
    "detach": "DETACH is not allowed",
    "copy": "COPY is not allowed (use POST /admin/api/export for Parquet files)",
    "install": "INSTALL is not allowed",
    "load": "LOAD is not allowed",
    "force": "INSTALL is not allowed",
    "export": "EXPORT is not allowed (use POST /admin/api/export for Parquet files)",
    "import": "IMPORT is not allowed",
    "call": "CALL is not allowed",
    "checkpoint": "CHECKPOINT is not allowed",
    "vacuum": "VACUUM is not allowed",
    "analyze": "ANALYZE is not allowed",
    "explain": "EXPLAIN is not allowed",
    "describe": "DESCRIBE is not supported: GET /admin/api/schema lists the tables and columns",
    "show": "SHOW is not supported: GET /admin/api/schema lists the tables and columns",
    "summarize": "SUMMARIZE is not supported",
    "pivot": "PIVOT statements are not supported (write the aggregation as a SELECT)",
    "unpivot": "UNPIVOT statements are not supported",
    "begin": "transactions are not allowed",
    "start": "transactions are not allowed",
    "commit": "transactions are not allowed",
    "rollback": "transactions are not allowed",
    "abort": "transactions are not allowed",
    "prepare": "PREPARE is not allowed",
    "execute": "EXECUTE is not allowed",
    "deallocate": "DEALLOCATE is not allowed",
    "update_extensions": "UPDATE EXTENSIONS is not allowed",
}


class QueryRejected(ValueError):
    """The SQL is not allowed; the message says why (answered as 400)."""


class QueryTimeout(Exception):
    """The query ran past the time limit and was interrupted (answered as 408)."""


class QueryTooCostly(ValueError):
    """The query needed more memory than its limit (DuckDB's memory_limit, or the SQL worker's address space):
    answered as 400 with reason query_too_costly."""


class QueryFailed(ValueError):
    """DuckDB refused or failed the (allowed) query: syntax, binder, conversion errors (answered as 400)."""


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool
    elapsed_ms: float


# -- 1. lexical pre-screen -----------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_PARSE_TIME_IO = re.compile(r"(?is)\bimport(?:\s|/\*.*?\*/|--[^\n]*(?:\n|$))*database\b|\bimport_database\b")


def statement_heads(sql: str) -> list[str]:
    """The first word (lower case) or "(" of each top-level statement, skipping comments and quoted text."""
    heads: list[str] = []
    need_head = True
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise QueryRejected("unterminated /* comment")
        elif c == ";":
            need_head, i = True, i + 1
        elif c in "'\"":
            if need_head:
                heads.append(c)
                need_head = False
            i = _skip_quoted(sql, i, c, backslash=False)
        elif c == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            end = sql.find(m.group(0), i + len(m.group(0)))
            if end < 0:
                raise QueryRejected("unterminated $-quoted string")
            if need_head:
                heads.append("$")
                need_head = False
            i = end + len(m.group(0))
        else:
            m = _WORD.match(sql, i)
            token = m.group(0) if m else c
            if need_head:
                heads.append(token.lower())
                need_head = False
            i += len(token)
            if token in ("e", "E") and sql.startswith("'", i):  # E'...': the one string with backslash escapes
                i = _skip_quoted(sql, i, "'", backslash=True)
    return heads


def _skip_quoted(sql: str, i: int, quote: str, backslash: bool) -> int:
    j = i + 1
    while j < len(sql):
        if backslash and sql[j] == "\\":
            j += 2
        elif sql[j] == quote:
            if sql.startswith(quote * 2, j):
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise QueryRejected("unterminated quoted string or identifier")


# -- 2 + 3. parse and walk -----------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, functions: set[str], other_tables: set[str]) -> None:
        self.functions = functions
        self.other_tables = other_tables

    def walk(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict) and cte_map.get("map"):
            visible = set(ctes)
            for entry in cte_map["map"]:
                name = str(entry.get("key", "")).lower()
                if name in self.other_tables or name == "settings":
                    raise QueryRejected(f"a CTE may not be named {name!r}: that is the name of a table")
                body = entry.get("value", {})
                recursive = (body.get("query", {}).get("node", {}) or {}).get("type") == "RECURSIVE_CTE_NODE"
                self.walk(body, frozenset(visible | ({name} if recursive else set())))
                visible.add(name)
            ctes = frozenset(visible)
        kind, cls = node.get("type"), node.get("class")
        if kind == "RECURSIVE_CTE_NODE" and node.get("cte_name"):
            ctes = ctes | {str(node["cte_name"]).lower()}
        if kind == "BASE_TABLE":
            self._table(node, ctes)
        elif kind == "TABLE_FUNCTION":
            self._table_function(node, ctes)
            return
        elif kind == "SHOW_REF":
            raise QueryRejected(
                "DESCRIBE / SHOW / SUMMARIZE are not supported: GET /admin/api/schema lists the columns"
            )
        elif cls in ("FUNCTION", "WINDOW") or kind == "FUNCTION":
            self._function(node)
        elif cls == "COLUMN_REF":
            for part in node.get("column_names") or []:
                if str(part).lower() in FORBIDDEN_COLUMNS:
                    raise QueryRejected("the keys' secret column is not available to SQL (use the reveal action)")
        for key, value in node.items():
            if key != "cte_map":
                self.walk(value, ctes)

    def _table(self, node: dict[str, Any], ctes: frozenset[str]) -> None:
        name = str(node.get("table_name", ""))
        schema = str(node.get("schema_name", "")).lower()
        lname = name.lower()
        if node.get("at_clause"):
            raise QueryRejected("time travel (AT ...) is not supported")
        if node.get("catalog_name"):
            raise QueryRejected(f"database-qualified names are not allowed ({node['catalog_name']}.{schema}.{name})")
        if schema in ("", queries.SAFE_SCHEMA) and lname in ALLOWED_TABLES:
            return
        if not schema and lname in ctes:
            return
        if lname == "settings":
            raise QueryRejected("the settings table is not available to SQL (it holds access tokens): use GET /config")
        if re.search(r"[/\\:.*?]", name):
            raise QueryRejected(f"reading files or URLs is not allowed ({name!r})")
        shown = f"{schema}.{name}" if schema else name
        raise QueryRejected(f"unknown table {shown!r}: you can query {', '.join(sorted(ALLOWED_TABLES))}")

    def _table_function(self, node: dict[str, Any], ctes: frozenset[str]) -> None:
        fn = node.get("function") or {}
        name = str(fn.get("function_name", "")).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS or fn.get("schema") not in ("", "main", None) or fn.get("catalog"):
            if name.startswith(("read_", "parquet_", "sniff_")) or name in ("glob", "query", "query_table"):
                raise QueryRejected(f"reading files, URLs or other SQL is not allowed ({name}())")
            raise QueryRejected(
                f"table function {name}() is not allowed (only {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
            )
        self.walk(fn.get("children"), ctes)
        for key, value in node.items():
            if key != "function":
                self.walk(value, ctes)

    def _function(self, node: dict[str, Any]) -> None:
        name = str(node.get("function_name", "")).lower()
        schema = str(node.get("schema") or "").lower()
        if node.get("catalog") or schema not in ("", "main"):
            raise QueryRejected(f"qualified function names are not allowed ({schema}.{name})")
        if name in DENIED_FUNCTIONS or name not in self.functions:
            raise QueryRejected(f"function {name}() is not allowed")
        if name in SIZED_FUNCTIONS:
            _check_size(name, SIZED_FUNCTIONS[name], node.get("children") or [])


def _int_constant(node: Any) -> int | None:
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return None
    value = (node.get("value") or {}).get("value")
    return value if type(value) is int else None


def _check_size(name: str, index: int | None, args: list[Any]) -> None:
    """Refuse a sized scalar call unless its size is a constant ≤ MAX_GENERATED (see SIZED_FUNCTIONS)."""
    why = f"{name}() here must have a constant size of at most {MAX_GENERATED:,} (it is built whole in memory)" + (
        "; use the table function FROM range(...) to generate rows" if index is None else ""
    )
    if index is None:
        bounds = [_int_constant(a) for a in args]
        if not bounds or any(b is None for b in bounds):
            raise QueryRejected(why)
        ints = [b for b in bounds if b is not None]
        start, stop, step = (0, ints[0], 1) if len(ints) == 1 else (ints[0], ints[1], ints[2] if len(ints) > 2 else 1)
        if step == 0 or (stop - start) // step > MAX_GENERATED:
            raise QueryRejected(why)
        return
    size = _int_constant(args[index]) if len(args) > index else None
    if size is None or size > MAX_GENERATED:
        raise QueryRejected(why)


_functions_cache: set[str] | None = None


def warm(cur: duckdb.DuckDBPyConnection) -> None:
    """Read the built-in function list now (the first check would, at the cost of a second or so)."""
    global _functions_cache
    if _functions_cache is None:
        _functions_cache = queries.builtin_functions(cur)


def check(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise QueryRejected unless `sql` is exactly one allowed SELECT."""
    global _functions_cache
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRejected(f"the query is longer than {MAX_SQL_CHARS} characters")
    if _PARSE_TIME_IO.search(sql):  # belt and braces: DuckDB reads these files while parsing
        raise QueryRejected(_WHY_NOT["import"])
    heads = statement_heads(sql)
    if not heads:
        raise QueryRejected("the query is empty")
    if len(heads) > 1:
        raise QueryRejected(f"exactly one statement is allowed (found {len(heads)})")
    if heads[0] not in _STARTS:
        raise QueryRejected(_WHY_NOT.get(heads[0], f"only SELECT queries are allowed (found {heads[0].upper()})"))
    select_only(cur, sql)
    tree = json.loads(queries.serialize_sql(cur, sql))
    if tree.get("error"):
        raise QueryRejected("only plain SELECT queries are supported (PIVOT / DESCRIBE / SHOW forms are not)")
    if _functions_cache is None:
        _functions_cache = queries.builtin_functions(cur)
    other = queries.catalog_names(cur) - ALLOWED_TABLES
    _Checker(_functions_cache, other).walk(tree.get("statements"), frozenset())


# -- 4. run ----------------------------------------------------------------------------------------------------------
def run(store: Store, sql: str, timeout_s: float, row_cap: int, byte_cap: int | None = None) -> QueryResult:
    """Check and run `sql` on a cursor of `store` (blocking: call from a worker thread). The proxy never serves user
    SQL this way (both modes run it in the sandbox, `sql_sandbox`); tests and the bench use it as the in-process
    reference the sandbox's answers are compared with."""
    cur = store.cursor()
    try:
        cur.execute(f"SET search_path = '{store.safe_schema}'")
        return execute(cur, sql, timeout_s, row_cap, byte_cap, guard=ENABLED)
    finally:
        cur.close()


def execute(
    cur: duckdb.DuckDBPyConnection,
    sql: str,
    timeout_s: float,
    row_cap: int,
    byte_cap: int | None = None,
    guard: bool = True,
) -> QueryResult:
    """Check (`guard`: the allow-list; without it, only the statement-type rule) and run `sql` on `cur`, whose
    search_path already names the safe tables. The answer stops one row past `row_cap` or at the first batch that
    takes it past `byte_cap` bytes of Arrow data (then `truncated`). A timer interrupts it after `timeout_s`."""
    import pyarrow as pa

    if guard:
        check(cur, sql)
    else:
        select_only(cur, sql)
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        cur.interrupt()

    timer = threading.Timer(timeout_s, stop)
    started = time.perf_counter()
    timer.start()
    try:
        cur.execute(sql)
        reader = cur.to_arrow_reader(min(row_cap + 1, 100_000))
        batches, rows, size, over = [], 0, 0, False
        for batch in reader:
            if byte_cap is not None and size + batch.nbytes > byte_cap:
                batch = _fit(batch, byte_cap - size)
                over = True
            batches.append(batch)
            rows += batch.num_rows
            size += batch.nbytes
            if rows > row_cap or over:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        if fired.is_set():
            raise QueryTimeout(timeout_message(timeout_s)) from None
        raise QueryFailed("the query was interrupted") from None
    except duckdb.OutOfMemoryException as exc:
        raise QueryTooCostly(f"the query needs more memory than the SQL limit allows ({_first_line(exc)})") from None
    except duckdb.Error as exc:
        if fired.is_set():
            raise QueryTimeout(timeout_message(timeout_s)) from None
        raise QueryFailed(_first_line(exc)) from None
    finally:
        timer.cancel()
    elapsed = (time.perf_counter() - started) * 1000
    truncated = table.num_rows > row_cap
    return QueryResult(table.slice(0, row_cap) if truncated else table, truncated or over, elapsed)


def timeout_message(timeout_s: float) -> str:
    return f"the query was interrupted after the {timeout_s:g} s limit (query_timeout_s)"


def select_only(cur: duckdb.DuckDBPyConnection, sql: str) -> None:
    """The rule that holds even without the allow-list: exactly one statement, of type SELECT as DuckDB's own parser
    classifies it (no COPY, CREATE, SET...). Run where the parser itself can reach nothing (the SQL worker)."""
    try:
        statements = cur.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryFailed(_first_line(exc)) from None
    if len(statements) != 1:
        raise QueryRejected(f"exactly one statement is allowed (found {len(statements)})")
    stype = str(statements[0].type).rsplit(".", 1)[-1]
    if stype != "SELECT":
        raise QueryRejected(_WHY_NOT.get(stype.lower(), f"only SELECT queries are allowed (found {stype})"))


def _fit(batch: pa.RecordBatch, budget: int) -> pa.RecordBatch:
    """The longest head of `batch` whose (estimated) size fits `budget` bytes."""
    if budget <= 0 or not batch.num_rows:
        return batch.slice(0, 0)
    per_row = max(1, batch.nbytes // batch.num_rows)
    return batch.slice(0, min(batch.num_rows, budget // per_row))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
