"""Plain-module checks: translations are complete, the client turns failures into AdminError, charts build."""

from __future__ import annotations

import re
import socket
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from dashboard.logic import charts, i18n
from dashboard.logic.client import AdminClient, AdminError
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
    from dashboard.logic import errors_panel

    client = AdminClient(stack.url, ADMIN_TOKEN)
    total = client.errors(page_size=1).total
    csv = errors_panel.csv_maker(client, {"q": None})()
    lines = csv.decode().strip().splitlines()
    assert lines[0].startswith("id,ts,") and len(lines) == total + 1


def test_every_live_setting_has_a_label_in_both_languages() -> None:
    from proxy_service.settings import Config

    missing = [name for name in Config.model_fields if f"field.{name}" not in i18n.EN]
    assert not missing, f"add field.<name> strings to dashboard/logic/i18n.py: {missing}"


# -- zh-CN: every enum id, default name, header and date a page shows has words in both languages -------------------
WORD = re.compile(r"[A-Za-z][A-Za-z_]{2,}")
NAMES = {"keyrack", "gemini", "pro", "flash"}  # proper names (and model ids) stay as they are


def _english(*values: object) -> list[str]:
    return [str(v) for v in values if {w.lower() for w in WORD.findall(str(v))} - NAMES]


def test_every_id_the_proxy_records_has_a_name_in_both_languages() -> None:
    import typing

    from proxy_service import errors, relay
    from proxy_service.alerts.rules import METRICS, default_rules

    error_types = {c.error_type for c in vars(errors).values() if isinstance(getattr(c, "error_type", None), str)}
    error_types |= set(typing.get_args(relay.AttemptOutcome)) - {"ok"}
    error_types |= {"exhausted", "answer_too_large", "upstream_error", "audit"}  # relay's and the audit log's own
    assert not [e for e in sorted(error_types) if f"errtype.{e}" not in i18n.EN]
    outcomes = {"success", "client_error", "upstream_error", "exhausted", "unauthorized", "timeout", "cancelled"}
    outcomes |= {"proxy_error", "stream_error"}
    assert not [o for o in sorted(outcomes) if f"outcome.{o}" not in i18n.EN]
    assert not [m for m in METRICS if f"alerts.metric.{m}" not in i18n.EN]
    for rule in default_rules():  # a shipped rule under its own name reads in the session's language
        assert i18n.EN[f"alerts.rule.{rule.id}"] == rule.name


