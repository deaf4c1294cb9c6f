"""Which names the dashboard answers to: the Host and Origin check in front of every request (DNS rebinding).

A web page served under a name that resolves to 127.0.0.1 reaches a loopback dashboard as the same origin, so the
browser's own checks do not help: only the names in the request can tell. Allowed: the loopback names (localhost,
127.0.0.1, [::1]) and the names in `KEYRACK_DASHBOARD_PUBLIC_HOSTS` (comma-separated, `name` or `name:port`: the
public name of a reverse proxy, a LAN address). Everything else gets 403 before Streamlit sees the request: page
loads, static files, health, and the WebSocket upgrade that carries every script run.

- Host: its name must be allowed. A loopback name is accepted on any port, because a published container port
  (Docker's `127.0.0.1:9000:8501`) reaches the dashboard under a port it does not listen on, and a browser cannot
  send a loopback Host for a page of another name, whatever the port.
- Origin (sent by browsers on WebSocket upgrades and cross-origin requests): absent is fine (a navigation, curl);
  otherwise it must be this very origin (same `host:port` as Host: a page on another local port is foreign) or a
  configured public name (a reverse proxy that rewrites Host). `null` (sandboxed frames, files) is foreign.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy_service.envfile import env_setting

SETTING = "KEYRACK_DASHBOARD_PUBLIC_HOSTS"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_MAX_HOST = 255 + 6  # a DNS name and a port

log = logging.getLogger("keyrack.dashboard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class PublicHostsError(ValueError):
    """A bad KEYRACK_DASHBOARD_PUBLIC_HOSTS entry, as the one line the operator reads."""


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` → (lower-case name, port or None); IPv6 keeps its brackets. None when it is not a host."""
    value = value.strip().lower()
    if not value or len(value) > _MAX_HOST or not value.isascii() or any(c in value for c in "/@?#\\ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, _, port_text = value.partition(":")
        port_text = port_text if ":" in value else None
    if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        return None
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    else:
        name = name.removesuffix(".")  # `localhost.` is localhost
        if not name or not all(c.isalnum() or c in "-._" for c in name):
            return None
    return name, int(port_text) if port_text is not None else None


def parse_public_hosts(text: str) -> tuple[tuple[str, int | None], ...]:
    """The setting's entries: `name` (any port) or `name:port`; a URL is accepted for its `host[:port]`."""
    entries = []
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        if "://" in item:
            item = urlsplit(item).netloc
        parsed = split_host(item)
        if parsed is None or parsed[0] in ("*", "0.0.0.0", "[::]"):
            raise PublicHostsError(f"{SETTING}: {raw.strip()[:80]!r} is not a host name or host:port")
        entries.append(parsed)
    return tuple(entries)


@dataclass(frozen=True)
class HostPolicy:
    public: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def from_env(cls) -> HostPolicy:
        return cls(parse_public_hosts(env_setting(SETTING) or ""))

    def _public(self, name: str, port: int | None) -> bool:
        return any(name == n and (p is None or p == port) for n, p in self.public)

    def host_allowed(self, host: str | None) -> bool:
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name, port = parsed
        return name in LOOPBACK_NAMES or self._public(name, port)

    def origin_allowed(self, origin: str | None, host: str, scheme: str = "http") -> bool:
        """`scheme`: the request's own (http or https; a WebSocket's ws/wss count as those)."""
        if origin is None:
            return True
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query or "@" in parts.netloc:
            return False
        if parts.scheme == scheme and parts.netloc.lower() == host.strip().lower():
            return True  # this very origin
        parsed = split_host(parts.netloc)
        if parsed is None:
            return False
        name, port = parsed
        return self._public(name, port if port is not None else (443 if parts.scheme == "https" else 80))

    def refusal(self, hosts: list[str], origins: list[str], scheme: str = "http") -> str | None:
        """Why a request with these Host and Origin headers is refused, or None when it is let through."""
        if len(hosts) != 1 or not self.host_allowed(hosts[0]):
            shown = hosts[0][:80] if hosts else ""
            return f"Host {shown!r} is not a name of this dashboard (add it to {SETTING})"
        if len(origins) > 1 or not self.origin_allowed(origins[0] if origins else None, hosts[0], scheme):
            return f"Origin {origins[0][:80]!r} is foreign to this dashboard" if origins else "several Origin headers"
        return None


def streamlit_flags(public: tuple[tuple[str, int | None], ...]) -> list[str]:
    """Streamlit's own WebSocket checks told the same names, a second layer behind HostGuard: `server.allowedHosts`
    (its DNS-rebinding allow-list, ports ignored), and `server.corsAllowedOrigins` so that a reverse proxy that
    rewrites Host still passes Streamlit's same-origin check with the public name's Origin."""
    names = dict.fromkeys(["localhost", "127.0.0.1", "::1", *(name.strip("[]") for name, _ in public)])
    flags = [flag for name in names for flag in ("--server.allowedHosts", name)]
    for name in dict.fromkeys(name for name, _ in public):
        flags += ["--server.corsAllowedOrigins", f"https://{name}", "--server.corsAllowedOrigins", f"http://{name}"]
    return flags


class HostGuard:
    """ASGI middleware: a request whose Host or Origin is refused gets 403 and never reaches Streamlit."""

    LOG_EVERY_S = 60.0  # a page hammering the dashboard writes one line a minute, not one per request

    def __init__(self, app: ASGIApp, policy: HostPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or HostPolicy.from_env()
        self._logged_at = -self.LOG_EVERY_S
        self._refused = 0

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts, origins = [], []
        for name, value in scope.get("headers") or ():
            if name == b"host":
                hosts.append(value.decode("latin-1"))
            elif name == b"origin":
                origins.append(value.decode("latin-1"))
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        reason = self.policy.refusal(hosts, origins, scheme)
        if reason is None:
            await self.app(scope, receive, send)
            return
        self._note(reason)
        if scope["type"] == "websocket":  # closing before accepting: the server answers the upgrade with 403
            await send({"type": "websocket.close", "code": 1008})
            return
        body = f"403 Forbidden: {reason}.\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _note(self, reason: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._logged_at >= self.LOG_EVERY_S:
            log.warning("refused %d request(s) by Host/Origin; latest: %s", self._refused, reason)
            self._logged_at, self._refused = now, 0
