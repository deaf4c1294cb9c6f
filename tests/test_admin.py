"""The admin API through a real server: the proxy under uvicorn on 127.0.0.1 (fake Gemini upstream behind it),
httpx in front, synthetic traffic recorded through the gateway's event writer.

Every answer is captured; the last test checks that no secret (pool keys, client token, admin token) appeared in
any of them except the explicit reveal, nor in any log line.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pytest

from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.events import ErrorEvent, RequestEvent
from proxy_service.pool import Cooldown
from proxy_service.settings import Settings
from tests.conftest import fake_key
from tests.servers import serve

TOKEN = "admin-token-for-tests-7Qx"
CLIENT_TOKEN = "client-token-for-tests-9Zy"
GOOD = "AIza" + "G" * 31 + "good"
NEW_1 = "AIza" + "N" * 31 + "new1"
NEW_2 = "AIza" + "M" * 31 + "new2"
P1_A, P1_B, P2_A, BAD = (fake_key(n) for n in ("key-p1-aaaa", "key-p1-bbbb", "key-p2-aaaa", "key-bad-11111"))
POOL = {f"p1:{P1_A}": "p1", f"p1:{P1_B}": "p1", f"p2:{P2_A}": "p2", BAD: None}
SECRETS = [P1_A, P1_B, P2_A, BAD, GOOD, NEW_1, NEW_2, CLIENT_TOKEN, TOKEN]
SCENARIO = {
    "projects": {"p1": [P1_A, P1_B], "p2": [P2_A], "p9": [GOOD]},
    "invalid_keys": [BAD],
}
SEEN: list[tuple[str, str]] = []  # (url, body) of every admin answer
LOGS: list[str] = []


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LOGS.append(self.format(record))


@dataclass
class Env:
    url: str
    gw: Gateway
    data_dir: Path
    http: httpx.Client

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(f"/admin/api{path}", **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(f"/admin/api{path}", json=json, **kw)

    def record(self, *events: Any) -> None:
        for e in events:
            self.gw.writer.record(e)
        self.gw.writer.flush()

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        self.gw.persist_keys()
        self.gw.writer.flush()
        cur = self.gw.store.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    def id_of(self, secret: str) -> str:
        return next(k.id for k in self.gw.pool.keys.values() if k.secret == secret)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    handler = _Capture()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("keyrack")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    data_dir = tmp_path_factory.mktemp("admin")
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        admin_token=TOKEN,
        access_tokens=[CLIENT_TOKEN],
        api_keys=",".join(POOL),
        snapshot_interval_s=0,
        recheck_interval_s=3600,
    )
    with serve(create_fake(SCENARIO)) as upstream:
        settings.upstream_url = upstream
        app = create_app(settings)
        with serve(app, lifespan="on") as url:

            def keep(response: httpx.Response) -> None:
                response.read()
                SEEN.append((str(response.request.url), response.text))

            headers = {"authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30, event_hooks={"response": [keep]}) as http:
                yield Env(url, app.state.gateway, data_dir, http)
    root.removeHandler(handler)
    root.setLevel(old_level)


def req(ts: datetime, key_id: str | None, **kw: Any) -> RequestEvent:
    fields: dict[str, Any] = {
        "ts": ts,
        "request_id": uuid.uuid4().hex,
        "client_id": "c1",
        "surface": "gemini",
        "operation": "generateContent",
        "model": "gemini-2.5-flash",
        "stream": False,
        "status": 200,
        "outcome": "success",
        "key_id": key_id,
        "project": "p1",
        "latency_ms": 120.0,
        "total_tokens": 30,
        "prompt_tokens": 10,
        "output_tokens": 20,
    }
    fields.update(kw)
    return RequestEvent(**fields)


def err(ts: datetime, **kw: Any) -> ErrorEvent:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex[:16],
        "ts": ts,
        "request_id": uuid.uuid4().hex,
        "key_id": "k_x",
        "model": "gemini-2.5-pro",
        "status": 503,
        "error_type": "upstream_error",
        "message": "The model is overloaded.",
        "upstream_body": '{"error": {"code": 503, "status": "UNAVAILABLE"}}',
    }
    fields.update(kw)
    return ErrorEvent(**fields)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    err = body["error"]
    assert set(err) <= {"code", "message", "field", "reason", "detail"} and err["code"] == resp.status_code
    assert isinstance(err.get("reason", ""), str) and (err.get("reason") or "x").replace("_", "").isalpha()
    return err


# -- auth and plumbing -----------------------------------------------------------------------------------------------
def test_auth_is_required_and_constant_time(env: Env) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer"},
    ):
        r = httpx.get(f"{env.url}/admin/api/keys", headers=headers)
        assert r.status_code == 401 and "admin token" in error_of(r)["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{env.url}/admin/api/query", json={"sql": "SELECT 1"}).status_code == 401
    assert env.get("/keys").status_code == 200


def test_unknown_paths_and_methods(env: Env) -> None:
    r = env.get("/nope")
    assert r.status_code == 404 and "unknown admin API path" in error_of(r)["message"]
    r = env.http.put("/admin/api/keys")
    assert r.status_code == 405 and "GET, POST" in error_of(r)["message"]
    assert httpx.get(f"{env.url}/admin/api/nope").status_code == 401  # no probing without the token


def test_admin_api_is_off_without_a_token(tmp_path: Path) -> None:
    app = create_app(Settings(_env_file=None, data_dir=tmp_path, admin_token=""))  # type: ignore[call-arg]
    with serve(app) as url:
        r = httpx.get(f"{url}/admin/api/keys", headers={"authorization": "Bearer anything"})
    assert r.status_code == 503 and "KEYRACK_ADMIN_TOKEN is not set" in error_of(r)["message"]
    app.state.gateway.store.close()


def test_malformed_bodies(env: Env) -> None:
    for body, why in ((b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "body is empty")):
        r = env.http.post("/admin/api/keys", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and why in error_of(r)["message"]
    r = env.http.patch("/admin/api/config", content=b'{"strategy": ', headers={"content-type": "application/json"})
    assert r.status_code == 400


# -- keys ------------------------------------------------------------------------------------------------------------
def test_list_keys_never_shows_secrets_and_counts(env: Env) -> None:
    r = env.get("/keys")
    data = r.json()
    assert data["total"] == 4 and data["page"] == 1 and data["page_size"] == 50
    assert set(data["counts"]) == {"active", "cooling", "invalid", "disabled"}
    item = data["items"][0]
    assert {
        "id",
        "label",
        "project",
        "status",
        "masked",
        "created_at",
        "last_used_at",
        "consecutive_failures",
        "total_failures",
        "requests",
        "successes",
        "last_error",
        "cooling",
    } <= set(item)
    assert item["masked"].count("…") == 1 and item["created_at"].endswith("Z")
    assert not any(s in r.text for s in SECRETS)


def test_add_keys_from_pasted_text(env: Env) -> None:
    text = f"""# my keys
    project-x:{NEW_1}
    GEMINI_API_KEY="{NEW_2}"  also {NEW_1} again
    {P1_A}
    this line has no key at all
    """
    r = env.post("/keys", {"text": text, "label": "pasted"})
    data = r.json()
    assert r.status_code == 200, data
    assert data["added"] == 2 and data["duplicates"] == 1 and data["rejected"] == 1
    assert len(data["added_ids"]) == 2
    by_id = {k.id: k for k in env.gw.pool.keys.values()}
    assert {by_id[i].secret for i in data["added_ids"]} == {NEW_1, NEW_2}
    assert by_id[env.id_of(NEW_1)].project == "project-x" and by_id[env.id_of(NEW_2)].label == "pasted"
    stored = env.rows("SELECT key_id, label FROM keys WHERE list_contains(?, key_id)", [data["added_ids"]])
    assert {k for k, _ in stored} == set(data["added_ids"])
    r = env.post("/keys", {"text": NEW_1, "project": "p1"})
    assert r.json()["duplicates"] == 1 and r.json()["added"] == 0


def test_add_keys_rejects_what_cannot_be_a_key_and_says_why(env: Env) -> None:
    fresh = fake_key("fresh-for-rejections")
    short, long_, odd = "AIza" + "x" * 30, "AIza" + "y" * 36, "AIza" + "z" * 34 + "!"
    text = "\n".join(["not-a-key", f"p7:{short}", long_, odd, fresh, f"p1:{P1_A}", P1_B, fresh, "p7:"])
    before = len(env.gw.pool.keys)
    r = env.post("/keys", {"text": text, "project": "p7"})
    data = r.json()
    assert r.status_code == 200, data
    assert data["added"] == 1 and data["duplicates"] == 2 and data["rejected"] == 5
    assert len(env.gw.pool.keys) == before + 1 and env.gw.pool.keys[env.id_of(fresh)].project == "p7"
    codes = [(f["line"], f["code"]) for f in data["rejections"]]
    assert codes == [(1, "not_a_key"), (2, "bad_length"), (3, "bad_length"), (4, "bad_characters"), (9, "not_a_key")]
    reasons = [f["message"] for f in data["rejections"]]
    assert "30 characters after AIza, not 35" in reasons[1] and "36 characters after AIza" in reasons[2]
    assert all(f["text"] and "…" in f["text"] for f in data["rejections"])  # masked, never the text itself
    warned = [(f["line"], f["code"], f["key_id"]) for f in data["warnings"]]
    assert warned == [
        (6, "duplicate", env.id_of(P1_A)),
        (7, "other_project", env.id_of(P1_B)),
        (8, "duplicate_in_text", env.id_of(fresh)),
    ]
    assert "under project p1" in data["warnings"][1]["message"] and env.gw.pool.keys[env.id_of(P1_B)].project == "p1"
    assert not any(secret in r.text for secret in (short, long_, odd, fresh, P1_A, P1_B))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": "   "}, "text"),
        ({"text": 42}, "text"),
        ({"text": GOOD, "project": "bad project!"}, "project"),
        ({"text": GOOD, "label": 5}, "label"),
    ],
)
def test_add_keys_validation(env: Env, body: dict[str, Any], field: str) -> None:
    r = env.post("/keys", body)
    assert r.status_code == 400 and error_of(r)["field"] == field


def test_list_filters_sort_and_pages(env: Env) -> None:
    env.post("/keys", {"text": GOOD, "project": "p9", "label": "golden"})
    good = env.id_of(GOOD)
    assert [i["id"] for i in env.get("/keys", params={"q": "golden"}).json()["items"]] == [good]
    assert [i["id"] for i in env.get("/keys", params={"q": "good"}).json()["items"]] == [good]  # last 4 characters
    assert [i["id"] for i in env.get("/keys", params={"q": good[2:9]}).json()["items"]] == [good]
    assert env.get("/keys", params={"project": "p1"}).json()["total"] == 2
    env.gw.pool.keys[good].total_failures = 7
    assert [i["id"] for i in env.get("/keys", params={"min_failures": 5}).json()["items"]] == [good]
    env.gw.pool.keys[good].total_failures = 0
    future = (now() + timedelta(days=1)).isoformat() + "Z"
    assert env.get("/keys", params={"created_from": future}).json()["total"] == 0
    assert env.get("/keys", params={"created_to": future}).json()["total"] == len(env.gw.pool.keys)
    ids = [i["id"] for i in env.get("/keys", params={"sort": "id", "order": "desc"}).json()["items"]]
    assert ids == sorted(ids, reverse=True)
    page = env.get("/keys", params={"sort": "id", "page": 2, "page_size": 2}).json()
    assert page["items"][0]["id"] == sorted(ids)[2] and page["total"] == len(ids) and len(page["items"]) == 2
    for params, field in (
        ({"status": "weird"}, "status"),
        ({"sort": "secret"}, "sort"),
        ({"order": "up"}, "order"),
        ({"page": 0}, "page"),
        ({"page_size": "x"}, "page_size"),
        ({"created_from": "yesterday"}, "created_from"),
    ):
        r = env.get("/keys", params=params)
        assert r.status_code == 400 and error_of(r)["field"] == field, params


def test_verify_reset_enable_disable(env: Env) -> None:
    good, bad = env.id_of(P1_A), env.id_of(BAD)
    r = env.post(f"/keys/{good}/verify").json()
    assert r["ok"] is True and r["status"] == 200 and r["key"]["status"] == "active"
    r = env.post(f"/keys/{bad}/verify").json()
    assert r["ok"] is False and "API_KEY_INVALID" in r["message"] and r["key"]["status"] == "invalid"
    assert env.get("/keys", params={"status": "invalid"}).json()["items"][0]["id"] == bad
    assert env.post(f"/keys/{bad}/reset").json()["key"]["status"] == "active"
    assert env.post(f"/keys/{good}/disable").json()["key"]["status"] == "disabled"
    assert env.get("/keys").json()["counts"]["disabled"] == 1
    assert env.rows("SELECT status FROM keys WHERE key_id = ?", [good]) == [("disabled",)]
    assert env.post(f"/keys/{good}/enable").json()["key"]["status"] == "active"
    r = env.post("/keys/k_doesnotexist/verify")
    assert r.status_code == 404 and error_of(r)["field"] == "id"


def test_cooling_is_derived_from_live_cooldowns(env: Env) -> None:
    key = env.gw.pool.keys[env.id_of(P2_A)]
    env.gw.pool.cooldowns[("p2", "gemini-2.5-pro")] = Cooldown(time.time() + 60, "minute", "PerMinute")
    try:
        items = env.get("/keys", params={"status": "cooling"}).json()["items"]
        assert [i["id"] for i in items] == [key.id]
        assert items[0]["cooling"][0]["model"] == "gemini-2.5-pro" and items[0]["cooling"][0]["reason"] == "minute"
        assert env.get("/keys").json()["counts"]["cooling"] == 1
        details = env.get(f"/keys/{key.id}").json()
        assert details["cooldowns"][0]["scope"] == "p2"
        assert any(h["model"] == "gemini-2.5-pro" for h in details["headroom"])
    finally:
        env.gw.pool.cooldowns.clear()


def test_batch_reports_each_key(env: Env) -> None:
    ids = [env.id_of(P1_B), "k_unknown", env.id_of(NEW_2)]
    r = env.post("/keys/batch", {"action": "disable", "ids": ids}).json()
    assert (r["ok"], r["failed"]) == (2, 1)
    assert [x["ok"] for x in r["results"]] == [True, False, True] and r["results"][1]["message"] == "unknown key id"
    r = env.post("/keys/batch", {"action": "enable", "ids": ids[:1] + ids[2:]}).json()
    assert r["ok"] == 2
    r = env.post("/keys/batch", {"action": "verify", "ids": [env.id_of(P1_B), env.id_of(NEW_2)]}).json()
    assert [x["ok"] for x in r["results"]] == [True, False]
    env.post(f"/keys/{env.id_of(NEW_2)}/reset")
    for body, field in (
        ({"action": "explode", "ids": []}, "action"),
        ({"action": "reset", "ids": "k_1"}, "ids"),
        ({"action": "reset", "ids": [1]}, "ids"),
    ):
        resp = env.post("/keys/batch", body)
        assert resp.status_code == 400 and error_of(resp)["field"] == field


def test_key_details(env: Env) -> None:
    kid = env.id_of(P1_A)
    t = now() - timedelta(minutes=5)
    env.record(
        *(req(t + timedelta(seconds=i), kid) for i in range(25)),
        req(t, kid, model="gemini-2.5-pro", outcome="upstream_error", status=503, error_message="x" * 900),
    )
    d = env.get(f"/keys/{kid}").json()
    assert d["key"]["id"] == kid and "secret" not in d["key"]
    usage = {u["model"]: u for u in d["usage_by_model"]}
    assert usage["gemini-2.5-flash"]["calls"] == 25 and usage["gemini-2.5-pro"]["failures"] == 1
    assert usage["gemini-2.5-flash"]["total_tokens"] == 750 and usage["gemini-2.5-flash"]["last_ts"].endswith("Z")
    assert len(d["recent_calls"]) == 20 and d["recent_calls"][0]["ts"] >= d["recent_calls"][-1]["ts"]
    assert all(len(c["error_message"] or "") <= 500 for c in d["recent_calls"])
    assert {h["model"] for h in d["headroom"]} == {"gemini-2.5-flash", "gemini-2.5-pro"}
    assert {"rpm_used", "rpm_limit", "rpd_used", "headroom"} <= set(d["headroom"][0])
    assert env.get("/keys/k_nothere").status_code == 404


def test_reveal_is_explicit_and_audited(env: Env) -> None:
    kid = env.id_of(NEW_1)
    r = env.post(f"/keys/{kid}/reveal")
    assert r.json() == {"id": kid, "secret": NEW_1} and r.headers["cache-control"] == "no-store"
    audit = env.rows("SELECT key_id, message FROM error_logs WHERE error_type = 'audit'")
    assert audit and audit[-1][0] == kid and NEW_1 not in audit[-1][1] and "revealed" in audit[-1][1]
    assert env.post("/keys/k_nothere/reveal").status_code == 404


def test_delete_key(env: Env) -> None:
    kid = env.id_of(NEW_2)
    assert env.http.delete(f"/admin/api/keys/{kid}").json()["ok"] is True
    assert kid not in env.gw.pool.keys
    assert env.rows("SELECT count(*) FROM keys WHERE key_id = ?", [kid]) == [(0,)]
    assert env.http.delete(f"/admin/api/keys/{kid}").status_code == 404


# -- config ----------------------------------------------------------------------------------------------------------
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


# -- error logs ------------------------------------------------------------------------------------------------------
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


# -- stats -----------------------------------------------------------------------------------------------------------
def test_stats_summary(env: Env) -> None:
    t = now()
    env.record(
        req(t - timedelta(seconds=20), "k_s1", model="m-sum", latency_ms=100),
        req(t - timedelta(minutes=20), "k_s1", model="m-sum", outcome="upstream_error", status=503, latency_ms=300),
        req(t - timedelta(hours=3), "k_s1", model="m-sum", latency_ms=200),
    )
    s = env.get("/stats/summary").json()
    assert set(s["windows"]) == {"1m", "1h", "24h", "month"} and s["timezone"] == "UTC"
    w1, w60 = s["windows"]["1m"], s["windows"]["1h"]
    assert w1["calls"] >= 1 and w60["calls"] >= w1["calls"] + 1 and w60["failures"] >= 1
    assert {
        "success_rate",
        "avg_latency_ms",
        "p95_latency_ms",
        "prompt_tokens",
        "output_tokens",
        "total_tokens",
    } <= set(w1)
    assert s["windows"]["24h"]["calls"] >= w60["calls"] + 1
    assert s["keys"] == env.gw.pool.counts()


def test_stats_series_json_and_arrow_in_the_display_zone(env: Env) -> None:
    env.http.patch("/admin/api/config", json={"display_timezone": "Asia/Shanghai"})
    try:
        # 23:59:59.9 and 00:00:00 Shanghai time on either side of a day boundary.
        env.record(
            req(datetime(2025, 3, 10, 15, 59, 59, 900000), "k_t1", model="m-series"),
            req(datetime(2025, 3, 10, 16, 0, 0), "k_t1", model="m-series"),
            req(datetime(2025, 3, 10, 16, 30, 0), "k_t2", model="m-series"),
        )
        params = {"granularity": "day", "from": "2025-03-09T00:00:00Z", "to": "2025-03-12T00:00:00Z"}
        s = env.get("/stats/series", params=params).json()
        assert s["timezone"] == "Asia/Shanghai" and s["granularity"] == "day"
        assert [(r["bucket"], r["calls"]) for r in s["rows"]] == [
            ("2025-03-10T00:00:00+08:00", 1),
            ("2025-03-11T00:00:00+08:00", 2),
        ]
        row = s["rows"][1]
        assert {
            "group",
            "successes",
            "failures",
            "success_rate",
            "p50_latency_ms",
            "p95_latency_ms",
            "total_tokens",
        } <= set(row)
        by_key = env.get("/stats/series", params={**params, "group_by": "key"}).json()["rows"]
        assert sorted((r["group"], r["calls"]) for r in by_key) == [("k_t1", 1), ("k_t1", 1), ("k_t2", 1)]
        r = env.get("/stats/series", params={**params, "format": "arrow", "group_by": "model"})
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
        table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
        assert table.schema.field("bucket").type == pa.timestamp("us", tz="Asia/Shanghai")
        assert table.column("calls").to_pylist() == [1, 2] and table.column("group").to_pylist() == ["m-series"] * 2
    finally:
        env.post("/config/reset")
    for params, field in (
        ({"granularity": "minute"}, "granularity"),
        ({"group_by": "color"}, "group_by"),
        ({"from": "2025-02-01", "to": "2025-01-01"}, "from"),
        ({"format": "csv"}, "format"),
    ):
        r = env.get("/stats/series", params=params)
        assert r.status_code == 400 and error_of(r)["field"] == field
    r = env.get("/stats/series", params={"granularity": "hour", "from": "2000-01-01", "to": "2026-01-01"})
    assert r.status_code == 400 and "too many hour buckets" in error_of(r)["message"]


def test_stats_top(env: Env) -> None:
    t = datetime(2025, 6, 1, 12)
    kid = env.id_of(P1_B)
    env.record(*(req(t, kid, model="m-top-a") for _ in range(3)), req(t, "k_other", model="m-top-b"))
    span = {"from": "2025-06-01T00:00:00Z", "to": "2025-06-02T00:00:00Z"}
    keys = env.get("/stats/top", params={**span, "dim": "key"}).json()["items"]
    assert [(k["name"], k["calls"]) for k in keys] == [(kid, 3), ("k_other", 1)]
    assert keys[0]["project"] == "p1"
    models = env.get("/stats/top", params={**span, "dim": "model", "limit": 1}).json()["items"]
    assert [(m["name"], m["calls"]) for m in models] == [("m-top-a", 3)]
    assert env.get("/stats/top", params={"dim": "project"}).status_code == 400


# -- SQL, schema, export ---------------------------------------------------------------------------------------------
def test_query_json_and_arrow(env: Env) -> None:
    sql = "SELECT model, count(*) AS n FROM requests WHERE model = 'm-top-a' GROUP BY model"
    r = env.post("/query", {"sql": sql, "format": "json"}).json()
    assert r["columns"] == [{"name": "model", "type": "string"}, {"name": "n", "type": "int64"}]
    assert r["rows"] == [["m-top-a", 3]] and r["truncated"] is False
    r = env.post("/query", {"sql": sql})
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert r.headers["x-keyrack-truncated"] == "false" and float(r.headers["x-keyrack-elapsed-ms"]) >= 0
    assert pa.ipc.open_stream(io.BytesIO(r.content)).read_all().to_pylist() == [{"model": "m-top-a", "n": 3}]
    r = env.post("/query", {"sql": "SELECT * FROM keys", "format": "json"}).json()
    assert "secret" not in [c["name"] for c in r["columns"]] and r["rows"]


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("DELETE FROM requests", "writes are not allowed (DELETE)"),
        ("DROP TABLE keys", "DDL is not allowed (DROP)"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("PRAGMA database_list", "PRAGMA statements are not allowed"),
        ("SET threads = 1", "SET statements are not allowed"),
        ("ATTACH 'x.db'", "ATTACH is not allowed"),
        ("COPY requests TO 'x.csv'", "COPY is not allowed"),
        ("INSTALL httpfs", "INSTALL is not allowed"),
        ("LOAD httpfs", "LOAD is not allowed"),
        ("EXPORT DATABASE 'x'", "EXPORT is not allowed"),
        ("CALL duckdb_settings()", "CALL is not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "reading files"),
        ("SELECT * FROM read_parquet('data/exports/keys.parquet')", "reading files"),
        ("SELECT * FROM 'file.csv'", "reading files or URLs is not allowed"),
        ("SELECT * FROM glob('*')", "reading files"),
        ("SELECT * FROM 'https://example.com/data.parquet'", "reading files or URLs is not allowed"),
        ("SELECT secret FROM keys", "secret column is not available"),
        ("SELECT * FROM settings", "settings table is not available"),
        ("SELECT * FROM duckdb_secrets()", "duckdb_secrets() is not allowed"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings() is not allowed"),
        ("SELECT getenv('HOME')", "getenv() is not allowed"),
        ("SELECT current_setting('memory_limit')", "current_setting() is not allowed"),
        ("SELECT * FROM main.keys", "unknown table 'main.keys'"),
    ],
)
def test_hostile_sql_is_refused_precisely(env: Env, sql: str, why: str) -> None:
    r = env.post("/query", {"sql": sql, "format": "json"})
    e = error_of(r)
    assert r.status_code == 400 and e["field"] == "sql" and e["message"].startswith("query not allowed: ")
    assert why in e["message"]


def test_query_limits_and_errors(env: Env) -> None:
    env.http.patch("/admin/api/config", json={"query_row_cap": 5, "query_timeout_s": 0.3})
    try:
        r = env.post("/query", {"sql": "SELECT * FROM range(100) t(i)", "format": "json"}).json()
        assert len(r["rows"]) == 5 and r["truncated"] is True and r["row_cap"] == 5
        r = env.post("/query", {"sql": "SELECT * FROM range(100) t(i)"})
        assert r.headers["x-keyrack-truncated"] == "true" and r.headers["x-keyrack-rows"] == "5"
        r = env.post("/query", {"sql": "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 1"})
        assert r.status_code == 408 and "interrupted" in error_of(r)["message"]
    finally:
        env.post("/config/reset")
    r = env.post("/query", {"sql": "SELECT nope FROM requests"})
    assert r.status_code == 400 and "Binder Error" in error_of(r)["message"]
    for body, field in (({}, "sql"), ({"sql": "  "}, "sql"), ({"sql": "SELECT 1", "format": "csv"}, "format")):
        resp = env.post("/query", body)
        assert resp.status_code == 400 and error_of(resp)["field"] == field


def test_schema_lists_safe_tables(env: Env) -> None:
    tables = env.get("/schema").json()["tables"]
    assert set(tables) == {"requests", "attempts", "error_logs", "keys"}
    assert (
        "secret" not in {c["name"] for c in tables["keys"]}
        and {"name": "ts", "type": "TIMESTAMP"} in tables["requests"]
    )


def test_export_writes_parquet_snapshots(env: Env) -> None:
    r = env.post("/export").json()
    assert set(r["files"]) == {"requests", "attempts", "keys", "error_logs"}
    assert r["rows"]["keys"] == len(env.gw.pool.keys) and r["rows"]["requests"] > 0
    for table, path in r["files"].items():
        assert Path(path).parent == (env.data_dir / "exports").resolve() and Path(path).name == f"{table}.parquet"
    keys = duckdb.sql(f"SELECT * FROM '{r['files']['keys']}'")
    assert "secret" not in keys.columns
    assert not list((env.data_dir / "exports").glob("*.tmp.parquet"))


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert SEEN and LOGS
    for url, body in SEEN:
        if url.endswith("/reveal"):
            continue
        leaked = [s for s in SECRETS if s in body]
        assert not leaked, (url, leaked)
    for line in LOGS:
        assert not [s for s in SECRETS if s in line], line


def test_snapshot_command_asks_the_running_proxy(env: Env) -> None:
    import os
    import subprocess
    import sys

    environ = {**os.environ, "KEYRACK_DATA_DIR": str(env.data_dir), "KEYRACK_ADMIN_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "proxy_service.cli", "snapshot", "--url", env.url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.data_dir,
    )
    assert done.returncode == 0, done.stderr
    assert f"(via {env.url})" in done.stdout and "requests" in done.stdout
    assert (env.data_dir / "exports" / "keys.parquet").exists()
    environ["KEYRACK_ADMIN_TOKEN"] = "wrong"
    done = subprocess.run(
        [sys.executable, "-m", "proxy_service.cli", "snapshot", "--url", env.url],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env.data_dir,
    )
    assert done.returncode == 1 and "refused the export: 401" in done.stderr


def test_query_json_handles_every_duckdb_type(env: Env) -> None:
    sql = (
        "SELECT DATE '2026-01-02' AS d, TIMESTAMP '2026-01-02 03:04:05.5' AS t, INTERVAL 90 MINUTE AS i, "
        "CAST(1.25 AS DECIMAL(6, 2)) AS dec, 'abc'::BLOB AS b, uuid() IS NOT NULL AS u, [1, 2] AS l, "
        "{'x': 1} AS s, 'nan'::DOUBLE AS nan, NULL AS n, TIME '10:11:12' AS tm"
    )
    r = env.post("/query", {"sql": sql, "format": "json"})
    assert r.status_code == 200, r.text
    row = dict(zip([c["name"] for c in r.json()["columns"]], r.json()["rows"][0], strict=True))
    assert row == {
        "d": "2026-01-02",
        "t": "2026-01-02T03:04:05.500Z",
        "i": 5400.0,
        "dec": 1.25,
        "b": "616263",
        "u": True,
        "l": [1, 2],
        "s": {"x": 1},
        "nan": None,
        "n": None,
        "tm": "10:11:12",
    }
