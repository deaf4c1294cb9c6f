"""The reliability soak, shared by tests/reliability/test_soak.py (~10 s) and bench/reliability.py (minutes).

A real `keyrack serve` in front of a real fake upstream that injects 503 bursts, timeouts longer than the proxy's
request timeout, connection resets, mid-stream errors and invalid keys; closed-loop clients send the demo's
request mix; the proxy's RSS is sampled; at the end the proxy gets SIGTERM and its DuckDB file is checked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from proxy_service.demo.scenario import demo_key
from proxy_service.demo.traffic import Outcome
from tests.reliability.harness import closed_loop, fake_upstream, query, start_proxy

CLIENT_TOKEN = "soak-client-token-7f3a9c"
ADMIN_TOKEN = "soak-admin-token-2b81e4"
PROJECTS = {f"proj-{i}": [demo_key(f"soak-{i}-a"), demo_key(f"soak-{i}-b")] for i in range(4)}
INVALID = [demo_key("soak-revoked-1"), demo_key("soak-revoked-2")]
UPSTREAM_KEYS = [k for keys in PROJECTS.values() for k in keys] + INVALID
NORMAL_FAULTS = {"503": 0.04, "500": 0.02, "timeout": 0.015, "reset": 0.03, "midstream": 0.05}
BURST_FAULTS = {"503": 0.6, "reset": 0.05, "midstream": 0.05}
LIMITED_MODELS = (
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
    "gemini-2.0-flash",
    "gemini-embedding-001",
)


def scenario(faults: dict[str, float]) -> dict[str, Any]:
    return {
        "projects": PROJECTS,
        "invalid_keys": INVALID,
        "limits": {"default": {"rpm": 400}, "gemini-2.5-pro": {"rpm": 60}},
        "latency_ms": 5,
        "ttft_ms": 20,
        "tokens_per_s": 400,
        "error_rates": faults,
        "timeout_s": 2.5,  # the proxy gives up after request_timeout_s=1 and retries elsewhere
        "seed": 11,
    }


def proxy_settings() -> dict[str, Any]:
    api_keys = [f"{p}:{k}" for p, keys in PROJECTS.items() for k in keys] + [f"old:{k}" for k in INVALID]
    return {
        "api_keys": ",".join(api_keys),
        "access_tokens": CLIENT_TOKEN,
        "admin_token": ADMIN_TOKEN,
        "request_timeout_s": 1.0,
        "connect_timeout_s": 1.0,
        "max_retries": 3,
        "failure_threshold": 6,
        "recheck_interval_s": 5,
        "log_level": "DEBUG",
        "log_request_bodies": "true",
        "snapshot_interval_s": 0,
        # The fake's limits, as an operator would configure a paid tier (the built-in defaults are the free tier's).
        "model_limits": {m: {"rpm": 60 if m == "gemini-2.5-pro" else 400} for m in LIMITED_MODELS},
    }


@dataclass
class SoakResult:
    outcomes: list[Outcome]
    extra: list[httpx.Response]
    exit_code: int
    rss_mb: list[tuple[float, float]]  # (seconds into the load, RSS MB), first sample after the warm-up
    db: Path
    data_dir: Path
    log: str
    duration: float
    upstream_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_start_mb(self) -> float:
        return self.rss_mb[0][1]

    @property
    def rss_end_mb(self) -> float:
        return self.rss_mb[-1][1]


def burst_503s(url: str, stop: threading.Event) -> None:
    """Every ~2.5 s, one second of mostly-503 answers."""
    while not stop.wait(1.5):
        httpx.post(f"{url}/_fake/scenario", json=scenario(BURST_FAULTS))
        stop.wait(1.0)
        httpx.post(f"{url}/_fake/scenario", json=scenario(NORMAL_FAULTS))


def leaky_requests(proxy_url: str) -> list[httpx.Response]:
    """Requests that carry secrets where a careless proxy could write them down."""
    key = UPSTREAM_KEYS[0]
    out = []
    with httpx.Client(base_url=proxy_url, timeout=30) as c:
        # An upstream key inside a failing request's body (request bodies are logged: log_request_bodies=true).
        body = {"contents": [{"parts": [{"text": f"my key is {key}"}]}], "bogusField": key}
        out.append(
            c.post(
                "/v1beta/models/gemini-2.5-flash:generateContent", json=body, headers={"x-goog-api-key": CLIENT_TOKEN}
            )
        )
        out.append(c.post("/v1beta/models/gemini-2.5-flash:generateContent", json=body, params={"key": CLIENT_TOKEN}))
        # A wrong token that is almost the real one, and an upstream key used as a client token.
        out.append(
            c.post(
                "/v1beta/models/gemini-2.5-flash:generateContent",
                json=body,
                headers={"x-goog-api-key": CLIENT_TOKEN + "x"},
            )
        )
        out.append(c.get("/v1beta/models", headers={"x-goog-api-key": key}))
        # The admin API with the right and a wrong token, and a Parquet export.
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        out.append(c.get("/admin/api/keys", headers=admin))
        out.append(c.get("/admin/api/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}0"}))
        out.append(c.get("/admin/api/config", headers=admin))
        out.append(c.post("/admin/api/export", headers=admin))
    return out


def run_soak(
    tmp: Path, duration: float, workers: int = 12, rss_every: float = 5.0, min_requests: int = 0
) -> SoakResult:
    with fake_upstream(tmp, scenario(NORMAL_FAULTS)) as (_up, upstream_url):
        proc, url = start_proxy(tmp, upstream_url=upstream_url, **proxy_settings())
        rss: list[tuple[float, float]] = []
        try:
            # Warm up (imports, connection pools, DuckDB buffers), then measure memory from a steady state.
            warmup = asyncio.run(closed_loop(url, CLIENT_TOKEN, 1.0, workers=4, seed=99))
            stop = threading.Event()
            started = time.monotonic()
            rss.append((0.0, proc.rss_mb()))

            def sample_rss() -> None:
                while not stop.wait(rss_every):
                    rss.append((time.monotonic() - started, proc.rss_mb()))

            helpers = [
                threading.Thread(target=burst_503s, args=(upstream_url, stop), daemon=True),
                threading.Thread(target=sample_rss, daemon=True),
            ]
            for t in helpers:
                t.start()
            outcomes = warmup + asyncio.run(
                closed_loop(url, CLIENT_TOKEN, duration, workers=workers, min_requests=min_requests)
            )
            elapsed = time.monotonic() - started
            stop.set()
            for t in helpers:
                t.join(5)
            rss.append((elapsed, proc.rss_mb()))
            extra = leaky_requests(url)
            stats = httpx.get(f"{upstream_url}/_fake/stats").json()
        finally:
            code = proc.stop()
    return SoakResult(
        outcomes, extra, code, rss, tmp / "data" / "keyrack.duckdb", tmp / "data", proc.log(), elapsed, stats
    )


def recording_problems(soak: SoakResult) -> list[str]:
    """Every answer recorded exactly once, with exactly its attempts; empty when all holds."""
    problems = []
    data_plane = [r for r in soak.extra if r.url.path.startswith("/v1")]
    answered = [o for o in soak.outcomes if o.status is not None]
    ids = [o.request_id for o in answered] + [r.headers.get("x-keyrack-request-id") for r in data_plane]
    if None in ids:
        problems.append(f"{ids.count(None)} answers without x-keyrack-request-id")
    if len(set(ids)) != len(ids):
        problems.append("duplicate request ids in answers")
    rows = query(soak.db, "SELECT request_id, status, outcome, attempts FROM requests")
    if len(rows) != len(ids):
        problems.append(f"{len(rows)} request rows for {len(ids)} answers")
    if {r[0] for r in rows} != set(ids):
        problems.append("request rows and answers name different request ids")
    status_of = {o.request_id: o.status for o in answered}
    mismatched = [r for r in rows if r[0] in status_of and status_of[r[0]] != r[1]]
    if mismatched:
        problems.append(f"{len(mismatched)} rows whose status differs from the client's, e.g. {mismatched[0]}")
    attempts = dict(query(soak.db, "SELECT request_id, count(*) FROM attempts GROUP BY ALL"))
    for request_id, _status, outcome, n in rows:
        if attempts.get(request_id, 0) != n:
            problems.append(f"request {request_id} ({outcome}) says {n} attempts, {attempts.get(request_id, 0)} rows")
        elif n == 0 and outcome not in ("exhausted", "unauthorized", "client_error"):
            problems.append(f"request {request_id} ({outcome}) has no attempt")
    orphans = set(attempts) - set(ids)
    if orphans:
        problems.append(f"{len(orphans)} attempt rows without a request row")
    return problems


def answer_problems(soak: SoakResult) -> list[str]:
    unanswered = [o for o in soak.outcomes if o.status is None]
    malformed = [o for o in soak.outcomes if o.status is not None and o.problem]
    out = [f"no answer: {o.spec.kind}: {o.problem}" for o in unanswered[:5]]
    out += [f"malformed {o.status} answer to {o.spec.kind}: {o.problem}" for o in malformed[:5]]
    if len(unanswered) + len(malformed) > 10:
        out.append(f"… {len(unanswered)} unanswered and {len(malformed)} malformed in all")
    return out


def status_counts(soak: SoakResult) -> Counter[int | None]:
    return Counter(o.status for o in soak.outcomes)
