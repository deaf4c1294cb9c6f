"""Explore: the pre-aggregates and the query builder against plain SQL over the raw rows, on a real DuckDB file."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy_service.analytics import explore, preagg
from proxy_service.analytics.rollup import Rollup
from proxy_service.events import AttemptEvent
from tests.analytics.test_queries import DB, event

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
START = datetime(2026, 3, 6, 0, 0)  # spans the New York DST change of 2026-03-08
END = START + timedelta(days=4)
# What the exactness tests ask for: counters, token sums, a ratio and a percentile.
MEASURES = [
    "calls",
    "successes",
    "prompt_tokens",
    "output_tokens",
    "total_tokens",
    "upstream_429s",
    "attempts_per_call",
    "p95_latency_ms",
]
CLIENTS = ["t_billing", "t_search", "t_batch", None]
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"]
RESOURCES = [None, None, None, "file", "cachedContent", "batch", "live"]


def traffic(n: int, seed: int = 7) -> tuple[list[Any], list[AttemptEvent]]:
    rnd = random.Random(seed)
    events, attempts = [], []
    for i in range(n):
        ts = START + timedelta(seconds=rnd.uniform(0, (END - START).total_seconds()))
        outcome = rnd.choice(["success"] * 6 + ["exhausted", "upstream_error", "client_error"])
        status = {"success": 200, "exhausted": 429, "upstream_error": 503, "client_error": 400}[outcome]
        n_att = 0 if outcome == "exhausted" else rnd.randint(1, 3)
        rid = f"q{i}"
        for a in range(n_att):
            attempts.append(
                AttemptEvent(
                    ts=ts + timedelta(seconds=a),
                    request_id=rid,
                    attempt=a + 1,
                    key_id="k_1",
                    project="p1",
                    model="m",
                    upstream_status=429 if a < n_att - 1 else status,
                    outcome="rate_limited" if a < n_att - 1 else "ok",
                    latency_ms=5.0,
                )
            )
        events.append(
            event(
                ts,
                i,
                request_id=rid,
                client_id=rnd.choice(CLIENTS),
                model=rnd.choice(MODELS),
                project=rnd.choice(["p1", "p2", None]),
                key_id=f"k_{rnd.randint(1, 12)}",
                surface=rnd.choice(["gemini", "openai"]),
                stream=rnd.random() < 0.3,
                status=status,
                outcome=outcome,
                attempts=n_att,
                latency_ms=rnd.lognormvariate(6, 1),
                ttfb_ms=rnd.choice([None, rnd.uniform(20, 900)]),
                prompt_tokens=rnd.randint(0, 5000),
                output_tokens=rnd.choice([None, rnd.randint(0, 900)]),
                total_tokens=rnd.randint(0, 6000),
                request_bytes=rnd.randint(100, 9000),
                resource_kind=RESOURCES[i % len(RESOURCES)],  # not drawn: the other columns' draws stay as they were
                tier=("free", "paid", None)[i % 3],
            )
        )
    return events, attempts


@pytest.fixture(scope="module")
def loaded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's traffic written once, folded and compacted, then closed: each test opens a copy of its own
    (writing 3,000 calls through the writer is most of a test's time; copying the closed file is not)."""
    where = tmp_path_factory.mktemp("explore-loaded")
    d = DB(where / "k.duckdb")
    events, attempts = traffic(3000)
    for a in attempts:  # as the relay does: a call's attempts are recorded before the call itself
        d.writer.record(a)
    d.add(*events, compact=True)
    d.close()
    return where


@pytest.fixture
def loaded(loaded_dir: Path, tmp_path: Path) -> Iterator[DB]:
    """A private copy of the loaded file, opened as a restarted proxy opens its data (tests change it freely)."""
    copy = tmp_path / "loaded"
    shutil.copytree(loaded_dir, copy)
    d = DB(copy / "k.duckdb")
    yield d
    d.close()


def ask(db: DB, tz: ZoneInfo = UTC, labels: dict[str, str] | None = None, **body: Any) -> explore.Answer:
    spec, _ = explore.parse_spec(body, tz, END, labels)
    db.writer.submit(db.rollup.fold).result()
    return explore.answer(db.cur, spec, tz, labels, zone=db.rollup.zone)


