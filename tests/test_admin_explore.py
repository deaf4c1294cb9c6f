"""Explore through the admin API of a real proxy (fake Gemini behind it): real calls from two clients, labels set
through /config, answers checked against SQL over the same DuckDB file."""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from bench.analytics import GENERATE, MODELS
from proxy_service.store import Store
from proxy_service.surfaces.common import client_id
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, SCENARIO, Proxy, wait_rows

OTHER_TOKEN = "client-token-other-42"
BILLING = client_id(CLIENT_TOKEN) or ""


def admin(proxy: Proxy) -> httpx.Client:
    return httpx.Client(
        base_url=f"{proxy.url}/admin/api", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
    )


def call(proxy: Proxy, token: str, model: str, n: int = 1) -> None:
    for _ in range(n):
        r = httpx.post(
            f"{proxy.url}/v1beta/models/{model}:generateContent",
            headers={"x-goog-api-key": token},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            timeout=30,
        )
        assert r.status_code in (200, 400, 404, 429, 503), r.text


def traffic(proxy: Proxy) -> None:
    call(proxy, CLIENT_TOKEN, "gemini-2.5-flash", 4)
    call(proxy, CLIENT_TOKEN, "gemini-2.5-pro", 2)
    call(proxy, OTHER_TOKEN, "gemini-2.5-flash", 3)
    wait_rows(proxy, "SELECT 1 FROM requests HAVING count(*) >= 9")


def test_explore_answers_match_sql_with_client_labels(start_proxy: Any, upstream: Any) -> None:
    proxy = start_proxy(upstream.url, access_tokens=[CLIENT_TOKEN, OTHER_TOKEN])
    traffic(proxy)
    with admin(proxy) as api:
        r = api.patch("/config", json={"client_labels": {BILLING: "billing-service"}})
        assert r.status_code == 200, r.text
        body = {
            "measures": ["calls", "successes", "total_tokens", "p95_latency_ms"],
            "dimensions": ["client", "model"],
            "from": "2020-01-01T00:00:00Z",
        }
        ans = api.post("/explore", json=body).json()
        assert ans["columns"] == ["client", "model", "calls", "successes", "total_tokens", "p95_latency_ms"]
        expected = proxy.rows(
            "SELECT coalesce(l.label, r.client_id), model, count(*), count(*) FILTER (WHERE outcome = 'success'), "
            "sum(coalesce(total_tokens, 0)) FROM requests r LEFT JOIN client_labels l USING (client_id) GROUP BY ALL"
        )
        assert sorted(tuple(row[:5]) for row in ans["rows"]) == sorted(expected)
        assert {row[0] for row in ans["rows"]} == {"billing-service", client_id(OTHER_TOKEN)}
        # The SQL page's requests.client column carries the label too.
        q = api.post("/query", json={"sql": "SELECT DISTINCT client FROM requests ORDER BY 1", "format": "json"})
        assert [r[0] for r in q.json()["rows"]] == sorted(["billing-service", client_id(OTHER_TOKEN) or ""])
        # The clients listing (admin/clients.py): ids, labels, calls; never a token, not even masked.
        clients = {c["client_id"]: c for c in api.get("/clients").json()["items"]}
        assert clients[BILLING]["label"] == "billing-service" and CLIENT_TOKEN not in str(clients)
        assert "token" not in clients[BILLING] and clients[BILLING]["calls_90d"] == 6
        # Arrow, with compare.
        r = api.post("/explore", json={**body, "format": "arrow", "compare": "previous_period"})
        table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
        assert "calls_prev" in table.column_names and sum(table.column("calls").to_pylist()) == 9
        # Bad labels are refused naming the field.
        r = api.patch("/config", json={"client_labels": {"not-a-client": "x"}})
        assert r.status_code == 422 and r.json()["error"]["field"] == "client_labels"


def test_bad_explore_requests_are_400_naming_the_field(proxy: Proxy) -> None:
    with admin(proxy) as api:
        for body, field in (
            ({"measures": ["calls", "vibes"]}, "measures"),
            ({"measures": ["calls"], "dimensions": ["model", "key", "client"]}, "dimensions"),
            ({"measures": ["calls"], "filters": {"planet": ["mars"]}}, "filters.planet"),
            ({"measures": ["calls"], "from": "not a time"}, "from"),
            ({"measures": ["calls"], "compare": "yesterday"}, "compare"),
        ):
            r = api.post("/explore", json=body)
            assert r.status_code == 400 and r.json()["error"]["field"] == field, (body, r.text)
        r = api.post("/explore/calls", json={"cell": {"model": "(other)"}})
        assert r.status_code == 400 and r.json()["error"]["field"] == "cell"
        r = api.post("/explore/calls", json={"limit": 10**9})
        assert r.status_code == 400 and r.json()["error"]["field"] == "limit"


