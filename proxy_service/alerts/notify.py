"""Notification channels and delivery.

A channel is a URL, a secret: shown masked everywhere (`masked_url`), kept out of log lines.
- Any Apprise URL (`json://`, `mailto://`, `slack://`, `discord://`, `tgram://`, `dingtalk://`, `wecombot://`,
  `feishu://`, `lark://`...) is sent through Apprise, which knows each service's payload and signing.
- `webhook+https://host/path` (or `webhook+http://`) is Keyrack's own signed webhook: a JSON POST (fields in
  `webhook_payload`) with `X-Keyrack-Signature: sha256=<hex HMAC-SHA256 of the raw body with the channel secret>`.
  The secret is given when the channel is created (`secret`) or generated then, and returned once.

Delivery never runs on the request path: notices go on a bounded queue served by a few worker tasks; a failed
attempt is retried with exponential backoff; every attempt is recorded (`alert_events`: delivered / failed with
the reason) and counted in /metrics. A full queue drops nothing silently: the notice is recorded as failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter

from proxy_service import metrics

log = logging.getLogger("keyrack.alerts")
WEBHOOK_PREFIXES = ("webhook+https://", "webhook+http://")
MAX_URL = 2000
QUEUE_SIZE = 1000
WORKERS = 2
ATTEMPTS = 4
SEND_TIMEOUT_S = 30.0

DELIVERIES = Counter(
    "keyrack_alert_deliveries",
    "Alert notification delivery attempts by result (delivered, failed, retried, dropped)",
    ["result"],
    registry=metrics.REGISTRY,
)


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
        return self.url.split("://", 1)[0].lower()

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


# Apprise (~4 MB of RSS, hundreds of plugin modules) is imported by the functions below only once a channel with an
# Apprise URL exists: a proxy without one never loads it.


def masked_url(url: str) -> str:
    """What may be shown of a channel URL: Apprise's privacy rendering (tokens and passwords starred), or for the
    signed webhook the scheme and host only."""
    if url.startswith(WEBHOOK_PREFIXES):
        parts = urlsplit(url.removeprefix("webhook+"))
        return f"webhook+{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/****"
    import apprise

    plugin = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if not plugin:
        return url.split("://", 1)[0] + "://****"
    return str(plugin.url(privacy=True))


def validate_url(url: Any) -> str:
    """A usable channel URL, or ChannelError('url', why)."""
    if not isinstance(url, str) or not url.strip():
        raise ChannelError("url", "is required: an Apprise URL such as json://host/path or mailto://user:pass@host")
    url = url.strip()
    if len(url) > MAX_URL or any(ord(c) < 32 for c in url):
        raise ChannelError("url", f"must be at most {MAX_URL} printable characters")
    if "://" not in url:
        raise ChannelError("url", "must be a URL with a scheme such as json://, mailto://, slack://, webhook+https://")
    if url.startswith(WEBHOOK_PREFIXES):
        parts = urlsplit(url.removeprefix("webhook+"))
        if not parts.hostname:
            raise ChannelError("url", "webhook+https:// URL has no host")
        return url
    import apprise

    if not apprise.Apprise.instantiate(url, suppress_exceptions=True):
        scheme = url.split("://", 1)[0][:32]
        raise ChannelError("url", f"not a valid Apprise URL for scheme {scheme!r} (see the Apprise wiki for its form)")
    return url


def new_secret() -> str:
    return secrets.token_urlsafe(32)


# -- messages -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    """One message to send: a rule's state change (or a test)."""

    rule_id: str
    rule: str
    state: str  # firing · resolved · test
    severity: str
    metric: str
    op: str
    threshold: float
    value: float | None
    labels: dict[str, str]
    started_at: float
    at: float
    kind: str  # fired · repeat · resolved · test


