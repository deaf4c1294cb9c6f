"""The simulated Gemini, driven by the real google-genai and openai SDKs over real HTTP."""

from __future__ import annotations

import base64
import functools
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from proxy_service.demo import fake_upstream
from proxy_service.demo.fake_upstream import Scenario, create_app
from tests.conftest import fake_key
from tests.servers import serve

K1, K2, K3, BAD1 = (fake_key(n) for n in ("k1", "k2", "k3", "bad1"))
PROJECTS = {"p1": [K1, K2], "p2": [K3]}
BASE_SCENARIO = {"projects": PROJECTS, "invalid_keys": [BAD1]}
SCENARIOS = Path(__file__).parent / "scenarios"
FLASH = "gemini-2.5-flash"
HTTP = httpx.Client(timeout=10)  # one client: building an httpx.Client costs ~50 ms


@pytest.fixture(scope="module")
def server():
    with serve(create_app(BASE_SCENARIO)) as base_url:
        yield base_url


def configure(base_url: str, scenario: dict) -> None:
    """Replace the live scenario and clear counters and quota windows."""
    HTTP.post(f"{base_url}/_fake/scenario", json=scenario).raise_for_status()
    HTTP.post(f"{base_url}/_fake/reset").raise_for_status()


@pytest.fixture
def base(server):
    configure(server, BASE_SCENARIO)
    return server


@functools.cache  # the SDK closes its HTTP client when the Client object is garbage-collected
def gemini(base_url: str, key: str = K1) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base_url, api_version="v1beta"))


@functools.cache
def oai(base_url: str, key: str = K1) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{base_url}/v1beta/openai/", max_retries=0)


def post(base_url: str, path: str, body: object, key: str | None = K1, **kw) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    return HTTP.post(f"{base_url}{path}", json=body, headers=headers, **kw)


def stats(base_url: str) -> dict:
    return HTTP.get(f"{base_url}/_fake/stats").json()


HELLO = {"contents": [{"role": "user", "parts": [{"text": "Hello there, how are you today?"}]}]}


# ---------------------------------------------------------------- generation


def test_generate_content_usage_and_determinism(base):
    client = gemini(base)
    r = client.models.generate_content(model=FLASH, contents="What is a sliding window limiter?")
    assert r.text and r.text.endswith(".")
    u = r.usage_metadata
    assert u.prompt_token_count == len("What is a sliding window limiter?") // 4 + 1
    assert u.thoughts_token_count and u.thoughts_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + u.thoughts_token_count
    assert u.prompt_tokens_details[0].modality == types.MediaModality.TEXT
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.model_version == FLASH and len(r.response_id) == 22
    again = client.models.generate_content(model=FLASH, contents="What is a sliding window limiter?")
    assert again.text == r.text and again.response_id != r.response_id


def test_non_thinking_model_and_thinking_budget(base):
    client = gemini(base)
    r = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    u = r.usage_metadata
    assert u.thoughts_token_count is None
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count
    cfg = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0))
    assert (
        client.models.generate_content(model=FLASH, contents="hi", config=cfg).usage_metadata.thoughts_token_count
        is None
    )
    cfg = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=20, include_thoughts=True))
    r = client.models.generate_content(model="gemini-2.5-pro", contents="hi", config=cfg)
    assert r.usage_metadata.thoughts_token_count == 20
    assert r.candidates[0].content.parts[0].thought is True


def test_max_output_tokens_truncates(base):
    cfg = types.GenerateContentConfig(max_output_tokens=5, system_instruction="Be brief.")
    r = gemini(base).models.generate_content(model="gemini-2.0-flash", contents="Tell me a story", config=cfg)
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert len(r.text) <= 20 and r.usage_metadata.candidates_token_count <= 5


def test_stream_sse_via_sdk(base):
    client = gemini(base)
    prompt = "Explain caching briefly."
    full = client.models.generate_content(model=FLASH, contents=prompt)
    chunks = list(client.models.generate_content_stream(model=FLASH, contents=prompt))
    assert len(chunks) >= 2
    assert "".join(c.text for c in chunks) == full.text
    assert {c.response_id for c in chunks} == {chunks[0].response_id}
    counts = [c.usage_metadata.candidates_token_count for c in chunks]
    assert counts == sorted(counts) and counts[0] < counts[-1]  # cumulative, not per-chunk
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.total_token_count == full.usage_metadata.total_token_count


