"""Aliases and fallback chains: how a call is pointed at another model, and through real servers (the fake upstream,
the real google-genai and openai SDKs) which calls fall back, which get the 429, and what the answer and the event
say about the model that served."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from proxy_service.relay import Call
from proxy_service.routing import SERVED_MODEL_HEADER, aliased, next_fallback, retarget, with_aliases
from proxy_service.settings import Config, ConfigError
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, SCENARIO, Proxy, Upstream, wait_rows

PRO, FLASH = "gemini-2.5-pro", "gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


def call(surface: str = "gemini", model: str = PRO, **kw: Any) -> Call:
    path = f"/v1beta/models/{model}:generateContent" if surface == "gemini" else "/v1beta/openai/chat/completions"
    body = json.dumps({"model": model, "messages": []} if surface == "openai" else BODY).encode()
    return Call(surface, "generateContent", model, "POST", path, [], {}, body, False, None, **kw)  # type: ignore[arg-type]


def test_retarget_rewrites_the_path_or_the_body_that_names_the_model() -> None:
    c = call()
    retarget(c, FLASH)
    assert (c.model, c.asked, c.path) == (FLASH, PRO, f"/v1beta/models/{FLASH}:generateContent")
    assert json.loads(c.body) == BODY  # the native body names no model
    o = call("openai")
    retarget(o, FLASH)
    assert json.loads(o.body)["model"] == FLASH and o.path == "/v1beta/openai/chat/completions" and o.asked == PRO
    retarget(o, "gemini-2.0-flash")  # a second step keeps the model first asked
    assert o.asked == PRO and o.model == "gemini-2.0-flash"


def test_aliases_resolve_once_and_chains_walk_in_order() -> None:
    c = call(model="gpt-4o-mini")
    aliased(c, {"gpt-4o-mini": FLASH})
    assert (c.asked, c.model) == ("gpt-4o-mini", FLASH)
    chains = {PRO: [FLASH, "gemini-2.0-flash"]}
    p = call()
    assert next_fallback(p, chains, {PRO}) == FLASH
    assert next_fallback(p, chains, {PRO, FLASH}) == "gemini-2.0-flash"
    assert next_fallback(p, chains, {PRO, FLASH, "gemini-2.0-flash"}) is None
    assert next_fallback(call(project="p1"), chains, {PRO}) is None  # bound to a project's resource
    assert next_fallback(call(model=FLASH), chains, {FLASH}) is None  # no chain of its own


def test_alias_entries_in_both_model_lists() -> None:
    native = {"models": [{"name": f"models/{FLASH}", "supportedGenerationMethods": ["generateContent"]}]}
    out = json.loads(with_aliases(json.dumps(native).encode(), {"gpt-4o-mini": FLASH}, openai=False))
    alias = out["models"][-1]
    assert alias["name"] == "models/gpt-4o-mini" and alias["supportedGenerationMethods"] == ["generateContent"]
    listed = json.loads(with_aliases(b'{"object": "list", "data": []}', {"gpt-4o-mini": FLASH}, openai=True))
    assert listed["data"] == [{"id": "gpt-4o-mini", "object": "model", "owned_by": "keyrack", "target": FLASH}]
    assert with_aliases(b"not json", {"a": FLASH}, openai=True) == b"not json"


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        ({"fallbacks": {PRO: [PRO]}}, "fallbacks", "not gemini-2.5-pro itself"),
        ({"fallbacks": {PRO: []}}, "fallbacks", "a chain of 1 to 5"),
        ({"fallbacks": {PRO: ["a/../b"]}}, "fallbacks", "not a model id"),
        ({"aliases": {"gpt-4o-mini": "gpt-4o-mini"}}, "aliases", "not itself"),
        ({"aliases": {"a": "b", "b": FLASH}}, "aliases", "not an alias"),
        ({"aliases": {"bad name": FLASH}}, "aliases", "not a model name"),
    ],
)
def test_bad_routing_settings_are_refused_naming_the_field(patch: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config().updated(patch)
    assert set(err.value.errors) == {field} and words in err.value.errors[field], err.value.errors


# -- through real servers ------------------------------------------------------------------------------------------
def generate(proxy: Proxy, model: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/{model}:generateContent",
        json=body or BODY,
        headers={"x-goog-api-key": CLIENT_TOKEN},
        timeout=30,
    )


def routed_proxy(start_proxy: Callable[..., Proxy], upstream: Upstream, enabled: bool) -> Proxy:
    # One pro call a minute per project (3 projects): the fourth finds no headroom for pro.
    return start_proxy(
        upstream.url,
        model_limits={PRO: {"rpm": 1}},
        fallbacks={PRO: [FLASH]},
        fallback_enabled=enabled,
        aliases={"gpt-4o-mini": FLASH},
    )


def test_an_exhausted_pro_pool_falls_back_to_flash_for_a_client_that_opted_in(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = routed_proxy(start_proxy, upstream, enabled=True)
    # A client error is never a reason to fall back: it comes back as it is.
    bad = generate(proxy, PRO, {**BODY, "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}})
    assert bad.status_code == 400 and SERVED_MODEL_HEADER not in bad.headers  # (it used one project's pro minute)
    answers = [generate(proxy, PRO) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert [r.headers.get(SERVED_MODEL_HEADER) for r in answers] == [None, None, FLASH, FLASH]
    assert [r.json()["modelVersion"] for r in answers[2:]] == [FLASH, FLASH]  # the surface's own model field
    ids = [r.headers["x-keyrack-request-id"] for r in answers]
    rows = dict(
        (r[0], r[1:])
        for r in wait_rows(
            proxy, "SELECT request_id, model, served_model FROM requests WHERE list_contains(?, request_id)", [ids]
        )
    )
    assert [rows[i] for i in ids] == [(PRO, PRO), (PRO, PRO), (PRO, FLASH), (PRO, FLASH)]


def test_a_client_that_did_not_opt_in_gets_the_429(start_proxy: Callable[..., Proxy], upstream: Upstream) -> None:
    proxy = routed_proxy(start_proxy, upstream, enabled=False)
    answers = [generate(proxy, PRO) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert SERVED_MODEL_HEADER not in answers[3].headers
    rid = answers[3].headers["x-keyrack-request-id"]
    assert wait_rows(proxy, "SELECT model, served_model, outcome FROM requests WHERE request_id = ?", [rid]) == [
        (PRO, None, "exhausted")
    ]


def test_a_client_record_opts_in_or_out_whatever_the_setting(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    """The record's `fallback` decides for its own calls; null leaves it to `fallback_enabled` (off here)."""
    proxy = routed_proxy(start_proxy, upstream, enabled=False)
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}

    def client(fallback: bool | None) -> str:
        r = httpx.post(
            f"{proxy.url}/admin/api/clients", json={"label": f"f-{fallback}", "fallback": fallback}, headers=admin
        )
        assert r.status_code == 201 and r.json()["fallback"] is fallback
        return str(r.json()["token"])

    eager, default = client(True), client(None)
    bad = httpx.post(f"{proxy.url}/admin/api/clients", json={"label": "x", "fallback": "yes"}, headers=admin)
    assert bad.status_code == 422 and "fallback" in bad.text
    answers = [
        httpx.post(
            f"{proxy.url}/v1beta/models/{PRO}:generateContent", json=BODY, headers={"x-goog-api-key": t}, timeout=30
        )
        for t in (eager, eager, eager, eager, default)
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 200, 429]
    assert answers[3].headers.get(SERVED_MODEL_HEADER) == FLASH and SERVED_MODEL_HEADER not in answers[4].headers


