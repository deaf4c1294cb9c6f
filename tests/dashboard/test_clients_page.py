"""AppTest: the Clients page against the real proxy — create (the token shown once), the table of use against
limits, rotate, revoke; and its pure helpers (dashboard/logic/tenants_view.py)."""

from __future__ import annotations

import httpx

from dashboard.logic import clients_panel
from dashboard.logic import tenants_view as tv
from tests.dashboard.conftest import Stack
from tests.dashboard.test_pages import ok, start, texts


def test_view_helpers_show_use_against_limits() -> None:
    items = [
        {
            "id": "c_1",
            "label": "nightly",
            "class": "batch",
            "status": "active",
            "source": "api",
            "models": ["gemini-2.5-flash"],
            "usage": {"tpd": {"used": 900, "limit": 1000}, "rpm": {"used": 3, "limit": None}},
            "limit_at": {"rpd": None, "tpd": "2026-12-08T14:05:09", "calls_per_month": "2026-12-20T01:00:00"},
        },
        {"id": "t_seen", "client_id": "t_seen", "calls_90d": 4, "source": "events"},
    ]
    df = tv.frame(items)
    assert list(df["id"]) == ["c_1"]  # ids only seen in events are not records
    assert df.loc[0, "tpd"] == "900 / 1,000" and df.loc[0, "rpm"] == "3" and df.loc[0, "models"] == "gemini-2.5-flash"
    assert tv.near_limit(items) == [("nightly", "tpd", 0.9)]
    assert df.loc[0, "limit_at"] == "tpd · 2026-12-08 14:05"  # the soonest of the forecasts
    assert tv.frame(items, lambda n: n.upper()).loc[0, "limit_at"] == "TPD · 2026-12-08 14:05"
    quiet = {"id": "c_2", "label": "idle", "status": "active", "source": "api", "usage": {"rpd": {"used": 0}}}
    busy = {
        "id": "c_3",
        "label": "chat",
        "class": "interactive",
        "status": "active",
        "source": "api",
        "usage": {"rpm": {"used": 9, "limit": 60}, "rpd": {"used": 40, "limit": None}},
    }
    items[0]["usage"]["rpd"] = {"used": 700, "limit": None}
    now = tv.busiest([*items, quiet, busy])
    assert list(now["label"]) == ["chat", "nightly"]  # calls in the last minute first; no call today: not shown
    assert now.loc[0, "rpm"] == "9 / 60" and now.loc[1, "limit_at"] == "tpd · 2026-12-08 14:05"
    body = tv.create_body(" x ", "batch", "", "a, b\nc", {"rpm": 0, "tpd": 5}, None)
    assert body == {"label": "x", "class": "batch", "models": ["a", "b", "c"], "limits": {"tpd": 5}}


def test_the_config_label_editor_names_config_tokens_and_seen_ids_not_records_made_here() -> None:
    items = [
        {
            "id": "t_0123456789",
            "client_id": "t_0123456789",
            "label": "t_0123456789",
            "source": "config",
            "calls_90d": 2,
        },
        {"id": "t_aaaaaaaaaa", "client_id": "t_aaaaaaaaaa", "label": "billing", "source": "config", "calls_90d": 0},
        {"id": "c_1", "client_id": "c_1", "label": "made-here", "source": "api", "calls_90d": 5},
        {"id": "anonymous", "client_id": "anonymous", "label": None, "source": "events", "calls_90d": 1},
    ]
    df = clients_panel.frame(items)
    assert list(df["client_id"]) == ["t_0123456789", "t_aaaaaaaaaa", "anonymous"]
    assert list(df["label"]) == ["", "billing", ""]


def test_clients_page_creates_shows_the_token_once_rotates_and_revokes(dash_env: Stack) -> None:
    at = start("clients")
    at.text_input(key="client_label").input("page-made")
    at.selectbox(key="client_cls").set_value("batch")
    at.number_input(key="client_lim_tpd").set_value(5000)
    next(b for b in at.button if b.label == "Create client").click()
    ok(at.run())
    codes = [c.value for c in at.code]
    assert len(codes) == 1 and codes[0].startswith("krc_")
    token = codes[0]
    assert any("page-made" in s for s in texts(at.success))
    table = at.dataframe[0].value
    row = table[table["label"] == "page-made"].iloc[0]
    assert row["class"] == "batch" and row["tpd"] == "0 / 5,000"
    # The token works, and is never shown again.
    r = httpx.post(
        f"{dash_env.url}/v1beta/models/gemini-2.5-flash:generateContent",
        headers={"x-goog-api-key": token},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    monitor = start()  # Monitor: the client that just called is among the busiest now
    # (inside the cards' fragment, AppTest does not give the table's key: found by its columns)
    (now,) = [d for d in monitor.dataframe if list(d.value.columns) == tv.BUSY_COLUMNS]
    busy = now.value.set_index("label")
    assert busy.loc["page-made", "rpd"] == "1" and busy.loc["page-made", "class"] == "batch"
    ok(at.run())
    assert not at.code
    # Rotate without grace: the old token is refused, the new one shown once.
    cid = row["id"]
    at.selectbox(key=next(s.key for s in at.selectbox if s.label == "Client")).set_value(cid)
    at.number_input(key="client_grace").set_value(0)
    next(b for b in at.button if b.label == "Rotate token").click()
    ok(at.run())
    new = [c.value for c in at.code]
    assert len(new) == 1 and new[0] != token
    headers = {"x-goog-api-key": token}
    url = f"{dash_env.url}/v1beta/models/gemini-2.5-flash:generateContent"
    assert httpx.post(url, headers=headers, json={"contents": []}, timeout=30).status_code == 401
    # Revoke needs the confirmation box.
    at.selectbox(key=next(s.key for s in at.selectbox if s.label == "Client")).set_value(cid)
    revoke = next(b for b in at.button if b.label == "Revoke")
    assert revoke.disabled
    at.checkbox(key="client_confirm").check()
    ok(at.run())
    next(b for b in at.button if b.label == "Revoke").click()
    ok(at.run())
    assert any("page-made" in s and "revoked" in s for s in texts(at.success)), texts(at.success)
    assert httpx.post(url, headers={"x-goog-api-key": new[0]}, json={"contents": []}, timeout=30).status_code == 401