def test_stream_sse_wire_format(base):
    with HTTP.stream(
        "POST",
        f"{base}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse",
        json=HELLO,
        headers={"x-goog-api-key": K1},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read().decode()
    events = raw.split("\r\n\r\n")
    assert events[-1] == "" and "[DONE]" not in raw
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: {") for e in events[:-1])
    assert payloads[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("usageMetadata" in p for p in payloads)


def test_stream_json_array_without_alt(base):
    with HTTP.stream(
        "POST", f"{base}/v1beta/models/{FLASH}:streamGenerateContent", json=HELLO, headers={"x-goog-api-key": K1}
    ) as r:
        assert r.headers["content-type"].startswith("application/json")
        pieces = list(r.iter_raw())
    body = b"".join(pieces).decode()
    assert body.startswith("[{") and body.endswith("}]")
    chunks = json.loads(body)
    assert len(chunks) >= 2 and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert "finishReason" not in chunks[0]["candidates"][0]


def test_count_tokens_matches_generate(base):
    client = gemini(base)
    prompt = "Count these tokens, please: one two three four five."
    counted = client.models.count_tokens(model=FLASH, contents=prompt)
    generated = client.models.generate_content(model=FLASH, contents=prompt)
    assert counted.total_tokens == generated.usage_metadata.prompt_token_count > 1
    assert stats(base)["accepted"]["p1"] == {FLASH: 1}  # countTokens does not use generation quota


# ---------------------------------------------------------------- embeddings and models


def test_embed_single_and_batch(base):
    client = gemini(base)
    one = client.models.embed_content(model="gemini-embedding-001", contents="hello world")
    assert len(one.embeddings) == 1 and len(one.embeddings[0].values) == 3072
    cfg = types.EmbedContentConfig(output_dimensionality=256)
    many = client.models.embed_content(model="gemini-embedding-001", contents=["hello world", "other"], config=cfg)
    a, b = (e.values for e in many.embeddings)
    assert len(a) == len(b) == 256
    assert a == one.embeddings[0].values[:256] and a != b
    small = client.models.embed_content(model="text-embedding-004", contents="x")
    assert len(small.embeddings[0].values) == 768
    r = post(
        base,
        "/v1beta/models/text-embedding-004:embedContent",
        {"model": "models/text-embedding-004", "content": {"parts": [{"text": "x"}]}},
    )
    assert r.status_code == 200 and r.json()["embedding"]["values"] == small.embeddings[0].values


def test_models_list_get_and_pagination(base):
    client = gemini(base)
    names = [m.name for m in client.models.list()]
    assert {
        f"models/{m}"
        for m in (
            "gemini-2.5-flash",
            "gemini-2.5-pro",
            "gemini-2.5-flash-lite",
            "gemini-2.0-flash",
            "gemini-embedding-001",
            "text-embedding-004",
        )
    } <= set(names)
    m = client.models.get(model="gemini-2.5-pro")
    assert m.display_name == "Gemini 2.5 Pro" and m.input_token_limit == 1048576 and m.thinking is True
    assert "generateContent" in m.supported_actions
    seen, token = [], None
    for _ in range(10):
        params = {"pageSize": 2, **({"pageToken": token} if token else {})}
        page = HTTP.get(f"{base}/v1beta/models", params=params, headers={"x-goog-api-key": K1}).json()
        seen += [m["name"] for m in page["models"]]
        token = page.get("nextPageToken")
        if not token:
            break
        assert base64.b64decode(token)  # opaque base64
    assert seen == names


def test_embedding_model_rejects_generation(base):
    with pytest.raises(errors.ClientError) as e:
        gemini(base).models.generate_content(model="gemini-embedding-001", contents="hi")
    assert e.value.code == 404 and "not supported for generateContent" in e.value.message


# ---------------------------------------------------------------- OpenAI-compatible surface


def test_openai_chat_and_stream(base):
    client = oai(base)
    r = client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "Hi there"}])
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "stop"
    text = r.choices[0].message.content
    assert text and r.choices[0].message.role == "assistant"
    assert r.usage.total_tokens > r.usage.prompt_tokens + r.usage.completion_tokens  # thoughts included
    chunks = list(
        client.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "Hi there"}], stream=True)
    )
    assert len(chunks) >= 2 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens == r.usage.total_tokens
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in chunks[:-1])
    raw = HTTP.post(
        f"{base}/v1beta/openai/chat/completions",
        headers={"authorization": f"Bearer {K1}"},
        json={"model": FLASH, "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert raw.text.endswith("data: [DONE]\n\n")


def test_openai_embeddings_and_models(base):
    client = oai(base)
    e = client.embeddings.create(model="gemini-embedding-001", input=["a", "b"], dimensions=64)
    assert [len(d.embedding) for d in e.data] == [64, 64] and e.data[0].embedding != e.data[1].embedding
    ids = [m.id for m in client.models.list()]
    assert "models/gemini-2.5-flash" in ids
    assert client.models.retrieve("gemini-2.0-flash").id == "models/gemini-2.0-flash"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gemini-9", messages=[{"role": "user", "content": "x"}])
    assert isinstance(err.value.body, list) and err.value.body[0]["error"]["status"] == "NOT_FOUND"


# ---------------------------------------------------------------- quotas


def quota_detail(body: dict, suffix: str) -> dict:
    return next(d for d in body["error"]["details"] if d["@type"].endswith(suffix))


def test_per_minute_429_shape_and_project_sharing(base):
    configure(base, {**BASE_SCENARIO, "limits": {"default": {"rpm": 2}}})
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=K1).status_code == 200
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=K2).status_code == 200
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=K1)  # p1 shared by k1 and k2
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.text.startswith('{\n  "error": {\n    "code": 429,')  # pretty-printed like Google
    body = r.json()
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert re.search(
        r"\* Quota exceeded for metric: generativelanguage\.googleapis\.com/generate_content_free"
        r"_tier_requests, limit: 2, model: gemini-2\.5-flash\nPlease retry in \d+\.\d+s\.$",
        body["error"]["message"],
    )
    violation = quota_detail(body, "QuotaFailure")["violations"][0]
    assert violation == {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
        "quotaDimensions": {"location": "global", "model": FLASH},
        "quotaValue": "2",
    }
    delay = quota_detail(body, "RetryInfo")["retryDelay"]
    assert re.fullmatch(r"\d+s", delay) and 55 <= int(delay[:-1]) <= 60
    assert quota_detail(body, "Help")["links"][0]["url"].startswith("https://ai.google.dev/")
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=K3).status_code == 200  # p2
    assert post(base, "/v1beta/models/gemini-2.0-flash:generateContent", HELLO).status_code == 200  # model
    with pytest.raises(errors.ClientError) as e:
        gemini(base, K2).models.generate_content(model=FLASH, contents="hi")
    assert e.value.code == 429
    s = stats(base)
    assert s["rate_limited"] == {"rpm": 2}
    assert s["accepted"] == {"p1": {FLASH: 2, "gemini-2.0-flash": 1}, "p2": {FLASH: 1}}  # 429s not counted