LOCAL = {
    "hour_of_day": "hour(timezone('{tz}', ts::TIMESTAMPTZ))",
    "day_of_week": "isodow(timezone('{tz}', ts::TIMESTAMPTZ))",
    "day": "strftime(date_trunc('day', timezone('{tz}', ts::TIMESTAMPTZ)), '%Y-%m-%dT%H:%M:%S')",
    "hour": "strftime(date_trunc('hour', timezone('{tz}', ts::TIMESTAMPTZ)), '%Y-%m-%dT%H:%M:%S')",
    "week": "strftime(date_trunc('week', timezone('{tz}', ts::TIMESTAMPTZ)), '%Y-%m-%dT%H:%M:%S')",
    "month": "strftime(date_trunc('month', timezone('{tz}', ts::TIMESTAMPTZ)), '%Y-%m-%dT%H:%M:%S')",
}
RAW = {**preagg.RAW_DIMS, "key": "coalesce(key_id, '')", "tier": "coalesce(tier, '')", **LOCAL}


def raw_sql(
    db: DB,
    dims: list[str],
    tz: ZoneInfo,
    lo: datetime,
    hi: datetime,
    where: str = "",
    tops: dict[str, list[str]] | None = None,
) -> dict:
    """The reference answer: plain SQL over requests (and attempts), ICU time zones. `tops`: per dimension, the
    values kept; the others read as "(other)"."""
    db.cur.execute("SET TimeZone = 'UTC'")
    keys = [RAW[d].format(tz=tz.key) for d in dims]
    folds = [v for d in dims for v in ([tops[d]] if tops and d in tops else [])]
    keys = [
        f"CASE WHEN list_contains(?, {k}) THEN {k} ELSE '{explore.OTHER}' END" if tops and d in tops else k
        for d, k in zip(dims, keys, strict=True)
    ]
    sel = ", ".join([*keys, ""]) if keys else ""
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    rows = db.cur.execute(
        f"""SELECT {sel} count(*), count(*) FILTER (WHERE outcome = 'success'), sum(coalesce(prompt_tokens, 0)),
                   sum(coalesce(output_tokens, 0)), sum(coalesce(total_tokens, 0)),
                   sum((SELECT count(*) FROM attempts a WHERE a.request_id = r.request_id AND a.upstream_status = 429)),
                   sum(attempts), quantile_disc(latency_ms, 0.95)
            FROM requests r WHERE ts >= ? AND ts < ? {where} {group}""",
        [*folds, lo, hi],
    ).fetchall()
    n = len(keys)
    return {tuple(r[:n]): r[n:] for r in rows}


def normal(dim: str, v: Any) -> Any:
    if dim in explore.TIME_BUCKETS:
        return v[:19]
    if v is None:
        return ""
    return str(v).lower() if dim in ("status", "stream") else v


@pytest.mark.parametrize(
    ("dims", "tz", "lo", "hi"),
    [
        ([], UTC, START, END),
        (["model"], UTC, START + timedelta(minutes=17), END - timedelta(minutes=43)),  # partial hours: raw edges
        (["model", "client"], NY, START, END),
        (["project", "status"], UTC, START + timedelta(hours=5), END),
        (["hour_of_day", "day_of_week"], NY, START, END),
        (["day", "surface"], NY, START + timedelta(minutes=30), END),
        (["key", "stream"], UTC, START, END),  # key with another dimension: counters per day (percentiles raw)
        (["client", "key"], NY, START + timedelta(minutes=30), END),  # key × client: raw rows
        (["key"], NY, START + timedelta(minutes=30), END),  # key alone: counters per local day
        (["hour_of_day", "outcome"], KOLKATA, START, END),  # a half-hour zone: raw rows
        (["resource", "project"], NY, START, END),  # the resource kind, like every low-cardinality dimension
        (["resource"], UTC, START + timedelta(minutes=17), END),
        (["tier", "model"], NY, START, END),  # the billing tier: raw rows whatever the pre-aggregates hold
    ],
)
# The pre-aggregates' local days in UTC or New York, or raw rows only (as while they are rebuilt).
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", None])
def test_counts_and_token_sums_equal_raw_sql_and_percentiles_are_within_two_percent(
    loaded: DB, dims: list[str], tz: ZoneInfo, lo: datetime, hi: datetime, zone: str | None
) -> None:
    if zone is not None:
        loaded.writer.submit(lambda cur: loaded.rollup.rezone(cur, zone)).result()
    spec, _ = explore.parse_spec(
        {"measures": MEASURES, "dimensions": dims, "from": lo.isoformat(), "to": hi.isoformat()}, tz, END
    )
    ans = explore.answer(loaded.cur, spec, tz, zone=zone)
    expected = raw_sql(loaded, dims, tz, lo, hi)
    got = {tuple(normal(d, v) for d, v in zip(dims, row, strict=False)): row[len(dims) :] for row in ans.rows}
    assert set(got) == set(expected)
    assert sum(r[0] for r in expected.values()) > 100
    for key, (calls, ok, prompt, output, total, u429, attempts, p95) in expected.items():
        row = got[key]
        assert row[:6] == [calls, ok, prompt, output, total, u429], key
        assert row[6] == pytest.approx(attempts / calls)
        assert row[7] == pytest.approx(p95, rel=0.021), key
    raw_only = zone is None or {"key", "client"} <= set(dims) or tz is KOLKATA or "tier" in dims
    assert (ans.source == "raw") == raw_only


