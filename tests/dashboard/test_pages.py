"""AppTest: every dashboard page against a real proxy (admin API) with real data — no mocked client."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from datetime import date, timedelta

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.logic.i18n import t
from proxy_service import dashboard_link
from proxy_service.keys import key_id
from tests.conftest import fake_key
from tests.dashboard.conftest import ADMIN_TOKEN, APP, Stack, open_app, sign_in


def start(page: str | None = None) -> AppTest:
    """A session signed in (through the form), on `page`."""
    return ok(open_app(page))


def fresh() -> AppTest:
    """A new visitor's first run: no cookie, nothing typed yet."""
    return ok(AppTest.from_file(str(APP), default_timeout=30).run())


def ok(at: AppTest) -> AppTest:
    """No traceback anywhere on screen."""
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def select(at: AppTest, table: str, *rows: int) -> AppTest:
    at.session_state[table] = {"selection": {"rows": list(rows), "columns": [], "cells": []}}
    return ok(at.run())


def search(at: AppTest, text: str) -> AppTest:
    at.text_input(key="key_q").input(text)
    return ok(at.run())


def kt(at: AppTest) -> list:  # type: ignore[type-arg]
    """Monitor's key tables (active, then invalid/disabled), whatever else the page shows above them."""
    return [d for d in at.dataframe if d.key in ("tbl_active", "tbl_inactive")]


def unique(prefix: str) -> str:
    return fake_key(f"{prefix}-{uuid.uuid4().hex[:12]}")


# -- login gate ------------------------------------------------------------------------------------------------
def test_login_with_wrong_token_shows_a_clear_message(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", "")
    at = fresh()
    assert "Sign in to Keyrack" in texts(at.title)
    at.text_input(key="login_token").input("not-the-token")
    ok(at.button[0].click().run())
    assert any("not accepted" in e for e in texts(at.error)), texts(at.error)
    assert "Monitor" not in texts(at.title)

    at.text_input(key="login_token").input(ADMIN_TOKEN)
    ok(at.button[0].click().run())
    assert "Monitor" in texts(at.title)


PAGE_TITLES = {"monitor": "Monitor", "trends": "Trends", "error_logs": "Error logs", "config": "Config", "sql": "SQL"}


@pytest.mark.parametrize("page", list(PAGE_TITLES))
def test_a_deep_link_without_a_session_shows_the_login_then_that_page(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, page: str
) -> None:
    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", "")
    at = AppTest.from_file(str(APP), default_timeout=30)
    ok(at.run())
    ok(at.switch_page(f"screens/{page}.py").run())
    assert texts(at.title) == ["Sign in to Keyrack"]  # nothing of the page itself
    assert not at.dataframe and not at.get("plotly_chart")
    at.text_input(key="login_token").input(ADMIN_TOKEN)
    ok(at.button[0].click().run())
    assert PAGE_TITLES[page] in texts(at.title)


def test_sign_out_really_signs_out(dash_env: Stack) -> None:
    at = start("trends")
    ok(at.sidebar.button(key="logout").click().run())
    assert texts(at.title) == ["Sign in to Keyrack"]
    assert "auth" not in at.session_state and not at.text_input(key="login_token").value
    ok(at.run())  # the env token is not used by itself
    assert texts(at.title) == ["Sign in to Keyrack"]


def test_unreachable_proxy_is_explained_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KEYRACK_ADMIN_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", "anything")
    at = sign_in(fresh(), "anything")
    assert any("Cannot reach the proxy" in e for e in texts(at.error)), texts(at.error)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "0.0.0.0", ""])
