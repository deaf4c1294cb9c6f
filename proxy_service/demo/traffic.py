"""Realistic client traffic for the demo (and the reliability tests): what applications send through Keyrack.

A mix of native Gemini calls on several models (generate, SSE and JSON-array streams, countTokens, embeddings,
model listing), OpenAI-surface chat (streamed and not) and embeddings, and the occasional bad request (malformed
JSON, an unknown model, an invalid model name, a wrong token, an unknown field). The demo sends it open-loop at
`rate` requests/s on average over a week, following the daily and weekly rhythm of `rhythm.py` and drifting between
about half and one and a half times that within minutes, with a burst of one model's calls now and then (a batch
job, every 20–45 s at 2 requests/s) so that rate limits and cooldowns show on the dashboard. The demo's history is
drawn from the same description (mix.py), so the live traffic continues it.

`make_request()` builds one request, `send()` sends it and `check_answer()` says whether the answer is well formed
(a status and a body that parses in the surface's shape); the tests drive the same mix closed-loop. Given
`workflows` (demo/resource_use.py), the generator also runs requests that belong together now and then: an upload
and calls naming the file, a cache and its calls, a Live session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from proxy_service.demo import rhythm

MODELS: dict[str, float] = {
    "gemini-2.5-flash": 5,
    "gemini-2.5-flash-lite": 4,
    "gemini-2.0-flash": 2,
    "gemini-2.5-pro": 1,
}
EMBED_MODEL = "gemini-embedding-001"
# kind -> weight (relative). Bad requests are a few percent, as in real life.
MIX: dict[str, float] = {
    "generate": 30,
    "stream_sse": 18,
    "stream_json": 4,
    "count": 7,
    "embed": 5,
    "batch_embed": 3,
    "chat": 9,
    "chat_stream": 7,
    "oai_embed": 3,
    "list_models": 2,
    "get_model": 1,
    "bad_json": 1.5,
    "unknown_model": 1.5,
    "bad_model_name": 0.5,
    "wrong_token": 1,
    "bad_field": 0.5,
}
PROMPTS = [
    "Summarise the main trade-offs between SQLite and DuckDB for analytics in three sentences.",
    "Write a haiku about rate limits.",
    "Explain what a sliding-window rate limiter is to a new engineer.",
    "Give me five names for a coffee shop run by robots.",
    "Translate 'the build is green again' into French, German and Japanese.",
    "What is the difference between latency and throughput? Use an analogy.",
    "Draft a polite reply declining a meeting invitation for Thursday.",
    "List three ways to make a Python web service start faster.",
    "Classify the sentiment of: 'The update fixed my crash, but the UI is slower now.'",
    "Suggest a SQL query that finds the top 10 customers by revenue last month.",
    "Explain exponential backoff with jitter in two sentences.",
    "Write a unit test name for a function that parses ISO dates with time zones.",
    "What should a runbook for a failing API key rotation contain?",
    "Rewrite this to be friendlier: 'Your request was rejected due to invalid input.'",
    "Outline a blog post about observability for small teams.",
]
EMBED_TEXTS = [
    "invoice overdue reminder",
    "how to reset my password",
    "shipping delayed due to weather",
    "refund policy for annual plans",
    "API key rotation best practices",
    "kitchen renovation ideas",
]


@dataclass(frozen=True)
class Habit:
    """How one demo client behaves: what it calls, on which models, how much of the traffic it sends."""

    name: str
    weight: float
    mix: dict[str, float]
    models: dict[str, float]


# The demo's clients (one access token each, labelled with the name): Explore has differences worth finding.
HABITS: tuple[Habit, ...] = (
    Habit("chat-frontend", 5, {"stream_sse": 6, "chat_stream": 3, "generate": 1}, {"gemini-2.5-flash": 1}),
    Habit("billing-service", 2, {"chat": 8, "generate": 2}, {"gemini-2.5-pro": 3, "gemini-2.5-flash": 1}),
    Habit("search-indexer", 3, {"embed": 4, "batch_embed": 4, "oai_embed": 2}, {EMBED_MODEL: 1}),
    Habit("nightly-reports", 1, {"generate": 8, "count": 2}, {"gemini-2.5-flash-lite": 2, "gemini-2.0-flash": 1}),
    Habit("intern-scripts", 0.6, MIX, MODELS),
)


@dataclass
class Spec:
    """One client request."""

    kind: str
    surface: str  # "gemini" | "openai"
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    stream: bool = False
    model: str | None = None


@dataclass
class Outcome:
    spec: Spec
    status: int | None  # None: no answer at all (transport failure)
    request_id: str | None
    latency_s: float
    problem: str | None  # why the answer is not well formed, or the transport error
    size: int = 0
    stream_error: bool = False  # a 200 stream that carried an error object (the upstream broke mid-stream)
    started: float = 0.0  # time.monotonic() when the request was sent
    body: bytes | None = None  # kept only when asked (send(keep_body=True))


def _pick(rng: random.Random, weighted: dict[str, float]) -> str:
    return rng.choices(list(weighted), weights=list(weighted.values()))[0]


def _contents(rng: random.Random) -> list[dict[str, Any]]:
    turns = [{"role": "user", "parts": [{"text": rng.choice(PROMPTS)}]}]
    if rng.random() < 0.25:  # a multi-turn conversation now and then
        turns = [
            {"role": "user", "parts": [{"text": rng.choice(PROMPTS)}]},
            {"role": "model", "parts": [{"text": "Sure, here is a first answer."}]},
            {"role": "user", "parts": [{"text": "Make it shorter, please."}]},
        ]
    return turns


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def make_request(
    rng: random.Random, token: str, kind: str | None = None, model: str | None = None, mix: dict[str, float] = MIX
) -> Spec:
    """A request of `kind` (drawn from `mix` when None) authenticated with `token`."""
    kind = kind or _pick(rng, mix)
    model = model or _pick(rng, MODELS)
    goog = {"x-goog-api-key": token, "content-type": "application/json"}
    bearer = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    gen: dict[str, Any] = {"contents": _contents(rng)}
    if rng.random() < 0.3:
        gen["generationConfig"] = {"temperature": round(rng.uniform(0.2, 1.2), 2), "maxOutputTokens": 512}
    if kind == "generate":
        return Spec(kind, "gemini", "POST", f"/v1beta/models/{model}:generateContent", goog, _dumps(gen), False, model)
    if kind == "stream_sse":
        path = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(gen), True, model)
    if kind == "stream_json":
        path = f"/v1beta/models/{model}:streamGenerateContent"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(gen), True, model)
    if kind == "count":
        return Spec(kind, "gemini", "POST", f"/v1beta/models/{model}:countTokens", goog, _dumps(gen), False, model)
    if kind == "embed":
        body: dict[str, Any] = {"content": {"parts": [{"text": rng.choice(EMBED_TEXTS)}]}}
        path = f"/v1beta/models/{EMBED_MODEL}:embedContent"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(body), False, EMBED_MODEL)
    if kind == "batch_embed":
        texts = rng.sample(EMBED_TEXTS, rng.randint(2, 4))
        body = {"requests": [{"model": f"models/{EMBED_MODEL}", "content": {"parts": [{"text": t}]}} for t in texts]}
        path = f"/v1beta/models/{EMBED_MODEL}:batchEmbedContents"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(body), False, EMBED_MODEL)
    if kind in ("chat", "chat_stream"):
        messages = [{"role": "user", "content": rng.choice(PROMPTS)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "You are a concise assistant."})
        body = {"model": model, "messages": messages, "stream": kind == "chat_stream"}
        return Spec(kind, "openai", "POST", "/v1/chat/completions", bearer, _dumps(body), kind == "chat_stream", model)
    if kind == "oai_embed":
        body = {"model": EMBED_MODEL, "input": rng.sample(EMBED_TEXTS, rng.randint(1, 3))}
        return Spec(kind, "openai", "POST", "/v1/embeddings", bearer, _dumps(body), False, EMBED_MODEL)
    if kind == "list_models":
        return Spec(kind, "gemini", "GET", f"/v1beta/models?key={token}&pageSize={rng.choice([5, 50])}", {})
    if kind == "get_model":
        return Spec(kind, "gemini", "GET", f"/v1beta/models/{model}", {"x-goog-api-key": token}, None, False, model)
    if kind == "bad_json":
        body_bytes = b'{"contents": [{"parts": [{"text": "unterminated'
        return Spec(kind, "gemini", "POST", f"/v1beta/models/{model}:generateContent", goog, body_bytes, False, model)
    if kind == "unknown_model":
        path = "/v1beta/models/gemini-1.0-ultra-preview:generateContent"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(gen), False, "gemini-1.0-ultra-preview")
    if kind == "bad_model_name":
        path = "/v1beta/models/gemini flash!:generateContent"
        return Spec(kind, "gemini", "POST", path, goog, _dumps(gen), False, "gemini flash!")
    if kind == "wrong_token":
        headers = {**goog, "x-goog-api-key": "krc_wrong_" + "".join(rng.choices("abcdefghijk0123456789", k=12))}
        return Spec(kind, "gemini", "POST", f"/v1beta/models/{model}:generateContent", headers, _dumps(gen), False)
    if kind == "bad_field":
        body = {**gen, "temprature": 0.5}
        return Spec(kind, "gemini", "POST", f"/v1beta/models/{model}:generateContent", goog, _dumps(body), False, model)
    raise ValueError(f"unknown request kind {kind!r}")


# -- answers ---------------------------------------------------------------------------------------------------------


def _check_error(spec: Spec, status: int, headers: httpx.Headers, body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"{status} answer is not JSON: {body[:80]!r}"
    wrapped = isinstance(doc, list)  # Google's OpenAI-compatible endpoint wraps its errors in a list
    err = doc[0] if wrapped and doc else doc
    if not isinstance(err, dict) or not isinstance(err.get("error"), dict):
        return f"{status} answer has no error object: {body[:80]!r}"
    e = err["error"]
    if not isinstance(e.get("message"), str) or not e["message"]:
        return f"{status} error without a message"
    google_shape = e.get("code") == status and isinstance(e.get("status"), str)
    openai_shape = isinstance(e.get("type"), str) and "param" in e
    if spec.surface == "gemini" and not google_shape:
        return f"{status} error is not Google-shaped: {body[:120]!r}"
    if spec.surface == "openai" and not (openai_shape or google_shape):
        return f"{status} error is neither OpenAI- nor Google-shaped: {body[:120]!r}"
    if status == 429 and "retry-after" not in headers:
        return "429 without Retry-After"
    return None


def _check_sse(body: bytes) -> str | None:
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    frames = 0
    leftover: list[str] = []
    for line in text.split("\n"):
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload == "[DONE]":
                continue
            try:
                json.loads(payload)
            except ValueError:
                return f"SSE frame is not JSON: {payload[:80]!r}"
            frames += 1
        elif line.strip():
            leftover.append(line)
    if leftover:  # a bare JSON error object after the frames (Google's mid-stream error)
        try:
            doc = json.loads("\n".join(leftover))
        except ValueError:
            return f"SSE stream has unparseable trailing text: {leftover[0][:80]!r}"
        err = doc[0] if isinstance(doc, list) and doc else doc
        if not isinstance(err, dict) or "error" not in err:
            return "SSE trailing text is not an error object"
    if not frames and not leftover:
        return "empty SSE stream"
    return None


def check_answer(spec: Spec, status: int, headers: httpx.Headers, body: bytes) -> str | None:
    """None when the answer is well formed for its surface; otherwise what is wrong with it."""
    if status != 200:
        return _check_error(spec, status, headers, body)
    if "text/event-stream" in headers.get("content-type", ""):
        return _check_sse(body)
    try:
        doc = json.loads(body)
    except ValueError:
        return f"200 answer is not JSON: {body[:80]!r}"
    if spec.stream and spec.surface == "gemini" and not isinstance(doc, list):
        return "JSON-array stream is not an array"
    return None


async def send(client: httpx.AsyncClient, spec: Spec, timeout: float = 60.0, keep_body: bool = False) -> Outcome:
    started = time.monotonic()
    try:
        async with client.stream(
            spec.method, spec.path, headers=spec.headers, content=spec.body, timeout=timeout
        ) as resp:
            body = await resp.aread()
    except httpx.HTTPError as exc:
        problem = f"transport: {type(exc).__name__}: {exc}"
        return Outcome(spec, None, None, time.monotonic() - started, problem, started=started)
    return Outcome(
        spec,
        resp.status_code,
        resp.headers.get("x-keyrack-request-id"),
        time.monotonic() - started,
        check_answer(spec, resp.status_code, resp.headers, body),
        len(body),
        spec.stream and resp.status_code == 200 and b'"error"' in body,
        started,
        body if keep_body else None,
    )


# -- the demo's open-loop generator ---------------------------------------------------------------------------------


class Workflows(Protocol):
    """Requests in a row that belong together (demo/resource_use.py: an upload and calls naming the file, a cache and
    its calls, a Live session), run now and then: `share` of the plain calls' rate."""

    share: float

    async def __call__(self, client: httpx.AsyncClient, rng: random.Random) -> list[Outcome]: ...