def test_per_day_and_per_model_limits(base):
    configure(base, {**BASE_SCENARIO, "limits": {"default": {"rpm": 100, "rpd": 2}, "gemini-2.5-pro": {"rpd": 1}}})
    for _ in range(2):
        assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO).status_code == 200
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO)
    assert r.status_code == 429
    v = quota_detail(r.json(), "QuotaFailure")["violations"][0]
    assert v["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier" and v["quotaValue"] == "2"
    assert re.fullmatch(r"\d+s", quota_detail(r.json(), "RetryInfo")["retryDelay"])
    assert post(base, "/v1beta/models/gemini-2.5-pro:generateContent", HELLO).status_code == 200
    assert post(base, "/v1beta/models/gemini-2.5-pro:generateContent", HELLO).status_code == 429


def test_input_tokens_per_minute(base):
    configure(base, {**BASE_SCENARIO, "limits": {"default": {"tpm": 100}}})
    body = {"contents": [{"parts": [{"text": "x" * 300}]}]}  # 75 tokens
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", body).status_code == 200
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", body)
    v = quota_detail(r.json(), "QuotaFailure")["violations"][0]
    assert r.status_code == 429 and v["quotaId"] == "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    assert v["quotaMetric"].endswith("generate_content_free_tier_input_token_count")


def test_openai_surface_shares_quota_and_wraps_errors(base):
    configure(base, {**BASE_SCENARIO, "limits": {"default": {"rpm": 1}}})
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=K2).status_code == 200
    with pytest.raises(openai.RateLimitError) as e:
        oai(base, K1).chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "x"}])
    assert e.value.response.headers.get("retry-after") is None
    body = e.value.body
    assert isinstance(body, list) and len(body) == 1 and body[0]["error"]["code"] == 429