_TEXT = {
    "en": {
        "firing": "FIRING",
        "resolved": "RESOLVED",
        "test": "TEST",
        "value": "value",
        "threshold": "threshold",
        "labels": "labels",
        "since": "since",
        "open": "Open the dashboard",
        "test_body": "Test message from Keyrack: this channel works.",
    },
    "zh": {
        "firing": "告警中 firing",
        "resolved": "已恢复 resolved",
        "test": "测试 test",
        "value": "当前值",
        "threshold": "阈值",
        "labels": "标签",
        "since": "开始于",
        "open": "打开控制台",
        "test_body": "来自 Keyrack 的测试消息：此通知渠道可用。",
    },
}


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3e}"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def render(notice: Notice, language: str, dashboard_url: str) -> tuple[str, str]:
    """(title, body) in the operator's language; both name the rule, the body names the state in English too."""
    t = _TEXT.get(language, _TEXT["en"])
    title = f"[{t[notice.state]}] {notice.rule} ({notice.severity})"
    if notice.state == "test":
        return title, f"{t['test_body']}\n{t['open']}: {dashboard_url}"
    labels = ", ".join(f"{k}={v}" for k, v in notice.labels.items()) or "-"
    body = "\n".join(
        [
            f"{notice.rule} is {notice.state}" if language != "zh" else f"{notice.rule}：{t[notice.state]}",
            f"{notice.metric} {t['value']} {_fmt(notice.value)} {notice.op} {t['threshold']} {_fmt(notice.threshold)}",
            f"{t['labels']}: {labels}",
            f"{t['since']}: {_iso(notice.started_at)}",
            f"{t['open']}: {alerts_link(dashboard_url)}",
        ]
    )
    return title, body


def alerts_link(dashboard_url: str) -> str:
    return dashboard_url.rstrip("/") + "/alerts"


def webhook_payload(notice: Notice, language: str, dashboard_url: str) -> dict[str, Any]:
    """The signed webhook's JSON body (documented in README "Alerts")."""
    title, body = render(notice, language, dashboard_url)
    return {
        "rule": notice.rule,
        "rule_id": notice.rule_id,
        "state": notice.state,
        "severity": notice.severity,
        "metric": notice.metric,
        "op": notice.op,
        "value": notice.value,
        "threshold": notice.threshold,
        "labels": notice.labels,
        "started_at": _iso(notice.started_at),
        "at": _iso(notice.at),
        "kind": notice.kind,
        "dashboard_url": alerts_link(dashboard_url),
        "title": title,
        "message": body,
    }


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- delivery -----------------------------------------------------------------------------------------------------
@dataclass
class Delivery:
    channel: Channel
    notice: Notice
    attempt: int = 1


Recorder = Callable[[str, Notice, Channel | None, int, str], None]  # (kind, notice, channel, attempt, message)


