"""How the admin reads write their answers, in the proxy process: JSON values, and small tables (`ResultTable`, plain
Python lists, one per column) that become JSON rows or an Arrow IPC stream.

Neither pyarrow nor numpy is loaded here (docs/ARCHITECTURE.md, "Memory": pyarrow stays out of the proxy process,
admin reads included): a table comes from DuckDB's `fetchall()` and an Arrow answer is written by nanoarrow, a small
C library of its own with no numpy, imported on the first Arrow answer. The tables these answers hold are small
(buckets × groups, top lists, Explore's capped rows); user SQL, which may be large, is answered by the SQL worker
process (`sql_worker`), which writes its own JSON or Arrow.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

ARROW = "application/vnd.apache.arrow.stream"


# -- JSON --------------------------------------------------------------------------------------------------------
def dumps(data: Any) -> bytes:
    return json.dumps(jsonable(data), ensure_ascii=False, allow_nan=False).encode()


def jsonable(v: Any) -> Any:
    """Plain JSON values: times as ISO-8601 UTC ("...Z"; naive times are UTC), NaN → null, bytes → hex, an interval
    as seconds."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, datetime):
        return iso(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    arrow = sys.modules.get("pyarrow")  # an Arrow value can only come from an Arrow table (the SQL worker's)
    if arrow is not None and isinstance(v, arrow.MonthDayNano):  # an interval: seconds when it has no calendar part
        months, days, ns = v
        return ns / 1e9 if not months and not days else f"{months} months {days} days {ns / 1e9:g} seconds"
    if isinstance(v, (list, tuple, set)):
        return [jsonable(x) for x in v]
    if isinstance(v, (date, time)):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, Decimal):
        return float(v) if v.is_finite() else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, UUID):
        return str(v)
    return str(v)


def iso(t: datetime | float | None) -> str | None:
    if t is None:
        return None
    if isinstance(t, (int, float)):
        t = datetime.fromtimestamp(t, UTC)
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return t.isoformat(timespec="milliseconds") + "Z"


# -- tables ------------------------------------------------------------------------------------------------------
# The Arrow types these answers use, by name; "timestamp:<zone>" is a timestamp in a zone (UTC instants).
_DUCKDB_TYPES = {
    "BOOLEAN": "bool",
    "TINYINT": "int8",
    "SMALLINT": "int16",
    "INTEGER": "int32",
    "BIGINT": "int64",
    "UTINYINT": "int16",
    "USMALLINT": "int32",
    "UINTEGER": "int64",
    "FLOAT": "float64",
    "DOUBLE": "float64",
    "VARCHAR": "string",
    "TIMESTAMP": "timestamp",
    "DATE": "date",
}


@dataclass
class ResultTable:
    """A small table: column names, their Arrow types (see `_DUCKDB_TYPES`) and their values, one list each."""

    names: list[str]
    types: list[str]
    data: list[list[Any]]

    @classmethod
    def fetch(cls, rel: duckdb.DuckDBPyConnection) -> ResultTable:
        """The rows of an executed query, column by column, its values as DuckDB gives them to Python. In Arrow, the
        types without one of their own here are float64 (HUGEINT, DECIMAL) or their text (the others)."""
        described = rel.description or []
        rows = rel.fetchall()
        names = [d[0] for d in described]
        types = [_DUCKDB_TYPES.get(str(d[1]), "float64" if _numeric(str(d[1])) else "string") for d in described]
        data = [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in names]
        return cls(names, types, data)

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]], empty: dict[str, str] | None = None) -> ResultTable:
        """Rows of plain values (all with the same keys), each column's type read from its values as Arrow's own
        inference does (ints and floats mixed → float64; only nulls → null). No rows: the columns of `empty`."""
        if not rows:
            names = list(empty or {})
            return cls(names, [(empty or {})[n] for n in names], [[] for _ in names])
        names = list(rows[0])
        data = [[r.get(n) for r in rows] for n in names]
        return cls(names, [infer(col) for col in data], data)

    @property
    def num_rows(self) -> int:
        return len(self.data[0]) if self.data else 0

    def column(self, name: str) -> list[Any]:
        return self.data[self.names.index(name)]

    def set(self, name: str, arrow_type: str, values: list[Any]) -> None:
        """Replace column `name` (or add it at the end)."""
        if name in self.names:
            i = self.names.index(name)
            self.types[i], self.data[i] = arrow_type, values
        else:
            self.names.append(name)
            self.types.append(arrow_type)
            self.data.append(values)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row, strict=True)) for row in zip(*self.data, strict=True)]


def _numeric(duckdb_type: str) -> bool:
    return duckdb_type in ("HUGEINT", "UHUGEINT", "UBIGINT") or duckdb_type.startswith("DECIMAL")


def infer(values: Iterable[Any]) -> str:
    seen: set[str] = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            seen.add("bool")
        elif isinstance(v, int):
            seen.add("int64")
        elif isinstance(v, float):
            seen.add("float64")
        elif isinstance(v, datetime):
            seen.add("timestamp")
        else:
            seen.add("string")
    if not seen:
        return "null"
    if seen <= {"int64", "float64"}:
        return "float64" if "float64" in seen else "int64"
    return seen.pop() if len(seen) == 1 else "string"


# -- Arrow IPC ---------------------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1)
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_MICRO = timedelta(microseconds=1)


def arrow_ipc(table: ResultTable) -> bytes:
    """`table` as an Arrow IPC stream (a schema and one record batch), as pyarrow's reader reads it."""
    import io

    import nanoarrow as na
    import nanoarrow.ipc

    fields, arrays = {}, []
    for name, arrow_type, values in zip(table.names, table.types, table.data, strict=True):
        schema, values = _arrow_column(na, arrow_type, values)
        fields[name] = schema
        # A null column has no buffers to build from values: only its length.
        null = arrow_type == "null"
        arrays.append(na.c_array_from_buffers(schema, len(values), []) if null else na.c_array(values, schema))
    struct = na.struct(fields, nullable=False)
    batch = na.c_array_from_buffers(struct, table.num_rows, [None], children=arrays)
    sink = io.BytesIO()
    with nanoarrow.ipc.StreamWriter.from_writable(sink) as writer:
        writer.write_stream(batch)
    return sink.getvalue()


def _arrow_column(na: Any, arrow_type: str, values: list[Any]) -> tuple[Any, list[Any]]:
    """The nanoarrow type of a column and its values as that type stores them (times as integers)."""
    if arrow_type.startswith("timestamp"):
        zone = arrow_type.partition(":")[2] or None
        return na.timestamp("us", timezone=zone), [None if v is None else _micros(v) for v in values]
    if arrow_type == "date":
        return na.date32(), [None if v is None else v.toordinal() - _EPOCH_DAY for v in values]
    if arrow_type == "null":
        return na.null(), values
    if arrow_type == "float64":
        return na.float64(), [None if v is None else float(v) for v in values]
    simple = {"bool": na.bool_, "int8": na.int8, "int16": na.int16, "int32": na.int32, "int64": na.int64}
    if arrow_type in simple:
        return simple[arrow_type](), values
    return na.string(), [v if v is None or isinstance(v, str) else str(v) for v in values]


def _micros(t: datetime) -> int:
    """Microseconds since the epoch of a time (naive = UTC)."""
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    return (t - _EPOCH) // _MICRO
