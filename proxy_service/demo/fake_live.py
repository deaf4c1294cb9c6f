"""The fake's Live API: the `BidiGenerateContent` WebSocket session as the Gemini Developer API plays it.

Wire (as Google serves it and the SDKs speak it): the client opens
`/ws/google.ai.generativelanguage.{v1beta|v1alpha}.GenerativeService.BidiGenerateContent` with its key in
`x-goog-api-key` (or `?key=`), sends `{"setup": {"model": "models/…", …}}` first and gets `{"setupComplete": {}}`;
then each `clientContent` whose `turnComplete` is true (or a `realtimeInput` carrying `text`) is answered with
`serverContent.modelTurn` chunks, a `generationComplete`, and a `turnComplete` message carrying that turn's
`usageMetadata` (`promptTokenCount` counts the conversation so far, as the session's context grows). Server
messages go out as binary frames, as Google sends them. Keys are checked when the setup arrives, as Google does:
a refusal closes the socket with Google's codes — 1007 for a bad key or a malformed message, 1008 for an unknown
model, 1011 for an exhausted quota (the reason is the quota message, cut to the 123 bytes a close reason holds).

This module knows nothing of keys, projects or quotas: `fake_upstream` hands it a `gate` that decides them (so the
Live session obeys the same per-project rules as every other call of the fake) and raises `Refused` otherwise.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

LIVE_MODELS = frozenset(
    {
        "gemini-2.0-flash-live-001",
        "gemini-live-2.5-flash-preview",
        "gemini-2.5-flash-native-audio-preview-09-2025",
        "gemini-2.5-flash-live-preview",
    }
)
PATH_PREFIX = "/ws/google.ai.generativelanguage."
SERVICE = "GenerativeService.BidiGenerateContent"
VERSIONS = ("v1beta", "v1", "v1alpha")
CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason is at most 123 bytes of UTF-8
_SENTENCES = (
    "Here is a short answer to your turn.",
    "The live session keeps the whole conversation as context.",
    "Each turn is answered as soon as it is complete.",
    "Audio and text share one session.",
    "Ask a follow-up whenever you like.",
)


class Refused(Exception):
    """A refusal the way Live says it: a close code and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# gate(key, model) -> the caller's project (counted), or raises Refused
Gate = Callable[[str | None, str], str]


def close_reason(text: str) -> str:
    """`text` cut to what a close frame carries, without splitting a UTF-8 character."""
    return text.encode()[:CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4)


def _get(d: dict[str, Any], camel: str, snake: str) -> Any:
    return d[camel] if camel in d else d.get(snake)


def _texts(contents: Any) -> list[str]:
    out: list[str] = []
    items = contents if isinstance(contents, list) else [contents]
    for item in items:
        parts = item.get("parts") if isinstance(item, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return out


class LiveSession:
    """One session's state: the model, the context so far, the turn being gathered."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.context_chars = 0
        self.pending: list[str] = []
        self.turns = 0

    def answer(self, texts: list[str]) -> list[dict[str, Any]]:
        """The server messages that answer a completed turn, the last one with the turn's usage."""
        prompt = "\n".join(texts)
        self.context_chars += len(prompt)
        self.turns += 1
        h = zlib.crc32(prompt.encode())
        chosen = [_SENTENCES[(h + i) % len(_SENTENCES)] for i in range(1 + h % 3)]
        text = " ".join(chosen)
        prompt_tokens, out_tokens = _tokens(self.context_chars), _tokens(len(text))
        self.context_chars += len(text)  # the answer becomes context for the next turn
        messages: list[dict[str, Any]] = [
            {"serverContent": {"modelTurn": {"parts": [{"text": piece}]}}}
            for piece in (chosen[0], *(" " + s for s in chosen[1:]))
        ]
        messages.append({"serverContent": {"generationComplete": True}})
        messages.append(
            {
                "serverContent": {"turnComplete": True},
                "usageMetadata": {
                    "promptTokenCount": prompt_tokens,
                    "responseTokenCount": out_tokens,
                    "totalTokenCount": prompt_tokens + out_tokens,
                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
                    "responseTokensDetails": [{"modality": "TEXT", "tokenCount": out_tokens}],
                },
            }
        )
        return messages

    def on_message(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer to one client message after setup; Refused for what Google would refuse."""
        content = _get(msg, "clientContent", "client_content")
        realtime = _get(msg, "realtimeInput", "realtime_input")
        if isinstance(content, dict):
            self.pending.extend(_texts(content.get("turns") or []))
            if _get(content, "turnComplete", "turn_complete"):
                texts, self.pending = self.pending, []
                return self.answer(texts)
            return []
        if isinstance(realtime, dict):
            text = realtime.get("text")
            return self.answer([text]) if isinstance(text, str) and text else []
        if _get(msg, "toolResponse", "tool_response") is not None:
            return []
        names = ", ".join(sorted(msg)) or "(none)"
        raise Refused(1007, f"Invalid JSON payload received. Unknown name {names!r}: expected clientContent.")


def _model_of(setup: Any, version: str) -> str:
    model = setup.get("model") if isinstance(setup, dict) else None
    if not isinstance(model, str) or not model:
        raise Refused(1007, "Invalid JSON payload received. setup.model is required.")
    mid = model.removeprefix("models/")
    if mid not in LIVE_MODELS:
        raise Refused(
            1008,
            f"models/{mid} is not found for API version {version}, or is not supported for bidiGenerateContent.",
        )
    return mid


def _key(ws: WebSocket) -> str | None:
    return ws.headers.get("x-goog-api-key") or ws.query_params.get("key") or None


async def _send(ws: WebSocket, msg: dict[str, Any]) -> None:
    await ws.send_bytes(json.dumps(msg).encode())


def endpoint(gate: Gate) -> Callable[[WebSocket], Any]:
    """The ASGI WebSocket endpoint for `/ws/{service}` (fake_upstream mounts it)."""

    async def serve(ws: WebSocket) -> None:
        service: str = ws.path_params["service"]
        version = next((v for v in VERSIONS if service == f"google.ai.generativelanguage.{v}.{SERVICE}"), None)
        if version is None:
            await ws.close(1008)  # not a Live path Google serves (before accept: an HTTP 403)
            return
        await ws.accept()
        try:
            first = json.loads(_text(await ws.receive()))
            if not isinstance(first, dict) or "setup" not in first:
                raise Refused(1007, "Invalid JSON payload received. The first message must be setup.")
            model = _model_of(first["setup"], version)
            gate(_key(ws), model)
            session = LiveSession(model)
            await _send(ws, {"setupComplete": {}})
            while True:
                raw = _text(await ws.receive())
                msg = json.loads(raw)
                if not isinstance(msg, dict):
                    raise Refused(1007, "Invalid JSON payload received. Root element must be a message.")
                for out in session.on_message(msg):
                    await _send(ws, out)
        except Refused as exc:
            await ws.close(exc.code, close_reason(exc.reason))
        except ValueError:
            await ws.close(1007, "Invalid JSON payload received.")
        except (WebSocketDisconnect, _Closed):
            return

    return serve


class _Closed(Exception):
    """The client closed the socket."""


def _text(message: Any) -> str:
    if message["type"] == "websocket.disconnect":
        raise _Closed
    data = message.get("text")
    if data is None:
        data = (message.get("bytes") or b"").decode("utf-8", "replace")
    return str(data)
