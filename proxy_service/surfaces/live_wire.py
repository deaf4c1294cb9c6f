"""The Live API's wire facts, apart from the relay (surfaces/live.py): the paths, the close frame's limits, the
session's usage as its `usageMetadata` messages state it, and the refusal a session ends with."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from proxy_service.keys import redact

SERVICE = "GenerativeService.BidiGenerateContent"
VERSIONS = ("v1beta", "v1", "v1alpha")
CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason is at most 123 bytes of UTF-8
USAGE_MARK = b'"usageMetadata"'
USAGE_SPAN = 16_384  # a usageMetadata object is far smaller; a longer one is not read
_INT_MAX = 2**31 - 1


class Refused(Exception):
    """A session refused or ended by Keyrack: the close code and reason the client gets, and the row's status."""

    def __init__(self, code: int, reason: str, status: int, outcome: str) -> None:
        super().__init__(reason)
        self.code, self.reason, self.status, self.outcome = code, reason, status, outcome


def close_reason(text: str) -> str:
    """`text` redacted and cut to what a close frame holds, without splitting a UTF-8 character."""
    return redact(text).encode()[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def upstream_ws_url(base: str, version: str) -> str:
    scheme, _, rest = base.rstrip("/").partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/google.ai.generativelanguage.{version}.{SERVICE}"


# (row field, the usageMetadata names that fill it: Live says responseTokenCount where generateContent says
# candidatesTokenCount)
USAGE_FIELDS = (
    ("prompt", ("promptTokenCount",)),
    ("output", ("responseTokenCount", "candidatesTokenCount")),
    ("thinking", ("thoughtsTokenCount",)),
    ("cached", ("cachedContentTokenCount",)),
    ("total", ("totalTokenCount",)),
)


@dataclass
class Usage:
    """The session's token counts, summed over its `usageMetadata` messages (one per model turn)."""

    prompt: int | None = None
    output: int | None = None
    thinking: int | None = None
    cached: int | None = None
    total: int | None = None
    turns: int = 0

    def add(self, meta: dict[str, Any]) -> None:
        for attr, names in USAGE_FIELDS:
            value = next((meta[n] for n in names if n in meta), None)
            if type(value) is int and 0 <= value <= _INT_MAX:  # bool is no count; out-of-range is noise
                setattr(self, attr, min(_INT_MAX, (getattr(self, attr) or 0) + value))

    def read(self, data: str | bytes) -> None:
        """Count a server message: a completed model turn, and its usage. Only the usage object itself is decoded
        (a message with audio can be large; its usage is a few hundred bytes)."""
        raw = data.encode() if isinstance(data, str) else data
        if b'"turnComplete"' in raw:
            self.turns += 1
        at = raw.find(USAGE_MARK)
        if at < 0:
            return
        start = raw.find(b"{", at + len(USAGE_MARK))
        if start < 0:
            return
        try:
            meta, _ = json.JSONDecoder().raw_decode(raw[start : start + USAGE_SPAN].decode("utf-8", "replace"))
        except ValueError:
            return
        if isinstance(meta, dict):
            self.add(meta)


def message_data(message: MutableMapping[str, Any]) -> str | bytes | None:
    """A received ASGI WebSocket message's payload; None when the client went away."""
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    return text if text is not None else (message.get("bytes") or b"")
