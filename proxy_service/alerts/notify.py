"""Alert messages and their delivery.

Messages: a `Notice` rendered in the operator's language (`render`), or the signed webhook's JSON body
(`webhook_payload`, signed with `sign`). Channels and their URLs: `channels.py`.

Delivery never runs on the request path, and one channel never waits for another: each channel has its own lane — a
bounded queue served by one task — so a slow or dead receiver holds only its own lane. Every attempt is bounded in
time and in the answer it reads (`delivery.py`); a failed attempt is retried on its lane with exponential backoff;
every attempt is recorded (`alert_events`: delivered / failed with the reason) and counted in /metrics. Each channel
takes at most `per_minute` new notices a minute (a token bucket): what is over is counted, and recorded as one
summary row per channel and evaluation. A full lane drops nothing silently: the notice is recorded as failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter

from proxy_service import metrics
from proxy_service.alerts import delivery, values
from proxy_service.alerts.channels import Channel, scrub
from proxy_service.alerts.rules import METRICS
from proxy_service.alerts.words import WORDS

log = logging.getLogger("keyrack.alerts")
LANE_QUEUE = 200
ATTEMPTS = 4
PER_MINUTE = 30  # new notices per channel and minute
MAX_CONNECTIONS = 200  # webhook connections: one per lane in flight, and test sends

DELIVERIES = Counter(
    "keyrack_alert_deliveries",
    "Alert notification delivery attempts by result (delivered, failed, retried, dropped, suppressed)",
    ["result"],
    registry=metrics.REGISTRY,
)


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


# The words the dashboard shows too come from alerts/words.py; a state in a Chinese title keeps its English name
# beside it (it is what rules, /metrics and the API call it).
_TEXT = {
    "en": {
        **{k: WORDS["en"][k] for k in ("value", "threshold", "labels", "since")},
        "firing": WORDS["en"]["firing"].upper(),
        "resolved": WORDS["en"]["resolved"].upper(),
        "test": "TEST",
        "open": "Open the dashboard",
        "test_body": "Test message from Keyrack: this channel works.",
    },
    "zh": {
        **{k: WORDS["zh"][k] for k in ("value", "threshold", "labels", "since")},
        "firing": f"{WORDS['zh']['firing']} firing",
        "resolved": f"{WORDS['zh']['resolved']} resolved",
        "test": "测试 test",
        "open": "打开控制台",
        "test_body": "来自 Keyrack 的测试消息：此通知渠道可用。",
    },
}


def format_value(v: float | None, metric: str) -> str:
    """A metric's value as the dashboard shows it (values.format_value in the metric's unit)."""
    m = METRICS.get(metric)
    return values.format_value(v, m.unit if m is not None else "")


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
            f"{notice.metric} {t['value']} {format_value(notice.value, notice.metric)} {notice.op} "
            f"{t['threshold']} {format_value(notice.threshold, notice.metric)}",
            f"{t['labels']}: {labels}",
            f"{t['since']}: {_iso(notice.started_at)}",
            f"{t['open']}: {alerts_link(dashboard_url)}",
        ]
    )
    return title, body


def alerts_link(dashboard_url: str) -> str:
    return dashboard_url.rstrip("/") + "/alerts"


def webhook_payload(notice: Notice, language: str, dashboard_url: str) -> dict[str, Any]:
    """The signed webhook's JSON body (documented in docs/alerts.md)."""
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


