"""The admin API through a real server, shared by the modules of tests/admin/ (one per module of
proxy_service/admin/): the proxy under uvicorn on 127.0.0.1 (fake Gemini upstream behind it), httpx in front,
synthetic traffic recorded through the gateway's event writer.

Each test module gets its own `env` (module scope: its tests build on each other's state in file order, and a
module never depends on another's). Every answer and every `keyrack` log line is captured on the env; each module
ends with `assert_no_secret(env)`, which checks that no secret (pool keys, client token, admin token) appeared in
any of them except the explicit reveal.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.events import ErrorEvent, RequestEvent
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


class _Capture(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Env:
    url: str
    gw: Gateway
    data_dir: Path
    http: httpx.Client
    seen: list[tuple[str, str]] = field(default_factory=list)  # (url, body) of every admin answer
    logs: list[str] = field(default_factory=list)

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
    seen: list[tuple[str, str]] = []
    logs: list[str] = []
    handler = _Capture(logs)
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
    try:
        with serve(create_fake(SCENARIO)) as upstream:
            settings.upstream_url = upstream
            app = create_app(settings)
            with serve(app, lifespan="on") as url:

                def keep(response: httpx.Response) -> None:
                    response.read()
                    seen.append((str(response.request.url), response.text))

                headers = {"authorization": f"Bearer {TOKEN}"}
                with httpx.Client(base_url=url, headers=headers, timeout=30, event_hooks={"response": [keep]}) as http:
                    yield Env(url, app.state.gateway, data_dir, http, seen, logs)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def assert_no_secret(env: Env) -> None:
    """No secret in any admin answer the module saw (the explicit reveal aside) nor in any log line."""
    assert env.seen and env.logs
    for url, body in env.seen:
        if url.endswith("/reveal"):
            continue
        leaked = [s for s in SECRETS if s in body]
        assert not leaked, (url, leaked)
    for line in env.logs:
        assert not [s for s in SECRETS if s in line], line


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