@pytest.mark.parametrize("dim", [*explore.TIME_BUCKETS, *explore.CLOCK_DIMS])
@pytest.mark.parametrize("tz", [NY, KOLKATA])
@pytest.mark.parametrize("zone", ["America/New_York", None])
def test_time_dimensions_from_integer_local_time_equal_icu_sql(
    loaded: DB, dim: str, tz: ZoneInfo, zone: str | None
) -> None:
    """Local time is computed as integer microseconds (DST changes as a CASE): every time dimension, across the New
    York DST change and in a half-hour zone, equals ICU's `timezone()` + `date_trunc` / `hour` / `isodow`."""
    if zone is not None:
        loaded.writer.submit(lambda cur: loaded.rollup.rezone(cur, zone)).result()
    lo = START + timedelta(minutes=30)
    spec, _ = explore.parse_spec(
        {"measures": ["calls"], "dimensions": [dim, "model"], "from": lo.isoformat(), "to": END.isoformat()}, tz, END
    )
    ans = explore.answer(loaded.cur, spec, tz, zone=zone)
    expected = raw_sql(loaded, [dim, "model"], tz, lo, END)
    assert {(normal(dim, r[0]), r[1]): r[2] for r in ans.rows} == {k: v[0] for k, v in expected.items()}
    assert len({r[0] for r in ans.rows}) > 1 or dim == "month"  # the rows span one month


def test_filters_on_several_dimensions_match_raw_sql(loaded: DB) -> None:
    ans = ask(
        loaded,
        NY,
        measures=["calls", "total_tokens"],
        dimensions=["model"],
        filters={"surface": ["openai"], "stream": [True], "client": ["t_billing", None], "hour_of_day": [9, 10]},
        **{"from": START.isoformat(), "to": END.isoformat()},
    )
    where = (
        "AND surface = 'openai' AND stream AND (client_id = 't_billing' OR client_id IS NULL) "
        "AND hour(timezone('America/New_York', ts::TIMESTAMPTZ)) IN (9, 10)"
    )
    expected = raw_sql(loaded, ["model"], NY, START, END, where)
    assert {r[0]: r[1:] for r in ans.rows} == {k[0]: [v[0], v[4]] for k, v in expected.items()}
    assert ans.rows


@pytest.mark.parametrize(
    "filters",
    [
        {"status": ["200", "0429", "x", 7]},  # "0429" and "x" name no status
        {"stream": [False, "maybe"], "outcome": ["success", None]},
        {"stream": [None], "model": ["nope"]},  # no row: an empty answer
        {"key": [None, ""], "status": [None]},
        {"resource": ["file", None], "model": ["gemini-2.5-pro"]},
    ],
)
@pytest.mark.parametrize("zone", ["UTC", None])
def test_text_filters_on_raw_rows_compare_as_their_text_does(
    loaded: DB, filters: dict[str, list[Any]], zone: str | None
) -> None:
    """Raw rows are filtered on the columns in their own types; the answer is the one of comparing their text
    (`coalesce(CAST(col AS VARCHAR), '')`), as the pre-aggregates do."""
    spec, _ = explore.parse_spec(
        {"measures": ["calls"], "dimensions": ["surface"], "filters": filters, "from": START.isoformat()}, UTC, END
    )
    loaded.writer.submit(loaded.rollup.fold).result()
    ans = explore.answer(loaded.cur, spec, UTC, zone=zone)
    where = "".join(
        f" AND coalesce(CAST({ {'key': 'key_id', 'resource': 'resource_kind'}.get(d, d) } AS VARCHAR), '') IN "
        f"({', '.join(repr('' if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for v in vs)})"
        for d, vs in filters.items()
    )
    expected = raw_sql(loaded, ["surface"], UTC, START, END, where)
    assert {r[0]: r[1] for r in ans.rows} == {k[0]: v[0] for k, v in expected.items()}


