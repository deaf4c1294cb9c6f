"""The Live API through Keyrack (surfaces/live.py) with the real google-genai SDK: sessions of several turns over
`wss://` (Keyrack serving TLS with a certificate made here) and plain `ws://`, the pool's rotation across projects,
one event per session with its usage, and the refusals (bad client token, a message over the cap, no key with
headroom, an unknown model), each a close code and reason the SDK reports."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from google.genai.live import AsyncSession

from proxy_service.app import create_app
from proxy_service.keys import key_id
from proxy_service.settings import Settings
from proxy_service.startup import StartupError, check_tls, uvicorn_options
from proxy_service.surfaces.live_wire import Usage
from tests.conftest import ADMIN_TOKEN, BAD_1, CLIENT_TOKEN, P2_A, POOL_KEYS, SCENARIO, Proxy, Upstream
from tests.reliability import harness
from tests.reliability.harness import clean_env
from tests.servers import serve
from tests.test_cli import serve_fails

MODEL = "gemini-2.0-flash-live-001"
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SESSIONS_SQL = (
    "SELECT project, outcome, status, total_tokens, prompt_tokens, output_tokens, error_status, error_message, "
    "request_bytes, response_bytes, ttfb_ms, latency_ms, attempts, resource_kind, resource_id FROM requests "
    "WHERE operation = 'BidiGenerateContent' ORDER BY ts"
)


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyrack-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def start_live_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """A gateway served as `keyrack serve` serves it: WebSockets on, TLS from the settings when given."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(upstream_url: str, **settings: Any) -> Proxy:
            nonlocal count
            count += 1
            options: dict[str, Any] = {
                "data_dir": tmp_path / f"proxy{count}",
                "upstream_url": upstream_url,
                "admin_token": ADMIN_TOKEN,
                "access_tokens": [CLIENT_TOKEN],
                "api_keys": POOL_KEYS,
                "recheck_interval_s": 3600,
                **settings,
            }
            s = Settings(_env_file=None, **options)  # type: ignore[call-arg]
            check_tls(s)
            app = create_app(s)
            url = stack.enter_context(serve(app, lifespan="on", **uvicorn_options(s)))
            if s.tls_certfile is not None:
                url = url.replace("http://", "https://")
            return Proxy(url, app.state.gateway, options["data_dir"])

        yield start


def sdk(url: str, token: str = CLIENT_TOKEN, cafile: Path | None = None) -> genai.Client:
    """The SDK pointed at Keyrack; trusting `cafile` (Keyrack's own certificate) for its HTTP calls and Live."""
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    options = types.HttpOptions(
        base_url=url,
        client_args={"verify": ctx} if ctx else None,
        async_client_args={"ssl": ctx} if ctx else None,
    )
    return genai.Client(api_key=token, http_options=options)


async def turns(session: AsyncSession, texts: list[str]) -> tuple[list[str], list[int]]:
    """Send each text as a complete turn; the model's answer text and the turn's total tokens for each."""
    answers, totals = [], []
    for text in texts:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True
        )
        pieces, total = [], 0
        async for msg in session.receive():  # ends with the turn's turnComplete
            if msg.text:
                pieces.append(msg.text)
            if msg.usage_metadata and msg.usage_metadata.total_token_count:
                total += msg.usage_metadata.total_token_count
        answers.append("".join(pieces))
        totals.append(total)
    return answers, totals


def live_config() -> types.LiveConnectConfig:
    return types.LiveConnectConfig(response_modalities=[types.Modality.TEXT])