def test_drill_down_lists_calls_links_errors_and_opens_in_sql(proxy: Proxy, upstream: Any) -> None:
    call(proxy, CLIENT_TOKEN, "gemini-2.5-flash", 3)
    upstream.set_scenario({**SCENARIO, "error_rates": {"503": 1.0}})
    call(proxy, CLIENT_TOKEN, "gemini-2.5-flash", 2)
    wait_rows(proxy, "SELECT 1 FROM requests HAVING count(*) >= 5")
    with admin(proxy) as api:
        cell = {"model": "gemini-2.5-flash", "outcome": "upstream_error"}
        r = api.post("/explore/calls", json={"from": "2020-01-01", "cell": cell}).json()
        expected = proxy.rows("SELECT request_id FROM requests WHERE outcome = 'upstream_error'")
        assert sorted(i["request_id"] for i in r["items"]) == sorted(x[0] for x in expected) and expected
        error_id = r["items"][0]["error_id"]
        assert error_id and api.get(f"/errors/{error_id}").json()["request_id"] == r["items"][0]["request_id"]
        q = api.post("/query", json={"sql": r["sql"], "format": "json"}).json()
        names = [c["name"] for c in q["columns"]]
        assert sorted(row[names.index("request_id")] for row in q["rows"]) == sorted(x[0] for x in expected)


def test_demo_clients_have_different_habits_that_explore_shows(start_proxy: Any, upstream: Any) -> None:
    from proxy_service.demo.traffic import HABITS, TrafficGenerator

    tokens = {f"demo-client-token-{i}": h for i, h in enumerate(HABITS)}
    labels = {client_id(t): h.name for t, h in tokens.items()}
    proxy = start_proxy(upstream.url, access_tokens=list(tokens), client_labels=labels)
    traffic = TrafficGenerator(proxy.url, next(iter(tokens)), rate=40, seed=5, clients=tokens)
    traffic.start()
    try:
        wait_rows(proxy, "SELECT 1 FROM requests GROUP BY client_id HAVING count(*) >= 3 OFFSET 3", timeout=30)
    finally:
        traffic.stop()
    proxy.flush()
    with admin(proxy) as api:
        body = {"measures": ["calls"], "dimensions": ["client", "model"], "from": "2020-01-01"}
        rows = api.post("/explore", json=body).json()["rows"]
    by_client: dict[str, set[str]] = {}
    for client, model, _ in rows:
        by_client.setdefault(client, set()).add(model)
    assert len(by_client) >= 4 and set(by_client) <= {h.name for h in HABITS}
    assert by_client.get("search-indexer", {"gemini-embedding-001"}) == {"gemini-embedding-001"}
    assert by_client.get("chat-frontend", {"gemini-2.5-flash"}) == {"gemini-2.5-flash"}