class TrafficGenerator:
    """Sends `make_request()` traffic to `base_url` from a background thread until `stop()`."""

    def __init__(
        self,
        base_url: str,
        token: str,
        rate: float = 2.0,
        seed: int | None = None,
        concurrency: int = 32,
        on_outcome: Callable[[Outcome], None] | None = None,
        clients: dict[str, Habit] | None = None,
        rhythmic: bool = False,
        workflows: Workflows | None = None,
    ) -> None:
        self.base_url = base_url
        self.token = token
        self.clients = clients or {}  # token → habit: each request comes from one of them (else all from `token`)
        self.rate = rate
        self.rhythm = rhythm.rhythm_now if rhythmic else lambda: 1.0  # the demo follows the hour; tests a flat rate
        self.rng = random.Random(seed)
        self.concurrency = concurrency
        self.workflows = workflows
        self.on_outcome = on_outcome
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._grace = 3.0
        self._thread = threading.Thread(target=self._main, name="demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = 3.0) -> None:
        """Stop sending; requests in flight get `grace` seconds to finish, then are abandoned."""
        self._grace = grace
        self._stop.set()
        self._thread.join(grace + 5)

    def summary(self) -> str:
        c = self.counts
        return (
            f"{c['sent']} sent, {c['ok']} ok, {c['429']} rate-limited, {c['4xx']} client errors, "
            f"{c['5xx']} upstream errors, {c['stream_error']} broken streams, {c['no_answer']} unanswered"
        )

    def _count(self, outcome: Outcome) -> None:
        s = outcome.status
        if s is None:
            self.counts["no_answer"] += 1
        elif s == 200:
            self.counts["stream_error" if outcome.stream_error else "ok"] += 1
        elif s == 429:
            self.counts["429"] += 1
        elif s < 500:
            self.counts["4xx"] += 1
        else:
            self.counts["5xx"] += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _main(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self._run())

    def next_request(self) -> Spec:
        """One request from a client chosen by weight, following its habits (or the plain mix)."""
        if not self.clients:
            return make_request(self.rng, self.token)
        tokens = list(self.clients)
        token = self.rng.choices(tokens, weights=[self.clients[t].weight for t in tokens])[0]
        habit = self.clients[token]
        return make_request(self.rng, token, _pick(self.rng, habit.mix), _pick(self.rng, habit.models))

    def current_rate(self, t: float) -> float:
        """The base rate now: `rate` times the hour's rhythm, drifting between ~0.5x and ~1.5x that over about two
        minutes."""
        return max(0.02, self.rate * self.rhythm() * (1 + 0.5 * math.sin(2 * math.pi * t / 120)))

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=60) as client:
            tasks: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            next_burst = start + self.rng.uniform(10, 20)  # the first one soon: a new demo shows activity at once

            async def one(spec: Spec) -> None:
                self.counts["sent"] += 1
                self._count(await send(client, spec))

            def launch(spec: Spec) -> None:
                if len(tasks) >= self.concurrency:
                    self.counts["skipped"] += 1
                    return
                task = asyncio.create_task(one(spec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            async def burst() -> None:
                kind = self.rng.choice(rhythm.BURST_KINDS)
                model = self.rng.choice(rhythm.BURST_MODELS)
                n, span = self.rng.randint(*rhythm.BURST_SIZE), self.rng.uniform(*rhythm.BURST_SPAN_S)
                token = next((t for t, h in self.clients.items() if h.name == rhythm.BURST_CLIENT), self.token)
                for _ in range(n):
                    if self._stop.is_set():
                        return
                    launch(make_request(self.rng, token, kind, model))
                    await asyncio.sleep(span / n)

            async def workflow(run: Workflows) -> None:
                for outcome in await run(client, self.rng):
                    self.counts["sent"] += 1
                    self._count(outcome)

            def next_workflow(now: float) -> float:
                if self.workflows is None:
                    return math.inf
                return now + self.rng.expovariate(self.current_rate(now - start) * self.workflows.share)

            bursts: set[asyncio.Task[None]] = set()  # bursts and workflows
            next_call = start + self.rng.expovariate(self.current_rate(0.0))
            next_flow = next_workflow(start)
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_burst:
                    b = asyncio.create_task(burst())
                    bursts.add(b)
                    b.add_done_callback(bursts.discard)
                    next_burst = now + rhythm.burst_gap_s(self.rate, self.rng) / self.rhythm()
                if now >= next_flow and self.workflows is not None:
                    if len(bursts) < self.concurrency:
                        w = asyncio.create_task(workflow(self.workflows))
                        bursts.add(w)
                        w.add_done_callback(bursts.discard)
                    next_flow = next_workflow(now)
                if now >= next_call:
                    launch(self.next_request())
                    next_call = now + self.rng.expovariate(self.current_rate(now - start))
                # Short naps (a stop is seen at once) that keep the exponential gaps: a capped sleep would not.
                await asyncio.sleep(min(max(min(next_call, next_burst, next_flow) - now, 0.0), 0.5))
            for b in list(bursts):
                b.cancel()
            if tasks:
                await asyncio.wait(list(tasks), timeout=self._grace)
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