def test_an_openai_client_asking_for_an_alias_is_served_by_its_target(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = routed_proxy(start_proxy, upstream, enabled=False)
    client = openai.OpenAI(api_key=CLIENT_TOKEN, base_url=f"{proxy.url}/v1")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers[SERVED_MODEL_HEADER] == FLASH
    reply = raw.parse()
    assert reply.choices[0].message.content and FLASH in reply.model
    assert "gpt-4o-mini" in {m.id for m in client.models.list()}
    native = httpx.get(f"{proxy.url}/v1beta/models", headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=30).json()
    assert "models/gpt-4o-mini" in {m["name"] for m in native["models"]}
    rid = raw.headers["x-keyrack-request-id"]
    assert wait_rows(proxy, "SELECT model, served_model FROM requests WHERE request_id = ?", [rid]) == [
        ("gpt-4o-mini", FLASH)
    ]


def test_every_key_answering_429_for_pro_falls_back_too(
    start_proxy: Callable[..., Proxy], start_upstream: Callable[..., Upstream]
) -> None:
    # Google's own limits (the fake's), unknown to Keyrack: the pro calls reach upstream and come back 429.
    upstream = start_upstream({**SCENARIO, "limits": {PRO: {"rpm": 1}, "default": {"rpm": 100}}})
    proxy = start_proxy(upstream.url, fallbacks={PRO: [FLASH]}, fallback_enabled=True, max_retries=5)
    answers = [generate(proxy, PRO) for _ in range(4)]
    assert [r.status_code for r in answers] == [200] * 4
    assert answers[-1].headers[SERVED_MODEL_HEADER] == FLASH
    rid = answers[-1].headers["x-keyrack-request-id"]
    assert wait_rows(proxy, "SELECT model, served_model FROM requests WHERE request_id = ?", [rid]) == [(PRO, FLASH)]
    outcomes = proxy.rows("SELECT outcome FROM attempts WHERE request_id = ? ORDER BY ts", [rid])
    assert outcomes[-1] == ("ok",) and ("rate_limited",) in outcomes  # pro's 429s first, then flash answered