def test_the_env_token_never_signs_a_visitor_in_by_itself(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    # The env token is there (as under `keyrack run`), but a visitor with neither the link's cookie nor the token
    # sees the sign-in form, whatever address the dashboard listens on (DNS rebinding makes loopback no proof).
    from streamlit import config

    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv(dashboard_link.KEY_ENV, dashboard_link.new_key())
    before = config.get_option("server.address")
    config.set_option("server.address", address)
    try:
        at = fresh()
        assert texts(at.title) == ["Sign in to Keyrack"] and not at.dataframe and not at.metric
        ok(at.run())
        assert texts(at.title) == ["Sign in to Keyrack"]
        ok(sign_in(at))
        assert "Monitor" in texts(at.title)
    finally:
        config.set_option("server.address", before)


def test_dashboard_admin_url_is_server_side_not_a_form_field(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", "")
    at = fresh()
    assert [w.key for w in at.text_input] == ["login_token"]  # a visitor cannot point the server elsewhere


def test_signed_in_lands_on_monitor_with_cards_and_language_switch(dash_env: Stack) -> None:
    at = start()
    assert "Monitor" in texts(at.title)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Calls · last 24 h"].replace(",", "")) > 0
    assert int(metrics[":red[:material/cancel:] Invalid keys"]) >= 1
    assert metrics["p95 latency"].endswith("ms")
    # (AppTest keeps the entry script's sidebar in its tree for the first run only: use it right away.)
    at.sidebar.selectbox(key="lang_select").select("zh")
    ok(at.run())
    assert "监控" in texts(at.title)
    assert any("调用" in label for label in (m.label for m in at.metric))

    auto = open_app(state={"auto_refresh.en": 5})  # the cards become a fragment re-run every 5 s
    assert len(auto.metric) == 13  # 12 cards + the soonest quota exhaustion (forecast)


# -- monitor ---------------------------------------------------------------------------------------------------
def test_monitor_separates_sections_and_filters(dash_env: Stack) -> None:
    at = start()
    active, inactive = kt(at)[0].value, kt(at)[1].value
    assert key_id(fake_key("key-alpha-1")) in set(active["id"])
    assert key_id(fake_key("key-bad-0001")) in set(inactive["id"])
    assert key_id(fake_key("key-bad-0001")) not in set(active["id"])

    at.multiselect(key="key_status.en").set_value(["invalid"])
    ok(at.run())
    assert "Hidden by the status filter." in texts(at.caption)
    assert set(kt(at)[0].value["id"]) == {key_id(fake_key("key-bad-0001"))} | set(kt(at)[0].value["id"])

    at.multiselect(key="key_status.en").set_value([])
    at.selectbox(key="key_project.en").set_value("beta")
    ok(at.run())
    assert set(kt(at)[0].value["id"]) == {key_id(fake_key("key-beta-1"))}

    at.selectbox(key="key_project.en").set_value("")
    search(at, "known bad")
    assert list(kt(at)[0].value["id"]) == [key_id(fake_key("key-bad-0001"))]
    at.number_input(key="key_failures").set_value(1000)
    ok(at.run())
    assert not kt(at)

    at.number_input(key="key_failures").set_value(0)
    search(at, "")
    tomorrow = date.today() + timedelta(days=1)
    at.date_input(key="key_created").set_value((tomorrow, tomorrow + timedelta(days=1)))
    ok(at.run())
    assert not kt(at)  # nobody was created tomorrow
    at.date_input(key="key_created").set_value((date.today() - timedelta(days=1), tomorrow))
    ok(at.run())
    assert key_id(fake_key("key-alpha-1")) in set(kt(at)[0].value["id"])


def test_monitor_charts_yesterday_and_today_by_the_hour(dash_env: Stack) -> None:
    """Every call of yesterday and today (local days) in the small chart's bars, as raw SQL counts them."""
    from dashboard.logic import times

    at = start()
    (chart,) = [c for c in at.get("plotly_chart") if "chart_recent" in c.proto.id]
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["title"]["text"] == t("monitor.recent_calls")
    today = times.today()
    lo, hi = times.day_range_utc(today - timedelta(days=1), today)
    naive = [f"TIMESTAMP '{d.replace(tzinfo=None).isoformat(' ')}'" for d in (lo, hi)]  # the store keeps UTC
    sql = f"SELECT count(*) FROM requests WHERE ts >= {naive[0]} AND ts < {naive[1]}"
    (count,) = dash_env.admin("POST", "/query", json={"sql": sql, "format": "json"})["rows"][0]
    assert count > 0
    assert sum(_values(trace["y"]).sum() for trace in spec["data"]) == count
    assert len(_values(spec["data"][0]["y"])) == 48  # one bar per hour of the two days


def test_monitor_disable_enable_copy_and_details(dash_env: Stack) -> None:
    secret = unique("key-solo")
    (kid,) = dash_env.add_keys([secret], project="solo", label=unique("solo"))
    try:
        _disable_enable_copy_and_details(dash_env, secret, kid)
    finally:
        dash_env.delete_keys([kid])  # an active project "solo" left behind would change other pages' plans


def _disable_enable_copy_and_details(dash_env: Stack, secret: str, kid: str) -> None:
    at = search(start(), kid)
    select(at, "tbl_active", 0)
    ok(at.button(key="toggle_active").click().run())
    assert any("Disable" in s and kid in s for s in texts(at.success)), texts(at.success)
    assert kid in set(kt(at)[0].value["id"])  # now in the invalid/disabled section (the only table)

    select(at, "tbl_inactive", 0)
    ok(at.button(key="copy_inactive").click().run())
    assert secret in texts(at.code)  # revealed only on this explicit action
    ok(at.button(key="reveal_close").click().run())
    assert secret not in texts(at.code)

    select(at, "tbl_inactive", 0)
    ok(at.button(key="toggle_inactive").click().run())
    assert any("Enable" in s for s in texts(at.success))

    at.session_state["_dialog"] = {"name": "details", "id": kid}  # dialogs open through session state
    ok(at.run())
    assert len(at.tabs) == 3
    assert any("solo" in m for m in texts(at.markdown))
    ok(at.button(key="details_close").click().run())
    assert "_dialog" not in at.session_state


def test_monitor_batch_disable_then_delete_with_confirmation(dash_env: Stack) -> None:
    label = unique("batch")
    ids = dash_env.add_keys([unique("key-batch") for _ in range(3)], label=label)
    at = search(start(), label)
    assert set(kt(at)[0].value["id"]) == set(ids)
    select(at, "tbl_active", 0, 1, 2)
    ok(at.button(key="batch_disable_active").click().run())
    assert "Disable: 3 succeeded, 0 failed." in texts(at.success)
    assert set(kt(at)[0].value["id"]) == set(ids)  # all moved to the inactive table
    assert len(kt(at)) == 1

    select(at, "tbl_inactive", 0, 1, 2)
    ok(at.button(key="batch_delete_inactive").click().run())
    assert any("Delete 3 keys?" in m for m in texts(at.markdown))  # nothing deleted before confirming
    assert len(dash_env.admin("GET", "/keys", params={"q": label})["items"]) == 3
    ok(at.button(key="confirm_yes").click().run())
    assert "Delete: 3 succeeded, 0 failed." in texts(at.success)
    assert dash_env.admin("GET", "/keys", params={"q": label})["items"] == []


def test_monitor_add_keys_dialog_reports_added_duplicates_rejected(dash_env: Stack) -> None:
    at = start()
    ok(at.button(key="open_add").click().run())
    added = [unique("key-new"), unique("key-new")]
    text = "\n".join([*added, fake_key("key-alpha-1"), "this line is not a key at all"])
    at.text_area(key="add_text").input(text)
    try:
        ok(at.button(key="add_submit").click().run())
        assert "Added 2 · duplicates 1 · rejected 1" in texts(at.success), texts(at.success)
        assert {key_id(s) for s in added} <= set(dash_env.gateway.pool.keys)
    finally:
        # Keys without a project each count as their own project: left active, they would change the Forecast
        # page's capacity plan (projects to add) for the tests after this one on the shared stack.
        dash_env.delete_keys([key_id(s) for s in added])


# -- trends ----------------------------------------------------------------------------------------------------
def _values(data: object) -> np.ndarray:
    """A Plotly JSON array: a plain list or Plotly's typed-array form {"dtype", "bdata"} (base64)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
    return np.asarray(data, dtype=float)


def _chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_trends_charts_granularity_breakdown_and_top_tables(dash_env: Stack) -> None:
    at = start("trends")
    assert _chart_titles(at) == [
        "Calls: success vs failure",
        "Success rate",
        "Latency p50 / p95",
        "Tokens",
        "Estimated spend (USD)",
        "Rate limits: Google's 429s vs Keyrack's refusals",
        "Upstream attempts per successful call",
        "Calls by outcome",
        "Calls by HTTP status",
        "Calls by model",
        "Tokens by model",
    ]
    assert [m.label for m in at.metric][-1:] == ["Estimated spend in this range"]
    assert any(c.startswith("This month at the last 24 hours' rate: $") for c in texts(at.caption)), texts(at.caption)
    hourly = len(_values(json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["y"]))
    at.segmented_control(key="granularity.en").set_value("day")
    ok(at.run())
    daily = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert 1 <= len(_values(daily[0]["y"])) < hourly
    assert sum(_values(trace["y"]).sum() for trace in daily) >= 400  # every seeded call counted once
    at.selectbox(key="breakdown.en").set_value("project")
    ok(at.run())
    assert "Calls by project" in _chart_titles(at)
    at.selectbox(key="breakdown.en").set_value("model")
    ok(at.run())
    by_model = json.loads(at.get("plotly_chart")[9].proto.spec)["data"]
    assert {trace["name"] for trace in by_model} <= {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"}
    assert texts(at.subheader)[-2:] == ["Top keys", "Top models"]
    assert len(at.dataframe) == 2 and not at.dataframe[1].value.empty


def test_monitor_and_trends_say_when_their_figures_are_read_raw_during_a_rebuild(dash_env: Stack) -> None:
    gw = dash_env.gateway
    note = t("stats.rebuilding", pct="0").split("(")[0]
    at = start("trends")
    assert not [i for i in texts(at.info) if i.startswith(note)]  # the rollup answers: no note
    # Hold the writer in the middle of a rebuild: the stats answers come from the raw rows and say so.
    gw.writer.submit(gw.rollup.start_rebuild).result()
    release = threading.Event()
    gw.writer.submit(lambda _cur: release.wait(60))
    try:
        for page in ("trends", "monitor"):
            shown = [i for i in texts(start(page).info) if i.startswith(note)]
            assert len(shown) == 1 and "% done" in shown[0], (page, texts(start(page).info))
    finally:
        release.set()
    deadline = time.monotonic() + 60
    while gw.rollup.rebuilding is not None:
        assert time.monotonic() < deadline, "the rebuild did not finish"
        time.sleep(0.1)
    assert not [i for i in texts(start("monitor").info) if i.startswith(note)]


# -- error logs ------------------------------------------------------------------------------------------------
def test_error_logs_filter_detail_and_delete_selected(dash_env: Stack) -> None:
    at = start("error_logs")
    total = int(texts(at.caption)[0].split()[0].replace(",", ""))
    assert total > 0
    at.text_input(key="err_q").input("quota exceeded")
    ok(at.run())
    table = at.dataframe[0].value
    assert set(table["status"]) == {429}

    select(at, "tbl_errors", 0)
    ok(at.button(key="err_details").click().run())
    codes = texts(at.code)
    assert any("quota exceeded" in c for c in codes)
    assert any('"code": 429' in c for c in codes)  # the upstream body, pretty-printed
    ok(at.button(key="err_detail_close").click().run())

    matching = int(texts(at.caption)[0].split()[0].replace(",", ""))
    select(at, "tbl_errors", 0, 1)
    ok(at.button(key="err_delete_selected").click().run())
    assert any("Delete 2 selected" in m for m in texts(at.markdown))
    ok(at.button(key="confirm_yes").click().run())
    assert "Deleted 2 entries." in texts(at.success)
    assert int(texts(at.caption)[0].split()[0].replace(",", "")) == matching - 2
    assert at.get("download_button")


# -- config ----------------------------------------------------------------------------------------------------
def test_config_marks_changes_shows_validation_and_saves_live(dash_env: Stack) -> None:
    at = start("config")
    assert [s for s in texts(at.subheader)][:4] == [
        "General",
        "Gemini upstream & pool",
        "Routing & cost",
        "Logging & retention",
    ]
    at.number_input(key="cfg_max_retries").set_value(99)
    ok(at.run())
    assert any("1 unsaved change" in m and "changes" not in m for m in texts(at.markdown))
    assert any("changed" in c for c in texts(at.caption))
    ok(at.button(key="cfg_save_btn").click().run())
    assert "Not saved: fix the fields marked below." in texts(at.error)
    assert any("20" in e for e in texts(at.error))  # the API's message for max_retries, next to the field
    assert dash_env.admin("GET", "/config")["values"]["max_retries"] != 99

    at.number_input(key="cfg_max_retries").set_value(5)
    ok(at.run())
    ok(at.button(key="cfg_save_btn").click().run())
    assert any("Saved 1 setting;" in s for s in texts(at.success))
    assert dash_env.admin("GET", "/config")["values"]["max_retries"] == 5
    assert dash_env.gateway.config.max_retries == 5  # applied live
    assert any("No unsaved changes" in m for m in texts(at.markdown))
    dash_env.admin("PATCH", "/config", json={"max_retries": 3})

    # Routing & cost: JSON settings, refused with the API's words next to the field, saved when valid.
    at.text_area(key="cfg_project_tiers").input('{"p1": "gold"}')
    ok(at.run())
    ok(at.button(key="cfg_save_btn").click().run())
    assert any("'free' or 'paid'" in e for e in texts(at.error)), texts(at.error)
    at.text_area(key="cfg_project_tiers").input('{"p1": "paid"}')
    ok(at.run())
    ok(at.button(key="cfg_save_btn").click().run())
    assert dash_env.gateway.config.project_tiers == {"p1": "paid"}
    dash_env.admin("PATCH", "/config", json={"project_tiers": {}})


# -- SQL -------------------------------------------------------------------------------------------------------
def test_sql_page_error_path_examples_and_downloads(dash_env: Stack) -> None:
    at = start("sql")
    assert any(e.label.startswith("requests") for e in at.expander)  # schema browser
    at.text_area(key="sql_text").input("SELECT no_such_column FROM requests")
    ok(at.button(key="sql_run").click().run())
    assert any(e.startswith("Query failed:") and "no_such_column" in e for e in texts(at.error)), texts(at.error)
    assert not at.dataframe

    at.text_area(key="sql_text").input("DELETE FROM requests")
    ok(at.button(key="sql_run").click().run())
    assert any(e.startswith("Query not allowed:") for e in texts(at.error)), texts(at.error)

    at.selectbox(key="sql_example.en").set_value("sql.ex.calls_by_model")
    ok(at.run())
    assert "GROUP BY model" in at.text_area(key="sql_text").value
    ok(at.button(key="sql_run").click().run())
    assert not at.error
    result = at.dataframe[0].value
    assert set(result["model"]) <= {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"}
    assert len(at.get("download_button")) == 2
    assert not [c for c in texts(at.caption) if "out of view" in c]  # two columns fit: no hint

    at.text_area(key="sql_text").input("SELECT * FROM requests LIMIT 5")  # every column: wider than the page
    ok(at.button(key="sql_run").click().run())
    hint = [c for c in texts(at.caption) if "out of view" in c]
    assert len(hint) == 1 and "scroll the table sideways" in hint[0], texts(at.caption)
    assert f"of {len(at.dataframe[0].value.columns)} columns" in hint[0]


def test_trends_buckets_follow_the_configured_timezone(dash_env: Stack) -> None:
    dash_env.admin("PATCH", "/config", json={"display_timezone": "Asia/Shanghai"})
    try:
        at = start("trends")
        at.segmented_control(key="granularity.en").set_value("day")
        ok(at.run())
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert spec["layout"]["xaxis"]["title"]["text"] == "Time (Asia/Shanghai)"
        days = spec["data"][0]["x"]
        assert days and all("T00:00:00" in str(x) for x in days), days  # local midnights
    finally:
        dash_env.admin("PATCH", "/config", json={"display_timezone": "UTC"})


TITLES_ZH = {
    "monitor": "监控",
    "trends": "趋势",
    "forecast": "预测",
    "explore": "多维分析",
    "error_logs": "错误日志",
    "alerts": "告警",
    "clients": "客户端",
    "config": "配置",
    "sql": "SQL 查询",
}


@pytest.mark.parametrize("page", list(TITLES_ZH))
def test_every_page_renders_in_chinese(dash_env: Stack, page: str) -> None:
    dash_env.admin("PATCH", "/config", json={"language": "zh"})  # the default language comes from the config
    try:
        at = start(page)
        assert TITLES_ZH[page] in texts(at.title)
        assert not at.error
        placeholders = [w.proto.placeholder for w in at.multiselect]  # Streamlit's own would be English
        assert all(p in ("请选择", "没有可选项", "全部") for p in placeholders), placeholders
    finally:
        dash_env.admin("PATCH", "/config", json={"language": "en"})


def _visit(params: dict[str, str]) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=30)
    for k, v in params.items():
        at.query_params[k] = v
    return ok(at.run())


def test_a_browser_choice_beats_the_configured_default_and_config_says_which_applies(dash_env: Stack) -> None:
    """One setting, two levels: Config's `language` is the default; a browser's own choice (the sidebar's, kept in a
    cookie, or a link's ?lang=) wins over it from the first paint, sign-in form included."""
    at = _visit({"lang": "zh"})
    assert "登录 Keyrack" in texts(at.title)  # before sign-in: the form in the browser's language
    ok(sign_in(at))
    assert "监控" in texts(at.title)  # the configured default (English) does not override the choice
    at.switch_page("screens/config.py")
    ok(at.run())
    assert at.selectbox(key="cfg_language").value == "en"  # the default stays English...
    assert t("config.lang_own", lang="简体中文", _lang="zh") in texts(at.caption)  # ... and the page says why

    dash_env.admin("PATCH", "/config", json={"language": "zh"})
    try:
        at = ok(sign_in(_visit({})))  # no choice of its own: the default
        assert "监控" in texts(at.title)
        at.switch_page("screens/config.py")
        ok(at.run())
        assert t("config.lang_default", lang="简体中文", _lang="zh") in texts(at.caption)
        at = ok(sign_in(_visit({"lang": "en"})))  # a choice beats the default
        assert "Monitor" in texts(at.title)
    finally:
        dash_env.admin("PATCH", "/config", json={"language": "en"})


def test_error_logs_paginate_and_delete_by_filter_and_age(dash_env: Stack) -> None:
    at = start("error_logs")
    at.selectbox(key="errors_size").set_value(10)
    ok(at.run())
    at.number_input(key="errors_page").set_value(2)
    ok(at.run())
    assert len(at.dataframe[0].value) == 10
    assert any(c.startswith("Page 2 of") for c in texts(at.caption))

    ok(at.button(key="err_delete_older").click().run())  # default cut-off: 30 days ago, older than any entry
    assert any("older than" in m for m in texts(at.markdown))
    ok(at.button(key="confirm_yes").click().run())
    assert "Deleted 0 entries." in texts(at.success)

    beta = key_id(fake_key("key-beta-1"))
    assert beta in at.selectbox(key="err_key.en").options  # a dropdown of the keys that have error entries
    at.selectbox(key="err_key.en").set_value(beta)
    at.text_input(key="err_q").input("model overloaded")
    ok(at.run())
    matching = len(dash_env.admin("GET", "/errors", params={"key_id": beta, "q": "model overloaded"})["items"])
    assert matching > 0
    # The bulk delete is apart from the row actions and the CSV download: in the "Delete entries…" section.
    section = next(e for e in at.expander if e.label == "Delete entries…")
    assert "err_delete_matching" in [b.key for b in section.button]
    ok(at.button(key="err_delete_matching").click().run())
    ok(at.button(key="confirm_yes").click().run())
    assert t("errors.deleted", n=matching, _lang="en") in texts(at.success)
    assert dash_env.admin("GET", "/errors", params={"key_id": beta, "q": "model overloaded"})["total"] == 0
    assert dash_env.admin("GET", "/errors", params={"key_id": beta})["total"] > 0  # other entries stay


def test_monitor_verify_reports_the_upstream_verdict(dash_env: Stack) -> None:
    at = search(start(), "known bad")
    select(at, "tbl_inactive", 0)
    ok(at.button(key="verify_inactive").click().run())
    warnings = texts(at.warning)
    assert any(w.startswith("Verify known bad") and "400" in w for w in warnings), warnings
    assert list(kt(at)[0].value["id"]) == [key_id(fake_key("key-bad-0001"))]  # still invalid


def test_monitor_delete_one_key_after_confirmation(dash_env: Stack) -> None:
    label = unique("doomed")
    (kid,) = dash_env.add_keys([unique("key-doomed")], label=label)
    at = search(start(), label)
    select(at, "tbl_active", 0)
    ok(at.button(key="delete_active").click().run())
    ok(at.button(key="confirm_no").click().run())  # cancel keeps it
    assert kid in dash_env.gateway.pool.keys
    select(at, "tbl_active", 0)
    ok(at.button(key="delete_active").click().run())
    ok(at.button(key="confirm_yes").click().run())
    assert kid not in dash_env.gateway.pool.keys
    assert not kt(at)