def test_compare_gives_previous_period_and_delta(loaded: DB) -> None:
    mid = START + timedelta(days=2)
    ans = ask(
        loaded,
        measures=["calls", "p50_latency_ms"],
        dimensions=["model"],
        compare="previous_period",
        **{"from": mid.isoformat(), "to": END.isoformat()},
    )
    assert ans.columns == [
        "model",
        "calls",
        "p50_latency_ms",
        "calls_prev",
        "calls_delta",
        "p50_latency_ms_prev",
        "p50_latency_ms_delta",
    ]
    now, before = raw_sql(loaded, ["model"], UTC, mid, END), raw_sql(loaded, ["model"], UTC, START, mid)
    for row in ans.rows:
        assert row[1] == now[(row[0],)][0] and row[3] == before[(row[0],)][0] and row[4] == row[1] - row[3]
        assert row[6] == pytest.approx(row[2] - row[5])
    assert ans.compare_lo == START and ans.compare_hi == mid


def test_compare_matches_time_buckets_by_position(loaded: DB) -> None:
    mid = START + timedelta(days=2)
    ans = ask(
        loaded,
        measures=["calls"],
        dimensions=["day"],
        compare="previous_period",
        **{"from": mid.isoformat(), "to": END.isoformat()},
    )
    assert [r[0][:10] for r in ans.rows] == ["2026-03-08", "2026-03-09"]
    before = raw_sql(loaded, ["day"], UTC, START, mid)
    assert [r[2] for r in ans.rows] == [before[d][0] for d in sorted(before)]


def test_top_n_folds_the_rest_into_other_exactly(loaded: DB) -> None:
    ans = ask(
        loaded,
        measures=["calls", "p95_latency_ms"],
        dimensions=["key"],
        top_n=3,
        **{"from": START.isoformat(), "to": END.isoformat()},
    )
    assert len(ans.rows) == 4 and ans.rows[-1][0] == explore.OTHER
    assert sum(r[1] for r in ans.rows) == 3000
    full = raw_sql(loaded, ["key"], UTC, START, END)
    top = sorted(full.items(), key=lambda kv: (-kv[1][0], kv[0]))[:3]
    assert [(r[0], r[1]) for r in ans.rows[:3]] == sorted((k[0], v[0]) for k, v in top)


