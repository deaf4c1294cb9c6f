"""Plain-module checks: translations are complete, the client turns failures into AdminError, charts build."""

from __future__ import annotations

import re
import socket
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from dashboard import charts, i18n
from dashboard.client import AdminClient, AdminError
from tests.dashboard.conftest import ADMIN_TOKEN, Stack

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
PREFIXES = "app|nav|chrome|login|error|reason|common|status|monitor|trends|gran|dim|chart|col|errors|config|field|sql|headroom|source|cooling"
LITERAL = re.compile(rf"""["']((?:{PREFIXES})\.[a-z0-9_.]+)["']""")
DYNAMIC = re.compile(r"""\bt\(\s*f["']([a-z_.]+)\{""")


@pytest.fixture(autouse=True)
def english(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a Streamlit run t() uses the latest run's language: pin English for these plain calls."""
    monkeypatch.setattr(i18n, "_last", "en")


def test_every_language_has_every_key() -> None:
    assert set(i18n.STRINGS["zh"]) == set(i18n.STRINGS["en"])
    empty = [k for lang in i18n.STRINGS.values() for k, v in lang.items() if not v.strip()]
    assert not empty


def test_every_key_used_in_the_dashboard_exists() -> None:
    used: set[str] = set()
    prefixes: set[str] = set()
    for path in DASHBOARD.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        used |= set(LITERAL.findall(source))
        prefixes |= set(DYNAMIC.findall(source))
    missing = sorted(k for k in used if k not in i18n.EN and not k.endswith(".py"))
    assert not missing, missing
    for prefix in prefixes:  # t(f"status.{s}") and friends: some key must exist under the prefix
        assert any(k.startswith(prefix) for k in i18n.EN), prefix


def test_placeholders_match_between_languages() -> None:
    field = re.compile(r"\{(\w+)\}")
    for key, en in i18n.EN.items():
        assert set(field.findall(en)) == set(field.findall(i18n.ZH[key])), key


def test_t_formats_and_falls_back() -> None:
    assert i18n.t("monitor.add_result", _lang="zh", added=1, duplicates=2, rejected=3) == "新增 1 · 重复 2 · 拒绝 3"
    assert i18n.t("no.such.key") == "no.such.key"


def test_client_errors_are_user_facing(stack: Stack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AdminError) as down:
        AdminClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN).config()
    assert down.value.kind == "unreachable" and "Cannot reach" in down.value.message
    with pytest.raises(AdminError) as wrong:
        AdminClient(stack.url, "wrong-token").config()
    assert wrong.value.kind == "unauthorized"
    client = AdminClient(stack.url, ADMIN_TOKEN)
    with pytest.raises(AdminError) as invalid:
        client.update_config({"max_retries": -1})
    assert invalid.value.kind == "invalid" and "max_retries" in invalid.value.errors
    with pytest.raises(AdminError) as bad_sql:
        client.query("SELEC 1")
    assert bad_sql.value.message and "Traceback" not in bad_sql.value.message


def test_client_reads_series_as_arrow(stack: Stack) -> None:
    df = AdminClient(stack.url, ADMIN_TOKEN).series("day", group_by="model")
    assert {"bucket", "group", "calls", "successes", "failures", "p95_latency_ms"} <= set(df.columns)
    assert str(df["bucket"].dt.tz) == "UTC"
    assert int(df["calls"].sum()) >= 400


