"""A simulated Gemini API (`keyrack fake-upstream`): the upstream for offline runs, tests and benchmarks.

It speaks the wire contract of docs/reference (native `v1beta`/`v1` plus the OpenAI-compatible surface under
`/v1beta/openai/`), enforces Google-style per-(project, model) quotas with byte-realistic 429 bodies, and can
inject the faults seen in production (503, 500, 504 after a timeout, mid-stream errors, connection resets).

Endpoints: `/{v1beta,v1}/models` (list, get, `:generateContent`, `:streamGenerateContent` with `?alt=sse` or as
a JSON array, `:countTokens`, `:embedContent`, `:batchEmbedContents`), `/v1beta/openai/{chat/completions,
embeddings,models}`, the Live API's WebSocket `/ws/google.ai.generativelanguage.{v1beta,v1,v1alpha}.GenerativeService.
BidiGenerateContent` (fake_live.py; a session's setup is one call against its project's quota, `live_gate`), and
the fake's own `GET /_fake/stats`, `POST /_fake/reset`, `GET|POST /_fake/scenario`. Files, caches and batches are
fake_resources.py's; function calls (`tools` → `functionCall` parts / OpenAI `tool_calls`) and structured output
(`responseSchema` / `response_format`) fake_tools.py's. `systemInstruction` is taken on `v1` as on `v1beta`.

Scenario (JSON, all optional): `projects` {project: [keys]} (empty = any key is accepted and is its own project),
`invalid_keys`, `limits` {"default"|model: {rpm, rpd, tpm}} (model entries override default; null = unlimited),
`latency_ms` (before answering), `ttft_ms` (before the first stream chunk), `tokens_per_s` (stream pacing),
`error_rates` {"503","500","timeout","reset","midstream": probability}, `timeout_s`, `seed`.
Quotas are per (project, model): RPM is a sliding 60 s window, RPD resets at midnight America/Los_Angeles, TPM
counts prompt tokens in a sliding minute. Only admitted calls are counted (a 429 is not).

Quota and fault order for a model call: key → body → model → fault draw → quota admission → answer.
Injected 503/500/timeout/reset faults are not counted against quota (the request never reached the model);
a `midstream` fault on a stream is (it was admitted and started).

`reset` faults drop the TCP connection without any response bytes. uvicorn passes the app the bound method
`RequestResponseCycle.receive`, whose owner holds the asyncio transport: we set SO_LINGER(on, 0) on its socket
so close() sends an RST, mark the cycle disconnected (so uvicorn skips the 500 it would otherwise write) and
call `transport.abort()`. Outside uvicorn (e.g. Starlette's TestClient) a ConnectionResetError is raised instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from proxy_service.demo import fake_live, fake_tools
from proxy_service.demo.fake_resources import FakeResources
from proxy_service.demo.fake_wire import Fail as _Fail
from proxy_service.demo.fake_wire import bad as _bad
from proxy_service.demo.fake_wire import gather as _gather
from proxy_service.demo.fake_wire import prompt as _prompt
from proxy_service.demo.fake_wire import response_id as _response_id
from proxy_service.demo.fake_wire import tokens as _tokens

# ---------------------------------------------------------------- static data (computed once at import)

_GEN = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]
_SAMPLING = {"temperature": 1, "topP": 0.95, "topK": 64, "maxTemperature": 2}
_MODELS: dict[str, dict[str, Any]] = {
    "gemini-2.5-flash": {
        "version": "001",
        "displayName": "Gemini 2.5 Flash",
        "description": "Stable version of Gemini 2.5 Flash, our mid-size multimodal model that supports up to 1 million tokens, released in June of 2025.",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": _GEN,
        **_SAMPLING,
        "thinking": True,
    },
    "gemini-2.5-pro": {
        "version": "2.5",
        "displayName": "Gemini 2.5 Pro",
        "description": "Stable release (June 17th, 2025) of Gemini 2.5 Pro",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": _GEN,
        **_SAMPLING,
        "thinking": True,
    },
    "gemini-2.5-flash-lite": {
        "version": "001",
        "displayName": "Gemini 2.5 Flash-Lite",
        "description": "Stable version of Gemini 2.5 Flash-Lite, released in July of 2025",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": _GEN,
        **_SAMPLING,
        "thinking": True,
    },
    "gemini-2.0-flash": {
        "version": "2.0",
        "displayName": "Gemini 2.0 Flash",
        "description": "Gemini 2.0 Flash",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 8192,
        "supportedGenerationMethods": _GEN,
        "temperature": 1,
        "topP": 0.95,
        "topK": 40,
        "maxTemperature": 2,
    },
    "gemini-embedding-001": {
        "version": "001",
        "displayName": "Gemini Embedding 001",
        "description": "Obtain a distributed representation of a text.",
        "inputTokenLimit": 2048,
        "outputTokenLimit": 1,
        "supportedGenerationMethods": ["embedContent", "countTextTokens", "countTokens", "asyncBatchEmbedContent"],
    },
    "text-embedding-004": {
        "version": "004",
        "displayName": "Text Embedding 004",
        "description": "Obtain a distributed representation of a text.",
        "inputTokenLimit": 2048,
        "outputTokenLimit": 1,
        "supportedGenerationMethods": ["embedContent"],
    },
}
for _mid, _m in _MODELS.items():
    _MODELS[_mid] = {"name": f"models/{_mid}", **_m}
_MODEL_IDS = list(_MODELS)
_MODEL_JSON = {mid: (json.dumps(m, indent=2) + "\n").encode() for mid, m in _MODELS.items()}
_EMBED_DIMS = {"gemini-embedding-001": 3072, "text-embedding-004": 768}
# Thinking: (thinks by default, base thought tokens, spread). Pro cannot switch thinking off.
_THINKING = {
    "gemini-2.5-pro": (True, 180, 900),
    "gemini-2.5-flash": (True, 90, 600),
    "gemini-2.5-flash-lite": (False, 60, 300),
}
_OAI_MODELS = {mid: {"id": f"models/{mid}", "object": "model", "owned_by": "google"} for mid in _MODELS}
_OAI_MODEL_LIST = json.dumps({"object": "list", "data": list(_OAI_MODELS.values())}).encode()

_SENTENCES = [
    "Here is a concise answer based on what you asked.",
    "The short version is that it depends on the constraints you care about most.",
    "In most cases the simplest approach is also the most reliable one.",
    "A good first step is to measure before changing anything.",
    "Keep the moving parts few, and make each of them easy to observe.",
    "If the data is small, an in-memory structure is usually enough.",
    "For larger workloads, batching the writes makes a noticeable difference.",
    "Caching helps when the same request is repeated often.",
    "Errors should be surfaced early instead of being retried silently.",
    "A sliding window gives a smoother limit than fixed buckets.",
    "Most clients already retry on transient failures, so avoid doubling that.",
    "Tests that exercise the real protocol catch the bugs that matter.",
    "Latency is dominated by the slowest dependency on the request path.",
    "You can trade a little accuracy for a large gain in throughput here.",
    "Documenting the contract keeps independent components compatible.",
    "When in doubt, prefer the boring, well-understood option.",
    "That should cover the main points; let me know if you want more detail.",
]  # 17 (prime) so any stride visits distinct sentences
_THOUGHT = "**Working through the request**\n\nI'm identifying the key points and drafting a concise answer."

_emb_rng = random.Random(20250617)
_EMB_N = 4099
_EMB_POOL = [f"{_emb_rng.gauss(0.0, 0.018):.9f}" for _ in range(_EMB_N)]
_EMB_POOL += _EMB_POOL[:3072]

_FAULTS = ("503", "500", "timeout", "reset", "midstream")
_GENERATE_FIELDS = frozenset(
    {
        "contents",
        "systemInstruction",
        "system_instruction",
        "tools",
        "toolConfig",
        "tool_config",
        "safetySettings",
        "safety_settings",
        "generationConfig",
        "generation_config",
        "cachedContent",
        "cached_content",
        "serviceTier",
        "service_tier",
        "labels",
        "store",
        "continuationToken",
    }
)
_GENERATE_FIELDS_V1 = _GENERATE_FIELDS  # v1 takes systemInstruction too now (what the SDKs send on /v1)
_EMBED_FIELDS = frozenset(
    {"model", "content", "taskType", "task_type", "title", "outputDimensionality", "output_dimensionality"}
)
_COUNT_FIELDS = frozenset({"contents", "generateContentRequest", "generate_content_request"})
_QUOTA = {  # kind -> (metric, quotaId)
    "rpm": (
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    ),
    "tpm": (
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
        "GenerateContentInputTokensPerModelPerMinute-FreeTier",
    ),
    "rpd": (
        "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
    ),
}
_PACIFIC = ZoneInfo("America/Los_Angeles")
_JSON = "application/json; charset=UTF-8"
_JSON_HEADERS = {"content-type": _JSON}
_OVERLOADED = "The model is overloaded. Please try again later."
_INTERNAL_MSG = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)


# ---------------------------------------------------------------- scenario


@dataclass
class Scenario:
    """What the fake simulates. All fields optional; see docs in the module header and `from_dict`."""

    projects: dict[str, list[str]] = field(default_factory=dict)  # project -> keys; {} = any key, own project
    invalid_keys: list[str] = field(default_factory=list)
    limits: dict[str, dict[str, int | None]] = field(default_factory=dict)  # "default"|model -> rpm/rpd/tpm
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    error_rates: dict[str, float] = field(default_factory=dict)  # "503","500","timeout","reset","midstream"
    timeout_s: float = 30.0
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        """Validate and normalise the JSON form; raises ValueError naming the offending field."""
        if not isinstance(d, dict):
            raise ValueError("scenario must be a JSON object")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown scenario field(s): {', '.join(sorted(unknown))}")
        s = cls(**{k: v for k, v in d.items() if v is not None})
        try:
            s._validate()
        except (TypeError, AttributeError) as e:
            raise ValueError(f"invalid scenario: {e}") from None
        return s

    def _validate(self) -> None:
        seen: set[str] = set()
        for project, keys in self.projects.items():
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError(f"projects.{project} must be a list of key strings")
            if seen & set(keys):
                raise ValueError(f"key(s) listed in more than one project: {sorted(seen & set(keys))}")
            seen |= set(keys)
        self.invalid_keys = [str(k) for k in self.invalid_keys]
        self.limits = {name.removeprefix("models/"): lim for name, lim in self.limits.items()}
        for name, lim in self.limits.items():
            if not isinstance(lim, dict) or set(lim) - {"rpm", "rpd", "tpm"}:
                raise ValueError(f"limits.{name} must be an object with rpm/rpd/tpm")
            if any(v is not None and (not isinstance(v, int) or v < 0) for v in lim.values()):
                raise ValueError(f"limits.{name}: values must be integers >= 0 or null")
        if set(self.error_rates) - set(_FAULTS):
            raise ValueError(f"error_rates keys must be among {', '.join(_FAULTS)}")
        self.error_rates = {k: float(v) for k, v in self.error_rates.items()}
        if any(not 0 <= r <= 1 for r in self.error_rates.values()) or sum(self.error_rates.values()) > 1:
            raise ValueError("error_rates must be probabilities in 0..1 summing to at most 1")
        for name in ("latency_ms", "ttft_ms", "tokens_per_s", "timeout_s"):
            setattr(self, name, float(getattr(self, name)))
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        self.seed = int(self.seed)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Scenario:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def limits_for(self, model: str) -> dict[str, int]:
        merged = {**self.limits.get("default", {}), **self.limits.get(model, {})}
        return {k: v for k, v in merged.items() if v is not None}


# ---------------------------------------------------------------- small helpers


class _Reset(Exception):
    pass


def _not_found(model: str, version: str, method: str) -> _Fail:
    return _Fail(
        404,
        "NOT_FOUND",
        f"models/{model} is not found for API version {version}, or is not "
        f"supported for {method}. Call ListModels to see the list of available models and their "
        "supported methods.",
    )


def _midstream_error(compat: bool) -> str:
    body = {"error": {"code": 503, "message": _OVERLOADED, "status": "UNAVAILABLE"}}
    return json.dumps([body] if compat else body, indent=2) + "\n"


def _pacific_day(ts: float) -> tuple[str, float]:
    """The quota day containing epoch `ts` (Google resets RPD at midnight Pacific) and when it ends."""
    local = datetime.fromtimestamp(ts, _PACIFIC)
    end = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), _PACIFIC)
    return local.date().isoformat(), end.timestamp()


def _embedding_json(text: str, seed: int, dims: int) -> str:
    off = zlib.crc32(text.encode(), seed & 0xFFFFFFFF) % _EMB_N
    return "[" + ",".join(_EMB_POOL[off : off + dims]) + "]"


@dataclass(slots=True)
class _Answer:
    """A generated answer: text deltas (concatenating to the answer) and token accounting."""

    pieces: list[str]
    finish: str
    prompt: int
    media: int
    thoughts: int
    thought_text: str | None
    call: dict[str, Any] | None = None  # a functionCall answer (fake_tools): its JSON is the one piece

    def usage(self, chars: int | None = None) -> dict[str, Any]:
        """usageMetadata after `chars` characters of answer (None = all of it)."""
        cand = _tokens(sum(map(len, self.pieces)) if chars is None else chars)
        u: dict[str, Any] = {
            "promptTokenCount": self.prompt + self.media,
            "candidatesTokenCount": cand,
            "totalTokenCount": self.prompt + self.media + cand + self.thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt}],
        }
        if self.media:
            u["promptTokensDetails"].append({"modality": "IMAGE", "tokenCount": self.media})
        if self.thoughts:
            u["thoughtsTokenCount"] = self.thoughts
        return u


class _Window:
    __slots__ = ("day", "day_count", "times", "token_sum", "tokens")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.day, self.day_count = "", 0


# ---------------------------------------------------------------- the fake


class _Fake:
    def __init__(self, scenario: Scenario, clock: Callable[[], float] | None = None):
        # An injected clock (epoch seconds) drives the quota windows and the quota day, so tests can step time
        # instead of sleeping through a minute; by default the windows use the monotonic clock.
        self.clock = clock
        self.set_scenario(scenario)
        self.reset()
        self.resources = FakeResources(self, clock)

    def set_scenario(self, scenario: Scenario) -> None:
        self.sc = scenario
        self.rng = random.Random(scenario.seed)
        self.key_project = {k: p for p, keys in scenario.projects.items() for k in keys}
        self.invalid = set(scenario.invalid_keys)
        self.limits = {mid: scenario.limits_for(mid) for mid in _MODELS}
        rates = [float(scenario.error_rates.get(k, 0)) for k in _FAULTS]
        self.fault_edges = [(k, sum(rates[: i + 1])) for i, k in enumerate(_FAULTS) if rates[i] > 0]
        self.any_fault = bool(self.fault_edges)

    def reset(self) -> None:
        self.rng = random.Random(self.sc.seed)
        self.windows: dict[tuple[str, str], _Window] = defaultdict(_Window)
        self.day_key, self.day_end = _pacific_day(self.clock() if self.clock else time.time())
        self.requests = 0
        self.by_status: Counter[str] = Counter()
        self.by_key: Counter[str] = Counter()
        self.by_project: Counter[str] = Counter()
        self.by_operation: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.accepted: dict[str, Counter[str]] = defaultdict(Counter)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "by_key": dict(self.by_key),
            "by_project": dict(self.by_project),
            "by_operation": dict(self.by_operation),
            "rate_limited": dict(self.rate_limited),
            "faults": dict(self.faults),
            "accepted": {p: dict(c) for p, c in self.accepted.items()},
        }

    # -- request plumbing

    async def serve(self, request: Request, compat: bool, op: str, handler, *args) -> Response:
        """Authenticate, run `handler(request, project, *args)`, turn _Fail into Google's body, count."""
        self.requests += 1
        self.by_operation[op] += 1
        key = project = None
        try:
            key = self._key(request)
            if key is not None:
                self.by_key[key] += 1
            project = self._project(key)
            self.by_project[project] += 1
            resp = await handler(request, project, *args)
        except _Fail as f:
            resp = f.response(compat)
        except _Reset:
            self.by_status["reset"] += 1
            _abort_connection(request)
            return Response(b"", 500)
        self.by_status[str(resp.status_code)] += 1
        return resp

    @staticmethod
    def _key(request: Request) -> str | None:
        h = request.headers
        key = h.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            auth = h.get("authorization", "")
            if auth[:7].lower() == "bearer ":
                key = auth[7:].strip()
        return key or None

    def _project(self, key: str | None) -> str:
        if key is None:
            raise _Fail(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without "
                "established identity). Please use API Key or other form of API consumer identity "
                "to call this API.",
            )
        project = key if not self.key_project else self.key_project.get(key)
        if project is None or key in self.invalid:
            msg = "API key not valid. Please pass a valid API key."
            raise _Fail(
                400,
                "INVALID_ARGUMENT",
                msg,
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    },
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": msg},
                ],
            )
        return project

    @staticmethod
    async def read_body(request: Request, allowed: frozenset[str] | None) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            snippet = raw[:40].decode("utf-8", "replace")
            msg = f"Invalid JSON payload received. Unexpected token.\n{snippet}\n^"
            raise _bad(msg, [msg]) from None
        if not isinstance(body, dict):
            msg = 'Invalid JSON payload received. Unknown name "": Root element must be a message.'
            raise _bad(msg, [msg])
        if allowed is not None and not allowed.issuperset(body):
            msgs = [
                f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.'
                for k in body
                if k not in allowed
            ]
            raise _bad("\n".join(msgs), msgs)
        return body

    @staticmethod
    def resolve_model(model: str, version: str, method: str, need: str) -> str:
        model = model.removeprefix("models/")
        info = _MODELS.get(model)
        if info is None or need not in info["supportedGenerationMethods"]:
            raise _not_found(model, version, method)
        return model

    async def _delay(self) -> None:
        if self.sc.latency_ms:
            await asyncio.sleep(self.sc.latency_ms / 1000)

    async def _fault(self, stream: bool) -> bool:
        """Draw an injected fault; raise it, or return True for a mid-stream fault on a stream."""
        if not self.any_fault:
            return False
        r = self.rng.random()
        kind = next((k for k, edge in self.fault_edges if r < edge), None)
        if kind is None:
            return False
        self.faults[kind] += 1
        if kind == "503":
            raise _Fail(503, "UNAVAILABLE", _OVERLOADED)
        if kind == "timeout":
            await asyncio.sleep(self.sc.timeout_s)
            raise _Fail(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")
        if kind == "reset":
            raise _Reset()
        if kind == "500" or not stream:
            raise _Fail(500, "INTERNAL", _INTERNAL_MSG)
        return True

    def live_gate(self, key: str | None, model: str) -> str:
        """A Live session's setup (fake_live): the key's project, one call admitted against its quota, counted like
        any call; a refusal as Live says it (the close code Google uses for the same error)."""
        self.requests += 1
        self.by_operation["BidiGenerateContent"] += 1
        try:
            if key is not None:
                self.by_key[key] += 1
            project = self._project(key)
            self.by_project[project] += 1
            self._admit(project, model, 0)
        except _Fail as f:
            self.by_status[str(f.code)] += 1
            raise fake_live.Refused(1011 if f.code == 429 else 1007, f.body["message"]) from None
        self.by_status["101"] += 1
        return project

    def _admit(self, project: str, model: str, prompt_tokens: int) -> None:
        """Count an accepted call against (project, model) quotas or raise Google's 429."""
        lim = self.limits.get(model)
        if lim is None:  # a Live model (fake_live.LIVE_MODELS): its limits from the scenario too
            lim = self.sc.limits_for(model)
        if lim:
            self._check_quota(project, model, prompt_tokens, lim)
        self.accepted[project][model] += 1

    def _check_quota(self, project: str, model: str, prompt_tokens: int, lim: dict[str, int]) -> None:
        now, wall = (self.clock(),) * 2 if self.clock else (time.monotonic(), time.time())
        if wall >= self.day_end:
            self.day_key, self.day_end = _pacific_day(wall)
        w = self.windows[(project, model)]
        while w.times and w.times[0] <= now - 60:
            w.times.popleft()
        while w.tokens and w.tokens[0][0] <= now - 60:
            w.token_sum -= w.tokens.popleft()[1]
        if w.day != self.day_key:
            w.day, w.day_count = self.day_key, 0
        minute_delay = (w.times[0] + 60 - now) if w.times else 60 - wall % 60
        hits = []
        if "rpm" in lim and len(w.times) >= lim["rpm"]:
            hits.append(("rpm", lim["rpm"], minute_delay))
        if "tpm" in lim and w.token_sum + prompt_tokens > lim["tpm"]:
            hits.append(("tpm", lim["tpm"], (w.tokens[0][0] + 60 - now) if w.tokens else 60 - wall % 60))
        if "rpd" in lim and w.day_count >= lim["rpd"]:
            hits.append(("rpd", lim["rpd"], minute_delay))  # Google sends a short delay even for RPD
        if hits:
            raise self._quota_error(model, hits)
        w.times.append(now)
        w.day_count += 1
        if "tpm" in lim:
            w.tokens.append((now, prompt_tokens))
            w.token_sum += prompt_tokens

    def _quota_error(self, model: str, hits: list[tuple[str, int, float]]) -> _Fail:
        delay = max(1.0, max(d for _, _, d in hits))
        lines, violations = [], []
        for kind, limit, _ in hits:
            self.rate_limited[kind] += 1
            metric, quota_id = _QUOTA[kind]
            lines.append(f"* Quota exceeded for metric: {metric}, limit: {limit}, model: {model}")
            violations.append(
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(limit),
                }
            )
        msg = (
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
            "To monitor your current usage, head to: https://ai.dev/rate-limit. \n"
            + "\n".join(lines)
            + f"\nPlease retry in {delay:.9f}s."
        )
        return _Fail(
            429,
            "RESOURCE_EXHAUSTED",
            msg,
            [
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": violations},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{int(-(-delay // 1))}s"},
            ],
        )

    # -- generation

    def answer_for(self, model: str, texts: list[str], media: int, cfg: Any) -> _Answer:
        cfg = cfg if isinstance(cfg, dict) else {}
        prompt_text = "\n".join(texts)
        h = zlib.crc32(prompt_text.encode(), self.sc.seed & 0xFFFFFFFF)
        n, start, stride = len(_SENTENCES), (h >> 4) % 17, 1 + (h >> 12) % 16
        chosen = [_SENTENCES[(start + i * stride) % n] for i in range(2 + h % 4)]
        pieces = [s + " " for s in chosen[:-1]] + [chosen[-1]]
        structured = fake_tools.native_structured(cfg, h)
        if structured is not None:  # a document of the response schema, in two deltas
            pieces = [structured[: len(structured) // 2], structured[len(structured) // 2 :]]
        elif cfg.get("responseMimeType", cfg.get("response_mime_type")) == "application/json":
            pieces = ['{"answer": "', *pieces, '"}']
        finish = "STOP"
        max_out = cfg.get("maxOutputTokens", cfg.get("max_output_tokens"))
        if isinstance(max_out, int) and max_out > 0 and sum(map(len, pieces)) > max_out * 4:
            budget, cut = max_out * 4, []
            for p in pieces:
                cut.append(p[:budget])
                budget -= len(cut[-1])
                if budget <= 0:
                    break
            pieces, finish = cut, "MAX_TOKENS"
        thoughts, thought_text = 0, None
        think = _THINKING.get(model)
        if think:
            tc = cfg.get("thinkingConfig", cfg.get("thinking_config"))
            tc = tc if isinstance(tc, dict) else {}
            budget_t = tc.get("thinkingBudget", tc.get("thinking_budget"))
            if budget_t == 0 and model == "gemini-2.5-pro":
                raise _bad("Budget 0 is invalid. This model only works in thinking mode.")
            if budget_t != 0 and (think[0] or budget_t is not None):
                thoughts = think[1] + (h >> 8) % think[2]
                if isinstance(budget_t, int) and budget_t > 0:
                    thoughts = min(thoughts, budget_t)
                if tc.get("includeThoughts", tc.get("include_thoughts")):
                    thought_text = _THOUGHT
        return _Answer(pieces, finish, _tokens(len(prompt_text)), media, thoughts, thought_text)

    def native_chunk(
        self, ans: _Answer, text: str, first: bool, last: bool, chars: int | None, rid: str, model: str
    ) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": text}] if ans.call is None else [{"functionCall": ans.call}]
        if first and ans.thought_text:
            parts.insert(0, {"text": ans.thought_text, "thought": True})
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if last:
            cand["finishReason"] = ans.finish
        cand["index"] = 0
        return {"candidates": [cand], "usageMetadata": ans.usage(chars), "modelVersion": model, "responseId": rid}

    async def _paced(self, frames: list[tuple[str, int]], tail: str | None):
        """Yield (frame, token count) pairs honouring ttft_ms / tokens_per_s, then an optional tail.

        Without pacing everything goes out in one chunked-encoding write (same bytes, far less overhead)."""
        tps = self.sc.tokens_per_s
        if not tps and not self.sc.ttft_ms:
            yield ("".join(f for f, _ in frames) + (tail or "")).encode()
            return
        if self.sc.ttft_ms:
            await asyncio.sleep(self.sc.ttft_ms / 1000)
        for i, (frame, ntok) in enumerate(frames):
            if i and tps:
                await asyncio.sleep(ntok / tps)
            yield frame.encode()
        if tail is not None:
            yield tail.encode()

    async def generate(self, request: Request, project: str, version: str, model: str, method: str):
        stream = method == "streamGenerateContent"
        await self._delay()
        body = await self.read_body(request, _GENERATE_FIELDS_V1 if version == "v1" else _GENERATE_FIELDS)
        model = self.resolve_model(model, version, method, "generateContent")
        if not body.get("contents"):
            raise _bad("* GenerateContentRequest.contents: contents is not specified\n")
        self.resources.check_refs(project, body)
        texts, media = _prompt(body["contents"], body.get("systemInstruction", body.get("system_instruction")))
        ans = self.answer_for(model, texts, media, body.get("generationConfig", body.get("generation_config")) or {})
        call = fake_tools.native_call(body, zlib.crc32("\n".join(texts).encode(), self.sc.seed & 0xFFFFFFFF))
        if call is not None:
            ans.call, ans.pieces, ans.finish = call, [json.dumps(call)], "STOP"
        midstream = await self._fault(stream)
        self._admit(project, model, ans.prompt + ans.media)
        rid = _response_id()
        if not stream:
            full = "".join(ans.pieces)
            return Response(
                json.dumps(self.native_chunk(ans, full, True, True, None, rid, model)).encode(), headers=_JSON_HEADERS
            )
        n = min(len(ans.pieces), self.rng.randint(1, 2)) if midstream else len(ans.pieces)
        chunks, chars = [], 0
        for i, piece in enumerate(ans.pieces[:n]):
            chars += len(piece)
            last = i == len(ans.pieces) - 1 and not midstream
            chunk = self.native_chunk(ans, piece, i == 0, last, chars, rid, model)
            chunks.append((json.dumps(chunk, separators=(",", ": ")), _tokens(len(piece))))
        error = _midstream_error(False) if midstream else None
        if request.query_params.get("alt") == "sse":
            frames = [(f"data: {c}\r\n\r\n", t) for c, t in chunks]
            return StreamingResponse(self._paced(frames, error), headers={"content-type": "text/event-stream"})
        frames = [(("[" if i == 0 else ",\r\n") + c, t) for i, (c, t) in enumerate(chunks)]
        tail = ("," if chunks else "[") + "\r\n" + error + "]" if error else "]"
        return StreamingResponse(self._paced(frames, tail), headers=_JSON_HEADERS)

    async def count_tokens(self, request: Request, project: str, version: str, model: str, method: str):
        await self._delay()
        body = await self.read_body(request, _COUNT_FIELDS)
        model = self.resolve_model(model, version, method, "countTokens")
        inner = body.get("generateContentRequest", body.get("generate_content_request")) or {}
        texts, media = _prompt(
            body.get("contents", inner.get("contents", [])),
            inner.get("systemInstruction", inner.get("system_instruction")),
        )
        await self._fault(False)
        prompt = _tokens(len("\n".join(texts))) if texts else 0
        details = [{"modality": "TEXT", "tokenCount": prompt}]
        if media:
            details.append({"modality": "IMAGE", "tokenCount": media})
        return Response(
            json.dumps({"totalTokens": prompt + media, "promptTokensDetails": details}).encode(), headers=_JSON_HEADERS
        )

    def embed_one(self, req: dict[str, Any], model: str, where: str) -> tuple[str, int]:
        if not _EMBED_FIELDS.issuperset(req):
            msgs = [
                f'Invalid JSON payload received. Unknown name "{k}"{where}: Cannot find field.'
                for k in req
                if k not in _EMBED_FIELDS
            ]
            raise _bad("\n".join(msgs), msgs)
        content = req.get("content")
        if not content:
            raise _bad("* EmbedContentRequest.content: content is not specified\n")
        texts: list[str] = []
        _gather(content, texts)
        dims = req.get("outputDimensionality", req.get("output_dimensionality")) or _EMBED_DIMS[model]
        if not isinstance(dims, int) or not 0 < dims <= _EMBED_DIMS[model]:
            raise _bad(f"* EmbedContentRequest.output_dimensionality: must be in 1..{_EMBED_DIMS[model]}\n")
        text = "\n".join(texts)
        return _embedding_json(text, self.sc.seed, dims), _tokens(len(text))

    async def embed(self, request: Request, project: str, version: str, model: str, method: str):
        await self._delay()
        batch = method == "batchEmbedContents"
        body = await self.read_body(request, frozenset({"requests"}) if batch else None)
        model = self.resolve_model(model, version, method, "embedContent")
        if batch:
            reqs = body.get("requests")
            if not isinstance(reqs, list) or not reqs:
                raise _bad("* BatchEmbedContentsRequest.requests: requests is not specified\n")
            vecs = [
                self.embed_one(r if isinstance(r, dict) else {}, model, f" at 'requests[{i}]'")
                for i, r in enumerate(reqs)
            ]
        else:
            vecs = [self.embed_one(body, model, "")]
        await self._fault(False)
        self._admit(project, model, sum(t for _, t in vecs))
        if batch:
            text = '{"embeddings": [' + ", ".join('{"values": ' + v + "}" for v, _ in vecs) + "]}"
        else:
            text = '{"embedding": {"values": ' + vecs[0][0] + "}}"
        return Response(text.encode(), headers=_JSON_HEADERS)

    async def list_models(self, request: Request, project: str, version: str):
        q = request.query_params
        try:
            size = int(q.get("pageSize") or 50)
        except ValueError:
            raise _bad("Invalid value for pageSize.") from None
        size = 50 if size <= 0 else min(size, 1000)
        start = 0
        if q.get("pageToken"):
            try:
                raw = base64.b64decode(q["pageToken"], validate=True)
                start = _MODEL_IDS.index(raw[2 : 2 + raw[1]].decode().removeprefix("models/")) + 1
            except (ValueError, IndexError):
                raise _bad("Invalid page token.") from None
        page = _MODEL_IDS[start : start + size]
        out: dict[str, Any] = {"models": [_MODELS[m] for m in page]}
        if start + size < len(_MODEL_IDS):
            name = f"models/{page[-1]}".encode()
            out["nextPageToken"] = base64.b64encode(b"\n" + bytes([len(name)]) + name).decode()
        return Response(json.dumps(out, indent=2).encode(), headers=_JSON_HEADERS)

    async def get_model(self, request: Request, project: str, version: str, model: str):
        body = _MODEL_JSON.get(model.removeprefix("models/"))
        if body is None:
            raise _not_found(model.removeprefix("models/"), version, "get")
        return Response(body, headers=_JSON_HEADERS)

    # -- OpenAI-compatible surface

    async def chat(self, request: Request, project: str):
        await self._delay()
        body = await self.read_body(request, None)
        model = self.resolve_model(str(body.get("model") or ""), "v1beta", "generateContent", "generateContent")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("* GenerateContentRequest.contents: contents is not specified\n")
        texts: list[str] = []
        media = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            media += _gather(content if isinstance(content, list) else [content or ""], texts)
        cfg: dict[str, Any] = {"maxOutputTokens": body.get("max_completion_tokens") or body.get("max_tokens")}
        effort = body.get("reasoning_effort")
        if effort:
            cfg["thinkingConfig"] = {"thinkingBudget": {"none": 0, "low": 1024, "medium": 8192}.get(str(effort), -1)}
        cfg.update(fake_tools.openai_config(body))
        stream = bool(body.get("stream"))
        ans = self.answer_for(model, texts, media, cfg)
        call = fake_tools.openai_call(body, zlib.crc32("\n".join(texts).encode(), self.sc.seed & 0xFFFFFFFF))
        if call is not None:
            ans.pieces = [call["arguments"]]
        midstream = await self._fault(stream)
        self._admit(project, model, ans.prompt + ans.media)
        rid, created = _response_id(), int(time.time())
        finish = "length" if ans.finish == "MAX_TOKENS" else "stop"
        message: dict[str, Any] = {"content": "".join(ans.pieces), "role": "assistant"}
        if call is not None:
            finish = "tool_calls"
            tool_call = {"id": f"call_{rid[:16]}", "type": "function", "function": call}
            message = {"content": None, "role": "assistant", "tool_calls": [tool_call]}
        u = ans.usage()
        usage = {
            "prompt_tokens": u["promptTokenCount"],
            "completion_tokens": u["candidatesTokenCount"],
            "total_tokens": u["totalTokenCount"],
        }
        if not stream:
            return Response(
                json.dumps(
                    {
                        "choices": [
                            {
                                "finish_reason": finish,
                                "index": 0,
                                "message": message,
                            }
                        ],
                        "created": created,
                        "id": rid,
                        "model": model,
                        "object": "chat.completion",
                        "usage": usage,
                    }
                ).encode(),
                headers=_JSON_HEADERS,
            )
        n = min(len(ans.pieces), self.rng.randint(1, 2)) if midstream else len(ans.pieces)
        frames = []
        for i, piece in enumerate(ans.pieces[:n]):
            delta: dict[str, Any] = {"content": piece, "role": "assistant"}
            if call is not None:
                delta = {"role": "assistant", "tool_calls": [{"index": 0, **message["tool_calls"][0]}]}
            choice: dict[str, Any] = {"delta": delta, "index": 0}
            chunk: dict[str, Any] = {
                "choices": [choice],
                "created": created,
                "id": rid,
                "model": model,
                "object": "chat.completion.chunk",
            }
            if i == len(ans.pieces) - 1 and not midstream:
                choice["finish_reason"] = finish
                chunk["usage"] = usage
            frames.append((f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n", _tokens(len(piece))))
        tail = _midstream_error(True) if midstream else "data: [DONE]\n\n"
        return StreamingResponse(self._paced(frames, tail), headers={"content-type": "text/event-stream"})

    async def oai_embeddings(self, request: Request, project: str):
        await self._delay()
        body = await self.read_body(request, None)
        model = self.resolve_model(str(body.get("model") or ""), "v1beta", "embedContent", "embedContent")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise _bad("* BatchEmbedContentsRequest.requests: input must be a string or a list of strings\n")
        dims = body.get("dimensions") or _EMBED_DIMS[model]
        vecs = [
            self.embed_one({"content": {"parts": [{"text": t}]}, "outputDimensionality": dims}, model, "")
            for t in inputs
        ]
        await self._fault(False)
        tokens = sum(t for _, t in vecs)
        self._admit(project, model, tokens)
        data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{v}}}' for i, (v, _) in enumerate(vecs))
        text = (
            f'{{"object":"list","data":[{data}],"model":"{model}",'
            f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}'
        )
        return Response(text.encode(), headers=_JSON_HEADERS)

    async def oai_models(self, request: Request, project: str, model: str | None):
        if model is None:
            return Response(_OAI_MODEL_LIST, headers=_JSON_HEADERS)
        info = _OAI_MODELS.get(model.removeprefix("models/"))
        if info is None:
            raise _not_found(model.removeprefix("models/"), "v1beta", "get")
        return Response(json.dumps(info).encode(), headers=_JSON_HEADERS)


def _abort_connection(request: Request) -> None:
    """Drop the client connection with a TCP RST and no response bytes (see the module docstring)."""
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise ConnectionResetError("fake upstream: injected connection reset")
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError, TypeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    cycle.disconnected = True  # type: ignore[union-attr]
    transport.abort()


# ---------------------------------------------------------------- app

_VERSIONS = frozenset({"v1beta", "v1", "v1alpha"})
_NATIVE_OPS = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "countTokens": "count_tokens",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
}