@pytest.mark.parametrize(
    ("dims", "tz", "lo", "top_n", "filters", "where"),
    [
        (["hour", "key"], NY, START + timedelta(minutes=30), 3, {}, ""),
        (["key", "status"], NY, START, 3, {}, ""),
        (["day", "key"], NY, START + timedelta(hours=5), 4, {"model": MODELS[:2]}, f"AND model IN {tuple(MODELS[:2])}"),
        (["key", "client"], UTC, START, 2, {}, ""),  # both folded: client's top 2 too
        (["key", "outcome"], UTC, START, 3, {"stream": [True]}, "AND stream"),
        (["key"], NY, START + timedelta(minutes=30), 3, {}, ""),
        # OTHER is one key: in the hours it has no call there is no OTHER row (top − top = 0 calls)
        (
            ["hour", "key"],
            UTC,
            START,
            3,
            {"key": ["k_1", "k_2", "k_3", "k_4"]},
            "AND key_id IN ('k_1','k_2','k_3','k_4')",
        ),
    ],
)
@pytest.mark.parametrize("zone", ["America/New_York", None])
def test_top_n_of_keys_from_the_top_values_and_the_rest_as_a_difference_equals_raw_sql(
    loaded: DB,
    dims: list[str],
    tz: ZoneInfo,
    lo: datetime,
    top_n: int,
    filters: dict[str, list[Any]],
    where: str,
    zone: str | None,
) -> None:
    """A top N of keys reads the top keys alone (a filter) and the whole range without the key; "(other)" is the
    difference, counters and histogram buckets alike: equal to grouping the raw rows with the rest folded."""
    if zone is not None:
        loaded.writer.submit(lambda cur: loaded.rollup.rezone(cur, zone)).result()
    body = {"measures": MEASURES, "dimensions": dims, "top_n": top_n, "filters": filters}
    spec, _ = explore.parse_spec({**body, "from": lo.isoformat(), "to": END.isoformat()}, tz, END)
    assert explore._split(spec, {"key": ["k_1"]}) is not None
    ans = explore.answer(loaded.cur, spec, tz, zone=zone)
    tops = {}
    for d in dims:
        if d in explore.TEXT_DIMS:
            ranked = sorted(raw_sql(loaded, [d], tz, lo, END, where).items(), key=lambda kv: (-kv[1][0], kv[0][0]))
            tops[d] = [k[0] for k, _ in ranked[:top_n]] if len(ranked) > top_n else [k[0] for k, _ in ranked]
    expected = raw_sql(loaded, dims, tz, lo, END, where, tops)
    got = {tuple(normal(d, v) for d, v in zip(dims, row, strict=False)): row[len(dims) :] for row in ans.rows}
    assert set(got) == set(expected)
    i = dims.index("key")
    assert any(k[i] == explore.OTHER for k in got) and sum(v[0] for v in expected.values()) > 100
    for key, (calls, ok, prompt, output, total, u429, attempts, p95) in expected.items():
        row = got[key]
        assert row[:6] == [calls, ok, prompt, output, total, u429], key
        assert row[6] == pytest.approx(attempts / calls)
        assert row[7] == pytest.approx(p95, rel=0.021), key


