"""The demo's history is a plausible past of the live demo: the same clients, keys, projects, models, error mix and
rate (with its daily and weekly rhythm) as the live traffic's description (demo/mix.py, demo/rhythm.py, scenario.py),
with attempts and error-log rows; written once, into a real DuckDB file."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from proxy_service.demo import history, mix
from proxy_service.demo.rhythm import DEFAULT_RATE, rhythm
from proxy_service.demo.scenario import DEMO_PROJECTS, demo_pool
from proxy_service.demo.traffic import HABITS

END = datetime(2026, 9, 21, 15)  # a Monday afternoon
DAYS = 14


def demo_history_pool() -> history.Pool:
    api_keys, scenario = demo_pool()
    return history.pool_of(api_keys, scenario["invalid_keys"], {h.name: f"t_{i:010d}" for i, h in enumerate(HABITS)})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("history") / "keyrack.duckdb"
    calls = history.backfill(path, DEFAULT_RATE, demo_history_pool(), days=DAYS, now=END + timedelta(minutes=30))
    assert calls > 0
    assert history.backfill(path, DEFAULT_RATE, demo_history_pool(), days=DAYS) == 0  # written once
    con = duckdb.connect(str(path), read_only=True)
    yield con
    con.close()


def one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:  # type: ignore[type-arg]
    row = con.execute(sql).fetchone()
    assert row is not None
    return row


def test_history_rate_follows_the_live_demo_with_a_daily_and_weekly_rhythm(db: duckdb.DuckDBPyConnection) -> None:
    n, first, last = one(db, "SELECT count(*), min(ts), max(ts) FROM requests")
    assert first >= END - timedelta(days=DAYS) and last < END  # ends at the last full hour before the start
    per_hour = n / (DAYS * 24)
    # The live demo's mean (its base rate and bursts); the history's weeks are its rhythm's, whose mean is 1, and
    # a slow rise that ends at the live rate (so a little lower on average).
    assert 0.85 * mix.calls_per_hour(DEFAULT_RATE) < per_hour < 1.05 * mix.calls_per_hour(DEFAULT_RATE)
    hours = dict(db.execute("SELECT hour(ts), count(*) FROM requests GROUP BY 1").fetchall())
    assert max(hours.values()) > 3 * min(hours.values())  # quiet nights, busy afternoons
    peak = max(hours, key=hours.__getitem__)
    assert 12 <= peak <= 18 and rhythm(peak) > 1.4
    days = dict(
        db.execute("SELECT isodow(ts) >= 6, count(*) / count(DISTINCT ts::DATE) FROM requests GROUP BY 1").fetchall()
    )
    assert days[True] < 0.75 * days[False]  # quieter weekends


def test_history_uses_the_live_demos_clients_keys_projects_and_models(db: duckdb.DuckDBPyConnection) -> None:
    pool = demo_history_pool()
    clients = {r[0] for r in db.execute("SELECT DISTINCT client_id FROM requests").fetchall()}
    assert clients == {*pool.clients.values(), None}  # None: the odd wrong token, as live
    keys = {r[0] for r in db.execute("SELECT DISTINCT key_id FROM attempts").fetchall()}
    assert keys == {k for k, _ in pool.keys}
    projects = {r[0] for r in db.execute("SELECT DISTINCT project FROM requests WHERE project IS NOT NULL").fetchall()}
    assert projects == set(DEMO_PROJECTS)
    # Per model, the history's share of calls is the live mix's.
    shares = {s.model: 0.0 for s in mix.shapes(DEFAULT_RATE)}
    for s in mix.shapes(DEFAULT_RATE):
        shares[s.model] += s.share
    (total,) = one(db, "SELECT count(*) FROM requests")
    got = dict(db.execute("SELECT model, count(*) FROM requests GROUP BY 1").fetchall())
    assert set(got) == set(shares)
    for model, share in shares.items():
        assert got[model] / total == pytest.approx(share, abs=0.01), model
    # No key-less success (what Trends showed as "(no key: refused / unauthorised)" holding the history's calls).
    assert one(db, "SELECT count(*) FROM requests WHERE key_id IS NULL AND outcome = 'success'") == (0,)


def test_history_has_the_live_demos_error_mix_in_attempts_and_the_error_log(db: duckdb.DuckDBPyConnection) -> None:
    attempts, failed = one(
        db, "SELECT count(*), count(*) FILTER (outcome <> 'ok' AND outcome <> 'client_error') FROM attempts"
    )
    # Per attempt, the scenario's faults (a mid-stream fault on a non-stream call is a 500) and a few upstream 429s.
    expected = sum(mix.fault_share(False).values())
    assert expected * 0.8 < failed / attempts < expected + 0.03
    by_status = dict(db.execute("SELECT upstream_status, count(*) FROM attempts GROUP BY 1").fetchall())
    assert by_status[503] / attempts == pytest.approx(mix.FAULTS["503"], rel=0.2)
    # Every failed attempt is in the error log, with the key it was made with; so are exhausted refusals.
    (logged,) = one(
        db,
        "SELECT count(*) FROM error_logs WHERE error_type IN ('server_error', 'timeout', 'connection_error', 'rate_limited')",
    )
    assert logged == failed
    assert one(db, "SELECT count(*) FROM error_logs WHERE key_id IS NULL AND error_type <> 'exhausted'") == (0,)
    joined = one(
        db,
        "SELECT count(*) FROM error_logs e JOIN attempts a USING (request_id, key_id) WHERE e.error_type = a.outcome",
    )[0]
    assert joined >= failed * 0.99
    # Upstream attempts per success at least one on every day; requests and their attempts agree.
    daily = db.execute(
        """SELECT d, a / s FROM (SELECT ts::DATE d, count(*) FILTER (outcome = 'success') s FROM requests GROUP BY 1)
           JOIN (SELECT ts::DATE d, count(*) a FROM attempts GROUP BY 1) USING (d)"""
    ).fetchall()
    assert len(daily) >= DAYS and all(1.0 <= ratio < 1.3 for _d, ratio in daily), daily
    assert one(
        db,
        "SELECT count(*) FROM requests r WHERE attempts <> (SELECT count(*) FROM attempts a WHERE a.request_id = r.request_id)",
    ) == (0,)
    outcomes = dict(db.execute("SELECT outcome, count(*) FROM requests GROUP BY 1").fetchall())
    assert {"success", "exhausted", "client_error", "stream_error"} <= set(outcomes)
    assert outcomes["success"] / sum(outcomes.values()) > 0.8
    # The busiest hours run into the pool's capacity: exhausted refusals follow the rhythm.
    busy = dict(
        db.execute(
            "SELECT hour(ts) BETWEEN 12 AND 18, count(*) FILTER (outcome = 'exhausted') / count(*) FROM requests GROUP BY 1"
        ).fetchall()
    )
    assert busy[True] > busy[False]


def test_latest_history_marks_where_recorded_data_begins(db: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    latest = history.latest_history(db)
    assert latest is not None and END - timedelta(hours=1) <= latest < END
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    try:
        con.execute("CREATE TABLE requests (ts TIMESTAMP, request_id VARCHAR)")
        assert history.latest_history(con) is None
    finally:
        con.close()


def test_history_rows_carry_the_relays_spend_on_the_demos_tiers(db: duckdb.DuckDBPyConnection) -> None:
    from proxy_service.demo.scenario import DEMO_TIERS
    from proxy_service.prices import default_prices

    flash = default_prices()["gemini-2.5-flash"]
    rows = db.execute(
        "SELECT project, tier, served_model, prompt_tokens, output_tokens, cost_usd, list_cost_usd FROM requests "
        "WHERE outcome = 'success' AND model = 'gemini-2.5-flash' AND operation = 'generateContent' LIMIT 2000"
    ).fetchall()
    assert rows and {r[1] for r in rows} == {"free", "paid"}
    for project, tier, served, prompt, output, cost, listed in rows:
        assert served == "gemini-2.5-flash" and tier == DEMO_TIERS.get(project, "free")
        assert listed == pytest.approx((prompt * flash.input_per_mtok + output * flash.output_per_mtok) / 1e6)
        assert cost == (pytest.approx(listed) if tier == "paid" else 0.0)
    failed = db.execute("SELECT count(*) FROM requests WHERE outcome <> 'success' AND cost_usd IS NOT NULL").fetchone()
    assert failed == (0,)
