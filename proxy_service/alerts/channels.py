"""Notification channels: the URL (a secret), its validation, and what may be shown of it.

A channel is an Apprise URL (`json://`, `mailto://`, `slack://`, `tgram://`...) or Keyrack's own signed webhook
(`webhook+https://host/path`, with a signing secret). Either kind carries secrets anywhere in the URL: userinfo
(`mailto://user:password@host`), the path (Slack, Discord and Telegram tokens, an ntfy topic, a Gotify token), the
query (`?+X-Api-Key=…` headers and `?:field=…` payload fields of json://, `?token=…`), even the host (`slack://T…`,
`dingtalk://SEC…@…`). Apprise's own privacy rendering leaves most of those in clear, so Keyrack masks by one rule
for every scheme: only the scheme and a host that is a real network address (an IP, `localhost`, a DNS name) with
its port are shown; everything else is `****` (`masked_url`). Log lines and delivery messages are scrubbed of every
part of the URL that could be secret (`secret_parts`, `scrub`).

Channels are stored in `alert_channels` (engine.py reads and writes them in one place).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

WEBHOOK_PREFIXES = ("webhook+https://", "webhook+http://")
MAX_URL = 2000
_MIN_PART = 6  # shorter parts would scrub ordinary words (the log redaction ignores them too)
# Schemes whose host is always a network address (any name, even a one-label one such as a container's); elsewhere
# the host may be a token (`slack://T…`, `ntfy://topic`) and is shown only when it has the shape of an address.
_HOST_SCHEMES = {"webhook+http", "webhook+https", "json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos"}
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_TLD = re.compile(r"^[A-Za-z]{2,24}$")


class ChannelError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass
class Channel:
    id: str
    name: str
    url: str
    secret: str | None = None  # the webhook signing secret
    created_at: float = field(default_factory=time.time)

    @property
    def kind(self) -> str:
        return "webhook" if self.url.startswith(WEBHOOK_PREFIXES) else "apprise"

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()[:32]

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "scheme": self.scheme,
            "url": masked_url(self.url),
            "signed": bool(self.secret),
            "created_at": self.created_at,
        }

    def secrets(self) -> list[str]:
        """Everything of this channel that must never be shown: the URL, its secret parts, the signing secret."""
        out = [self.url, *secret_parts(self.url)]
        if self.secret:
            out.append(self.secret)
        return out


@dataclass(frozen=True)
class _Parts:
    scheme: str
    userinfo: str
    host: str  # as written, without the port
    port: str  # digits as written, or ""
    rest: str  # path, query and fragment


def _split(url: str) -> _Parts:
    """Split by hand: `urlsplit` raises on a bad port and reads the tokens some schemes put in the host as a port."""
    scheme, _, after = url.partition("://")
    netloc, sep, rest = after, "", ""
    for i, c in enumerate(after):
        if c in "/?#":
            netloc, sep, rest = after[:i], c, after[i + 1 :]
            break
    userinfo, _, hostport = netloc.rpartition("@")
    host, port = hostport, ""
    if hostport.startswith("["):  # an IPv6 literal
        close = hostport.find("]")
        host, tail = (hostport[: close + 1], hostport[close + 1 :]) if close > 0 else (hostport, "")
        port = tail[1:] if tail.startswith(":") else ""
    elif ":" in hostport:
        h, _, p = hostport.rpartition(":")
        if p.isdigit() or p == "":
            host, port = h, p
    return _Parts(scheme.lower(), userinfo, host, port, sep + rest if rest else "")


def _network_host(host: str) -> bool:
    """Whether `host` is a network address rather than a token: an IP literal, localhost, or a DNS name."""
    name = host.strip("[]")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name.lower() == "localhost":
        return True
    labels = name.rstrip(".").split(".")
    return len(labels) >= 2 and all(_DNS_LABEL.match(x) for x in labels) and bool(_TLD.match(labels[-1]))


def _shows_host(p: _Parts) -> bool:
    return bool(p.host) and (p.scheme in _HOST_SCHEMES or _network_host(p.host))


def masked_url(url: str) -> str:
    """What may be shown of a channel URL (never raises: a stored row that no longer parses shows as its scheme)."""
    try:
        p = _split(url)
        shown = "****" if (p.host or p.port) else ""
        if _shows_host(p):
            shown = p.host + (f":{p.port}" if p.port else "")
        user = "****@" if p.userinfo else ""
        rest = "/****" if p.rest.strip("/?#") else ""
        return f"{p.scheme[:32]}://{user}{shown}{rest}"
    except Exception:  # showing a channel must never fail
        return url.split("://", 1)[0][:32] + "://****"


def secret_parts(url: str) -> list[str]:
    """Every part of the URL that may be a secret (as written and URL-decoded), for scrubbing text."""
    try:
        p = _split(url)
    except Exception:
        return []
    parts: list[str] = []
    if p.userinfo:
        parts += [p.userinfo, *p.userinfo.split(":")]
    if not _shows_host(p):
        parts += [p.host, p.port]
    path, _, query = p.rest.partition("?")
    path, _, fragment = path.partition("#")
    query, _, qfragment = query.partition("#")
    parts += [seg for seg in path.split("/")]
    parts += [v for _k, v in parse_qsl(query, keep_blank_values=True)]
    parts += [fragment, qfragment]
    out = {x for part in parts for x in (part, unquote(part)) if len(x) >= _MIN_PART}
    return sorted(out, key=len, reverse=True)  # longest first: a part inside another is replaced after it


def scrub(text: str, channel: Channel) -> str:
    """`text` (a delivery failure, a log line of Apprise) with every secret of `channel` replaced by ****."""
    for part in channel.secrets():
        if part and part in text:
            text = text.replace(part, "****")
    return text


def _port_ok(port: str) -> bool:
    return port == "" or (len(port) <= 5 and 1 <= int(port) <= 65535)


def validate_url(url: Any) -> str:
    """A usable channel URL, or ChannelError('url', why)."""
    if not isinstance(url, str) or not url.strip():
        raise ChannelError("url", "is required: an Apprise URL such as json://host/path or mailto://user:pass@host")
    url = url.strip()
    if len(url) > MAX_URL or any(ord(c) < 32 or c == "\x7f" for c in url):
        raise ChannelError("url", f"must be at most {MAX_URL} printable characters")
    if "://" not in url:
        raise ChannelError("url", "must be a URL with a scheme such as json://, mailto://, slack://, webhook+https://")
    p = _split(url)
    if not _port_ok(p.port):
        raise ChannelError("url", f"port must be between 1 and 65535 (got {p.port[:12]})")
    if url.startswith(WEBHOOK_PREFIXES):
        try:
            parts = urlsplit(url.removeprefix("webhook+"))
            parts.port  # noqa: B018 - raises on a port urlsplit cannot read
        except ValueError as exc:
            raise ChannelError("url", f"not a valid URL: {exc}") from None
        if not parts.hostname:
            raise ChannelError("url", "webhook+https:// URL has no host")
        return url
    import apprise  # only once a channel with an Apprise URL exists: a proxy without one never loads it

    if not apprise.Apprise.instantiate(url, suppress_exceptions=True):
        scheme = url.split("://", 1)[0][:32]
        raise ChannelError("url", f"not a valid Apprise URL for scheme {scheme!r} (see the Apprise wiki for its form)")
    return url


def new_secret() -> str:
    return secrets.token_urlsafe(32)
