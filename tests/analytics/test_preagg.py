"""The pre-aggregate family: an old file (two families: the stats rollup and the explore pre-aggregates) migrates to
one and answers the same; the reader module's whole answers agree with SQL over the raw rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from proxy_service.analytics import explore, preagg, preagg_read, queries
from proxy_service.analytics.rollup import VERSION, Rollup
from proxy_service.store import Store

UTC = ZoneInfo("UTC")
START = datetime(2026, 3, 1)
DAYS = 3

# The layout of rollup version 6, as its code created it (kept here as text: the code is gone).
OLD_DDL = [
    "CREATE TABLE rollup_meta (name VARCHAR PRIMARY KEY, value VARCHAR)",
    *(
        f"""CREATE TABLE {t} (bucket TIMESTAMP NOT NULL, dim VARCHAR NOT NULL, val VARCHAR NOT NULL, calls BIGINT,
        successes BIGINT, latency_sum DOUBLE, latency_n BIGINT, prompt_tokens BIGINT, output_tokens BIGINT,
        total_tokens BIGINT)"""
        for t in ("rollup_requests", "rollup_requests_1h")
    ),
    *(
        f"""CREATE TABLE {t} (bucket TIMESTAMP NOT NULL, dim VARCHAR NOT NULL, val VARCHAR NOT NULL,
        lb SMALLINT NOT NULL, n BIGINT)"""
        for t in ("rollup_latency", "rollup_latency_1h")
    ),
    """CREATE TABLE explore_agg (bucket TIMESTAMP NOT NULL, grain VARCHAR NOT NULL, a VARCHAR NOT NULL,
    av VARCHAR NOT NULL, b VARCHAR NOT NULL, bv VARCHAR NOT NULL, calls BIGINT, successes BIGINT, exhausted BIGINT,
    attempts BIGINT, upstream_429s BIGINT, prompt_tokens BIGINT, output_tokens BIGINT, thinking_tokens BIGINT,
    cached_tokens BIGINT, total_tokens BIGINT, request_bytes BIGINT, response_bytes BIGINT, latency_sum DOUBLE,
    latency_n BIGINT, ttfb_sum DOUBLE, ttfb_n BIGINT)""",
    """CREATE TABLE explore_hist (bucket TIMESTAMP NOT NULL, grain VARCHAR NOT NULL, a VARCHAR NOT NULL,
    av VARCHAR NOT NULL, b VARCHAR NOT NULL, bv VARCHAR NOT NULL, metric VARCHAR NOT NULL, lb SMALLINT NOT NULL,
    n BIGINT)""",
    "INSERT INTO rollup_meta VALUES ('version', '6'), ('zone', 'UTC')",
]
# The version-6 fold of the 1-hour tier (its counters; the 15-minute tier is the same at 15 minutes).
OLD_FOLD = """
    INSERT INTO {table}
    WITH base AS (
        SELECT time_bucket({interval}, ts) AS bucket, coalesce(model, '') AS model, coalesce(project, '') AS project,
               coalesce(CAST(status AS VARCHAR), '') AS status, outcome = 'success' AS ok, latency_ms, prompt_tokens,
               output_tokens, total_tokens
        FROM requests)
    SELECT bucket, CASE WHEN grouping(model) = 0 THEN 'model' WHEN grouping(project) = 0 THEN 'project'
                        WHEN grouping(status) = 0 THEN 'status' ELSE 'all' END,
           coalesce(model, project, status, ''), count(*), count(*) FILTER (WHERE ok), sum(latency_ms),
           count(latency_ms), sum(prompt_tokens), sum(output_tokens), sum(total_tokens)
    FROM base GROUP BY GROUPING SETS ((bucket), (bucket, model), (bucket, project), (bucket, status))"""
# What the Trends page showed from the old file: calls, successes and tokens per day and model.
OLD_DAILY = """
    SELECT date_trunc('day', bucket) AS day, val, CAST(sum(calls) AS BIGINT), CAST(sum(successes) AS BIGINT),
           CAST(coalesce(sum(total_tokens), 0) AS BIGINT)
    FROM rollup_requests_1h WHERE dim = 'model' GROUP BY ALL ORDER BY 1, 2"""
RAW_ROWS = f"""
    INSERT INTO requests (ts, request_id, client_id, surface, operation, model, stream, status, outcome, key_id,
                          project, latency_ms, ttfb_ms, total_tokens)
    SELECT TIMESTAMP '{START}' + to_seconds(i * 97), 'r' || i, 'c' || (i % 3), 'gemini', 'generateContent',
           CASE WHEN i % 4 = 0 THEN 'gemini-2.5-pro' ELSE 'gemini-2.5-flash' END, i % 2 = 0,
           CASE WHEN i % 10 = 0 THEN 429 ELSE 200 END, CASE WHEN i % 10 = 0 THEN 'exhausted' ELSE 'success' END,
           'k_' || (i % 5), 'p' || (i % 2), 50 + i % 900, 20 + i % 90, i % 300
    FROM range({DAYS * 86400 // 97}) t(i)"""


def _old_file(path: Path) -> list[tuple]:
    """A file as version 6 left it: raw rows and both families' tables; returns the old Trends answer."""
    store = Store(path)
    cur = store.cursor()
    cur.execute(RAW_ROWS)
    for ddl in OLD_DDL:
        cur.execute(ddl)
    cur.execute(OLD_FOLD.format(table="rollup_requests_1h", interval="INTERVAL 1 HOUR"))
    cur.execute(OLD_FOLD.format(table="rollup_requests", interval="INTERVAL 15 MINUTE"))
    cur.execute(
        "INSERT INTO explore_agg (bucket, grain, a, av, b, bv, calls) VALUES (?, 'd', '', '', '', '', 1)", [START]
    )
    old = cur.execute(OLD_DAILY).fetchall()
    cur.close()
    store.close()
    return old


def test_an_old_file_drops_the_obsolete_tables_and_answers_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    old = _old_file(path)
    assert old, "the fixture holds statistics"
    store = Store(path)
    cur = store.cursor()
    Rollup().install(cur)  # as the gateway's start does (inline here: the rebuild finishes before it returns)
    tables = {r[0] for r in cur.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not tables & set(preagg.OBSOLETE_TABLES)
    assert {preagg.COUNTERS, preagg.HISTOGRAM} <= tables
    assert cur.execute("SELECT value FROM rollup_meta WHERE name = 'version'").fetchone() == (VERSION,)
    n = cur.execute("SELECT count(*) FROM requests").fetchone()
    assert n is not None and preagg.total_calls(cur) == dict.fromkeys(preagg.GRAINS, n[0])

    lo, hi = START, START + timedelta(days=DAYS)
    rows = queries.series(cur, "day", "model", UTC, lo, hi).rows()
    new = [(r["bucket"].replace(tzinfo=None), r["group"], r["calls"], r["successes"], r["total_tokens"]) for r in rows]
    assert new == old
    raw = queries.series(cur, "day", "model", UTC, lo, hi, use_rollup=False).rows()
    assert rows == raw  # percentiles included: both read log buckets

    spec = explore.Spec(measures=("calls",), dimensions=("model",), lo=lo, hi=hi)
    ans = explore.answer(cur, spec, UTC, zone="UTC")
    assert ans.source == "cube"
    expected = cur.execute(
        "SELECT model, count(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY 1 ORDER BY 1", [lo, hi]
    ).fetchall()
    assert sorted(tuple(r) for r in ans.rows) == expected
    cur.close()
    store.close()


def test_the_reader_answers_agree_with_the_raw_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb")
    cur = store.cursor()
    cur.execute(RAW_ROWS)
    Rollup().install(cur)
    lo, hi = START, START + timedelta(days=DAYS)
    hourly = preagg_read.hourly_calls(cur, lo, hi)
    expected = cur.execute(
        "SELECT time_bucket(INTERVAL 1 HOUR, ts), m, count(*) FROM (SELECT ts, model AS m FROM requests "
        "UNION ALL SELECT ts, '' FROM requests) GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert sorted(hourly) == sorted(expected)
    assert sorted(preagg_read.served_models(cur, lo)) == ["gemini-2.5-flash", "gemini-2.5-pro"]
    assert sorted(preagg_read.client_calls(cur, lo)) == sorted(
        cur.execute("SELECT client_id, count(*) FROM requests GROUP BY 1").fetchall()
    )
    counters = preagg_read.backtest_counters(cur, "model", "gemini-2.5-pro", lo, hi)
    assert (
        counters
        == cur.execute(
            "SELECT time_bucket(INTERVAL 15 MINUTE, ts) AS b, count(*), count(*) FILTER (WHERE outcome = 'success') "
            "FROM requests WHERE model = 'gemini-2.5-pro' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    )
    refused = preagg_read.backtest_exhausted(cur, lo, hi)
    assert refused == dict(
        cur.execute(
            "SELECT time_bucket(INTERVAL 15 MINUTE, ts), count(*) FROM requests WHERE status = 429 GROUP BY 1"
        ).fetchall()
    )
    latency = preagg_read.backtest_latency(cur, "all", "", lo, lo + timedelta(hours=1))
    assert (
        sum(n for _, _, n in latency)
        == cur.execute("SELECT count(*) FROM requests WHERE ts < ?", [lo + timedelta(hours=1)]).fetchone()[0]
    )  # type: ignore[index]
    cur.close()
    store.close()


def test_a_layout_7_file_gains_the_spend_sums_and_rebuilds_them(tmp_path: Path) -> None:
    path = tmp_path / "v7.duckdb"
    store = Store(path)
    cur = store.cursor()
    cur.execute(
        "INSERT INTO requests (ts, request_id, model, outcome, cost_usd, list_cost_usd) SELECT TIMESTAMP '2026-03-01'"
        " + INTERVAL (i) MINUTE, 'r' || i, 'm' || (i % 3), 'success', i * 0.001, i * 0.002 FROM range(600) t(i)"
    )
    sums = ", ".join(f"{s} {'DOUBLE' if s.endswith('_sum') else 'BIGINT'}" for s in preagg.SUMS[:-2])
    cur.execute(
        f"CREATE TABLE {preagg.COUNTERS} (bucket TIMESTAMP NOT NULL, grain VARCHAR NOT NULL, a VARCHAR NOT NULL, "
        f"av VARCHAR NOT NULL, b VARCHAR NOT NULL, bv VARCHAR NOT NULL, {sums})"
    )
    cur.execute("CREATE TABLE rollup_meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
    cur.execute("INSERT INTO rollup_meta VALUES ('version', '7'), ('zone', 'UTC')")
    Rollup().install(cur)
    assert cur.execute("SELECT value FROM rollup_meta WHERE name = 'version'").fetchone() == (VERSION,)
    lo, hi = datetime(2026, 3, 1), datetime(2026, 3, 2)
    spec = explore.Spec(measures=("cost_usd", "list_cost_usd"), dimensions=("model",), lo=lo, hi=hi)
    ans = explore.answer(cur, spec, UTC, zone="UTC")
    assert ans.source == "cube"
    expected = cur.execute(
        "SELECT model, round(sum(cost_usd), 10), round(sum(list_cost_usd), 10) FROM requests GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert sorted(tuple(r) for r in ans.rows) == expected
    cur.close()
    store.close()
