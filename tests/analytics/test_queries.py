"""Analytics SQL, the rollup, retention and the Parquet export, on a real DuckDB file (no HTTP here)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import pytest

from proxy_service.analytics import queries, snapshot
from proxy_service.analytics import rollup as rollup_module
from proxy_service.analytics.rollup import Rollup
from proxy_service.events import EventWriter, RequestEvent
from proxy_service.store import Store

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def event(ts: datetime, i: int = 0, **kw: Any) -> RequestEvent:
    fields: dict[str, Any] = {
        "ts": ts,
        "request_id": f"r{i}-{ts.isoformat()}",
        "client_id": None,
        "surface": "gemini",
        "operation": "generateContent",
        "model": "gemini-2.5-flash",
        "stream": False,
        "status": 200,
        "outcome": "success",
        "key_id": "k_1",
        "project": "p1",
        "latency_ms": 100.0,
        "total_tokens": 10,
    }
    fields.update(kw)
    return RequestEvent(**fields)


class DB:
    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.writer = EventWriter(self.store)
        self.rollup = Rollup()
        cur = self.store.cursor()
        self.rollup.install(cur)
        queries.install_safe_views(cur)
        cur.close()
        self.writer.after_append.append(self.rollup.on_append)
        self.writer.start()
        self.cur = self.store.cursor()

    def add(self, *events: RequestEvent, compact: bool = False) -> None:
        for e in events:
            self.writer.record(e)
        self.writer.flush()
        self.writer.submit(self.rollup.fold).result()  # what the admin API does before reading the rollup
        if compact:
            self.writer.submit(self.rollup.compact).result()

    def series(self, g: str, tz: ZoneInfo, start: datetime, end: datetime, group_by: str = "none", **kw: Any) -> list:
        lo, hi = queries.series_range(g, tz, start, end, end)
        return queries.series(self.cur, g, group_by, tz, lo, hi, **kw).rows()

    def close(self) -> None:
        self.cur.close()
        self.writer.stop()
        self.store.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DB]:
    d = DB(tmp_path / "k.duckdb")
    yield d
    d.close()


def buckets(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {r["bucket"].isoformat(): r["calls"] for r in rows}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal rows; floats (sums in another order) to 1e-9 relative."""
    return a.keys() == b.keys() and all(
        a[k] == pytest.approx(b[k], rel=1e-9) if isinstance(a[k], float) else a[k] == b[k] for k in a
    )


def local(tz: ZoneInfo, *args: int) -> datetime:
    """A local wall time → naive UTC (as stored)."""
    return queries.to_utc(datetime(*args), tz)  # type: ignore[arg-type]


# -- exact local buckets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tz", [UTC, SHANGHAI, NY, KOLKATA], ids=lambda z: z.key)
def test_day_edges_are_exact(db: DB, tz: ZoneInfo) -> None:
    last = local(tz, 2026, 3, 10, 23, 59, 59) + timedelta(microseconds=900_000)
    first = local(tz, 2026, 3, 11)
    db.add(event(last, 1), event(first, 2), event(first + timedelta(hours=23, minutes=59), 3), compact=True)
    got = buckets(db.series("day", tz, local(tz, 2026, 3, 9), local(tz, 2026, 3, 13)))
    offset = lambda d: datetime(2026, 3, d, tzinfo=tz).isoformat()  # noqa: E731
    assert got == {offset(10): 1, offset(11): 2}


def test_week_and_month_boundaries(db: DB) -> None:
    tz = NY
    sunday_end = local(tz, 2026, 5, 31, 23, 59, 59) + timedelta(microseconds=900_000)  # Sunday, May 31
    monday = local(tz, 2026, 6, 1)  # Monday, June 1: a new ISO week and a new month
    db.add(event(sunday_end, 1), event(monday, 2), event(monday, 3), compact=True)
    weeks = buckets(db.series("week", tz, local(tz, 2026, 5, 20), local(tz, 2026, 6, 10)))
    assert weeks == {datetime(2026, 5, 25, tzinfo=tz).isoformat(): 1, datetime(2026, 6, 1, tzinfo=tz).isoformat(): 2}
    months = buckets(db.series("month", tz, local(tz, 2026, 5, 1), local(tz, 2026, 6, 30)))
    assert months == {"2026-05-01T00:00:00-04:00": 1, "2026-06-01T00:00:00-04:00": 2}