@dataclass
class _Bucket:
    """New notices a channel may still take: `per_minute` at most, refilled continuously."""

    tokens: float
    at: float
    suppressed: int = 0
    last: Notice | None = None  # the last notice held back (named in the summary row)

    def take(self, per_minute: int, now: float) -> bool:
        self.tokens = min(float(per_minute), self.tokens + (now - self.at) * per_minute / 60.0)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Lane:
    """One channel's deliveries: its own bounded queue and task, retries with backoff on the same lane."""

    def __init__(self, notifier: Notifier, channel: Channel) -> None:
        self.notifier = notifier
        self.channel = channel
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(LANE_QUEUE)
        self.retries: set[asyncio.TimerHandle] = set()
        self.busy = False
        self.bucket = _Bucket(float(notifier.per_minute), time.monotonic())
        self.task = asyncio.create_task(self._run(), name=f"alert-lane-{channel.id}")

    @property
    def idle(self) -> bool:
        return self.queue.empty() and not self.retries and not self.busy

    def put(self, d: Delivery) -> bool:
        try:
            self.queue.put_nowait(d)
            return True
        except asyncio.QueueFull:
            DELIVERIES.labels("dropped").inc()
            self.notifier.record("failed", d.notice, d.channel, d.attempt, "this channel's queue is full; not sent")
            return False

    async def _run(self) -> None:
        n = self.notifier
        while True:
            d = await self.queue.get()
            self.busy = True
            try:
                ok, why = await n.send(d.channel, d.notice)
                final = ok or d.attempt >= n.attempts
                n.count(ok, final)
                if ok:
                    n.record("delivered", d.notice, d.channel, d.attempt, why)
                elif final:
                    n.record("failed", d.notice, d.channel, d.attempt, f"gave up after {d.attempt} attempts: {why}")
                else:
                    n.record("failed", d.notice, d.channel, d.attempt, f"will retry: {why}")
                    self._retry(d)
            except Exception:  # a bug here must not kill the lane: keep serving it
                log.exception("alert delivery crashed")
            finally:
                self.busy = False

    def _retry(self, d: Delivery) -> None:
        delay = self.notifier.backoff_s * 2 ** (d.attempt - 1)

        def again() -> None:
            self.retries.discard(handle)
            self.put(Delivery(d.channel, d.notice, d.attempt + 1))

        handle = asyncio.get_running_loop().call_later(delay, again)
        self.retries.add(handle)

    async def close(self) -> None:
        for handle in self.retries:
            handle.cancel()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Notifier:
    """The channels' lanes; sending itself is async I/O or a child process, never work on the loop."""

    def __init__(
        self,
        record: Recorder,
        settings: Callable[[], tuple[str, str]],
        *,
        backoff_s: float = 2.0,
        attempts: int = ATTEMPTS,
        per_minute: int = PER_MINUTE,
        deadline_s: float = delivery.DEADLINE_S,
        answer_cap: int = delivery.ANSWER_CAP,
    ) -> None:
        self.record = record
        self.settings = settings  # () → (language, dashboard_url), read at send time
        self.backoff_s = backoff_s
        self.attempts = attempts
        self.per_minute = per_minute
        self.deadline_s = deadline_s
        self.answer_cap = answer_cap
        self.lanes: dict[str, Lane] = {}
        self._client: httpx.AsyncClient | None = None
        self._senders: asyncio.Semaphore | None = None

    def start(self) -> None:
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(10.0), follow_redirects=False, limits=limits)
        self._senders = asyncio.Semaphore(delivery.MAX_SENDERS)

    async def stop(self) -> None:
        lanes, self.lanes = list(self.lanes.values()), {}
        await asyncio.gather(*(lane.close() for lane in lanes))
        if self._client is not None:
            await self._client.aclose()

    async def forget(self, channel_id: str) -> None:
        """A deleted channel: its lane and what waits in it go."""
        lane = self.lanes.pop(channel_id, None)
        if lane is not None:
            await lane.close()

    @property
    def idle(self) -> bool:
        return all(lane.idle for lane in list(self.lanes.values()))

    def depth(self) -> int:
        return sum(lane.queue.qsize() for lane in list(self.lanes.values()))

    def _lane(self, channel: Channel) -> Lane:
        lane = self.lanes.get(channel.id)
        if lane is None:
            lane = self.lanes[channel.id] = Lane(self, channel)
        else:
            lane.channel = channel  # the same channel re-read from storage (cluster mode)
        return lane

    def enqueue(self, channel: Channel, notice: Notice) -> bool:
        """Queue a new notice on the channel's lane, unless the channel had its `per_minute` already."""
        lane = self._lane(channel)
        if not lane.bucket.take(self.per_minute, time.monotonic()):
            DELIVERIES.labels("suppressed").inc()
            lane.bucket.suppressed += 1
            lane.bucket.last = notice
            return False
        return lane.put(Delivery(channel, notice))

    def report_suppressed(self) -> None:
        """One row per channel for the notices held back since the last report (called after each evaluation)."""
        for lane in list(self.lanes.values()):
            b = lane.bucket
            if b.suppressed and b.last is not None:
                self.record(
                    "failed",
                    b.last,
                    lane.channel,
                    0,
                    f"{b.suppressed} notification(s) not sent: over this channel's cap of {self.per_minute} a minute",
                )
                b.suppressed, b.last = 0, None

    async def send_now(self, channel: Channel, notice: Notice) -> tuple[bool, str]:
        """One attempt, awaited (test-send from the admin API); recorded like any other."""
        ok, why = await self.send(channel, notice)
        self.count(ok, final=True)
        self.record("delivered" if ok else "failed", notice, channel, 1, why)
        return ok, why

    def count(self, ok: bool, final: bool) -> None:
        DELIVERIES.labels("delivered" if ok else "failed" if final else "retried").inc()

    async def send(self, channel: Channel, notice: Notice) -> tuple[bool, str]:
        """One attempt, bounded in time and answer size; the reason never carries a secret of the channel."""
        language, dashboard_url = self.settings()
        try:
            if channel.kind == "webhook":
                assert self._client is not None
                body = json.dumps(webhook_payload(notice, language, dashboard_url), ensure_ascii=False).encode()
                headers = {
                    "content-type": "application/json",
                    "user-agent": "keyrack-alerts",
                    "x-keyrack-event": notice.state,
                }
                if channel.secret:
                    headers["x-keyrack-signature"] = sign(channel.secret, body)
                url = channel.url.removeprefix("webhook+")
                ok, why = await delivery.post_webhook(
                    self._client, url, body, headers, self.deadline_s, self.answer_cap
                )
            else:
                assert self._senders is not None
                title, text = render(notice, language, dashboard_url)
                async with self._senders:
                    ok, why = await delivery.send_apprise(
                        channel.url, title, text, notice.state, self.deadline_s, self.answer_cap
                    )
        except Exception as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
        return ok, scrub(why, channel)[:300]