def test_sdk_sessions_over_wss_rotate_across_projects_and_are_recorded_once_each(
    tmp_path: Path, start_upstream: Callable[..., Upstream], start_live_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    cert, key = make_cert(tmp_path)
    proxy = start_live_proxy(upstream.url, strategy="round_robin", tls_certfile=cert, tls_keyfile=key)
    assert proxy.url.startswith("https://")
    client = sdk(proxy.url, cafile=cert)

    async def sessions() -> list[list[int]]:
        out = []
        for i in range(3):
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                answers, totals = await turns(session, [f"Hello {i}", "And a follow-up", "One more"])
                assert all(answers) and all(t > 0 for t in totals)
                out.append(totals)
        return out

    totals = asyncio.run(sessions())
    rows = _wait_sessions(proxy, 3)
    assert [r[1] for r in rows] == ["success"] * 3 and [r[2] for r in rows] == [200] * 3
    assert len({r[0] for r in rows}) >= 2, rows  # round-robin: the sessions landed on several projects
    for row, session_totals in zip(rows, totals, strict=True):
        assert row[3] == sum(session_totals)  # the session's tokens: every turn's usageMetadata summed
        assert row[4] and row[5] and row[4] + row[5] == row[3]
        assert row[6] == "LIVE_CLIENT_CLOSED" and "3 turn(s)" in row[7]
        assert row[8] > 0 and row[9] > 0 and 0 < row[10] <= row[11]
        assert row[13:] == ("live", None)  # Explore's resource dimension: a Live session names no resource
    assert upstream.stats()["by_operation"]["BidiGenerateContent"] == 3


# "//ws/…": the JS SDK's path (its base URL ends with "/"; tests/test_js_sdk.py drives it for real).
@pytest.mark.parametrize("path", [LIVE_PATH, "/" + LIVE_PATH])
def test_sdk_session_over_plain_ws(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy], path: str
) -> None:
    """The SDK turns an API-key client's base URL into `wss://`, so over plain `ws://` (Keyrack behind nothing, or
    behind a proxy that does not terminate TLS) the SDK's session is given a `ws://` socket opened here."""
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin")
    client = sdk(proxy.url)

    async def session() -> tuple[list[str], list[int]]:
        url = proxy.url.replace("http://", "ws://") + path
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(
                json.dumps(
                    {"setup": {"model": f"models/{MODEL}", "generationConfig": {"responseModalities": ["TEXT"]}}}
                )
            )
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            return await turns(AsyncSession(api_client=client._api_client, websocket=ws), ["Hi", "Again"])

    answers, totals = asyncio.run(session())
    assert all(answers)
    rows = _wait_sessions(proxy, 1)
    assert rows[0][1] == "success" and rows[0][3] == sum(totals) and "2 turn(s)" in rows[0][7]


def test_a_bad_client_token_is_refused_with_1008(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url)
    client = sdk(proxy.url.replace("http://", "https://"), token="not-a-keyrack-token")

    async def connect() -> None:
        # The SDK dials wss://; the proxy here serves plain ws, so open the SDK's session on a ws:// socket.
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": "not-a-keyrack-token"}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            async for _ in AsyncSession(api_client=client._api_client, websocket=ws).receive():
                pass

    with pytest.raises(genai_errors.APIError) as info:
        asyncio.run(connect())
    assert info.value.code == 1008 and "Invalid client token" in str(info.value)
    rows = _wait_sessions(proxy, 1)
    assert rows[0][1] == "unauthorized" and rows[0][2] == 401 and rows[0][0] is None
    assert upstream.stats()["by_operation"].get("BidiGenerateContent") is None  # no key was spent


@pytest.mark.parametrize("size", [10_600, 40_000], ids=["over-the-session-cap", "over-the-protocol-cap"])
def test_a_message_over_the_cap_closes_the_session_with_1009(
    start_upstream: Callable[..., Upstream], start_live_proxy: Callable[..., Proxy], size: int
) -> None:
    """0.01 MB is 10,485 bytes: the session refuses a message over it with its reason; the WebSocket protocol (set
    just above the session's cap) refuses a far larger one before it is read whole, with the same code."""
    upstream = start_upstream(SCENARIO)
    proxy = start_live_proxy(upstream.url, live_max_frame_mb=0.01)

    async def session() -> websockets.ConnectionClosed:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            text = "x" * size
            big = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}}
            await ws.send(json.dumps(big))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            return info.value

    closed = asyncio.run(session())
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    if size < 11_000:
        assert "0.01 MB" in closed.rcvd.reason
    rows = _wait_sessions(proxy, 1)
    assert rows[0][6] == "LIVE_FRAME_TOO_LARGE" and rows[0][1] == "client_error" and rows[0][2] == 413
    assert upstream.stats()["by_operation"]["BidiGenerateContent"] == 1  # one session set up upstream


