"""Hostile inputs (issue 9): what a client, a stranger or a bad upstream answer sends must not open, stall or silently
break Keyrack. One test (or a few) per class of hole, named after the class; real servers throughout. The hostile
upstream here is a tiny Google stand-in whose answers each test sets (hanging, absurd numbers, echoed keys)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service import events
from proxy_service import upstream as upstream_mod
from proxy_service.app import create_app
from proxy_service.events import EventWriter, RequestEvent
from proxy_service.settings import ConfigError, Settings
from proxy_service.store import Store
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, Proxy, Upstream
from tests.reliability.harness import KEYRACK, clean_env, start_proxy
from tests.servers import serve

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
GOOG = {"x-goog-api-key": CLIENT_TOKEN}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
LEAKED = "AIzaSyLEAKEDxxxxxxxxxxxxxxxxxxxxxxxxxxx"  # 39 characters: Gemini-shaped
POOL_SECRET = "AIzaSyPOOLKEY0000000000000000000000000a"


@dataclass
class Hostile:
    """A stand-in for Google that answers what the test says and remembers what it was sent."""

    url: str = ""
    status: int = 200
    body: bytes = b"{}"
    hang: bool = False
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()

    async def any_path(request: Request) -> Response:
        h.seen.append({"path": request.url.path, "query": list(request.query_params.multi_items())})
        if h.hang:
            await asyncio.sleep(3600)
        return Response(h.body, h.status, media_type="application/json")

    app = Starlette(routes=[Route("/{rest:path}", any_path, methods=["GET", "POST"])])
    with serve(app) as url:
        h.url = url
        yield h


def metric(proxy: Proxy, name: str, **labels: str) -> float:
    text = httpx.get(f"{proxy.url}/metrics").text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# -- 1. access fails closed ---------------------------------------------------------------------------------------------


def test_access_fail_closed_patch_cannot_open_a_non_loopback_proxy(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url, host="0.0.0.0")
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.patch("/admin/api/config", json={"access_tokens": []}, headers=ADMIN)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["field"] == "access_tokens" and "not loopback" in err["message"]
        assert c.post(GEN, json=BODY).status_code == 401  # still closed
        assert c.post(GEN, json=BODY, headers=GOOG).status_code == 200
    assert proxy.gateway.config.access_tokens == [CLIENT_TOKEN]


def test_access_fail_closed_authenticate_refuses_an_open_non_loopback_proxy(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url, host="0.0.0.0")
    # However the list and the client records became empty (a future code path), authenticate itself refuses.
    proxy.gateway._config = proxy.gateway.config.model_copy(update={"access_tokens": []})
    proxy.gateway.clients.replace_all([])
    r = httpx.post(f"{proxy.url}{GEN}", json=BODY)
    assert r.status_code == 401 and "not bound to loopback" in r.json()["error"]["message"]


def test_access_fail_closed_saved_empty_tokens_refuse_startup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(data / "keyrack.duckdb")  # a saved config that empties the list (saved values win over env)
    cur = store.cursor()
    cur.execute("INSERT INTO settings VALUES ('access_tokens', '[]', ?)", [datetime.now(UTC).replace(tzinfo=None)])
    cur.close()
    store.close()
    with pytest.raises(ConfigError, match="not loopback"):
        create_app(Settings(_env_file=None, data_dir=data, host="0.0.0.0", access_tokens=["t-123456"]))  # type: ignore[call-arg]
    # `keyrack serve` says so in one line (and binding loopback with the same data still works)
    res = _serve(tmp_path, "--host", "0.0.0.0", data_dir=str(data), access_tokens="t-123456")
    assert res.returncode != 0
    errors = [line for line in res.stdout.decode().splitlines() + res.stderr.decode().splitlines() if "Error:" in line]
    assert len(errors) == 1 and "access_tokens" in errors[0] and "not loopback" in errors[0], errors


def _serve(tmp: Path, *args: str, **settings: str) -> Any:
    import subprocess

    return subprocess.run(
        [*KEYRACK, "serve", "--port", "0", *args], env=clean_env(**settings), cwd=tmp, capture_output=True, timeout=60
    )


# -- 2. open-localhost mode refuses what a web page can send ------------------------------------------------------------


def test_open_localhost_refuses_browser_reachable_requests(
    start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url, access_tokens=[])
    cases = [
        ({"host": "attacker.example"}, 403, "not a loopback name"),  # DNS rebinding
        ({"origin": "https://attacker.example"}, 403, "not a loopback origin"),
        ({"origin": "null"}, 403, "not a loopback origin"),
        ({"sec-fetch-site": "cross-site"}, 403, "Cross-site"),
    ]
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        for headers, status, needle in cases:
            r = c.post(GEN, json=BODY, headers=headers)
            assert r.status_code == status and needle in r.json()["error"]["message"], (headers, r.text)
        # a "simple" cross-site POST: text/plain needs no preflight
        r = c.post(GEN, content=json.dumps(BODY), headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        r = c.post("/v1/chat/completions", content=b"{}", headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415 and r.json()["error"]["type"] == "invalid_request_error"  # the surface's shape
        # local programs keep working
        assert c.post(GEN, json=BODY).status_code == 200
        assert (
            c.post(GEN, json=BODY, headers={"origin": "http://localhost:3000", "host": "localhost"}).status_code == 200
        )
        assert c.get("/v1beta/models", headers={"sec-fetch-site": "same-origin"}).status_code == 200
    rows = proxy.rows("SELECT status, outcome FROM requests WHERE status IN (403, 415)")
    assert len(rows) == 6 and {r[1] for r in rows} == {"unauthorized"}  # refusals are recorded like the others


def test_open_localhost_checks_do_not_apply_in_token_mode(proxy: Proxy) -> None:
    r = httpx.post(
        f"{proxy.url}{GEN}",
        content=json.dumps(BODY),
        headers={**GOOG, "content-type": "text/plain", "origin": "https://app.example"},
    )
    assert r.status_code == 200


# -- 4. the event writer never dies ---------------------------------------------------------------------------------


def test_absurd_numbers_are_clamped_at_the_source() -> None:
    for bad in (10**30, -1, True, 1.5, "12", None, float("nan")):
        body = json.dumps({"usageMetadata": {"totalTokenCount": bad, "promptTokenCount": 3}}).encode()
        u = upstream_mod.gemini_usage(body)
        assert u is not None and u.total is None and u.prompt == 3, bad
    assert upstream_mod.parse_error(b'{"error": {"code": 1e30, "message": "x"}}').code is None
    assert upstream_mod.parse_error(b'{"error": {"code": 10000000000000000000000, "message": "x"}}').code is None


def test_absurd_numbers_from_upstream_do_not_break_recording(
    start_proxy: Callable[..., Proxy], hostile: Hostile
) -> None:
    proxy = start_proxy(hostile.url, api_keys=POOL_SECRET)
    hostile.body = json.dumps(
        {"candidates": [], "usageMetadata": {"totalTokenCount": 10**30, "promptTokenCount": True}}
    ).encode()
    assert httpx.post(f"{proxy.url}{GEN}", json=BODY, headers=GOOG).status_code == 200
    assert proxy.rows("SELECT total_tokens, prompt_tokens FROM requests") == [(None, None)]
    assert proxy.gateway.writer.alive and proxy.gateway.writer.stats.dead_letters == 0


def test_event_writer_survives_unwritable_batches_with_dead_letters(tmp_path: Path) -> None:
    store = Store(tmp_path / "data" / "keyrack.duckdb")
    writer = EventWriter(store, flush_interval=0.01)
    writer.start()
    try:
        now = datetime.now(UTC).replace(tzinfo=None)

        def event(rid: str, tokens: Any) -> RequestEvent:
            return RequestEvent(
                ts=now,
                request_id=rid,
                client_id=None,
                surface="gemini",
                operation="x",
                model=None,
                stream=False,
                total_tokens=tokens,
            )

        writer.record(event("bad-arrow", 10**30))  # Arrow cannot build it
        writer.flush()
        writer.record(event("bad-duckdb", 2**40))  # Arrow takes it, the INTEGER column does not
        writer.record(object())  # type: ignore[arg-type]  # not an event at all
        writer.flush()
        writer.record(event("good", 7))
        writer.flush()
        assert writer.alive
        cur = store.cursor()
        assert cur.execute("SELECT request_id, total_tokens FROM requests").fetchall() == [("good", 7)]
        cur.close()
        dead = tmp_path / "data" / "dead_letters.jsonl"
        lines = [json.loads(line) for line in dead.read_text().splitlines()]
        assert {d["row"]["request_id"] for d in lines} == {"bad-arrow", "bad-duckdb"}
        assert all(d["table"] == "requests" for d in lines) and writer.stats.dead_letters == 2
        assert stat.S_IMODE(dead.stat().st_mode) == 0o600
    finally:
        writer.stop()
        store.close()


def test_event_writer_liveness_is_one_answer_and_admin_writes_time_out(proxy: Proxy) -> None:
    gw = proxy.gateway
    assert metric(proxy, "keyrack_event_writer_alive") == 1 and metric(proxy, "keyrack_ready") == 1
    # A stuck writer: an admin change waits a bounded time, answers 503, and is not applied.
    gw.writer.write_timeout = 0.3
    stuck = threading.Event()
    gw.writer.submit(lambda _cur: stuck.wait(30))
    try:
        r = httpx.patch(f"{proxy.url}/admin/api/config", json={"strategy": "round_robin"}, headers=ADMIN)
        assert r.status_code == 503 and "did not answer" in r.json()["error"]["message"]
        assert gw.config.strategy == "quota_aware"
    finally:
        stuck.set()
    # A dead writer (its thread gone): /readyz and the metrics say the same, admin changes are refused at once.
    gw.writer._queue.put(events.STOP)
    gw.writer._wake.set()
    gw.writer._thread.join(10)
    assert httpx.get(f"{proxy.url}/readyz").status_code == 503
    assert metric(proxy, "keyrack_ready") == 0 and metric(proxy, "keyrack_event_writer_alive") == 0
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"strategy": "round_robin"}, headers=ADMIN)
    assert r.status_code == 503 and "not running" in r.json()["error"]["message"]
    assert gw.config.strategy == "quota_aware"


# -- 6. junk from strangers costs nothing ---------------------------------------------------------------------------


def test_untrusted_model_names_are_capped_and_kept_out_of_metric_labels(proxy: Proxy) -> None:
    junk = "m" * 6000
    before = metric(proxy, "keyrack_untrusted_requests_total", kind="invalid_model")
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        assert c.post(f"/v1beta/models/{junk}:generateContent", json=BODY).status_code == 401
        assert c.post(f"/v1beta/models/{junk}:generateContent", json=BODY, headers=GOOG).status_code == 400
        assert c.post("/v1/chat/completions", json={"model": junk}, headers=GOOG).status_code == 400
        assert c.post("/v1beta/models/stranger-model:generateContent", json=BODY).status_code == 401
    rows = proxy.rows("SELECT model, length(error_message) FROM requests ORDER BY ts")
    assert [r[0] for r in rows] == [None, None, None, "stranger-model"] and all(r[1] <= 500 for r in rows)
    assert metric(proxy, "keyrack_untrusted_requests_total", kind="invalid_model") - before == 3
    text = httpx.get(f"{proxy.url}/metrics").text
    assert "stranger-model" not in text and junk[:200] not in text


# -- 7. nested JSON and the call deadline -------------------------------------------------------------------------


def test_deeply_nested_json_is_a_client_error(proxy: Proxy) -> None:
    nested = b"[" * 100_000
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        r = c.post(GEN, content=nested, headers={**GOOG, "content-type": "application/json"})
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
        r = c.post(
            "/v1/chat/completions", content=b'{"a":' * 50_000, headers={**GOOG, "content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert proxy.rows("SELECT count(*) FROM error_logs WHERE error_type = 'proxy_error'") == [(0,)]
    assert proxy.rows("SELECT status FROM requests") == [(400,), (400,)]


def test_nested_json_from_upstream_is_not_an_internal_error(
    start_proxy: Callable[..., Proxy], hostile: Hostile
) -> None:
    proxy = start_proxy(hostile.url, api_keys=POOL_SECRET, max_retries=0)
    hostile.status, hostile.body = 500, b'{"error": ' + b"[" * 100_000
    r = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers=GOOG)
    assert r.status_code == 500 and r.headers["x-keyrack-attempts"] == "1"  # the upstream's answer, passed on
    assert proxy.rows("SELECT count(*) FROM error_logs WHERE error_type = 'proxy_error'") == [(0,)]


def test_call_deadline_bounds_retries_on_a_hanging_upstream(
    start_proxy: Callable[..., Proxy], hostile: Hostile
) -> None:
    # Without the deadline this call would take (3 + 1) × 60 s; the client gives up long before that.
    keys = ",".join(f"AIzaSyHANG{i:029d}" for i in range(4))
    proxy = start_proxy(hostile.url, api_keys=keys, request_timeout_s=60, max_retries=3, call_deadline_s=0.5)
    hostile.hang = True
    r = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers=GOOG, timeout=30)
    assert r.status_code == 504 and "call deadline of 0.5 s" in r.json()["error"]["message"]
    assert len(hostile.seen) == 1  # the deadline passed during the first attempt: no retry after it
    assert proxy.rows("SELECT outcome FROM attempts") == [("timeout",)]
    assert sum(k.in_flight for k in proxy.gateway.pool.keys.values()) == 0
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"call_deadline_s": -1}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["field"] == "call_deadline_s"


# -- 8. secrets from upstream text are redacted ---------------------------------------------------------------------


def test_secret_redaction_of_upstream_text(start_proxy: Callable[..., Proxy], hostile: Hostile) -> None:
    proxy = start_proxy(hostile.url, api_keys=POOL_SECRET, max_retries=0)
    echo = f"API key not valid: {LEAKED} (also {POOL_SECRET} and {CLIENT_TOKEN})"
    hostile.status = 400
    hostile.body = json.dumps(
        {
            "error": {
                "code": 400,
                "message": echo,
                "status": "INVALID_ARGUMENT",
                "details": [{"reason": "API_KEY_INVALID"}],
            }
        }
    ).encode()
    r = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers=GOOG)
    assert r.status_code == 400 and "AIza…xxxx" in r.text
    stored = [
        *proxy.rows("SELECT last_error FROM keys"),
        *proxy.rows("SELECT message, upstream_body FROM error_logs"),
        *proxy.rows("SELECT error_message FROM requests"),
    ]
    keys_api = httpx.get(f"{proxy.url}/admin/api/keys", headers=ADMIN).text
    for text in (r.text, json.dumps(stored, default=str), keys_api):
        for secret in (LEAKED, POOL_SECRET, CLIENT_TOKEN):
            assert secret not in text, (secret, text[:500])
    assert "not valid" in json.dumps(stored)  # redacted, not dropped


# -- 9. secret settings ---------------------------------------------------------------------------------------------


def test_secret_settings_url_credentials_are_masked(proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://proxyuser:hunter2-secret@127.0.0.1:3128"
    with caplog.at_level("INFO", logger="keyrack"):
        r = httpx.patch(f"{proxy.url}/admin/api/config", json={"outbound_proxy": url}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["values"]["outbound_proxy"] == "http://proxyuser:***@127.0.0.1:3128"
    got = httpx.get(f"{proxy.url}/admin/api/config", headers=ADMIN).json()
    assert "hunter2" not in json.dumps(got)
    fields = {f["name"]: f for f in got["fields"]}
    assert fields["outbound_proxy"]["secret"] and fields["access_tokens"]["secret"]
    assert not fields["strategy"]["secret"]
    assert proxy.gateway.config.outbound_proxy == url  # the real value is kept
    masked = got["values"]["outbound_proxy"]
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"outbound_proxy": masked, "max_retries": 2}, headers=ADMIN)
    assert r.status_code == 200 and proxy.gateway.config.outbound_proxy == url  # a form round trip keeps it
    assert "hunter2" not in caplog.text


# -- 10. file modes -------------------------------------------------------------------------------------------------


def test_file_modes_private_data_dir_database_wal_and_exports(tmp_path: Path) -> None:
    proc, url = start_proxy(tmp_path, admin_token=ADMIN_TOKEN, api_keys=POOL_SECRET, upstream_url="http://127.0.0.1:9")
    try:
        httpx.post(f"{url}{GEN}", json=BODY)  # something to write
        assert httpx.post(f"{url}/admin/api/export", headers=ADMIN, timeout=30).status_code == 200
        data = tmp_path / "data"
        wal = data / "keyrack.duckdb.wal"
        files = [data / "keyrack.duckdb", *(data / "exports").glob("*.parquet")] + ([wal] if wal.exists() else [])
        assert len(files) >= 5
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "exports").stat().st_mode) == 0o700
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.kill()


def test_file_modes_tightened_in_process_too(tmp_path: Path) -> None:
    data = tmp_path / "loose"
    data.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        Store(data / "keyrack.duckdb").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "keyrack.duckdb").stat().st_mode) == 0o600


# -- 11. query parameters -----------------------------------------------------------------------------------------


def test_query_parameter_allow_list_never_forwards_credentials(
    start_proxy: Callable[..., Proxy], hostile: Hostile
) -> None:
    proxy = start_proxy(hostile.url, api_keys=POOL_SECRET)
    hostile.body = json.dumps({"models": []}).encode()
    query = f"alt=json&pageSize=5&pageToken=abc&key={CLIENT_TOKEN}&KEY={CLIENT_TOKEN}&Key=x&access_token=y&fields=z"
    assert httpx.get(f"{proxy.url}/v1beta/models?{query}", headers=GOOG).status_code == 200
    assert (
        httpx.post(
            f"{proxy.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&$alt=sse&KEY=t&oauth_token=o",
            json=BODY,
            headers=GOOG,
        ).status_code
        == 200
    )
    assert hostile.seen[0]["query"] == [("alt", "json"), ("pageSize", "5"), ("pageToken", "abc")]
    assert hostile.seen[1]["query"] == [("alt", "sse"), ("$alt", "sse")]


def test_deeply_nested_json_to_the_admin_api_is_a_client_error(proxy: Proxy) -> None:
    r = httpx.patch(f"{proxy.url}/admin/api/config", content=b"[" * 100_000, headers=ADMIN)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


# -- 5. the SQL endpoint cannot stall the data plane or take its memory ----------------------------------------------


def test_sql_answer_is_waited_for_off_the_event_loop(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # The answer (run and serialised by the SQL worker process) waits (up to 10 s) for a /healthz answered
    # meanwhile: only possible if the event loop is free.
    from proxy_service.analytics.sql_sandbox import Answer, Sandbox

    serialising, healthz_done = threading.Event(), threading.Event()
    real = Sandbox.run

    def slow_answer(*args: Any) -> Answer:
        serialising.set()
        healthz_done.wait(10)
        return real(*args)

    monkeypatch.setattr(Sandbox, "run", slow_answer)
    order: list[str] = []

    def query() -> None:
        sql = "SELECT i, repeat('x', 50) AS s FROM range(20000) t(i)"
        r = httpx.post(f"{proxy.url}/admin/api/query", json={"sql": sql, "format": "json"}, headers=ADMIN, timeout=60)
        assert r.status_code == 200 and r.json()["row_count"] == 20000
        order.append("query")

    worker = threading.Thread(target=query)
    worker.start()
    assert serialising.wait(30)
    assert httpx.get(f"{proxy.url}/healthz", timeout=30).status_code == 200
    order.append("healthz")
    healthz_done.set()
    worker.join(60)
    assert order == ["healthz", "query"]


def test_sql_byte_cap_truncates_with_the_flag_set(proxy: Proxy) -> None:
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"query_byte_cap_mb": 0.01}, headers=ADMIN)  # 10 KiB
    assert r.status_code == 200
    sql = "SELECT i, repeat('y', 500) AS s FROM range(100) t(i)"
    r = httpx.post(f"{proxy.url}/admin/api/query", json={"sql": sql, "format": "json"}, headers=ADMIN)
    doc = r.json()
    assert r.status_code == 200 and doc["truncated"] is True and 0 < doc["row_count"] < 100
    assert len(r.content) < 10_240 + 1_000 and len(doc["rows"]) == doc["row_count"]
    r = httpx.post(f"{proxy.url}/admin/api/query", json={"sql": sql}, headers=ADMIN)
    assert r.headers["x-keyrack-truncated"] == "true" and int(r.headers["x-keyrack-rows"]) < 100
    r = httpx.post(f"{proxy.url}/admin/api/query", json={"sql": "SELECT 1 AS one", "format": "json"}, headers=ADMIN)
    assert r.json()["truncated"] is False and r.json()["rows"] == [[1]]


def test_sql_memory_hungry_queries_get_a_clear_error(start_proxy: Callable[..., Proxy], upstream: Upstream) -> None:
    proxy = start_proxy(upstream.url, duckdb_memory_limit="32MB", duckdb_threads=1)
    cur = proxy.gateway.store.cursor()
    assert cur.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone() == (
        "30.5 MiB",
        1,
    )
    cur.close()
    with httpx.Client(base_url=proxy.url, headers=ADMIN, timeout=60) as c:
        # built whole outside DuckDB's memory limit: refused before it runs
        for sql in ("SELECT range(100000000)", "SELECT repeat('x', 2000000000)", "SELECT range(i) FROM range(3) t(i)"):
            r = c.post("/admin/api/query", json={"sql": sql})
            assert r.status_code == 400 and "constant size" in r.json()["error"]["message"], (sql, r.text)
        assert c.post("/admin/api/query", json={"sql": "SELECT range(5) AS r", "format": "json"}).json()["rows"]
        # under DuckDB's memory limit: a clear error, and the proxy goes on
        r = c.post("/admin/api/query", json={"sql": "SELECT len(list(x)) FROM range(20000000) t(x)"})
        assert r.status_code == 400 and "Out of Memory" in r.json()["error"]["message"], r.text
        assert c.post(GEN, json=BODY, headers=GOOG).status_code == 200
