"""Admin API: the error logs (proxy_service/admin/errors.py) — search, one entry, delete."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.admin.conftest import (
    Env,
    assert_no_secret,
    err,
    error_of,
)


def test_error_logs_search_detail_and_delete(env: Env) -> None:
    t = datetime(2026, 2, 1, 12)
    entries = [
        err(t, key_id="k_e1", message="Quota exceeded for metric PerMinute", status=429, error_type="rate_limited"),
        err(t + timedelta(hours=1), key_id="k_e1", upstream_body='{"reason": "API_KEY_INVALID"}', status=400),
        err(t + timedelta(hours=2), key_id="k_e2", model="gemini-2.5-flash", stack_trace="Traceback..."),
        *(err(t + timedelta(days=1, minutes=i), key_id="k_e3") for i in range(30)),
    ]
    env.record(*entries)
    r = env.get("/errors", params={"key_id": "k_e1"}).json()
    assert r["total"] == 2 and r["items"][0]["ts"] > r["items"][1]["ts"]  # newest first
    assert env.get("/errors", params={"q": "api_key_invalid"}).json()["total"] == 1  # upstream body, any case
    assert env.get("/errors", params={"q": "PERMINUTE"}).json()["total"] == 1  # message
    assert env.get("/errors", params={"status": 429, "error_type": "rate_limited"}).json()["total"] == 1
    assert env.get("/errors", params={"model": "gemini-2.5-flash", "key_id": "k_e2"}).json()["total"] == 1
    window = {"from": "2026-02-01T12:30:00Z", "to": "2026-02-01T14:30:00+00:00"}
    assert env.get("/errors", params=window).json()["total"] == 2
    page = env.get("/errors", params={"key_id": "k_e3", "page": 2, "page_size": 20}).json()
    assert page["total"] == 30 and len(page["items"]) == 10
    full = env.get(f"/errors/{entries[2].id}").json()
    assert full["stack_trace"] == "Traceback..." and full["upstream_body"].startswith("{")
    assert env.get("/errors/nope").status_code == 404
    for params, field in (
        ({"from": "not-a-date"}, "from"),
        ({"status": "abc"}, "status"),
        ({"color": "red"}, "color"),
        ({"from": "2026-02-02", "to": "2026-02-01"}, "from"),
    ):
        resp = env.get("/errors", params=params)
        assert resp.status_code == 400 and error_of(resp)["field"] == field, params

    assert env.post("/errors/delete", {"ids": [entries[0].id, "missing"]}).json() == {"deleted": 1}
    assert env.post("/errors/delete", {"filter": {"key_id": "k_e3", "to": "2026-02-02T12:10:00Z"}}).json() == {
        "deleted": 10
    }
    assert env.post("/errors/delete", {"older_than": "2026-02-01T13:30:00Z"}).json() == {"deleted": 1}
    assert env.get("/errors", params={"from": "2026-02-01", "to": "2026-02-03"}).json()["total"] == 21
    bad: list[dict[str, Any]] = [
        {},
        {"ids": ["a"], "older_than": "2026-01-01"},
        {"filter": {}},
        {"filter": {"colour": 1}},
        {"older_than": "soon"},
        {"ids": "a"},
    ]
    for body in bad:
        assert env.post("/errors/delete", body).status_code == 400, body


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