def test_no_key_with_headroom_closes_with_1013_and_an_exhausted_project_cools(
    start_upstream: Callable[..., Upstream], start_live_proxy: Callable[..., Proxy]
) -> None:
    scenario = {**SCENARIO, "projects": {"p1": SCENARIO["projects"]["p1"]}, "limits": {MODEL: {"rpm": 1}}}
    upstream = start_upstream(scenario)
    p1 = ",".join(f"p1:{k}" for k in SCENARIO["projects"]["p1"])
    proxy = start_live_proxy(upstream.url, api_keys=p1)
    client = sdk(proxy.url.replace("http://", "https://"))

    async def open_session() -> list[str]:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            answers, _ = await turns(AsyncSession(api_client=client._api_client, websocket=ws), ["First"])
            return answers

    async def refused() -> websockets.ConnectionClosed:
        with pytest.raises(websockets.ConnectionClosed) as info:
            await open_session()
        return info.value

    assert asyncio.run(open_session())[0]
    by_upstream = asyncio.run(refused())  # Google's 1011 quota close: the project cools, nothing else to try
    by_pool = asyncio.run(refused())  # the pool knows: refused without asking upstream
    for closed in (by_upstream, by_pool):
        assert closed.rcvd is not None and closed.rcvd.code == 1013 and "retry in" in closed.rcvd.reason
    stats = upstream.stats()
    assert stats["by_operation"]["BidiGenerateContent"] == 2 and stats["rate_limited"] == {"rpm": 1}
    rows = _wait_sessions(proxy, 3)
    assert [r[1] for r in rows] == ["success", "upstream_error", "exhausted"]
    assert [r[2] for r in rows] == [200, 429, 429]


def test_an_unknown_model_is_passed_on_with_googles_close(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url)

    async def session() -> websockets.ConnectionClosed:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": "models/gemini-no-such-live"}}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            return info.value

    closed = asyncio.run(session())
    assert closed.rcvd is not None and closed.rcvd.code == 1008 and "not found" in closed.rcvd.reason
    rows = _wait_sessions(proxy, 1)
    assert rows[0][1] == "client_error" and rows[0][6] is None and rows[0][12] == 1  # one attempt, no retry


def raw_session(proxy: Proxy, texts: list[str]) -> websockets.ConnectionClosed | None:
    """A session over ws:// that sends `texts` as turns and then waits: how it was closed (None: by the client)."""

    async def run() -> websockets.ConnectionClosed | None:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            assert json.loads(await ws.recv()) == {"setupComplete": {}}
            for text in texts:
                turn = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}}
                await ws.send(json.dumps(turn))
                while not json.loads(await ws.recv()).get("serverContent", {}).get("turnComplete"):
                    pass
            if texts and texts[-1] == "bye":
                return None
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()  # until Keyrack closes the session
            return info.value

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("settings", "status", "reason"),
    [
        ({"live_idle_timeout_s": 0.5}, "LIVE_IDLE_TIMEOUT", "no message for 0.5 s"),
        ({"live_max_session_s": 1.0}, "LIVE_MAX_SESSION", "maximum of 1 s"),
    ],
)
def test_an_idle_or_overlong_session_is_closed_by_keyrack(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., Proxy],
    settings: dict[str, float],
    status: str,
    reason: str,
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, **settings)
    closed = raw_session(proxy, ["Hello"])
    assert closed is not None and closed.rcvd is not None
    assert closed.rcvd.code == 1001 and reason in closed.rcvd.reason
    rows = _wait_sessions(proxy, 1)
    assert rows[0][1] == "success" and rows[0][6] == status and "1 turn(s)" in rows[0][7]
    assert rows[0][3] and rows[0][3] > 0  # the turn's usage is kept