def test_charts_build_from_series_rows() -> None:
    df = pd.DataFrame(
        {
            "bucket": pd.date_range("2026-01-01", periods=3, freq="D"),
            "group": ["a", "b", "a"],
            "calls": [3, 4, 5],
            "successes": [2, 4, 5],
            "failures": [1, 0, 0],
            "success_rate": [2 / 3, 1.0, 1.0],
            "p50_latency_ms": [100.0, 120.0, 90.0],
            "p95_latency_ms": [300.0, 320.0, 290.0],
            "total_tokens": [10, 20, 30],
        }
    )
    axis = charts.Axis("day", date(2026, 1, 1), date(2026, 1, 7), "UTC")
    assert [tr.name for tr in charts.calls(df, axis).data] == ["Success", "Failure"]
    assert charts.success_rate(df, axis).layout.yaxis.tickformat == ".0%"
    assert len(charts.latency(df, axis).data) == 2
    assert charts.tokens(df, axis).layout.title.text == "Tokens"
    assert {tr.name for tr in charts.breakdown(df, "calls", "model", axis).data} == {"a", "b"}


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
def test_one_bucket_spans_the_chosen_range_with_whole_bucket_ticks(granularity: str) -> None:
    axis = charts.Axis(granularity, date(2026, 3, 2), date(2026, 3, 8), "UTC")
    one = pd.DataFrame(
        {
            "bucket": [axis.buckets()[len(axis.buckets()) // 2]],
            "calls": [4],
            "successes": [3],
            "failures": [1],
            "success_rate": [0.75],
            "total_tokens": [10],
        }
    )
    fig = charts.calls(one, axis)
    lo, hi = (pd.Timestamp(x) for x in fig.layout.xaxis.range)
    assert lo <= pd.Timestamp("2026-03-02") and hi >= pd.Timestamp("2026-03-09")
    assert hi - lo <= pd.Timedelta(days=31)
    ticks = [pd.Timestamp(v) for v in fig.layout.xaxis.tickvals]
    assert 1 <= len(ticks) <= charts.MAX_TICKS
    assert all(ts == ts.floor("h") for ts in ticks)  # never fractions of a bucket
    if granularity != "hour":
        assert all(ts == ts.normalize() for ts in ticks)
    assert all("." not in label for label in fig.layout.xaxis.ticktext)
    y = list(fig.data[0].y)
    assert len(y) == len(axis.buckets()) and sum(y) == 3  # empty buckets are zero, not missing


def test_tick_labels_follow_the_language(monkeypatch: pytest.MonkeyPatch) -> None:
    axis = charts.Axis("day", date(2026, 3, 2), date(2026, 3, 8), "UTC")
    df = pd.DataFrame({"bucket": [pd.Timestamp("2026-03-05")], "calls": [1], "successes": [1], "failures": [0]})
    assert charts.calls(df, axis).layout.xaxis.ticktext[0] == "Mar 2"
    monkeypatch.setattr(i18n, "_last", "zh")
    assert charts.calls(df, axis).layout.xaxis.ticktext[0] == "3月2日"


def test_a_model_has_one_colour_on_every_chart() -> None:
    axis = charts.Axis("day", date(2026, 1, 1), date(2026, 1, 3), "UTC")
    a = pd.DataFrame(
        {
            "bucket": pd.to_datetime(["2026-01-01"] * 3),
            "group": ["m1", "m2", "m3"],
            "calls": [1, 5, 9],
            "total_tokens": [900, 50, 1],
        }
    )
    by_calls = {tr.name: tr.marker.color for tr in charts.breakdown(a, "calls", "model", axis).data}
    by_tokens = {tr.name: tr.marker.color for tr in charts.breakdown(a, "total_tokens", "model", axis).data}
    assert by_calls == by_tokens == {m: charts.colour(m) for m in ("m1", "m2", "m3")}
    assert charts.colour("gemini-2.5-flash") == charts.colour("gemini-2.5-flash") != charts.OTHERS


def test_error_csv_export_fetches_every_matching_row(stack: Stack) -> None:
    from dashboard import errors_panel

    client = AdminClient(stack.url, ADMIN_TOKEN)
    total = client.errors(page_size=1).total
    csv = errors_panel.csv_maker(client, {"q": None})()
    lines = csv.decode().strip().splitlines()
    assert lines[0].startswith("id,ts,") and len(lines) == total + 1


def test_every_live_setting_has_a_label_in_both_languages() -> None:
    from proxy_service.settings import Config

    missing = [name for name in Config.model_fields if f"field.{name}" not in i18n.EN]
    assert not missing, f"add field.<name> strings to dashboard/i18n.py: {missing}"