@pytest.mark.parametrize(
    ("dims", "top_n"), [(["status", "stream"], None), (["hour", "client"], 2), (["status", "model"], 2), ([], None)]
)
# Groups up to which raw-row percentiles come from histograms: 0 = always `quantile_disc`.
@pytest.mark.parametrize("few", [0, explore.FEW_GROUPS])
def test_raw_row_percentiles_of_every_kind_are_within_two_percent(
    loaded: DB, dims: list[str], top_n: int | None, few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Percentiles from raw rows alone (`quantile_disc` of the stored bucket or, for few groups, a histogram per
    group; status / stream grouped as columns unless folded): latency and TTFB, p50 to p99, NULL TTFBs left out,
    top N folding."""
    monkeypatch.setattr(explore, "FEW_GROUPS", few)
    body = {"measures": ["calls", "p50_latency_ms", "p99_latency_ms", "p50_ttfb_ms", "p95_ttfb_ms"], "dimensions": dims}
    body |= {"top_n": top_n} if top_n else {}
    raw_reads: list[str] = []
    read = explore._raw_percentiles
    monkeypatch.setattr(explore, "_raw_percentiles", lambda *a: raw_reads.append(a[5]) or read(*a))
    ans = ask(loaded, NY, **body, **{"from": START.isoformat(), "to": END.isoformat()})
    assert raw_reads == (["l", "t"] if dims else [])  # no dimension: from the pre-aggregates
    tops = {}
    for d in dims if top_n else ():
        ranked = sorted(raw_sql(loaded, [d], NY, START, END).items(), key=lambda kv: (-kv[1][0], kv[0][0]))
        if d in explore.TEXT_DIMS and len(ranked) > top_n:
            tops[d] = [k[0] for k, _ in ranked[:top_n]]
    loaded.cur.execute("SET TimeZone = 'UTC'")
    keys = [RAW[d].format(tz=NY.key) for d in dims]
    keys = [
        f"CASE WHEN list_contains(?, {k}) THEN {k} ELSE '(other)' END" if d in tops else k
        for d, k in zip(dims, keys, strict=True)
    ]
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}" if keys else ""
    rows = loaded.cur.execute(
        f"""SELECT {"".join(k + ", " for k in keys)} count(*), quantile_disc(latency_ms, [0.5, 0.99]),
                   quantile_disc(ttfb_ms, [0.5, 0.95]) FROM requests WHERE ts >= ? AND ts < ? {group}""",
        [*tops.values(), START, END],
    ).fetchall()
    expected = {tuple(r[: len(dims)]): r[len(dims) :] for r in rows}
    got = {tuple(normal(d, v) for d, v in zip(dims, row, strict=False)): row[len(dims) :] for row in ans.rows}
    assert set(got) == set(expected)
    for key, (calls, lat, ttfb) in expected.items():
        assert got[key][0] == calls
        assert got[key][1:3] == pytest.approx(lat, rel=0.021), key
        if ttfb is None:  # no call of the group has a TTFB
            assert got[key][3:5] == [None, None], key
        else:
            assert got[key][3:5] == pytest.approx(ttfb, rel=0.021), key


@pytest.mark.parametrize("dims", [["model", "client"], ["day", "outcome"], ["status"], []])
def test_percentiles_by_group_values_when_group_hashes_collide(
    loaded: DB, dims: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Histograms are grouped by a hash of the group (cheaper than by its texts); should two groups' hashes collide,
    they are grouped by their values instead. A constant key makes every group collide."""
    body = {"measures": ["calls", "p50_latency_ms", "p95_latency_ms", "p95_ttfb_ms"], "dimensions": dims}
    body |= {"from": START.isoformat(), "to": END.isoformat()}
    hashed = ask(loaded, NY, **body)
    monkeypatch.setattr(explore, "GROUP_KEY", "0")
    by_values = ask(loaded, NY, **body)
    assert by_values.rows == hashed.rows
    assert len({tuple(r[-3:]) for r in hashed.rows}) > 1 or not dims  # the groups' percentiles differ
    expected = raw_sql(loaded, [d for d in dims if d != "day"], NY, START, END) if "day" not in dims else None
    for row in hashed.rows if expected is not None else ():
        key = tuple(normal(d, v) for d, v in zip(dims, row, strict=False))
        assert row[len(dims) + 2] == pytest.approx(expected[key][-1], rel=0.021)


def test_client_labels_show_and_filter(loaded: DB) -> None:
    labels = {"t_billing": "billing-service"}
    ans = ask(
        loaded,
        labels=labels,
        measures=["calls"],
        dimensions=["client"],
        filters={"client": ["billing-service"]},
        **{"from": START.isoformat(), "to": END.isoformat()},
    )
    expected = raw_sql(loaded, [], UTC, START, END, "AND client_id = 't_billing'")
    assert ans.rows == [["billing-service", expected[()][0]]]


def test_the_cube_follows_appends_after_compaction(loaded: DB) -> None:
    extra, _ = traffic(50, seed=99)
    loaded.add(
        *[
            event(e.ts, 0, **{k: getattr(e, k) for k in ("model", "client_id")}, request_id=f"x{i}")
            for i, e in enumerate(extra)
        ]
    )
    ans = ask(loaded, measures=["calls"], **{"from": START.isoformat(), "to": END.isoformat()})
    assert ans.rows == [[3050]]
    loaded.writer.submit(loaded.rollup.compact).result()
    for grain in preagg.GRAINS:
        rows = loaded.cur.execute(f"SELECT sum(calls) FROM {preagg.COUNTERS} WHERE grain = ? AND a = ''", [grain])
        assert rows.fetchone() == (3050,)


def test_drill_down_lists_the_calls_and_the_sql_page_query_agrees(loaded: DB) -> None:
    spec, _ = explore.parse_spec(
        {
            "measures": ["calls"],
            "filters": {"model": ["gemini-2.5-pro"], "hour_of_day": [3], "outcome": ["exhausted"]},
            "from": START.isoformat(),
            "to": END.isoformat(),
        },
        NY,
        END,
    )
    calls = explore.calls(loaded.cur, spec, NY, limit=1000)
    expected = raw_sql(
        loaded,
        [],
        NY,
        START,
        END,
        "AND model = 'gemini-2.5-pro' AND outcome = 'exhausted' AND "
        "hour(timezone('America/New_York', ts::TIMESTAMPTZ)) = 3",
    )
    assert len(calls) == expected[()][0] > 0
    assert all(c["model"] == "gemini-2.5-pro" and c["outcome"] == "exhausted" for c in calls)
    text = explore.sql_text(spec, NY)
    assert "'gemini-2.5-pro'" in text and "?" not in text
    rows = loaded.cur.execute(text.replace("FROM requests", "FROM safe.requests")).fetchall()
    assert sorted(r[1] for r in rows) == sorted(c["request_id"] for c in calls)


def test_sql_text_quotes_values_safely(loaded: DB) -> None:
    spec, _ = explore.parse_spec({"measures": ["calls"], "filters": {"model": ["x'); DROP TABLE keys; --"]}}, UTC, END)
    text = explore.sql_text(spec, UTC)
    assert loaded.cur.execute(text).fetchall() == []
    assert loaded.cur.execute("SELECT count(*) FROM keys").fetchone() is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"measures": ["calls", "nope"]}, "measures"),
        ({"measures": []}, "measures"),
        ({"measures": "calls"}, "measures"),
        ({"measures": ["calls"], "dimensions": ["model", "key", "client"]}, "dimensions"),
        ({"measures": ["calls"], "dimensions": ["colour"]}, "dimensions"),
        ({"measures": ["calls"], "dimensions": ["model", "model"]}, "dimensions"),
        ({"measures": ["calls"], "filters": {"colour": ["red"]}}, "filters.colour"),
        ({"measures": ["calls"], "filters": {"model": "x"}}, "filters.model"),
        ({"measures": ["calls"], "filters": {"hour_of_day": [24]}}, "filters.hour_of_day"),
        ({"measures": ["calls"], "filters": {"model": [{"a": 1}]}}, "filters.model"),
        ({"measures": ["calls"], "from": "yesterday"}, "from"),
        ({"measures": ["calls"], "from": "2026-03-02", "to": "2026-03-01"}, "from"),
        ({"measures": ["calls"], "compare": "last_year"}, "compare"),
        ({"measures": ["calls"], "top_n": 0}, "top_n"),
        ({"measures": ["calls"], "top_n": 1e30}, "top_n"),
        ({"measures": ["calls"], "format": "csv"}, "format"),
        ({"measures": ["calls"], "colour": 1}, "colour"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(explore.ExploreError) as err:
        explore.parse_spec(body, UTC, END)
    assert err.value.field == field


def test_up_to_now_the_current_day_comes_whole_from_the_pre_aggregates(loaded: DB) -> None:
    loaded.writer.submit(loaded.rollup.fold).result()
    now = END + timedelta(minutes=20)  # mid-hour: nothing was recorded after it
    spec, _ = explore.parse_spec({"measures": ["calls"], "from": START.isoformat()}, UTC, now)
    ans = explore.answer(loaded.cur, spec, UTC, zone="UTC")
    assert ans.rows == [[3000]] and ans.source == "cube" and ans.hi == now


def _agree(db: DB, tz: ZoneInfo) -> None:
    """Every shape of the exactness test, answered from the pre-aggregates, equals SQL over the raw rows."""
    for dims in (["model", "client"], ["day", "outcome"], ["hour_of_day"], []):
        ans = ask(
            db,
            tz,
            measures=["calls", "total_tokens", "upstream_429s"],
            dimensions=dims,
            **{"from": START.isoformat(), "to": (END + timedelta(days=1)).isoformat()},
        )
        assert ans.source != "raw", dims
        got = {tuple(normal(d, v) for d, v in zip(dims, row, strict=False)): row[len(dims) :] for row in ans.rows}
        expected = raw_sql(db, dims, tz, START, END + timedelta(days=1))
        assert got == {k: [v[0], v[4], v[5]] for k, v in expected.items()}, dims


def test_a_background_rebuild_reads_raw_meanwhile_and_counts_rows_appended_during_it_once(loaded: DB) -> None:
    rollup = loaded.rollup
    # As after an upgrade: the stored version is not this one, so install only starts a rebuild.
    loaded.writer.submit(lambda cur: cur.execute("DELETE FROM rollup_meta WHERE name = 'version'")).result()
    loaded.writer.submit(lambda cur: rollup.install(cur, background=True)).result()
    assert rollup.rebuilding is not None and not rollup.usable and rollup.progress == 0.0
    spec, _ = explore.parse_spec({"measures": ["calls"], "from": START.isoformat(), "to": END.isoformat()}, UTC, END)
    assert explore.answer(loaded.cur, spec, UTC, zone=None).rows == [[3000]]  # what the API answers meanwhile
    assert loaded.writer.submit(rollup.rebuild_step).result()  # the first day is rebuilt
    assert 0 < (rollup.progress or 0) < 1
    # Rows arrive: in the day already rebuilt (folded), in a day still to come (left to its chunk), newer than all.
    late = [
        event(START + timedelta(hours=1), 0, request_id="late1", model="gemini-2.5-pro", client_id="t_late"),
        event(END - timedelta(hours=1), 0, request_id="late2", model="gemini-2.5-pro", client_id="t_late"),
        event(END + timedelta(hours=2), 0, request_id="late3", model="gemini-2.5-pro", client_id="t_late"),
    ]
    loaded.add(*late, compact=True)
    while loaded.writer.submit(rollup.rebuild_step).result():
        pass
    assert rollup.usable and rollup.progress is None
    loaded.writer.submit(rollup.compact).result()
    _agree(loaded, UTC)
    for grain in preagg.GRAINS:
        rows = loaded.cur.execute(f"SELECT sum(calls) FROM {preagg.COUNTERS} WHERE grain = ? AND a = ''", [grain])
        assert rows.fetchone() == (3003,)


def test_a_display_zone_change_rebuilds_the_local_days(loaded: DB) -> None:
    loaded.writer.submit(lambda cur: loaded.rollup.rezone(cur, NY.key)).result()
    assert loaded.rollup.usable  # not in the background here: rebuilt before answering
    _agree(loaded, NY)
    # A query in another zone than the days': local days of that zone from the hours, still exact.
    spec, _ = explore.parse_spec(
        {"measures": ["calls"], "dimensions": ["day", "model"], "from": START.isoformat(), "to": END.isoformat()},
        UTC,
        END,
    )
    ans = explore.answer(loaded.cur, spec, UTC, zone=NY.key)
    expected = raw_sql(loaded, ["day", "model"], UTC, START, END)
    assert {(r[0][:19], r[1]): r[2] for r in ans.rows} == {k: v[0] for k, v in expected.items()}


def test_retention_in_the_middle_of_a_local_day_keeps_that_day_equal_to_the_raw_rows(loaded: DB) -> None:
    loaded.writer.submit(lambda cur: loaded.rollup.rezone(cur, NY.key)).result()
    cutoff = START + timedelta(days=1, hours=7)  # 02:00 in New York: inside a local day

    def retention(cur: Any) -> None:
        cur.execute("DELETE FROM requests WHERE ts < ?", [cutoff])
        loaded.rollup.trim(cur, cutoff)

    loaded.writer.submit(retention).result()
    _agree(loaded, NY)


def test_touch_lets_a_new_process_compact_the_partial_rows_an_earlier_one_folded(loaded: DB) -> None:
    extra, _ = traffic(40, seed=5)
    loaded.add(*[event(e.ts, 0, model=e.model, request_id=f"t{i}") for i, e in enumerate(extra)])  # folded only
    partial = f"SELECT count(*) FROM (SELECT 1 FROM {preagg.COUNTERS} GROUP BY bucket, grain, a, av, b, bv HAVING count(*) > 1)"
    assert loaded.cur.execute(partial).fetchone() != (0,)
    fresh = Rollup()  # a new process: it knows of no bucket appended to
    assert loaded.writer.submit(fresh.compact).result() == 0
    fresh.touch(START, END)
    loaded.writer.submit(fresh.compact).result()
    assert loaded.cur.execute(partial).fetchone() == (0,)
    assert set(preagg.total_calls(loaded.cur).values()) == {3040}


def test_a_new_process_merges_the_partial_rows_an_earlier_one_left_in_the_last_hour(loaded: DB) -> None:
    """The gateway's start (install in the background mode) marks the last hour as touched, so the first compaction
    merges what a killed or stopped process folded after its last one."""
    last = loaded.cur.execute("SELECT max(ts) FROM requests").fetchone()[0]
    loaded.add(*[event(last - timedelta(minutes=i), 0, request_id=f"late{i}") for i in range(50)])  # folded only
    partial = f"SELECT count(*) FROM (SELECT 1 FROM {preagg.COUNTERS} GROUP BY bucket, grain, a, av, b, bv HAVING count(*) > 1)"
    assert loaded.cur.execute(partial).fetchone() != (0,)
    fresh = Rollup()
    loaded.writer.submit(lambda cur: fresh.install(cur, background=True)).result()
    assert fresh.rebuilding is None  # the tables agreed with `requests`: nothing was rebuilt
    loaded.writer.submit(fresh.compact).result()
    assert loaded.cur.execute(partial).fetchone() == (0,)
    assert set(preagg.total_calls(loaded.cur).values()) == {3050}