def create_app(scenario: Scenario | dict | None = None, clock: Callable[[], float] | None = None) -> Starlette:
    """The fake as an ASGI app. `scenario` may be a Scenario, its dict form, or None (any key, no limits);
    `clock` (epoch seconds) replaces real time in the quota windows (tests step it instead of sleeping)."""
    if scenario is None:
        scenario = Scenario()
    elif isinstance(scenario, dict):
        scenario = Scenario.from_dict(scenario)
    fake = _Fake(scenario, clock)
    not_found = Response(b"Not Found", 404, media_type="text/plain")

    async def native(request: Request) -> Response:
        version, target = request.path_params["version"], request.path_params.get("target")
        if version not in _VERSIONS:
            return not_found
        if target is None:
            return await fake.serve(request, False, "listModels", fake.list_models, version)
        if request.method == "GET":
            return await fake.serve(request, False, "getModel", fake.get_model, version, target)
        model, _, method = target.rpartition(":")
        if method in ("batchGenerateContent", "asyncBatchEmbedContent"):
            return await fake.serve(request, False, method, fake.resources.create_batch, version, model, method)
        op = _NATIVE_OPS.get(method)
        if not model or op is None:
            return not_found
        return await fake.serve(request, False, method, getattr(fake, op), version, model, method)

    async def chat(request: Request) -> Response:
        return await fake.serve(request, True, "chat.completions", fake.chat)

    def resource(op: str, handler_name: str, *names: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            version = request.path_params["version"]
            if version not in _VERSIONS:
                return not_found
            handler = getattr(fake.resources, handler_name)
            args = [request.path_params[n] for n in names]
            return await fake.serve(request, False, op, handler, version, *args)

        return endpoint

    async def file_endpoint(request: Request) -> Response:
        version = request.path_params["version"]
        if version not in _VERSIONS:
            return not_found
        name = request.path_params["name"]
        return await fake.serve(request, False, "files", fake.resources.file, version, name, request.method)

    async def embeddings(request: Request) -> Response:
        return await fake.serve(request, True, "embeddings", fake.oai_embeddings)

    async def oai_models(request: Request) -> Response:
        model = request.path_params.get("model")
        return await fake.serve(request, True, "models" if model is None else "models.retrieve", fake.oai_models, model)

    async def stats(request: Request) -> Response:
        return Response(json.dumps(fake.stats(), indent=2).encode(), headers=_JSON_HEADERS)

    async def reset(request: Request) -> Response:
        fake.reset()
        return Response(b'{"ok": true}', headers=_JSON_HEADERS)

    async def scenario_endpoint(request: Request) -> Response:
        if request.method == "POST":
            try:
                fake.set_scenario(Scenario.from_dict(json.loads(await request.body())))
            except ValueError as e:
                return Response(json.dumps({"error": str(e)}).encode(), 400, headers=_JSON_HEADERS)
        return Response(json.dumps(fake.sc.to_dict(), indent=2).encode(), headers=_JSON_HEADERS)

    app = Starlette(
        routes=[  # hot routes first: Starlette tries them in order
            Route("/{version}/models/{target:path}", native, methods=["GET", "POST"]),
            Route("/{version}/models", native, methods=["GET"]),
            Route("/v1beta/openai/chat/completions", chat, methods=["POST"]),
            Route("/v1beta/openai/embeddings", embeddings, methods=["POST"]),
            Route("/v1beta/openai/models", oai_models, methods=["GET"]),
            Route("/v1beta/openai/models/{model:path}", oai_models, methods=["GET"]),
            Route("/upload/{version}/files", resource("upload", "upload"), methods=["POST"]),
            Route("/{version}/files", resource("files.list", "list_files"), methods=["GET"]),
            Route("/{version}/files/{name}", file_endpoint, methods=["GET", "DELETE"]),
            Route("/download/{version}/files/{name}", file_endpoint, methods=["GET"]),
            Route("/{version}/cachedContents", resource("cachedContents", "caches_root"), methods=["GET", "POST"]),
            Route(
                "/{version}/cachedContents/{cid}",
                resource("cachedContents", "cache", "cid"),
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route("/{version}/batches", resource("batches.list", "list_batches"), methods=["GET"]),
            Route("/{version}/batches/{name}", resource("batches", "batch", "name"), methods=["GET", "POST", "DELETE"]),
            Route("/_fake/stats", stats, methods=["GET"]),
            Route("/_fake/reset", reset, methods=["POST"]),
            Route("/_fake/scenario", scenario_endpoint, methods=["GET", "POST"]),
            WebSocketRoute("/ws/{service}", fake_live.endpoint(fake.live_gate)),
        ]
    )
    app.state.fake = fake
    return app


def run(host: str, port: int, scenario_path: str | None) -> None:
    """Serve the fake with uvicorn until interrupted (the `keyrack fake-upstream` command)."""
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "auto"
    scenario = Scenario.from_file(scenario_path) if scenario_path else None
    uvicorn.run(create_app(scenario), host=host, port=port, access_log=False, log_level="warning", loop=loop)