def test_an_invalid_key_at_setup_is_retried_on_another_key_and_marked_invalid(
    start_upstream: Callable[..., Upstream], start_live_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_live_proxy(upstream.url, strategy="round_robin", api_keys=f"p1:{BAD_1},p2:{P2_A}")
    for _ in range(2):
        assert raw_session(proxy, ["Hi", "bye"]) is None
    rows = _wait_sessions(proxy, 2)
    assert [r[1] for r in rows] == ["success", "success"] and sorted(r[12] for r in rows) == [1, 2]
    attempts = proxy.rows("SELECT outcome, upstream_status FROM attempts ORDER BY ts")
    assert sorted(attempts) == [("invalid_key", 400), ("ok", 101), ("ok", 101)]
    assert proxy.gateway.pool.keys[key_id(BAD_1)].status == "invalid"
    assert BAD_1 not in json.dumps(proxy.rows("SELECT * FROM error_logs"), default=str)  # no secret in the logs


def test_an_ephemeral_token_session_is_refused_with_a_reason(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(start_upstream(SCENARIO).url)

    async def connect() -> websockets.ConnectionClosed:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH.replace("v1beta", "v1alpha") + "Constrained"
        async with websockets.connect(url, additional_headers={"authorization": "Token auth_tokens/abc"}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            return info.value

    closed = asyncio.run(connect())
    assert closed.rcvd is not None and closed.rcvd.code == 1008 and "no ephemeral tokens" in closed.rcvd.reason


def test_an_unreachable_upstream_closes_with_1014_after_the_retries(start_proxy: Callable[..., Proxy]) -> None:
    with socket.socket() as sock:  # a port with nothing listening: every connect is refused
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy = start_proxy(dead, max_retries=1)

    async def session() -> websockets.ConnectionClosed:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            return info.value

    closed = asyncio.run(session())
    assert closed.rcvd is not None and closed.rcvd.code == 1014 and "unreachable (2 attempt(s))" in closed.rcvd.reason
    rows = _wait_sessions(proxy, 1)
    assert rows[0][1] == "upstream_error" and rows[0][2] == 502 and rows[0][12] == 2
    attempts = proxy.rows("SELECT outcome FROM attempts")
    assert attempts == [("connection_error",), ("connection_error",)]


def test_a_session_open_when_the_server_stops_is_closed_and_recorded(
    tmp_path: Path, start_upstream: Callable[..., Upstream]
) -> None:
    upstream = start_upstream(SCENARIO)
    options = {"data_dir": tmp_path / "d", "upstream_url": upstream.url, "access_tokens": [CLIENT_TOKEN]}
    settings = Settings(_env_file=None, api_keys=POOL_KEYS, **options)  # type: ignore[call-arg]
    app = create_app(settings)
    turned, closed_by = threading.Event(), []

    async def session(url: str) -> None:
        async with websockets.connect(url + LIVE_PATH, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
            await ws.recv()
            turn = {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": True}}
            await ws.send(json.dumps(turn))
            while not json.loads(await ws.recv()).get("serverContent", {}).get("turnComplete"):
                pass
            turned.set()
            try:
                await ws.recv()
            except websockets.ConnectionClosed as exc:
                closed_by.append(exc.rcvd.code if exc.rcvd else None)

    with serve(app, lifespan="on", **uvicorn_options(settings)) as url:
        client = threading.Thread(target=asyncio.run, args=(session(url.replace("http://", "ws://")),))
        client.start()
        assert turned.wait(60)
    client.join(60)
    assert closed_by == [1012]  # uvicorn's "service restart" close on shutdown
    con = duckdb.connect(str(settings.db_path), read_only=True)
    try:
        rows = con.execute(
            "SELECT outcome, error_status, total_tokens FROM requests WHERE operation = 'BidiGenerateContent'"
        ).fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and rows[0][0] == "success" and rows[0][1] in ("LIVE_CLIENT_CLOSED", "LIVE_SERVER_STOPPING")
    assert rows[0][2] and rows[0][2] > 0


def test_keyrack_serve_serves_https_and_live_over_wss_from_its_tls_settings(
    tmp_path: Path, start_upstream: Callable[..., Upstream]
) -> None:
    """The real `keyrack serve` process: TLS from KEYRACK_TLS_*, the SDK's HTTP calls and a Live session over it."""
    upstream = start_upstream(SCENARIO)
    cert, key = make_cert(tmp_path)
    env = clean_env(
        data_dir=str(tmp_path / "data"),
        upstream_url=upstream.url,
        api_keys=POOL_KEYS,
        access_tokens=CLIENT_TOKEN,
        tls_certfile=str(cert),
        tls_keyfile=str(key),
    )
    proc = harness.start(["serve", "--port", "0"], env, tmp_path / "proxy.log", tmp_path)
    try:
        port = proc.wait_for(r"event=startup .*?port=(\d+)").group(1)
        url = f"https://127.0.0.1:{port}"
        harness_ready(url, cert, proc)
        client = sdk(url, cafile=cert)
        assert client.models.generate_content(model="gemini-2.5-flash", contents="Hello over TLS").text

        async def live() -> list[str]:
            async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
                answers, _ = await turns(session, ["One", "Two"])
                return answers

        assert all(asyncio.run(live()))
        # An idle keep-alive TLS connection left open holds the server's shutdown for asyncio's TLS close timeout
        # (the peer never answers the close_notify): a client that is done closes its connections.
        client.close()
    finally:
        proc.stop(signal.SIGTERM, 90)
    rows = harness.query(tmp_path / "data" / "keyrack.duckdb", "SELECT operation, outcome FROM requests ORDER BY ts")
    assert rows == [("generateContent", "success"), ("BidiGenerateContent", "success")]


def test_keyrack_serve_refuses_a_certificate_with_another_key(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_cert(other)
    line = serve_fails(tmp_path, tls_certfile=str(cert), tls_keyfile=str(other_key), data_dir=str(tmp_path / "d"))
    assert "not a certificate and its private key" in line


def harness_ready(url: str, cafile: Path, proc: harness.Proc, timeout: float = 60.0) -> None:
    """/readyz over TLS answers 200 (the proxy's certificate trusted from `cafile`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, proc.log()[-3000:]
        with contextlib.suppress(httpx.HTTPError):
            if (
                httpx.get(f"{url}/readyz", verify=ssl.create_default_context(cafile=str(cafile)), timeout=2).status_code
                == 200
            ):
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout}s")


def test_usage_sums_the_counts_and_ignores_what_is_no_count() -> None:
    usage = Usage()
    audio = {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "A" * 200_000}}]}}}
    usage.read(json.dumps(audio).encode())
    for meta in (
        {"promptTokenCount": 10, "responseTokenCount": 5, "totalTokenCount": 15},
        {"promptTokenCount": True, "responseTokenCount": -3, "totalTokenCount": 2**40, "thoughtsTokenCount": 4},
    ):
        usage.read(json.dumps({"serverContent": {"turnComplete": True}, "usageMetadata": meta}))
    usage.read(b'{"serverContent": {"turnComplete": true}, "usageMetadata": {"promptTokenCount": 7')  # cut short
    assert (usage.prompt, usage.output, usage.total, usage.thinking, usage.turns) == (10, 5, 15, 4, 3)


def test_tls_settings_are_checked_at_startup(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = make_cert(other_dir)
    base = {"data_dir": tmp_path / "d"}
    check_tls(Settings(_env_file=None, **base))  # type: ignore[call-arg]  # neither: plain HTTP
    with pytest.raises(StartupError, match="both"):
        check_tls(Settings(_env_file=None, tls_certfile=cert, **base))  # type: ignore[call-arg]
    with pytest.raises(StartupError, match="not a certificate and its private key"):
        check_tls(Settings(_env_file=None, tls_certfile=cert, tls_keyfile=other_key, **base))  # type: ignore[call-arg]
    with pytest.raises(StartupError, match="cannot read"):
        check_tls(Settings(_env_file=None, tls_certfile=tmp_path / "nope.pem", tls_keyfile=key, **base))  # type: ignore[call-arg]


def _wait_sessions(proxy: Proxy, n: int, timeout: float = 60.0) -> list[tuple[Any, ...]]:
    """The Live session rows once there are `n` (a session is recorded when its relay ends)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows(SESSIONS_SQL)
        if len(rows) >= n or time.monotonic() > deadline:
            assert len(rows) == n, rows
            return rows
        time.sleep(0.05)
