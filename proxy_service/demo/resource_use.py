"""Demo traffic that uses Gemini's project-owned resources and the Live API, as applications do now and then.

Three short workflows, each a few requests in a row from one client (`traffic.TrafficGenerator` given `Workflows`
starts one every so often, a small share of its calls):
- `upload`: a small text file uploaded with the resumable protocol (start, then one upload-and-finalize chunk to the
  upload URL Keyrack answers), then a few generateContent calls naming it — and, later, calls naming a recent file
  again (its project keeps it for 48 h);
- `cache`: a cached content made from a long context, then a few calls naming it;
- `live`: a Live session over the WebSocket of two or three turns.
Each request's outcome is an `Outcome` like the rest of the demo's (a status and whether the answer is well formed),
so the demo's counters and the tests read them the same way.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from proxy_service.demo.traffic import PROMPTS, Outcome, Spec, check_answer

WORKFLOWS: dict[str, float] = {"upload": 45, "cache": 35, "live": 20}  # kind -> weight
SHARE = 0.03  # workflows per plain call: at the demo's 2 calls/s, one every ~17 s
WORKFLOW_CLIENT = "intern-scripts"  # the demo client (traffic.HABITS) that runs them
MODEL = "gemini-2.5-flash"
LIVE_MODEL = "gemini-2.0-flash-live-001"
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
RECENT_FILES = 8  # files the demo names again in later calls
NOTES = [
    "Meeting notes: the team agreed to rotate API keys monthly and to alert on exhausted projects.",
    "Release checklist: run the migrations, warm the caches, watch the error rate for an hour.",
    "Customer feedback: uploads are slow on mobile; the search results are great; billing is confusing.",
]


def _spec(kind: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Spec:
    return Spec(kind, "gemini", method, path, headers, body, False, MODEL if "models/" in path else None)


async def _call(client: httpx.AsyncClient, spec: Spec) -> tuple[Outcome, httpx.Response | None]:
    started = time.monotonic()
    try:
        resp = await client.request(spec.method, spec.path, headers=spec.headers, content=spec.body)
    except httpx.HTTPError as exc:
        failed = f"transport: {type(exc).__name__}: {exc}"
        return Outcome(spec, None, None, time.monotonic() - started, failed, started=started), None
    # An upload's start answers with headers only.
    headers_only = resp.status_code == 200 and not resp.content and spec.kind == "upload_start"
    problem = None if headers_only else check_answer(spec, resp.status_code, resp.headers, resp.content)
    outcome = Outcome(
        spec,
        resp.status_code,
        resp.headers.get("x-keyrack-request-id"),
        time.monotonic() - started,
        problem,
        len(resp.content),
        started=started,
    )
    return outcome, resp


def _ask(token: str, rng: random.Random, kind: str, **extra: Any) -> Spec:
    part: dict[str, Any] = {"text": rng.choice(PROMPTS)}
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [*extra.pop("parts", []), part]}], **extra}
    headers = {"x-goog-api-key": token, "content-type": "application/json"}
    return _spec(kind, "POST", f"/v1beta/models/{MODEL}:generateContent", headers, json.dumps(body).encode())


async def upload(
    client: httpx.AsyncClient, token: str, rng: random.Random, recent: deque[tuple[str, str]]
) -> list[Outcome]:
    """Upload a small file and name it in a few calls; then name an older one too, when there is one."""
    data = "\n".join(rng.choice(NOTES) for _ in range(rng.randint(20, 80))).encode()
    start = _spec(
        "upload_start",
        "POST",
        "/upload/v1beta/files",
        {
            "x-goog-api-key": token,
            "content-type": "application/json",
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
            "x-goog-upload-header-content-type": "text/plain",
        },
        json.dumps({"file": {"displayName": f"notes-{rng.randint(1, 999)}.txt"}}).encode(),
    )
    outcome, resp = await _call(client, start)
    out = [outcome]
    url = resp.headers.get("x-goog-upload-url") if resp is not None and resp.status_code == 200 else None
    if url is None:
        return out
    chunk = _spec(
        "upload_chunk",
        "POST",
        url,
        {"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0", "content-type": "text/plain"},
        data,
    )
    outcome, resp = await _call(client, chunk)
    out.append(outcome)
    doc = resp.json() if resp is not None and resp.status_code == 200 else {}
    uri = (doc.get("file") or {}).get("uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str):
        return out
    named = [uri] * rng.randint(2, 4) + ([rng.choice(recent)[1]] if recent else [])
    recent.append(((doc.get("file") or {}).get("name", ""), uri))
    for file_uri in named:
        part = {"fileData": {"fileUri": file_uri, "mimeType": "text/plain"}}
        out.append((await _call(client, _ask(token, rng, "file_generate", parts=[part])))[0])
    return out


async def cache(client: httpx.AsyncClient, token: str, rng: random.Random) -> list[Outcome]:
    """Make a cached content of a long context and name it in a few calls."""
    context = " ".join(rng.choice(NOTES) for _ in range(60))
    body = {"model": f"models/{MODEL}", "contents": [{"role": "user", "parts": [{"text": context}]}], "ttl": "600s"}
    headers = {"x-goog-api-key": token, "content-type": "application/json"}
    create = _spec("cache_create", "POST", "/v1beta/cachedContents", headers, json.dumps(body).encode())
    outcome, resp = await _call(client, create)
    out = [outcome]
    name = resp.json().get("name") if resp is not None and resp.status_code == 200 else None
    if not isinstance(name, str):
        return out
    for _ in range(rng.randint(2, 4)):
        out.append((await _call(client, _ask(token, rng, "cache_generate", cachedContent=name)))[0])
    return out


async def live(base_url: str, token: str, rng: random.Random, timeout: float = 30.0) -> Outcome:
    """A Live session of two or three turns; its Outcome is the session's (one recorded call)."""
    url = base_url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + LIVE_PATH
    spec = Spec("live", "gemini", "GET", LIVE_PATH, {}, None, True, LIVE_MODEL)
    started = time.monotonic()
    problem: str | None = None
    received = 0
    try:
        async with connect(url, additional_headers={"x-goog-api-key": token}, open_timeout=timeout) as ws:
            setup = {"setup": {"model": f"models/{LIVE_MODEL}", "generationConfig": {"responseModalities": ["TEXT"]}}}
            await ws.send(json.dumps(setup))
            first = await ws.recv(decode=True)
            if "setupComplete" not in json.loads(first):
                problem = f"no setupComplete: {str(first)[:80]!r}"
            for _ in range(rng.randint(2, 3)):
                if problem is not None:
                    break
                text = rng.choice(PROMPTS)
                turn = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}}
                await ws.send(json.dumps(turn))
                while True:
                    msg = json.loads(await ws.recv(decode=True))
                    received += 1
                    if (msg.get("serverContent") or {}).get("turnComplete"):
                        break
    except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
        problem = f"live: {type(exc).__name__}: {exc}"[:300]
    status = 200 if problem is None else None
    return Outcome(spec, status, None, time.monotonic() - started, problem, received, started=started)


class Workflows:
    """The workflows of one client (`token`) against Keyrack at `base_url`: what `TrafficGenerator(workflows=...)`
    runs now and then, `share` of its calls."""

    share = SHARE

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url, token
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT_FILES)  # (name, uri) of the last uploads

    async def __call__(self, client: httpx.AsyncClient, rng: random.Random, kind: str | None = None) -> list[Outcome]:
        """One workflow: `kind` (a key of WORKFLOWS) or one drawn by weight."""
        kind = kind or rng.choices(list(WORKFLOWS), weights=list(WORKFLOWS.values()))[0]
        if kind == "upload":
            return await upload(client, self.token, rng, self.recent)
        if kind == "cache":
            return await cache(client, self.token, rng)
        if kind == "live":
            return [await live(self.base_url, self.token, rng)]
        raise ValueError(f"unknown workflow {kind!r}")