class Notifier:
    """The delivery queue and its workers (on the event loop); sending itself is off the loop or async I/O."""

    def __init__(
        self,
        record: Recorder,
        settings: Callable[[], tuple[str, str]],
        *,
        backoff_s: float = 2.0,
        attempts: int = ATTEMPTS,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.record = record
        self.settings = settings  # () → (language, dashboard_url), read at send time
        self.backoff_s = backoff_s
        self.attempts = attempts
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._client: httpx.AsyncClient | None = None
        self.in_flight = 0

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False)
        self._tasks = [asyncio.create_task(self._worker(), name=f"alert-notify-{i}") for i in range(WORKERS)]

    async def stop(self) -> None:
        for handle in self._retries:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    @property
    def idle(self) -> bool:
        return self.queue.empty() and not self._retries and self.in_flight == 0

    def enqueue(self, channel: Channel, notice: Notice, attempt: int = 1) -> bool:
        try:
            self.queue.put_nowait(Delivery(channel, notice, attempt))
            return True
        except asyncio.QueueFull:
            DELIVERIES.labels("dropped").inc()
            self.record("failed", notice, channel, attempt, "notification queue full; not sent")
            return False

    async def send_now(self, channel: Channel, notice: Notice) -> tuple[bool, str]:
        """One attempt, awaited (test-send from the admin API); recorded like any other."""
        ok, why = await self._send(channel, notice)
        self._count(ok, final=True)
        self.record("delivered" if ok else "failed", notice, channel, 1, why)
        return ok, why

    async def _worker(self) -> None:
        while True:
            d = await self.queue.get()
            self.in_flight += 1
            try:
                ok, why = await self._send(d.channel, d.notice)
                final = ok or d.attempt >= self.attempts
                self._count(ok, final)
                if ok:
                    self.record("delivered", d.notice, d.channel, d.attempt, why)
                elif final:
                    self.record("failed", d.notice, d.channel, d.attempt, f"gave up after {d.attempt} attempts: {why}")
                else:
                    self.record("failed", d.notice, d.channel, d.attempt, f"will retry: {why}")
                    self._retry(d)
            except Exception:  # a bug here must not kill the worker: keep serving the queue
                log.exception("alert delivery crashed")
            finally:
                self.in_flight -= 1

    def _retry(self, d: Delivery) -> None:
        delay = self.backoff_s * 2 ** (d.attempt - 1)
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._retries.discard(handle)
            self.enqueue(d.channel, d.notice, d.attempt + 1)

        handle = loop.call_later(delay, again)
        self._retries.add(handle)

    def _count(self, ok: bool, final: bool) -> None:
        DELIVERIES.labels("delivered" if ok else "failed" if final else "retried").inc()

    async def _send(self, channel: Channel, notice: Notice) -> tuple[bool, str]:
        language, dashboard_url = self.settings()
        try:
            if channel.kind == "webhook":
                return await asyncio.wait_for(self._webhook(channel, notice, language, dashboard_url), SEND_TIMEOUT_S)
            title, body = render(notice, language, dashboard_url)
            return await asyncio.wait_for(
                asyncio.to_thread(_apprise_send, channel.url, title, body, notice), SEND_TIMEOUT_S
            )
        except TimeoutError:
            return False, f"timed out after {SEND_TIMEOUT_S:g} s"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {scrub(str(exc), channel)}"[:300]

    async def _webhook(self, channel: Channel, notice: Notice, language: str, dashboard_url: str) -> tuple[bool, str]:
        assert self._client is not None
        body = json.dumps(webhook_payload(notice, language, dashboard_url), ensure_ascii=False).encode()
        headers = {"content-type": "application/json", "user-agent": "keyrack-alerts", "x-keyrack-event": notice.state}
        if channel.secret:
            headers["x-keyrack-signature"] = sign(channel.secret, body)
        resp = await self._client.post(channel.url.removeprefix("webhook+"), content=body, headers=headers)
        if 200 <= resp.status_code < 300:
            return True, f"HTTP {resp.status_code}"
        return False, f"HTTP {resp.status_code}"


def _apprise_send(url: str, title: str, body: str, notice: Notice) -> tuple[bool, str]:
    """One synchronous Apprise send (a worker thread); the failure reason is what Apprise logged, scrubbed."""
    import apprise

    kinds = {"firing": apprise.NotifyType.FAILURE, "resolved": apprise.NotifyType.SUCCESS}
    ap = apprise.Apprise()
    if not ap.add(url):
        return False, "invalid Apprise URL"
    with apprise.LogCapture(level=logging.WARNING) as captured:
        ok = ap.notify(body=body, title=title, notify_type=kinds.get(notice.state, apprise.NotifyType.INFO))
        reason = captured.getvalue().strip().splitlines()
    if ok:
        return True, "sent"
    return False, (_scrub_url(reason[-1], url) if reason else "Apprise reported a failure")[:300]


def _scrub_url(text: str, url: str) -> str:
    return text.replace(url, masked_url(url)) if url in text else text


def scrub(text: str, channel: Channel) -> str:
    text = _scrub_url(text, channel.url)
    if channel.secret:
        text = text.replace(channel.secret, "****")
    return text
