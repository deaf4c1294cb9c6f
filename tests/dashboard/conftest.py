"""Dashboard test fixtures: ONE real stack per test session — the fake Gemini upstream and the Keyrack proxy on
127.0.0.1 (real uvicorn, real DuckDB file) — seeded with synthetic call events and with keys added through the
admin API. AppTests run the dashboard in-process against it, exactly as `keyrack dashboard` would."""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.events import AttemptEvent, ErrorEvent, RequestEvent
from proxy_service.keys import key_id
from proxy_service.settings import Settings
from tests.conftest import fake_key
from tests.servers import serve

ADMIN_TOKEN = "dash-admin-token-456"
APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
SCENARIO: dict[str, Any] = {
    "projects": {"alpha": [fake_key("key-alpha-1"), fake_key("key-alpha-2")], "beta": [fake_key("key-beta-1")]},
    "invalid_keys": [fake_key("key-bad-0001")],
    "seed": 3,
}
POOL_KEYS = ",".join(f"{p}:{k}" for p, keys in SCENARIO["projects"].items() for k in keys)
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"]
OUTCOMES = [("success", 200)] * 8 + [("upstream_error", 503), ("exhausted", 429)]


@dataclass
class Stack:
    url: str
    upstream_url: str
    gateway: Gateway
    http: httpx.Client

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, f"{self.url}/admin/api{path}", **kw)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def flush(self) -> None:
        self.gateway.persist_keys()
        self.gateway.writer.flush()

    def add_keys(self, secrets: list[str], project: str | None = None, label: str | None = None) -> list[str]:
        body: dict[str, Any] = {"text": "\n".join(secrets)}
        if project:
            body["project"] = project
        if label:
            body["label"] = label
        self.admin("POST", "/keys", json=body)
        self.flush()
        return [key_id(s) for s in secrets]


def seed_events(gw: Gateway, n: int = 400, days: int = 3, rng: random.Random | None = None) -> None:
    """Synthetic traffic through the real writer: requests, their attempts, and error logs for failures."""
    rng = rng or random.Random(7)
    keys = [(key_id(s), p) for p, ss in SCENARIO["projects"].items() for s in ss]
    now = datetime.now(UTC).replace(tzinfo=None)
    for i in range(n):
        ts = now - timedelta(seconds=rng.uniform(0, days * 86400)) if i >= 20 else now - timedelta(seconds=i)
        kid, project = rng.choice(keys)
        model = rng.choice(MODELS)
        outcome, status = rng.choice(OUTCOMES)
        rid = uuid.uuid4().hex
        prompt, output = rng.randint(10, 500), rng.randint(0, 800)
        ok = outcome == "success"
        gw.writer.record(
            RequestEvent(
                ts=ts,
                request_id=rid,
                client_id="test",
                surface="gemini",
                operation="generateContent",
                model=model,
                stream=False,
                status=status,
                outcome=outcome,
                attempts=1,
                key_id=kid,
                project=project,
                latency_ms=rng.uniform(80, 2500),
                ttfb_ms=rng.uniform(50, 400),
                prompt_tokens=prompt,
                output_tokens=output if ok else 0,
                total_tokens=prompt + (output if ok else 0),
                request_bytes=300,
                response_bytes=900,
                error_status=None if ok else "UNAVAILABLE",
                error_message=None if ok else "The model is overloaded.",
            )
        )
        gw.writer.record(
            AttemptEvent(
                ts=ts,
                request_id=rid,
                attempt=1,
                key_id=kid,
                project=project,
                model=model,
                upstream_status=status,
                outcome="ok" if ok else ("rate_limited" if status == 429 else "server_error"),
                latency_ms=rng.uniform(80, 2500),
                quota_id="GenerateRequestsPerMinutePerProjectPerModel-FreeTier" if status == 429 else None,
            )
        )
        if not ok:
            gw.writer.record(
                ErrorEvent(
                    id=uuid.uuid4().hex[:16],
                    ts=ts,
                    request_id=rid,
                    key_id=kid,
                    model=model,
                    status=status,
                    error_type="rate_limited" if status == 429 else "upstream_error",
                    message=f"synthetic failure {i}: {'quota exceeded' if status == 429 else 'model overloaded'}",
                    upstream_body=json.dumps(
                        {"error": {"code": status, "message": "synthetic", "status": "UNAVAILABLE"}}
                    ),
                    stack_trace="Traceback (most recent call last):\n  synthetic frame" if i % 7 == 0 else None,
                )
            )
    gw.writer.flush()


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("dash-proxy")
    with contextlib.ExitStack() as es:
        upstream_url = es.enter_context(serve(create_fake(SCENARIO)))
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=data_dir,
            upstream_url=upstream_url,
            admin_token=ADMIN_TOKEN,
            api_keys=POOL_KEYS,
            recheck_interval_s=3600,
        )
        app = create_app(settings)
        url = es.enter_context(serve(app, lifespan="on"))
        http = es.enter_context(httpx.Client(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30))
        s = Stack(url, upstream_url, app.state.gateway, http)
        seed_events(s.gateway)
        s.add_keys([fake_key("key-bad-0001")], project="gamma", label="known bad")
        s.admin("POST", f"/keys/{key_id(fake_key('key-bad-0001'))}/verify")  # the fake says it is invalid
        s.flush()
        yield s


@pytest.fixture(autouse=True)
def navigation_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest resets Streamlit's "pages/ folder" switch before every run, so each run would start as a fresh process
    does; the running dashboard leaves that convention on its first run (dashboard/__init__.py, covered by the
    real-browser deep-link test). Here every run goes through the entry's st.navigation, as in a running server."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self: PagesManager, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def dashboard_address() -> Iterator[Callable[[str], None]]:
    """Set the address the dashboard believes it listens on (Streamlit's server.address; unset = every interface)."""
    from streamlit import config

    before = config.get_option("server.address")

    def set_address(host: str) -> None:
        config.set_option("server.address", host)

    yield set_address
    config.set_option("server.address", before)


@pytest.fixture
def dash_env(stack: Stack, monkeypatch: pytest.MonkeyPatch, dashboard_address: Callable[[str], None]) -> Stack:
    """Environment as `keyrack dashboard --host 127.0.0.1` sets it: admin URL + token, loopback bind (so the AppTest
    lands logged in)."""
    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", ADMIN_TOKEN)
    dashboard_address("127.0.0.1")
    return stack
