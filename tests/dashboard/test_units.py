"""Plain-module checks: translations are complete, the client turns failures into AdminError, charts build."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pandas as pd
import pytest

from dashboard import charts, i18n
from dashboard.client import AdminClient, AdminError
from tests.dashboard.conftest import ADMIN_TOKEN, Stack

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
PREFIXES = "app|nav|chrome|login|error|common|status|monitor|trends|gran|dim|chart|col|errors|config|field|sql"
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
    assert [tr.name for tr in charts.calls(df, "UTC").data] == ["Success", "Failure"]
    assert charts.success_rate(df, "UTC").layout.yaxis.tickformat == ".0%"
    assert len(charts.latency(df, "UTC").data) == 2
    assert charts.tokens(df, "UTC").layout.title.text == "Tokens"
    assert {tr.name for tr in charts.breakdown(df, "calls", "model", "UTC").data} == {"a", "b"}


def test_error_csv_export_fetches_every_matching_row(stack: Stack) -> None:
    from dashboard import errors_panel

    client = AdminClient(stack.url, ADMIN_TOKEN)
    total = client.errors(page_size=1).total
    csv = errors_panel.csv_maker(client, {"q": None})()
    lines = csv.decode().strip().splitlines()
    assert lines[0].startswith("id,ts,") and len(lines) == total + 1
