"""The price table and a call's cost: the arithmetic per token kind, the long-prompt tier, lookups by model id, the
`prices` / `project_tiers` settings' validation, and every recorded call carrying its cost through real servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from proxy_service.prices import DEFAULT_PRICES, Price, PriceBook, default_prices
from proxy_service.settings import Config, ConfigError, Settings
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, Proxy, Upstream, wait_rows

PRO = Price(
    input_per_mtok=1.25,
    output_per_mtok=10,
    cached_input_per_mtok=0.125,
    input_long_per_mtok=2.5,
    output_long_per_mtok=15,
    cached_input_long_per_mtok=0.25,
)


def book(**table: Price) -> PriceBook:
    return PriceBook(dict(table))


def test_cost_prices_each_kind_of_token() -> None:
    b = book(**{"gemini-2.5-pro": PRO})
    # 1,000 prompt tokens of which 400 cached, 200 output, 300 thinking (billed as output when unpriced apart).
    cost = b.cost("gemini-2.5-pro", 1_000, 200, 300, 400)
    assert cost == pytest.approx((600 * 1.25 + 400 * 0.125 + 200 * 10 + 300 * 10) / 1e6)


def test_cost_long_prompt_tier_applies_past_200k_prompt_tokens() -> None:
    b = book(**{"gemini-2.5-pro": PRO})
    at = b.cost("gemini-2.5-pro", 200_000, 1_000, 0, 0)
    past = b.cost("gemini-2.5-pro", 200_001, 1_000, 0, 0)
    assert at == pytest.approx((200_000 * 1.25 + 1_000 * 10) / 1e6)
    assert past == pytest.approx((200_001 * 2.5 + 1_000 * 15) / 1e6)


def test_thinking_inferred_from_total_when_not_reported() -> None:
    # The OpenAI surface reports no thinking count: what total holds beyond prompt + completion is thinking.
    b = book(m=Price(input_per_mtok=1, output_per_mtok=2, thinking_per_mtok=3))
    assert b.cost("m", 10, 5, None, None, total=40) == pytest.approx((10 * 1 + 5 * 2 + 25 * 3) / 1e6)
    assert b.cost("m", 10, 5, None, None, total=None) == pytest.approx((10 + 10) / 1e6)


def test_lookup_exact_then_longest_prefix_then_none() -> None:
    flash, lite = Price(input_per_mtok=0.3, output_per_mtok=2.5), Price(input_per_mtok=0.1, output_per_mtok=0.4)
    b = book(**{"gemini-2.5-flash": flash, "gemini-2.5-flash-lite": lite})
    assert b.price("gemini-2.5-flash") is flash
    assert b.price("gemini-2.5-flash-lite-preview-06-17") is lite
    assert b.price("gemini-2.5-flash-preview-09-2025") is flash
    assert b.price("gemini-2.5-flashy") is None  # a prefix only counts when a "-" follows it
    assert b.price(None) is None
    assert b.cost("unknown-model", 10, 10, 0, 0) is None
    assert b.cost("gemini-2.5-flash", None, None, None, None) is None  # no usage: unknown, not 0


def test_shipped_table_is_valid_and_prices_the_common_models() -> None:
    table = default_prices()
    assert set(table) == set(DEFAULT_PRICES)
    for model in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash"):
        assert table[model].input_per_mtok > 0 and table[model].output_per_mtok > 0
    assert Config().prices == table


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"prices": {"gemini-2.5-flash": {"input_per_mtok": -1, "output_per_mtok": 1}}}, "prices", "greater than"),
        ({"prices": {"gemini-2.5-flash": {"input_per_mtok": 5000, "output_per_mtok": 1}}}, "prices", "less than"),
        ({"prices": {"gemini-2.5-flash": {"input_per_mtok": 1}}}, "prices", "required"),
        ({"prices": {"gemini-2.5-flash": {"input_per_mtok": 1, "output_per_mtok": 1, "typo": 1}}}, "prices", "xtra"),
        ({"prices": {"../etc": {"input_per_mtok": 1, "output_per_mtok": 1}}}, "prices", "not a model id"),
        ({"prices": {"m": {"input_per_mtok": "nan", "output_per_mtok": 1}}}, "prices", "finite"),
        ({"project_tiers": {"p1": "gold"}}, "project_tiers", "'free' or 'paid'"),
        ({"project_tiers": {"bad project!": "paid"}}, "project_tiers", "not a project name"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(patch: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config().updated(patch)
    assert set(err.value.errors) == {field}
    assert words in err.value.errors[field]


def test_settings_from_environment_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYRACK_PROJECT_TIERS", '{"p1": "paid"}')
    monkeypatch.setenv("KEYRACK_PRICES", '{"gemini-2.5-flash": {"input_per_mtok": 1, "output_per_mtok": 2}}')
    cfg = Settings(_env_file=None).config()  # type: ignore[call-arg]
    assert cfg.project_tiers == {"p1": "paid"}
    assert cfg.prices == {"gemini-2.5-flash": Price(input_per_mtok=1, output_per_mtok=2)}
    monkeypatch.setenv("KEYRACK_PRICES", "{not json")
    with pytest.raises(ValueError, match=r"(?s)prices.*not valid JSON"):
        Settings(_env_file=None)  # type: ignore[call-arg]


# -- through real servers ------------------------------------------------------------------------------------------

MODEL = "gemini-2.5-flash"


def _generate(proxy: Proxy, text: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": text}]}]},
        headers={"x-goog-api-key": CLIENT_TOKEN},
        timeout=30,
    )


def test_every_call_records_its_cost_free_tier_zero(start_proxy: Callable[..., Proxy], upstream: Upstream) -> None:
    prices = {MODEL: {"input_per_mtok": 0.3, "output_per_mtok": 2.5, "thinking_per_mtok": 3.5}}
    proxy = start_proxy(upstream.url, prices=prices, project_tiers={"p1": "paid", "p2": "paid"})
    ids = []
    for i in range(15):  # the free project (p3) first, up to its free-tier minute (10), then the paid overflow
        r = _generate(proxy, f"price this call {i}")
        assert r.status_code == 200
        ids.append(r.headers["x-keyrack-request-id"])
    rows = wait_rows(
        proxy,
        "SELECT project, tier, served_model, prompt_tokens, output_tokens, thinking_tokens, cached_tokens, "
        "cost_usd, list_cost_usd FROM requests WHERE list_contains(?, request_id) ORDER BY ts",
        [ids],
    )
    assert len(rows) == 15
    assert [r[1] for r in rows] == ["free"] * 10 + ["paid"] * 5
    for project, tier, served, prompt, output, thinking, cached, cost, listed in rows:
        assert served == MODEL
        assert prompt and output
        expected = ((prompt - (cached or 0)) * 0.3 + output * 2.5 + (thinking or 0) * 3.5) / 1e6
        assert listed == pytest.approx(expected)
        assert tier == ("free" if project == "p3" else "paid")
        assert cost == (0.0 if tier == "free" else pytest.approx(expected))
    assert proxy.gateway.pool.paid_spent_usd == pytest.approx(sum(r[7] for r in rows))

    # Spend in Explore (by project), the stats summary and user SQL: the same sums as the rows.
    spent = {
        p: (sum(r[7] for r in rows if r[0] == p), sum(r[8] for r in rows if r[0] == p)) for p in {r[0] for r in rows}
    }
    with httpx.Client(base_url=f"{proxy.url}/admin/api", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
        body = {"measures": ["cost_usd", "list_cost_usd"], "dimensions": ["project"], "from": "2020-01-01T00:00:00Z"}
        ans = api.post("/explore", json=body, timeout=30).json()
        assert ans["columns"] == ["project", "cost_usd", "list_cost_usd"]
        assert {p: (pytest.approx(c), pytest.approx(lc)) for p, c, lc in ans["rows"]} == spent
        summary = api.get("/stats/summary", timeout=30).json()
        month = summary["windows"]["month"]
        assert summary["spend"]["month_cost_usd"] == pytest.approx(month["cost_usd"])
        assert summary["spend"]["month_end_cost_usd"] >= month["cost_usd"]
        assert month["cost_usd"] == pytest.approx(sum(c for c, _ in spent.values()), abs=1e-8)
        assert month["list_cost_usd"] == pytest.approx(sum(lc for _, lc in spent.values()), abs=1e-8)
        q = api.post(
            "/query",
            json={"sql": "SELECT tier, sum(cost_usd) FROM requests GROUP BY tier", "format": "json"},
            timeout=30,
        )
        assert dict(q.json()["rows"])["free"] == 0


def test_price_change_applies_to_the_next_call(proxy: Proxy) -> None:
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    first = _generate(proxy, "before")
    patch = {"prices": {MODEL: {"input_per_mtok": 100, "output_per_mtok": 100}}, "project_tiers": {}}
    r = httpx.patch(f"{proxy.url}/admin/api/config", json=patch, headers=admin, timeout=30)
    assert r.status_code == 200, r.text
    second = _generate(proxy, "after")
    bad = httpx.patch(
        f"{proxy.url}/admin/api/config",
        json={"prices": {MODEL: {"input_per_mtok": -3, "output_per_mtok": 1}}},
        headers=admin,
        timeout=30,
    )
    assert bad.status_code == 422 and "prices" in bad.text
    rows = dict(
        wait_rows(
            proxy,
            "SELECT request_id, list_cost_usd / (prompt_tokens + output_tokens + coalesce(thinking_tokens, 0)) "
            "FROM requests WHERE list_contains(?, request_id)",
            [[first.headers["x-keyrack-request-id"], second.headers["x-keyrack-request-id"]]],
        )
    )
    assert rows[second.headers["x-keyrack-request-id"]] == pytest.approx(100 / 1e6)
    assert rows[first.headers["x-keyrack-request-id"]] < 10 / 1e6
