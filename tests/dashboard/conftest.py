"""Dashboard test fixtures and the harness the dashboard bench shares (`bench/dashboard_render.py` opens its sessions
with `new_session` / `sign_in` / `go`): ONE real stack per test session — the fake Gemini upstream and the Keyrack proxy on
127.0.0.1 (real uvicorn, real DuckDB file) — seeded with synthetic call events and with keys added through the
admin API. AppTests run the dashboard in-process against it, exactly as `keyrack dashboard` would, each session
signed in through the form (`open_app`); the browser tests share one real dashboard server started as `keyrack run`
starts it (`dashboard`), where a visitor signs in with the form or with a one-time link (`Dashboard.link()`)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from proxy_service import dashboard_link
from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.events import AttemptEvent, ErrorEvent, RequestEvent
from proxy_service.keys import key_id
from proxy_service.settings import Settings
from tests.conftest import fake_key
from tests.servers import free_port, serve

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

    def delete_keys(self, ids: list[str]) -> None:
        """Remove keys a test added, so the shared stack's pool (its projects) is what the next test expects."""
        for kid in ids:
            if kid in self.gateway.pool.keys:
                self.admin("DELETE", f"/keys/{kid}")
        self.flush()

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


@pytest.fixture
def dash_env(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Environment as `keyrack run` gives the dashboard: admin URL + token. A session still signs in (open_app)."""
    from dashboard.logic import i18n

    monkeypatch.setenv("KEYRACK_ADMIN_URL", stack.url)
    monkeypatch.setenv("KEYRACK_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv(dashboard_link.KEY_ENV, raising=False)
    yield stack
    i18n.remember_default("en")  # the configured default this process last read: tests that change it restore it


# -- the harness: an AppTest session signed in, a real dashboard server ----------------------------------------------


def new_session(
    params: dict[str, str] | None = None, state: dict[str, Any] | None = None, timeout: float = 30
) -> AppTest:
    """A fresh dashboard session on its first run: the sign-in form (nobody is signed in by the env token alone)."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    for k, v in (params or {}).items():
        at.query_params[k] = v
    for k, v in (state or {}).items():
        at.session_state[k] = v
    at.run()
    assert "Sign in to Keyrack" in [str(t.value) for t in at.title], "a fresh session must see the sign-in form"
    return at


def sign_in(at: AppTest, token: str = ADMIN_TOKEN, check: bool = True) -> AppTest:
    """Type the admin token into the sign-in form, as an operator does (AppTest has no cookies: no link here); the
    run that follows renders the landing page, Monitor. `check=False` leaves exceptions to the caller (the bench
    reports them instead of stopping)."""
    at.text_input(key="login_token").input(token)
    at.button[0].click().run()
    if check:
        assert not at.exception, [e.message for e in at.exception]
    return at


def go(at: AppTest, page: str) -> AppTest:
    """Open `page` (a file of dashboard/screens/ without .py) in a signed-in session."""
    at.switch_page(f"screens/{page}.py")
    at.run()
    return at


def open_app(
    page: str | None = None,
    params: dict[str, str] | None = None,
    state: dict[str, Any] | None = None,
    timeout: float = 30,
) -> AppTest:
    """A dashboard session signed in through the form, on `page` (default Monitor) with `params` in its URL."""
    at = sign_in(new_session(params, state, timeout))
    if page:
        go(at, page)
    assert not at.exception, [e.message for e in at.exception]
    return at


@dataclass
class Dashboard:
    """A real dashboard server, started the way `keyrack run` starts it (`keyrack dashboard` with the admin token
    and a link key in its environment)."""

    url: str
    link_key: str
    log: Path
    pid: int = 0  # the server process (bench/memory.py reads its RSS)

    def link(self) -> str:
        """A fresh one-time sign-in link, as the banner or `keyrack dashboard-link` prints it."""
        return dashboard_link.sign_in_link(self.url, self.link_key)


@contextlib.contextmanager
def running_dashboard(admin_url: str, log_dir: Path, admin_token: str = ADMIN_TOKEN, **env: str) -> Iterator[Dashboard]:
    from proxy_service.supervisor import dashboard_argv

    port, key = free_port(), dashboard_link.new_key()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEYRACK_")}
    environ.update(
        {
            "KEYRACK_ADMIN_URL": admin_url,
            "KEYRACK_ADMIN_TOKEN": admin_token,
            dashboard_link.KEY_ENV: key,
            "PYTHONUNBUFFERED": "1",
            "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
            **env,
        }
    )
    log = log_dir / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            dashboard_argv("127.0.0.1", port, admin_url),
            cwd=log_dir,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok":
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Dashboard(url, key, log, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="package")
def dashboard(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """One real dashboard for the package's browser tests (visitors sign in with the form or with a link)."""
    with running_dashboard(stack.url, tmp_path_factory.mktemp("dashboard")) as d:
        yield d


@pytest.fixture(scope="package")
def dashboard_url(dashboard: Dashboard) -> str:
    return dashboard.url
