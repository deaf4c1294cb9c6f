"""Admin API: upstream keys (proxy_service/admin/keys.py) — list, add from pasted text, rejections, filters,
verify/reset/enable/disable, cooling, batch, details, reveal, delete. The tests build on each other in file order."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from proxy_service.pool import Cooldown
from tests.admin.conftest import (
    BAD,
    GOOD,
    NEW_1,
    NEW_2,
    P1_A,
    P1_B,
    P2_A,
    SECRETS,
    Env,
    assert_no_secret,
    error_of,
    now,
    req,
)
from tests.conftest import fake_key


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


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
