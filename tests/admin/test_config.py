"""Admin API: the live configuration (proxy_service/admin/config.py) — read masked, patch, reset, validation."""

from __future__ import annotations

from tests.admin.conftest import (
    CLIENT_TOKEN,
    Env,
    assert_no_secret,
)


def test_config_read_update_reset(env: Env) -> None:
    data = env.get("/config").json()
    assert data["values"]["access_tokens"] != [CLIENT_TOKEN] and len(data["values"]["access_tokens"]) == 1
    assert {f["name"] for f in data["fields"]} >= {"strategy", "display_timezone", "query_row_cap"}
    assert next(f for f in data["fields"] if f["name"] == "access_tokens")["secret"] is True
    r = env.http.patch("/admin/api/config", json={"strategy": "round_robin", "max_retries": 5})
    assert r.status_code == 200 and r.json()["values"]["strategy"] == "round_robin"
    assert env.gw.config.strategy == "round_robin" and env.gw.pool.strategy == "round_robin"
    # The masked token sent back unchanged keeps the real one.
    env.http.patch("/admin/api/config", json={"access_tokens": data["values"]["access_tokens"]})
    assert env.gw.config.access_tokens == [CLIENT_TOKEN]
    r = env.post("/config/reset")
    assert r.status_code == 200 and r.json()["values"]["strategy"] == "quota_aware"
    assert env.gw.config.strategy == "quota_aware"


def test_config_validation_names_each_field(env: Env) -> None:
    bad = {
        "strategy": "fastest",
        "max_retries": -1,
        "display_timezone": "Mars/Olympus",
        "query_row_cap": 0,
        "upstream_url": "ftp://x",
        "nonsense": 1,
    }
    r = env.http.patch("/admin/api/config", json=bad)
    body = r.json()
    assert r.status_code == 422 and body["error"]["code"] == 422
    assert set(body["errors"]) == set(bad)
    assert "unknown time zone" in body["errors"]["display_timezone"]
    assert "http(s) URL" in body["errors"]["upstream_url"]
    assert body["errors"]["nonsense"] == "unknown setting"
    assert env.gw.config.strategy == "quota_aware"
    r = env.http.patch("/admin/api/config", json={})
    assert r.status_code == 400


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