def test_a_rebuild_runs_in_the_background_and_explore_answers_exactly_meanwhile(
    start_proxy: Any, upstream: Any, tmp_path: Path
) -> None:
    # A file written by an older version: 12 days of rows and no explore pre-aggregates (the rollup version is
    # missing), so the proxy starts a rebuild, one local day per writer job, and serves at once.
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    store = Store(data_dir / "keyrack.duckdb")
    cur = store.cursor()
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    cur.execute(GENERATE.format(clients=5), [MODELS, end, 20_000, 12 * 86400 * 1_000_000 // 20_000, 20_000])
    cur.close()
    store.close()
    proxy = start_proxy(upstream.url, data_dir=data_dir)
    gw = proxy.gateway
    expected = sorted(proxy.rows("SELECT model, count(*) FROM requests GROUP BY model"))
    body = {"measures": ["calls"], "dimensions": ["model"], "from": (end - timedelta(days=13)).isoformat()}
    with admin(proxy) as api:

        def answer() -> dict[str, Any]:
            r = api.post("/explore", json=body)
            assert r.status_code == 200, r.text
            ans: dict[str, Any] = r.json()
            assert sorted(tuple(row) for row in ans["rows"]) == expected  # exact whatever the state
            return ans

        deadline = time.monotonic() + 120
        while "rebuilding" in answer():
            assert time.monotonic() < deadline, "the startup rebuild did not finish"
            time.sleep(0.2)
        assert gw.rollup.usable and answer()["source"] != "raw"
        # Hold the writer in the middle of another rebuild: answers come from the raw rows and say so.
        gw.writer.submit(gw.rollup.start_rebuild).result()
        release = threading.Event()
        gw.writer.submit(lambda _cur: release.wait(60))
        try:
            ans = answer()
            assert ans["source"] == "raw" and 0 <= ans["rebuilding"] < 1
        finally:
            release.set()
        while "rebuilding" in (ans := answer()):
            assert time.monotonic() < deadline, "the rebuild did not finish"
            time.sleep(0.2)
        assert ans["source"] != "raw"


def test_stats_answers_say_when_they_are_read_raw_during_a_rebuild(
    start_proxy: Any, upstream: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    store = Store(data_dir / "keyrack.duckdb")
    cur = store.cursor()
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    cur.execute(GENERATE.format(clients=3), [MODELS, end, 3_000, 3 * 86400 * 1_000_000 // 3_000, 3_000])
    cur.close()
    store.close()
    proxy = start_proxy(upstream.url, data_dir=data_dir)
    gw = proxy.gateway
    span = {"from": (end - timedelta(days=4)).isoformat(), "to": (end + timedelta(minutes=1)).isoformat()}
    series = {**span, "granularity": "day", "group_by": "model"}
    with admin(proxy) as api:

        def answers() -> dict[str, Any]:
            """Every stats answer over the rollup, JSON and Arrow: {name: (rebuilding flag, the figures)}."""
            out: dict[str, Any] = {}
            for name, path, params in (
                ("summary", "/stats/summary", {}),
                ("series", "/stats/series", series),
                ("top", "/stats/top", {**span, "dim": "model"}),
            ):
                r = api.get(path, params=params)
                assert r.status_code == 200, r.text
                body = r.json()
                figures = {"series": body.get("rows"), "top": body.get("items")}.get(name)
                out[name] = (body.get("rebuilding"), figures)
                if name != "summary":
                    r = api.get(path, params={**params, "format": "arrow"})
                    assert r.status_code == 200, r.text
                    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
                    header = r.headers.get("x-keyrack-rebuilding")
                    out[f"{name}.arrow"] = (None if header is None else float(header), table.num_rows)
            return out

        deadline = time.monotonic() + 120
        while gw.rollup.rebuilding is not None:  # the startup rebuild (no pre-aggregates in the old file)
            assert time.monotonic() < deadline, "the startup rebuild did not finish"
            time.sleep(0.2)
        settled = answers()
        assert all(flag is None for flag, _ in settled.values()), settled  # no flag when the rollup answers
        # Hold the writer in the middle of another rebuild: the same answers, read raw, and they say so.
        gw.writer.submit(gw.rollup.start_rebuild).result()
        release = threading.Event()
        gw.writer.submit(lambda _cur: release.wait(60))
        try:
            held = answers()
        finally:
            release.set()
        assert set(held) == set(settled)
        for name, (flag, figures) in held.items():
            assert flag is not None and 0 <= flag < 1, (name, flag)
            assert figures == settled[name][1], name  # exact from the raw rows too
        while gw.rollup.rebuilding is not None:
            assert time.monotonic() < deadline, "the rebuild did not finish"
            time.sleep(0.2)
        assert all(flag is None for flag, _ in answers().values())


def test_the_answer_is_built_and_encoded_within_its_deadline(tmp_path: Path) -> None:
    """Issue 23: the Python steps after Explore's DuckDB read (building the rows, encoding JSON or Arrow) stop at the
    answer's deadline (ExploreTimeout, answered 408 like an interrupted read); within it they give the same bytes
    as the whole answer encoded at once."""
    import json
    from zoneinfo import ZoneInfo

    from proxy_service.admin import explore as admin_explore
    from proxy_service.admin.common import dumps
    from proxy_service.analytics import explore

    rows = 40_000
    store = Store(tmp_path / "keyrack.duckdb")
    cur = store.cursor()
    end = datetime.now(UTC).replace(tzinfo=None)
    cur.execute(GENERATE.format(clients=20), [MODELS, end, rows, 30 * 86400 * 1_000_000 // rows, rows])
    tz = ZoneInfo("UTC")
    body = {"measures": ["calls", "avg_latency_ms"], "dimensions": ["hour", "client"], "from": "2020-01-01T00:00:00Z"}
    spec, _fmt = explore.parse_spec(body, tz, end + timedelta(seconds=1), {})
    try:
        with pytest.raises(explore.ExploreTimeout):
            explore.answer(cur, spec, tz, zone=None, deadline=time.monotonic() - 1)
        ans = explore.answer(cur, spec, tz, zone=None, deadline=time.monotonic() + 600)
    finally:
        cur.close()
        store.close()
    assert len(ans.rows) > 2 * explore.CHECK_EVERY  # several chunks
    meta = {"timezone": ans.timezone, "source": ans.source}
    encoded = admin_explore.encode_json(ans, meta, time.monotonic() + 600)
    assert encoded == dumps({"columns": ans.columns, "rows": ans.rows, **meta})
    assert json.loads(encoded)["rows"][-1] == json.loads(dumps(ans.rows[-1:]))[0]
    assert json.loads(admin_explore.encode_json(ans, {}, None)) == json.loads(
        dumps({"columns": ans.columns, "rows": ans.rows})
    )
    with pytest.raises(explore.ExploreTimeout):
        admin_explore.encode_json(ans, meta, time.monotonic() - 1)
    with pytest.raises(explore.ExploreTimeout):
        explore.to_columns(ans, time.monotonic() - 1)
    assert explore.to_columns(ans, time.monotonic() + 600).num_rows == len(ans.rows)
