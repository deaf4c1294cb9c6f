"""Admin API: client records (proxy_service/admin/clients.py) — create with the token shown once, validation,
list with usage, change, rotate with a grace period, revoke; and what a client's record does to its calls (model
allow-list, daily token limit, per-minute limit) on both surfaces, with the real SDKs. The tests build on each
other in file order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.admin.conftest import CLIENT_TOKEN, SECRETS, Env, assert_no_secret, error_of

MADE: dict[str, dict[str, Any]] = {}  # label → the create answer (with its token)


def call(env: Env, token: str, model: str = "gemini-2.5-flash") -> httpx.Response:
    return httpx.post(
        f"{env.url}/v1beta/models/{model}:generateContent",
        headers={"x-goog-api-key": token},
        json={"contents": [{"parts": [{"text": "hello"}]}]},
        timeout=30,
    )


def make(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    r = env.post("/clients", body)
    assert r.status_code == 201, r.text
    data = r.json()
    MADE[body["label"]] = data
    SECRETS.append(data["token"])  # assert_no_secret: shown in its create answer only
    return data


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({}, 400, "label", "label is required"),
        ({"label": ""}, 422, "label", "non-empty"),
        ({"label": "two\nlines"}, 422, "label", "printable"),
        ({"label": "x", "owner": 5}, 422, "owner", "a text of at most"),
        ({"label": "x", "class": "vip"}, 422, "class", "interactive, standard, batch"),
        ({"label": "x", "limits": {"rph": 5}}, 400, "limits.rph", "unknown limit 'rph'"),
        ({"label": "x", "limits": {"tpd": -1}}, 422, "limits.tpd", "from 0 to"),
        ({"label": "x", "limits": {"rpm": 10**13}}, 422, "limits.rpm", "from 0 to"),
        ({"label": "x", "limits": {"rpm": True}}, 422, "limits.rpm", "whole number"),
        ({"label": "x", "models": ["../etc"]}, 422, "models", "not a model id"),
        ({"label": "x", "models": "gemini-2.5-flash"}, 422, "models", "must be a list"),
        ({"label": "x", "expires_at": "2001-01-01T00:00:00Z"}, 422, "expires_at", "in the past"),
        ({"label": "x", "expires_at": "tomorrow"}, 400, "expires_at", "ISO-8601"),
        ({"label": "x", "token": "mine"}, 400, "token", "unknown field 'token'"),
    ],
)
def test_create_refuses_bad_fields_by_name(env: Env, body: dict[str, Any], status: int, field: str, words: str) -> None:
    r = env.post("/clients", body)
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["field"] == field and words in err["message"]
    assert not any(c["label"] == "x" for c in env.get("/clients").json()["items"])  # nothing made


def test_create_shows_the_token_once_and_list_never(env: Env) -> None:
    data = make(
        env,
        {
            "label": "nightly-batch",
            "class": "batch",
            "models": ["gemini-2.5-flash"],
            "limits": {"tpd": 1, "concurrency": 4},
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )
    assert data["token"].startswith("krc_") and len(data["token"]) > 40
    assert data["id"].startswith("c_") and data["class"] == "batch" and data["models"] == ["gemini-2.5-flash"]
    assert data["limits"]["tpd"] == 1 and data["limits"]["rpm"] is None
    assert data["expires_at"] == "2099-01-01T00:00:00.000Z" and data["status"] == "active"
    listed = env.get("/clients").json()["items"]
    by_label = {c["label"]: c for c in listed}
    assert "token" not in by_label["nightly-batch"] and "token_hash" not in by_label["nightly-batch"]
    # The token of access_tokens is a record too, with the id its events always had.
    config = [c for c in listed if c["source"] == "config"]
    assert len(config) == 1 and config[0]["id"].startswith("t_")
    got = env.get(f"/clients/{data['id']}").json()
    assert got["usage"]["tpd"] == {"used": 0, "limit": 1} and "token" not in got
    assert env.get("/clients/c_nope").status_code == 404


def test_a_client_call_is_recorded_with_its_id_and_label(env: Env) -> None:
    data = MADE["nightly-batch"]
    r = call(env, data["token"])
    assert r.status_code == 200, r.text
    rid = r.headers["x-keyrack-request-id"]
    rows = env.rows("SELECT client_id, client_label, refusal, total_tokens FROM requests WHERE request_id = ?", [rid])
    assert rows and rows[0][:3] == (data["id"], "nightly-batch", None) and rows[0][3] > 1
    got = env.get(f"/clients/{data['id']}").json()
    assert got["usage"]["rpd"]["used"] == 1 and got["usage"]["tpd"]["used"] == rows[0][3]
    assert got["last_used_at"] is not None


def test_daily_token_limit_refuses_the_next_call_naming_it_while_others_are_served(env: Env) -> None:
    data = MADE["nightly-batch"]
    r = call(env, data["token"])
    assert r.status_code == 429
    message = r.json()["error"]["message"]
    assert "client 'nightly-batch' reached its daily token limit (tpd 1)" in message
    wait = int(r.headers["retry-after"])
    assert 0 < wait <= 86400 and f"retry in {wait}s" in message
    assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CLIENT_LIMIT", "domain": "keyrack"} in (
        r.json()["error"]["details"]
    )
    rid = r.headers["x-keyrack-request-id"]
    rows = env.rows("SELECT refusal, outcome, status, key_id FROM requests WHERE request_id = ?", [rid])
    assert rows == [("client_limit", "refused", 429, None)]  # no key was chosen: no quota spent
    assert call(env, CLIENT_TOKEN).status_code == 200  # the others keep being served
    # The OpenAI surface answers in OpenAI's shape, which the openai SDK raises as a rate-limit error.
    oa = openai.OpenAI(base_url=f"{env.url}/v1", api_key=data["token"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        oa.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    assert "daily token limit (tpd 1)" in str(caught.value)


def test_model_allow_list_answers_403_in_each_surface_shape(env: Env) -> None:
    data = make(env, {"label": "flash-only", "models": ["gemini-2.5-flash"]})
    r = call(env, data["token"], "gemini-2.5-pro")
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["status"] == "PERMISSION_DENIED"
    assert "client 'flash-only' may not use model 'gemini-2.5-pro' (allowed: gemini-2.5-flash)" in err["message"]
    rows = env.rows("SELECT refusal FROM requests WHERE request_id = ?", [r.headers["x-keyrack-request-id"]])
    assert rows == [("client_model",)]
    g = genai.Client(api_key=data["token"], http_options=genai_types.HttpOptions(base_url=env.url))
    with pytest.raises(genai_errors.ClientError) as caught:
        g.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert caught.value.code == 403
    assert g.models.generate_content(model="gemini-2.5-flash", contents="hi").text
    oa = openai.OpenAI(base_url=f"{env.url}/v1", api_key=data["token"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        oa.chat.completions.create(model="gemini-2.5-pro", messages=[{"role": "user", "content": "hi"}])


def test_per_minute_limit_says_when_to_retry(env: Env) -> None:
    data = make(env, {"label": "tight", "limits": {"rpm": 2}})
    assert [call(env, data["token"]).status_code for _ in range(2)] == [200, 200]
    r = call(env, data["token"])
    assert r.status_code == 429 and "per-minute call limit (rpm 2)" in r.json()["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_change_applies_at_once_and_validates(env: Env) -> None:
    data = MADE["tight"]
    r = env.http.patch(f"/admin/api/clients/{data['id']}", json={"limits": {"rpm": 100}, "class": "interactive"})
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["rpm"] == 100 and r.json()["class"] == "interactive" and "token" not in r.json()
    assert r.json()["usage"]["rpm"]["used"] == 2  # counters carry over
    assert call(env, data["token"]).status_code == 200
    bad = env.http.patch(f"/admin/api/clients/{data['id']}", json={"class": "gold"})
    assert bad.status_code == 422 and error_of(bad)["field"] == "class"


def test_rotate_keeps_the_old_token_for_the_grace_period_only(env: Env) -> None:
    data = MADE["tight"]
    r = env.post(f"/clients/{data['id']}/rotate", {"grace_s": 60})
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    SECRETS.append(new)
    assert new != data["token"] and r.json()["rotation_grace_until"] is not None
    assert call(env, data["token"]).status_code == 200 and call(env, new).status_code == 200
    r = env.post(f"/clients/{data['id']}/rotate", {"grace_s": 0})
    newest = r.json()["token"]
    SECRETS.append(newest)
    assert call(env, new).status_code == 401 and call(env, data["token"]).status_code == 401
    assert call(env, newest).status_code == 200
    assert env.post(f"/clients/{data['id']}/rotate", {"grace_s": -1}).status_code == 422
    assert env.post(f"/clients/{data['id']}/rotate", {"grace_s": 10**9}).status_code == 422
    MADE["tight"]["token"] = newest


def test_revoke_refuses_at_once(env: Env) -> None:
    data = MADE["tight"]
    r = env.http.delete(f"/admin/api/clients/{data['id']}")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    refused = call(env, data["token"])
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert env.http.patch(f"/admin/api/clients/{data['id']}", json={"label": "again"}).status_code == 409
    stored = env.rows("SELECT revoked_at IS NOT NULL FROM clients WHERE id = ?", [data["id"]])
    assert stored == [(True,)]


def test_records_survive_a_restart_of_the_book(env: Env) -> None:
    """What is stored is what the book holds: hashes, classes, limits (read back as a replica's reload does)."""
    from proxy_service import clients

    cur = env.gw.store.cursor()
    try:
        stored = {c.id: c for c in clients.load(cur)}
    finally:
        cur.close()
    for cid, c in env.gw.clients.by_id.items():
        s = stored[cid]
        assert (s.label, s.cls, s.models, s.limits, s.token_hash, s.revoked_at is None) == (
            c.label,
            c.cls,
            c.models,
            c.limits,
            c.token_hash,
            c.revoked_at is None,
        )


def test_no_client_token_in_clear_at_rest(env: Env) -> None:
    env.gw.persist_clients()
    env.gw.writer.flush()
    r = env.post("/export")
    assert r.status_code == 200, r.text
    env.gw.writer.submit(lambda cur: cur.execute("CHECKPOINT")).result(timeout=60)  # the WAL into the file too
    tokens = [m["token"] for m in MADE.values()] + [CLIENT_TOKEN]
    files = [p for p in Path(env.data_dir).rglob("*") if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in files)
    for path in files:
        data = path.read_bytes()
        for token in tokens:
            assert token.encode() not in data, (path, token[:8])
    # A token appears in exactly one answer: the one that made it (create or rotate).
    made = [s for s in SECRETS if s.startswith("krc_")]
    for token in made:
        bodies = [body for _url, body in env.seen if token in body]
        assert len(bodies) == 1 and json.loads(bodies[0])["token"] == token
    SECRETS[:] = [s for s in SECRETS if s not in made]
    assert_no_secret(env)