# ---------------------------------------------------------------- request errors


def test_invalid_and_unknown_keys(base):
    for key in (BAD1, "not-in-any-project"):
        with pytest.raises(errors.ClientError) as e:
            gemini(base, key).models.generate_content(model=FLASH, contents="hi")
        assert e.value.code == 400 and e.value.status == "INVALID_ARGUMENT"
        assert e.value.message == "API key not valid. Please pass a valid API key."
        assert e.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert stats(base)["by_status"] == {"400": 2}


def test_missing_key_and_other_key_carriers(base):
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=None)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    assert r.json()["error"]["message"].startswith("Method doesn't allow unregistered callers")
    assert "details" not in r.json()["error"]
    url = f"{base}/v1/models/{FLASH}:generateContent"
    assert HTTP.post(url, params={"key": K1}, json=HELLO).status_code == 200
    assert HTTP.post(url, headers={"authorization": f"Bearer {K3}"}, json=HELLO).status_code == 200
    assert stats(base)["by_project"] == {"p1": 1, "p2": 1}


def test_unknown_model_404(base):
    with pytest.raises(errors.ClientError) as e:
        gemini(base).models.generate_content(model="gemini-1.5-flash", contents="hi")
    assert e.value.code == 404 and e.value.status == "NOT_FOUND"
    assert e.value.message.startswith(
        "models/gemini-1.5-flash is not found for API version v1beta, or is "
        "not supported for generateContent. Call ListModels"
    )


def test_bad_bodies_400(base):
    url = f"/v1beta/models/{FLASH}:generateContent"
    r = post(base, url, {**HELLO, "foo": 1, "generation_config": {}})
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert r.json()["error"]["message"] == 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'
    fv = quota_detail(r.json(), "BadRequest")["fieldViolations"]
    assert fv == [{"description": 'Invalid JSON payload received. Unknown name "foo": Cannot find field.'}]
    v1 = post(base, f"/v1/models/{FLASH}:generateContent", {**HELLO, "systemInstruction": {"parts": []}})
    assert v1.status_code == 200  # v1 takes systemInstruction too now (the SDKs send it there)
    v1 = post(base, f"/v1/models/{FLASH}:generateContent", {**HELLO, "systemInstructions": {"parts": []}})
    assert v1.status_code == 400 and '"systemInstructions"' in v1.json()["error"]["message"]
    missing = post(base, url, {"generationConfig": {}})
    assert missing.status_code == 400 and "contents" in missing.json()["error"]["message"]
    r = HTTP.post(f"{base}{url}", content=b"not json", headers={"x-goog-api-key": K1})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("Invalid JSON payload received.")


# ---------------------------------------------------------------- injected faults and timing


def test_injected_503_does_not_use_quota(base):
    configure(base, {**BASE_SCENARIO, "error_rates": {"503": 1.0}, "limits": {"default": {"rpm": 1}}})
    for _ in range(3):
        with pytest.raises(errors.ServerError) as e:
            gemini(base).models.generate_content(model=FLASH, contents="hi")
        assert e.value.code == 503 and e.value.message == "The model is overloaded. Please try again later."
    s = stats(base)
    assert s["faults"] == {"503": 3} and s["by_status"] == {"503": 3} and s["accepted"] == {}


def test_injected_500_and_timeout(base):
    configure(base, {**BASE_SCENARIO, "error_rates": {"500": 1.0}})
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO)
    assert r.status_code == 500 and r.json()["error"]["status"] == "INTERNAL"
    configure(base, {**BASE_SCENARIO, "error_rates": {"timeout": 1.0}, "timeout_s": 0.05})
    t0 = time.monotonic()
    r = post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO)
    assert r.status_code == 504 and r.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - t0 >= 0.05