def test_alerts_tables_speak_chinese(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.logic import alerts_view as av
    from proxy_service.alerts.rules import default_rules

    monkeypatch.setattr(i18n, "_last", "zh")
    rules = [{**r.__dict__, "channels": [], "state": "firing"} for r in default_rules()]
    frame = av.rules_frame(rules, {"success_rate": "ratio"})
    values = frame.drop(columns=["id", "enabled", "channels"]).to_numpy().ravel()
    assert not _english(*values), _english(*values)
    firing = av.firing_frame(
        [
            {
                "rule_id": "default-no-active-keys",
                "name": "No usable keys",
                "state": "firing",
                "severity": "critical",
                "since": "2026-12-07T10:00:00Z",
                "value": 0,
                "op": "<",
                "threshold": 1,
                "labels": {"project": "p-1"},
                "metric": "active_keys",
            }
        ],
        {},
    )
    shown = firing[["state", "severity", "rule", "value", "labels"]].to_numpy().ravel()
    assert not _english(*shown), _english(*shown)
    history = av.history_frame(
        [
            {"ts": "2026-12-07T10:00:00Z", "kind": k, "rule_id": "default-invalid-keys", "rule": "Invalid keys"}
            | {"state": "firing", "labels": {}, "value": None, "message": "silenced: not sent", "attempt": 0}
            for k in ("fired", "repeat", "resolved", "delivered", "failed")
        ]
    )
    shown = history.drop(columns=["ts", "kind"]).to_numpy().ravel()
    assert not _english(*[v for v in shown if v is not None]), shown
    for table in (frame, firing, history, av.channels_frame([]), av.silences_frame([], {})):
        labels = [c.get("label") for c in av.column_config(table, "UTC").values() if isinstance(c, dict)]
        assert labels and not _english(*labels), labels


def test_dates_on_plotly_axes_follow_the_language(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.logic import forecast_view as fv

    view = {"history": [{"ts": "2026-12-01T00:00:00Z", "calls": 3}], "points": [], "status": "ok"}
    zone = fv.PACIFIC
    stops = [s.value for s in fv.demand_figure(view, zone, "UTC", "x").layout.xaxis.tickformatstops]
    assert stops == ["%H:%M<br>%b %-d", "%b %-d", "%b %Y"]  # "Dec 1", as Trends' ticks; never "Dec 1, 2026"
    monkeypatch.setattr(i18n, "_last", "zh")
    stops = [s.value for s in fv.demand_figure(view, zone, "UTC", "x").layout.xaxis.tickformatstops]
    assert stops == ["%H:%M<br>%-m月%-d日", "%-m月%-d日", "%Y年%-m月"]  # 12月1日, as Trends' ticks
    assert charts.tick_label(pd.Timestamp("2026-12-01"), "day", False) == "12月1日"


def test_an_unknown_limit_is_said_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.logic import forecast_view as fv

    row = {"model": "gemini-2.5-flash", "used": 5, "limit": None, "rate_per_min": 1.0, "exhausts_at": None}
    monkeypatch.setattr(i18n, "_last", "zh")
    frame = fv.quota_frame([{**row, "projects": 1, "refused_next_hour": 0}], fv.PACIFIC, pool=True)
    assert "∞" not in frame.to_string() and "无已知限额" in frame.to_string()


def test_a_browser_choice_beats_the_configured_default() -> None:
    assert i18n.chosen_language("zh", "en") == "zh"  # a link's ?lang= first
    assert i18n.chosen_language(None, "zh") == "zh"  # then the cookie the sidebar set
    assert i18n.chosen_language("xx", None) is None  # nothing known: the configured default applies
    assert f"{i18n.COOKIE}=zh;" in i18n.cookie_script("zh")
    assert f"{i18n.COOKIE}=en;" in i18n.cookie_script("<script>")  # never anything but a known code


def test_the_built_in_models_have_colours_far_apart() -> None:
    from proxy_service.quota import DEFAULT_LIMITS

    def rgb(c: str) -> tuple[int, ...]:
        return tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))

    colours = [charts.colour(m) for m in DEFAULT_LIMITS]
    for i, a in enumerate(colours):
        for b in colours[i + 1 :]:
            assert sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b), strict=True)) ** 0.5 > 80, (a, b)
    assert charts.colour("my-tuned-model") not in colours  # another name never takes a built-in model's colour


