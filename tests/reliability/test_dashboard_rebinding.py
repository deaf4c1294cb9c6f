"""Issue 23, class 2: DNS rebinding must not take over a loopback dashboard.

One real `keyrack run` (no keys: the demo, without traffic) on 127.0.0.1, its dashboard started by the supervisor as
always, with a public name configured. Checked: a foreign Host or Origin gets 403 on page loads, static routes,
the sign-in route and the WebSocket upgrade (raw requests, and Debian's Chromium resolving an attacker's name to
127.0.0.1); a visitor without the link sees only the sign-in form; the banner's one-time link signs a browser in
once, its cookie (HttpOnly, SameSite=Strict, expiring) keeps a reload and a new tab signed in, a second use signs
nobody in, a sign-out revokes it; `keyrack dashboard-link` prints another; no secret lands in a log file."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.reliability.harness import KEYRACK, Proc, clean_env, free_port, start

PUBLIC = "keyrack.example.test"
ATTACKER = "rebind.attacker.example"
SIGN_IN = "Sign in to Keyrack"
pytestmark = pytest.mark.timeout(600)  # a demo and a real browser on a loaded 2-core machine


@dataclass
class Run:
    launcher: Proc
    data_dir: Path
    port: int  # the dashboard's
    link: str | None  # the banner's one-time sign-in link (None if the banner has none)
    admin_token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_link(self) -> str:
        res = subprocess.run(
            [*KEYRACK, "dashboard-link", "--data-dir", str(self.data_dir)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        match = re.search(r"http://\S+/sign-in\?code=\S+", res.stdout)
        assert match, res.stdout
        return match.group(0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("rebinding")
    data_dir = tmp / "data"
    proxy_port, dash_port, up_port = free_port(), free_port(), free_port()
    args = ["run", "--rate", "0", "--data-dir", str(data_dir)]
    args += ["--proxy-port", str(proxy_port), "--dashboard-port", str(dash_port), "--upstream-port", str(up_port)]
    launcher = start(args, clean_env(dashboard_public_hosts=PUBLIC), tmp / "launcher.out", cwd=tmp)
    try:
        launcher.wait_for(r"Stop: Ctrl-C", timeout=240)
        out = launcher.log()
        assert re.search(rf"Dashboard +http://127\.0\.0\.1:{dash_port}", out), out[-3000:]
        link = re.search(r"Dashboard +(http://\S+/sign-in\?code=\S+)", out)
        admin = re.search(r"Admin token +(\S+)", out)
        assert admin, out[-3000:]
        yield Run(launcher, data_dir / "demo", dash_port, link.group(1) if link else None, admin.group(1))
    finally:
        try:
            launcher.stop(signal.SIGINT, timeout=90)
        finally:
            launcher.kill()


def get(run: Run, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{run.url}{path}", headers=headers, timeout=30, follow_redirects=False)


def raw(run: Run, request: str) -> str:
    """Send `request` as is; the status line of the answer."""
    with socket.create_connection(("127.0.0.1", run.port), timeout=30) as sock:
        sock.sendall(request.encode("latin-1"))
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0].decode("latin-1")


def upgrade(run: Run, host: str | None, origin: str | None = None) -> str:
    """The status line of a WebSocket upgrade of Streamlit's stream, with these Host and Origin headers."""
    lines = ["GET /_stcore/stream HTTP/1.1"]
    lines += [f"Host: {host}"] if host is not None else []
    lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    lines += [f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Protocol: streamlit"]
    lines += [f"Origin: {origin}"] if origin is not None else []
    return raw(run, "\r\n".join(lines) + "\r\n\r\n")


def code_of(link: str) -> str:
    return urlsplit(link).query.removeprefix("code=")


# -- Host and Origin ---------------------------------------------------------------------------------------------------


def test_a_foreign_host_gets_403_on_every_route_and_on_the_websocket_upgrade(run: Run) -> None:
    port = run.port
    foreign = [
        f"{ATTACKER}:{port}",
        ATTACKER,
        f"127.0.0.1.nip.io:{port}",  # a public name that resolves to loopback
        f"localhost.{ATTACKER}:{port}",
        f"{PUBLIC}.{ATTACKER}",  # the public name as a prefix of another
        f"0.0.0.0:{port}",
        "",
    ]
    for host in foreign:
        for path in ("/", "/sql", "/_stcore/health", "/_stcore/host-config", "/favicon.png"):
            resp = get(run, path, host=host)
            assert resp.status_code == 403, (host, path, resp.status_code, resp.text[:200])
            assert "<script" not in resp.text
        assert " 403 " in upgrade(run, host, f"http://{host}"), host
        assert " 403 " in upgrade(run, host), host
    # No Host at all, and two of them (one ours): refused too.
    assert " 403 " in raw(run, "GET / HTTP/1.0\r\n\r\n")
    assert " 403 " in raw(run, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: {ATTACKER}\r\n\r\n")
    # The same requests under the dashboard's own names go through.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert get(run, "/_stcore/health", host=host).status_code == 200, host
        assert " 101 " in upgrade(run, host, f"http://{host}"), host


def test_a_foreign_origin_gets_403_even_with_our_host(run: Run) -> None:
    host = f"127.0.0.1:{run.port}"
    for origin in (
        f"http://{ATTACKER}:{run.port}",
        f"http://127.0.0.1:{free_port()}",  # another local port: another origin
        f"http://localhost:{run.port}",  # another name for the same socket is another origin
        f"https://127.0.0.1:{run.port}",
        "null",  # sandboxed frames, file:// pages
        f"http://{host}@{ATTACKER}",
    ):
        assert " 403 " in upgrade(run, host, origin), origin
        assert get(run, "/", host=host, origin=origin).status_code == 403, origin
    assert " 101 " in upgrade(run, host, f"http://{host}")


def test_the_configured_public_name_is_accepted(run: Run) -> None:
    # Behind a reverse proxy that keeps Host, and one that rewrites it to the upstream address.
    assert get(run, "/", host=PUBLIC).status_code == 200
    assert get(run, "/", host=f"{PUBLIC}:443").status_code == 200
    assert " 101 " in upgrade(run, PUBLIC, f"https://{PUBLIC}")
    assert " 101 " in upgrade(run, f"127.0.0.1:{run.port}", f"https://{PUBLIC}")


# -- a real browser ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium(run: Run) -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or `apt-get install chromium`)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    # The attacker's name resolves to 127.0.0.1, as after a DNS rebinding.
    args = [*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1, MAP {PUBLIC} 127.0.0.1"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    try:
        yield ctx
    finally:
        ctx.close()


def settle(page: Any) -> None:
    page.wait_for_timeout(300)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=60_000)


def test_in_chromium_a_rebound_name_gets_nothing_and_a_visitor_without_the_link_only_the_form(
    run: Run, chromium: Any
) -> None:
    from playwright.sync_api import expect

    with context(chromium) as ctx:
        page = ctx.new_page()
        for path in ("", "sql"):
            resp = page.goto(f"http://{ATTACKER}:{run.port}/{path}")
            assert resp is not None and resp.status == 403
            assert page.locator('[data-testid="stApp"]').count() == 0
            assert "SQL" not in page.content() and "Keyrack" not in page.content()
    with context(chromium) as ctx:
        page = ctx.new_page()
        page.goto(f"{run.url}/sql")
        settle(page)
        expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible()
        expect(page.get_by_role("heading", name="SQL", exact=True)).to_have_count(0)
        expect(page.get_by_role("link", name="SQL")).to_have_count(0)
        expect(page.get_by_role("textbox", name="SQL")).to_have_count(0)
        assert not page.locator('[data-testid="stDataFrame"], [data-testid="stMetric"]').count()
        page.reload()
        settle(page)
        expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible()
        assert ctx.cookies() == [] or not any(c["name"].startswith("keyrack") for c in ctx.cookies())


def test_in_chromium_the_public_name_serves_the_app_to_whoever_gives_the_admin_token(run: Run, chromium: Any) -> None:
    """As behind a reverse proxy that passes Host on (the Docker image's setup): the page, its WebSocket, the form."""
    from playwright.sync_api import expect

    with context(chromium) as ctx:
        page = ctx.new_page()
        page.goto(f"http://{PUBLIC}:{run.port}/trends")
        settle(page)
        expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible()
        expect(page.get_by_role("heading", name="Trends", exact=True)).to_have_count(0)
        page.get_by_label("Admin token").fill(run.admin_token)
        page.get_by_role("button", name="Sign in").click()
        settle(page)
        expect(page.get_by_role("heading", name="Trends", exact=True)).to_be_visible()


def test_the_banner_link_signs_in_once_and_its_cookie_keeps_the_browser_signed_in(run: Run, chromium: Any) -> None:
    from playwright.sync_api import expect

    assert run.link, "the banner of `keyrack run` prints no sign-in link"
    assert run.admin_token not in run.link
    with context(chromium) as ctx:
        page = ctx.new_page()
        page.goto(run.link)
        settle(page)
        expect(page.get_by_role("heading", name="Monitor")).to_be_visible()
        assert "code=" not in page.url  # the link leaves the address bar (and the history's next entry)
        (cookie,) = [c for c in ctx.cookies() if c["name"].startswith("keyrack")]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
        assert cookie["domain"] == "127.0.0.1"
        assert time.time() < cookie["expires"] <= time.time() + 24 * 3600
        assert run.admin_token not in cookie["value"] and code_of(run.link) not in cookie["value"]
        page.reload()
        settle(page)
        expect(page.get_by_role("heading", name="Monitor")).to_be_visible()
        other = ctx.new_page()  # a new tab of the same browser
        other.goto(f"{run.url}/sql")
        settle(other)
        expect(other.get_by_role("heading", name="SQL", exact=True)).to_be_visible()

        # The same link a second time, in another browser: nothing.
        with context(chromium) as second:
            again = second.new_page()
            resp = again.goto(run.link)
            assert resp is not None and resp.status == 403
            assert not [c for c in second.cookies() if c["name"].startswith("keyrack")]
            again.goto(run.url)
            settle(again)
            expect(again.get_by_role("heading", name=SIGN_IN)).to_be_visible()

        # Signing out revokes the cookie: a reload of the other tab asks for the token.
        page.get_by_role("button", name="Sign out").click()
        settle(page)
        expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible()
        other.reload()
        settle(other)
        expect(other.get_by_role("heading", name=SIGN_IN)).to_be_visible()


def test_keyrack_dashboard_link_prints_a_new_one_time_link_that_a_foreign_host_cannot_spend(run: Run) -> None:
    link = run.new_link()
    assert link.startswith(f"{run.url}/sign-in?code=") and link != run.link
    path = link.removeprefix(run.url)
    assert get(run, path, host=f"{ATTACKER}:{run.port}").status_code == 403  # refused before it is looked at…
    first = get(run, path)  # …so it still works here, once
    assert first.status_code == 303 and first.headers["location"] == "/", first.text
    assert "HttpOnly" in first.headers["set-cookie"] and "SameSite=strict" in first.headers["set-cookie"]
    assert get(run, path).status_code == 403
    for forged in (path[:-2] + ("AA" if not path.endswith("AA") else "BB"), "/sign-in?code=", "/sign-in"):
        assert get(run, forged).status_code == 403, forged


def test_no_log_file_keeps_the_admin_token_the_link_or_its_key(run: Run) -> None:
    assert run.link, "the banner of `keyrack run` prints no sign-in link"
    kept = run.data_dir / "dashboard-link.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    key = re.search(r'"key": "([^"]+)"', kept.read_text())
    assert key
    secrets = {"admin token": run.admin_token, "link code": code_of(run.link), "link key": key.group(1)}
    logs = list((run.data_dir / "logs").glob("*.log"))
    assert {p.name for p in logs} >= {"proxy.log", "dashboard.log"}
    for log in logs:
        text = log.read_text(errors="replace")
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {log.name}"


# -- the pieces, with hostile input --------------------------------------------------------------------------------


def test_link_codes_and_cookies_cannot_be_forged_swapped_replayed_or_kept_past_expiry() -> None:
    from dashboard.sessions import Sessions
    from proxy_service import dashboard_link as dl

    key = dl.new_key()
    sessions, other = Sessions(key), Sessions(dl.new_key())
    now = time.time()
    code = dl.mint_code(key, now)
    assert other.redeem(code, now) is None  # another run's key
    cookie = sessions.redeem(code, now)
    assert cookie is not None and sessions.session(cookie, now) is not None
    assert sessions.redeem(code, now) is None  # once only
    assert sessions.redeem(cookie, now) is None  # a cookie is no link…
    assert sessions.session(dl.mint_code(key, now), now) is None  # …and a link no cookie
    assert sessions.redeem(dl.mint_code(key, now), now + dl.LINK_TTL_S + 1) is None  # expired
    assert sessions.session(cookie, now + dl.SESSION_TTL_S + 1) is None
    nonce, expires, sig = dl.mint_code(key, now).split(".")
    assert sessions.redeem(f"{nonce}.{expires + '0'}.{sig}", now) is None  # a later expiry, same signature
    assert sessions.redeem(f"{nonce}x.{expires}.{sig}", now) is None
    for junk in ("", ".", "..", "a.b.c", "x" * 100_000, f"{nonce}.١٢٣.{sig}", f"{nonce}.-1.{sig}", f"{code}.{code}"):
        assert sessions.redeem(junk, now) is None and sessions.session(junk, now) is None
    sessions.revoke(sessions.session(cookie, now) or ("", 0))
    assert sessions.session(cookie, now) is None  # signed out


def test_public_hosts_setting_refuses_what_is_no_host_and_the_dashboard_command_says_so(tmp_path: Path) -> None:
    from dashboard.hosts import HostPolicy, PublicHostsError, parse_public_hosts

    for bad in ("*", "0.0.0.0", "a b", "host:99999", "host:0", "user@host", "host/path", "[::1", "ex\u00e4mple.com"):
        with pytest.raises(PublicHostsError):
            parse_public_hosts(bad)
    policy = HostPolicy(parse_public_hosts(" Keyrack.Example.com , lan.local:8501, https://x.example:8443/ ,"))
    assert policy.host_allowed("keyrack.example.com:1234") and policy.host_allowed("KEYRACK.example.com.")
    assert policy.host_allowed("lan.local:8501") and not policy.host_allowed("lan.local:8502")
    assert policy.host_allowed("x.example:8443") and not policy.host_allowed("x.example")
    for host in ("keyrack.example.com.evil", "evil.keyrack.example.com", "localhost:8501@evil", "localhost/x", "::1"):
        assert not policy.host_allowed(host), host
    assert policy.origin_allowed("https://keyrack.example.com", "127.0.0.1:8501")  # a proxy that rewrites Host
    assert not policy.origin_allowed("http://x.example", "127.0.0.1:8501")  # port 80, not 8443

    res = subprocess.run(
        [*KEYRACK, "dashboard", "--port", str(free_port())],
        env=clean_env(dashboard_public_hosts="*"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert [line for line in res.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: KEYRACK_DASHBOARD_PUBLIC_HOSTS: '*' is not a host name or host:port"
    ]