def test_midstream_error(base):
    configure(base, {**BASE_SCENARIO, "error_rates": {"midstream": 1.0}})
    got = []
    with pytest.raises(errors.APIError) as e:  # the error surfaces while iterating
        for chunk in gemini(base).models.generate_content_stream(model=FLASH, contents="hi"):
            got.append(chunk)
    assert 1 <= len(got) <= 2 and e.value.code == 503
    assert all(c.candidates[0].finish_reason is None for c in got)
    raw = post(base, f"/v1beta/models/{FLASH}:streamGenerateContent?alt=sse", HELLO).text
    assert raw.endswith(
        '\r\n\r\n{\n  "error": {\n    "code": 503,\n    "message": "The model is overloaded. '
        'Please try again later.",\n    "status": "UNAVAILABLE"\n  }\n}\n'
    )
    arr = post(base, f"/v1beta/models/{FLASH}:streamGenerateContent", HELLO).text
    assert json.loads(arr)[-1]["error"]["code"] == 503
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO).status_code == 500
    assert stats(base)["accepted"]["p1"][FLASH] == 3  # admitted streams count against quota


def test_reset_drops_connection(base):
    configure(base, {**BASE_SCENARIO, "error_rates": {"reset": 1.0}})
    with pytest.raises(httpx.TransportError):
        post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO)
    configure(base, BASE_SCENARIO)
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO).status_code == 200


def test_latency_ttft_and_pacing(base):
    configure(base, {**BASE_SCENARIO, "latency_ms": 60, "ttft_ms": 60, "tokens_per_s": 1000})
    t0 = time.monotonic()
    assert post(base, f"/v1beta/models/{FLASH}:generateContent", HELLO).status_code == 200
    assert time.monotonic() - t0 >= 0.06
    t0 = time.monotonic()
    chunks = list(gemini(base).models.generate_content_stream(model=FLASH, contents="hi"))
    paced = chunks[-1].usage_metadata.candidates_token_count - chunks[0].usage_metadata.candidates_token_count
    assert time.monotonic() - t0 >= 0.12 + paced / 1000 * 0.9


# ---------------------------------------------------------------- observability and scenario


def test_stats_and_reset(base):
    gemini(base).models.generate_content(model=FLASH, contents="hi")
    post(base, "/v1beta/models/nope:generateContent", HELLO, key=K3)
    s = stats(base)
    assert s["requests"] == 2 and s["by_status"] == {"200": 1, "404": 1}
    assert s["by_key"] == {K1: 1, K3: 1} and s["by_project"] == {"p1": 1, "p2": 1}
    assert s["by_operation"] == {"generateContent": 2}
    HTTP.post(f"{base}/_fake/reset").raise_for_status()
    assert stats(base)["requests"] == 0


def test_scenario_files_and_validation(base):
    sc = Scenario.from_file(SCENARIOS / "free_tier.json")
    assert sc.projects == PROJECTS and sc.limits_for("gemini-2.5-pro") == {"rpm": 5, "rpd": 100, "tpm": 250000}
    assert Scenario.from_file(SCENARIOS / "flaky.json").error_rates["reset"] == 0.02
    for bad in (
        {"nope": 1},
        {"error_rates": {"503": 2}},
        {"limits": {"default": {"rph": 1}}},
        {"projects": {"a": ["k"], "b": ["k"]}},
    ):
        with pytest.raises(ValueError):
            Scenario.from_dict(bad)
    r = HTTP.post(f"{base}/_fake/scenario", json={"bogus": True})
    assert r.status_code == 400 and "bogus" in r.json()["error"]
    assert HTTP.get(f"{base}/_fake/scenario").json()["projects"] == PROJECTS


def test_unrestricted_without_scenario():
    with serve(create_app()) as base_url:
        for key in ("any", "other", "any"):
            assert post(base_url, f"/v1beta/models/{FLASH}:generateContent", HELLO, key=key).status_code == 200
        assert stats(base_url)["by_project"] == {"any": 2, "other": 1}


def test_pacific_quota_day():
    noon_utc = datetime(2026, 7, 1, 12, tzinfo=UTC).timestamp()  # 05:00 PDT
    day, end = fake_upstream._pacific_day(noon_utc)
    assert day == "2026-07-01" and end == datetime(2026, 7, 2, 7, tzinfo=UTC).timestamp()
    day, end = fake_upstream._pacific_day(datetime(2026, 1, 2, 7, 30, tzinfo=UTC).timestamp())  # PST
    assert day == "2026-01-01" and end == datetime(2026, 1, 2, 8, tzinfo=UTC).timestamp()