def test_the_planner_notes_read_in_chinese(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.logic import forecast_view as fv
    from proxy_service.forecast import planner

    source = Path(planner.__file__).read_text()
    assert source.count("notes.append(") == len(fv._NOTES)  # a new note needs its translation
    monkeypatch.setattr(i18n, "_last", "zh")
    notes = [
        "gemini-2.5-pro has a limit of 0 in this pool: no number of projects serves it (no quota on this tier)",
        "project p-1 has 3 keys sharing one quota: 2 of them add no capacity",
        "2 key(s) have no project set; each is counted as its own project — if some share a project, the real "
        "capacity is lower",
        "no per-day limit is known for this model: the per-day target needs no extra project as far as the pool "
        "knows (a 429 teaches the real limit)",
        "target rpm = the forecast's busiest hour / 60: bursts inside a minute can go higher",
    ]
    shown = [fv.plan_note(n) for n in notes]
    assert not _english(*shown), shown


def test_why_a_rule_has_no_backtest_reads_in_chinese(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.logic import alerts_view as av
    from proxy_service.alerts import backtest
    from proxy_service.alerts.rules import parse_rule

    monkeypatch.setattr(i18n, "_last", "zh")
    rules = [
        {"metric": "active_keys"},
        {"metric": "success_rate", "filters": {"model": "m", "project": "p"}},
        {"metric": "exhausted_rate", "filters": {"model": "m"}},
    ]
    for body in rules:
        why = backtest.unsupported(parse_rule({"name": "r", "op": "<", "threshold": 1, "window_s": 60, **body}))
        assert why and not _english(av.backtest_reason(why)), why


def test_alert_values_read_the_same_in_the_dashboard_and_in_messages() -> None:
    """One formatting: the Alerts tables and the proxy's messages say the same words for every metric's value."""
    from dashboard.logic import alerts_view as av
    from proxy_service.alerts.notify import format_value
    from proxy_service.alerts.rules import METRICS

    for name, metric in METRICS.items():
        for v in (0.0, 0.2093, 1.25, 7.5, 1234.4, 12345.0):
            assert av.fmt_value(v, metric.unit) == format_value(v, name), (name, v)
    assert av.fmt_value(0.2093, "ratio") == "20.9 %"
    assert av.fmt_value(1.25, "x") == "1.25×"  # a factor says so, as in messages
    assert av.fmt_value(12345.0, "count") == "12,345"
    assert av.fmt_value(None) == av.fmt_value(float("nan")) == "–"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_demand_ahead_says_why_there_is_no_forecast_yet(monkeypatch: pytest.MonkeyPatch, lang: str) -> None:
    """Each reason the admin API gives for "pending" has its own sentence, in both languages."""
    from dashboard.logic import forecast_view as fv

    monkeypatch.setattr(i18n, "_last", lang)
    base = {"status": "pending", "refresh_s": 900.0}
    rollup = fv.pending_text({**base, "reason": "rollup", "progress": 0.42})
    fitting = fv.pending_text({**base, "reason": "fitting"})
    failed = fv.pending_text({**base, "reason": "failed", "error": "OSError: disk"})
    assert len({rollup, fitting, failed, fv.pending_text(base)}) == 4
    assert "42" in rollup and "OSError: disk" in failed and "15" in failed
    assert not _english(rollup, fitting) if lang == "zh" else "rebuilt" in rollup


def test_prefetch_makes_a_pages_calls_side_by_side_and_the_page_finds_them() -> None:
    """The calls are in flight together (a barrier of five that serial calls could never pass), each is made once,
    and the page's own cached calls are answered from what the prefetch brought; a failed call is not remembered."""
    import threading

    from dashboard.logic import cache

    together = threading.Barrier(5, timeout=60)
    made: list[tuple[str, int]] = []

    def stats(kind: str, n: int) -> str:
        made.append((kind, n))
        together.wait()
        if kind == "broken":
            raise AdminError("server", "the proxy failed")
        return f"{kind}-{n}"

    cache.bump()
    cache.prefetch(15.0, *[(stats, ("series", i)) for i in range(4)], (stats, ("broken", 0)))
    assert sorted(made) == [("broken", 0), *[("series", i) for i in range(4)]]
    assert [cache.cached(stats, ttl=15.0)("series", i) for i in range(4)] == [f"series-{i}" for i in range(4)]
    assert len(made) == 5  # answered from the prefetch
    cache.prefetch(15.0, (stats, ("series", 0)))
    assert len(made) == 5  # still fresh: not asked again


def test_a_table_wider_than_the_page_counts_the_columns_out_of_view() -> None:
    from dashboard.logic import tables

    narrow = pd.DataFrame({"model": ["gemini-2.5-flash"], "calls": [12]})
    wide = pd.DataFrame({f"column_{i}": ["a value of some thirty chars.."] for i in range(12)})
    assert tables.hidden_columns(narrow) == 0
    widths = tables.column_widths(wide)
    assert all(tables.MIN_COL_PX <= w <= tables.MAX_COL_PX for w in widths)
    assert 0 < tables.hidden_columns(wide) < 12  # the first ones are in view
    labels = {"calls": "a header label far longer than anything in the column itself, shown by the grid"}
    assert tables.column_widths(narrow, labels)[1] > tables.column_widths(narrow)[1]  # headers as shown count
    assert tables.labels_of({"calls": {"label": "Calls"}, "model": "Model", "x": None}) == {
        "calls": "Calls",
        "model": "Model",
    }
