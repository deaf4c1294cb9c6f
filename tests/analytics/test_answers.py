"""analytics/answers.py: fetched rows as a ResultTable, and its Arrow IPC stream as pyarrow reads it (the test process
may load pyarrow; the proxy does not, tests/test_server.py checks that), and analytics/histogram.percentiles."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pytest

from proxy_service.analytics.answers import ResultTable, arrow_ipc, dumps, infer
from proxy_service.analytics.histogram import GAMMA, percentiles


def read(table: ResultTable) -> pa.Table:
    return pa.ipc.open_stream(arrow_ipc(table)).read_all()


def test_fetched_rows_keep_duckdbs_types_in_arrow() -> None:
    con = duckdb.connect()
    rel = con.execute(
        "SELECT * FROM (VALUES (7::BIGINT, 1.5::DOUBLE, 'x', TIMESTAMP '2026-01-01 10:00:00.25', true, 3::SMALLINT, "
        "4::INTEGER, DATE '2026-01-02', 1.25::DECIMAL(6, 2), 9::HUGEINT, 5::UBIGINT), "
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)) t(a, b, c, d, e, f, g, h, i, j, k)"
    )
    table = ResultTable.fetch(rel)
    got = read(table)
    assert [str(t) for t in got.schema.types] == [
        "int64",
        "double",
        "string",
        "timestamp[us]",
        "bool",
        "int16",
        "int32",
        "date32[day]",
        "double",
        "double",
        "double",
    ]
    assert got.to_pylist() == [
        {
            "a": 7,
            "b": 1.5,
            "c": "x",
            "d": datetime(2026, 1, 1, 10, 0, 0, 250_000),
            "e": True,
            "f": 3,
            "g": 4,
            "h": date(2026, 1, 2),
            "i": 1.25,
            "j": 9.0,
            "k": 5.0,
        },
        dict.fromkeys("abcdefghijk"),
    ]
    assert table.column("k") == [5, None]  # Python keeps DuckDB's own values: only Arrow converts


def test_a_zone_typed_column_holds_the_same_instants() -> None:
    paris = ZoneInfo("Europe/Paris")
    local = datetime(2026, 3, 29, 3, 0, tzinfo=paris)  # the first hour after the change to summer time
    table = ResultTable(["bucket"], ["timestamp:Europe/Paris"], [[local, None]])
    got = read(table)
    assert str(got.schema.field("bucket").type) == "timestamp[us, tz=Europe/Paris]"
    assert got.column("bucket").to_pylist()[0] == local
    assert got.column("bucket").to_pylist()[0].astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_rows_of_plain_values_are_typed_as_arrow_infers_them() -> None:
    rows = [{"name": "k1", "calls": 3, "rate": 1, "label": None, "on": True}, {"name": None, "calls": 2, "rate": 0.5}]
    table = ResultTable.from_rows([{**r, "label": r.get("label"), "on": r.get("on")} for r in rows])
    got = read(table)
    assert got.schema == pa.Table.from_pylist(table.rows()).schema  # pyarrow's own inference, the same schema
    assert got.to_pylist() == table.rows()
    assert infer([]) == "null" and infer([1, "a"]) == "string"
    empty = read(ResultTable.from_rows([], empty={"name": "string"}))
    assert empty.num_rows == 0 and str(empty.schema.field("name").type) == "string"
    no_rows = read(ResultTable.fetch(duckdb.connect().execute("SELECT 1::INTEGER AS one WHERE false")))
    assert no_rows.num_rows == 0 and str(no_rows.schema.field("one").type) == "int32"


def test_json_values_are_plain() -> None:
    got = dumps({"t": datetime(2026, 1, 2, 3, 4, 5), "nan": math.nan, "b": b"\x01", "d": date(2026, 1, 2)})
    assert got == b'{"t": "2026-01-02T03:04:05.000Z", "nan": null, "b": "01", "d": "2026-01-02"}'


def test_writing_arrow_loads_no_pyarrow_or_numpy() -> None:
    probe = (
        "import sys, duckdb\n"
        "from proxy_service.analytics.answers import ResultTable, arrow_ipc\n"
        "t = ResultTable.fetch(duckdb.connect().execute(\"SELECT 1 AS a, 'x' AS b, now()::TIMESTAMP AS c\"))\n"
        "assert arrow_ipc(t)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'numpy', 'pandas')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("q", "cell"), [(0.5, 20), (0.95, 30), (0.1, 10), (1.0, 30)])
def test_percentiles_are_the_first_cell_that_reaches_the_rank(q: float, cell: int) -> None:
    # Group "a": 4 values in cell 10, 6 in 20, 10 in 30 (ranks 1-4, 5-10, 11-20); group "b": one value in cell 5.
    con = duckdb.connect()
    hist = "SELECT * FROM (VALUES ('a', 10, 4.0), ('a', 30, 10.0), ('a', 20, 6.0), ('b', 5, 1.0)) h(g, lb, n)"
    found = percentiles(con, hist, [], (q,), ("g",))
    want = {"a": cell, "b": 5}
    for g, lb in want.items():
        assert found[(g,)][0] == pytest.approx(2 * GAMMA**lb / (GAMMA + 1), rel=1e-12)