def test_dst_change_day_has_23_hours_and_exact_hour_buckets(db: DB) -> None:
    # New York springs forward on 2026-03-08 at 02:00 local (07:00 UTC).
    before = datetime(2026, 3, 8, 6, 59, 59)  # 01:59:59 EST
    after = datetime(2026, 3, 8, 7, 0, 0)  # 03:00:00 EDT
    db.add(event(before, 1), event(after, 2), compact=True)
    hours = buckets(db.series("hour", NY, datetime(2026, 3, 8, 5), datetime(2026, 3, 8, 9)))
    assert hours == {"2026-03-08T01:00:00-05:00": 1, "2026-03-08T03:00:00-04:00": 1}
    days = buckets(db.series("day", NY, datetime(2026, 3, 8, 5), datetime(2026, 3, 9, 3)))
    assert days == {"2026-03-08T00:00:00-05:00": 2}


def test_rollup_and_raw_agree_everywhere(db: DB) -> None:
    rnd = random.Random(7)
    base = datetime(2026, 10, 20)
    events = [
        event(
            base + timedelta(seconds=rnd.randrange(40 * 86400), microseconds=rnd.randrange(10**6)),
            i,
            model=rnd.choice(["a", "b", None]),
            status=rnd.choice([200, 200, 429, 503]),
            outcome=rnd.choice(["success", "success", "exhausted"]),
            key_id=f"k{rnd.randrange(6)}",
            project=rnd.choice(["p1", "p2", None]),
            latency_ms=rnd.uniform(0, 8000),
            total_tokens=rnd.randrange(500),
        )
        for i in range(3000)
    ]
    db.add(*events[:1500], compact=True)
    db.add(*events[1500:])  # partial rows, not compacted: readers sum them
    # Every granularity and grouping in a DST zone (the range spans New York's fall-back), plus the half- and
    # quarter-hour zones (Lord Howe shifts by 30 minutes for DST).
    combos = [(NY, g, group_by) for g in queries.GRANULARITIES for group_by in ("none", "model")]
    combos += [(NY, "day", group_by) for group_by in ("key", "project", "status")]
    for tz in (KOLKATA, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kathmandu")):
        combos += [(tz, "hour", "none"), (tz, "week", "status")]
    for tz, g, group_by in combos:
        fast = db.series(g, tz, base - timedelta(days=2), base + timedelta(days=42), group_by)
        raw = db.series(g, tz, base - timedelta(days=2), base + timedelta(days=42), group_by, use_rollup=False)
        assert len(fast) == len(raw) and all(map(same, fast, raw)), (tz.key, g, group_by)
    total = db.series("month", UTC, base - timedelta(days=2), base + timedelta(days=42))
    assert sum(r["calls"] for r in total) == 3000


def test_percentiles_are_within_two_percent(db: DB) -> None:
    t = datetime(2026, 1, 5, 10)
    latencies = [float(i) for i in range(1, 1001)]
    db.add(*(event(t, i, latency_ms=v) for i, v in enumerate(latencies)), compact=True)
    (row,) = db.series("day", UTC, t, t + timedelta(hours=1))
    assert abs(row["p50_latency_ms"] - 500) / 500 <= 0.02
    assert abs(row["p95_latency_ms"] - 950) / 950 <= 0.02
    assert row["avg_latency_ms"] == pytest.approx(500.5)
    assert row["calls"] == 1000 and row["successes"] == 1000 and row["success_rate"] == 1.0


def test_group_by_key_keeps_the_busiest(db: DB) -> None:
    t = datetime(2026, 2, 1, 12)
    db.add(*(event(t, i, key_id=f"k{i % 4}") for i in range(10)), event(t, 99, key_id=None))
    rows = db.series("day", UTC, t, t + timedelta(hours=1), "key", limit=2)
    assert [(r["group"], r["calls"]) for r in rows] == [("k0", 3), ("k1", 3)]


def test_summary_windows(db: DB) -> None:
    now = datetime(2026, 7, 15, 12, 7, 30)
    db.add(
        event(now - timedelta(seconds=30), 1),
        event(now - timedelta(minutes=30), 2, outcome="upstream_error", status=503),
        event(now - timedelta(hours=5), 3),
        event(now - timedelta(days=3), 4),
        event(datetime(2026, 6, 30, 23), 5),  # last month in UTC, this month in Shanghai (07:00 July 1)
        compact=True,
    )
    for use_rollup in (True, False):
        s = queries.summary(db.cur, UTC, now, use_rollup)
        assert [s[w]["calls"] for w in queries.WINDOWS] == [1, 2, 3, 4]
        assert s["1h"]["failures"] == 1 and s["1h"]["success_rate"] == 0.5
        assert s["1m"]["total_tokens"] == 10
    assert queries.summary(db.cur, SHANGHAI, now)["month"]["calls"] == 5
    empty = queries.summary(db.cur, UTC, now + timedelta(days=400))
    assert empty["24h"] == {**empty["24h"], "calls": 0, "success_rate": None}


def test_top_models_and_keys(db: DB) -> None:
    t = datetime(2026, 2, 1, 12, 5)
    db.add(*(event(t, i, model="m1" if i < 3 else "m2", key_id=f"k{i % 2}") for i in range(5)))
    models = queries.top(db.cur, "model", t - timedelta(minutes=1), t + timedelta(minutes=1), 10)
    assert [(m["name"], m["calls"]) for m in models] == [("m1", 3), ("m2", 2)]
    keys = queries.top(db.cur, "key", t - timedelta(hours=1), t + timedelta(hours=1), 1)
    assert [(k["name"], k["calls"]) for k in keys] == [("k0", 3)]


# -- rollup maintenance ----------------------------------------------------------------------------------------------
def test_install_rebuilds_when_the_rollup_disagrees(tmp_path: Path) -> None:
    store = Store(tmp_path / "k.duckdb")
    cur = store.cursor()
    cur.execute(
        "INSERT INTO requests (ts, request_id, outcome, latency_ms) "
        "SELECT TIMESTAMP '2026-01-01' + to_minutes(i), 'r' || i, 'success', i FROM range(100) t(i)"
    )
    rollup = Rollup()
    rollup.install(cur)  # rows written without the proxy: the rollup is built from them
    assert cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone() == (100,)
    cur.execute("DELETE FROM requests WHERE ts < TIMESTAMP '2026-01-01 00:30:00'")
    rollup.install(cur)
    assert cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone() == (70,)
    cur.close()
    store.close()


def test_compaction_merges_partial_rows_and_keeps_totals(db: DB) -> None:
    t = datetime(2026, 3, 1, 10, 1)
    for i in range(5):
        db.add(event(t + timedelta(seconds=i), i, latency_ms=100.0 + i))
    count = "SELECT count(*) FROM preagg WHERE grain = '15m' AND a = ''"
    assert db.cur.execute(count).fetchone() == (5,)
    assert db.writer.submit(db.rollup.compact).result() == 2  # the quarter (= its hour) and the local day
    assert db.cur.execute(count).fetchone() == (1,)
    assert db.cur.execute("SELECT calls, successes FROM preagg WHERE grain = '15m' AND a = ''").fetchone() == (5, 5)


def test_a_failed_rollup_update_falls_back_to_raw_and_rebuilds(db: DB, monkeypatch: pytest.MonkeyPatch) -> None:
    t = datetime(2026, 3, 1, 10, 1)
    db.add(event(t, 1))

    def boom(cur: duckdb.DuckDBPyConnection, source: str) -> None:
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(rollup_module, "_insert", boom)
    db.add(event(t, 2))
    assert db.rollup.stale and not db.rollup.usable
    monkeypatch.undo()
    db.add(event(t, 3))  # skipped while stale: the rebuild will count it
    db.writer.submit(db.rollup.compact).result()  # the job tick rebuilds
    assert not db.rollup.stale
    assert db.cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone() == (3,)


# -- retention and export --------------------------------------------------------------------------------------------
def test_retention_trims_raw_and_rollup_at_the_same_instant(db: DB) -> None:
    now = datetime(2026, 9, 30, 12, 7)
    db.add(*(event(now - timedelta(days=d, minutes=3), d) for d in range(0, 40)), compact=True)
    cutoffs = snapshot.retention_cutoffs({"requests": 10, "attempts": 5, "error_logs": 5}, now)
    assert cutoffs["requests"] == datetime(2026, 9, 20, 12, 0)  # floored to the hour
    deleted = db.writer.submit(lambda cur: snapshot.apply_retention(cur, cutoffs, db.rollup)).result()
    assert deleted["requests"] == 29
    raw = db.cur.execute("SELECT count(*) FROM requests").fetchone()
    rolled = db.cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone()
    assert raw == rolled == (11,)


def test_export_writes_parquet_atomically_without_secrets(db: DB, tmp_path: Path) -> None:
    db.cur.execute(
        "INSERT INTO keys (key_id, secret, label, status) VALUES ('k_1', 'AIza-very-secret-value', 'L', 'active')"
    )
    db.add(event(datetime(2026, 1, 1), 1), event(datetime(2026, 1, 2), 2))
    out = tmp_path / "exports"
    result = snapshot.export(db.store.cursor(), out)
    assert result.rows == {"requests": 2, "attempts": 0, "keys": 1, "error_logs": 0}
    assert sorted(p.name for p in out.iterdir()) == [
        "attempts.parquet",
        "error_logs.parquet",
        "keys.parquet",
        "requests.parquet",
    ]
    keys = duckdb.sql(f"SELECT * FROM '{out / 'keys.parquet'}'")
    assert "secret" not in keys.columns
    assert b"very-secret" not in (out / "keys.parquet").read_bytes()
    assert duckdb.sql(f"SELECT count(*) FROM '{out / 'requests.parquet'}'").fetchone() == (2,)


# -- offsets ---------------------------------------------------------------------------------------------------------
def test_offsets_find_each_change_to_the_second() -> None:
    offs = queries.offsets(NY, datetime(2026, 1, 1), datetime(2027, 1, 1))
    assert offs.first == -5 * 3600
    assert offs.changes == ((datetime(2026, 3, 8, 7), -4 * 3600), (datetime(2026, 11, 1, 6), -5 * 3600))
    assert offs.aligned(3600) and offs.aligned(900)
    assert not queries.offsets(KOLKATA, datetime(2026, 1, 1), datetime(2027, 1, 1)).aligned(3600)
    assert queries.offsets(UTC, datetime(2026, 1, 1), datetime(2027, 1, 1)).changes == ()


def test_snapshot_command_reads_the_file_when_the_proxy_is_stopped(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from proxy_service.cli import main

    store = Store(tmp_path / "keyrack.duckdb")
    cur = store.cursor()
    cur.execute("INSERT INTO keys (key_id, secret, status) VALUES ('k_1', 'AIza-secret-for-cli', 'active')")
    cur.close()
    store.close()
    out = tmp_path / "snap"
    result = CliRunner().invoke(main, ["snapshot", "--out", str(out)], env={"KEYRACK_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "(via file)" in result.output and (out / "keys.parquet").exists()
    assert b"AIza-secret-for-cli" not in (out / "keys.parquet").read_bytes()
    missing = CliRunner().invoke(main, ["snapshot"], env={"KEYRACK_DATA_DIR": str(tmp_path / "nowhere")})
    assert missing.exit_code == 1 and "no database at" in missing.output


def test_batches_gather_until_a_fold_so_the_writer_does_not_fold_every_flush(db: DB) -> None:
    t = datetime(2026, 3, 1, 10, 1)
    db.rollup._folded_at = time.monotonic()  # a fold just happened: the next batches wait for the next one
    for i in range(3):
        db.writer.record(event(t + timedelta(seconds=i), i))
        db.writer.flush()
    count = "SELECT coalesce(sum(calls), 0) FROM preagg WHERE grain = '15m' AND a = ''"
    assert db.cur.execute("SELECT count(*) FROM requests").fetchone() == (3,)
    assert db.cur.execute(count).fetchone() == (0,)  # appended, not folded yet
    db.writer.submit(db.rollup.fold).result()
    assert db.cur.execute(count).fetchone() == (3,)


def test_spend_outlook_projects_the_last_days_rate_to_the_months_end() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 12, 30, 16, 0)  # 2026-12-31 00:00 in Shanghai: 24 hours of the month left
    windows = {
        "month": {"cost_usd": 10.0, "list_cost_usd": 30.0},
        "24h": {"cost_usd": 2.0, "list_cost_usd": 0.0},
    }
    assert queries.spend_outlook(windows, tz, now) == {
        "month_cost_usd": 10.0,
        "month_end_cost_usd": 12.0,
        "month_list_cost_usd": 30.0,
        "month_end_list_cost_usd": 30.0,
    }
