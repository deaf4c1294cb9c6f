"""The fake's Live session (demo/fake_live.py), spoken to directly with `websockets` (the SDK's own library):
setup, turns answered with model turns and growing usage, and Google's close codes for a bad key, an unknown model,
an exhausted project and a malformed message."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from tests.conftest import BAD_1, P1_A, P1_B, SCENARIO, Upstream

MODEL = "gemini-2.0-flash-live-001"
PATH = "/ws/google.ai.generativelanguage.{}.GenerativeService.BidiGenerateContent"


def turn(text: str) -> str:
    return json.dumps({"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": True}})


def session(url: str, key: str, model: str = MODEL, texts: list[str] | None = None, **kw: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        uri = url.replace("http://", "ws://") + PATH.format(kw.get("version", "v1beta"))
        async with websockets.connect(uri, additional_headers={"x-goog-api-key": key}) as ws:
            await ws.send(kw.get("setup", json.dumps({"setup": {"model": f"models/{model}"}})))
            out.append(json.loads(await ws.recv()))
            for text in texts or []:
                await ws.send(turn(text))
                while True:
                    msg = json.loads(await ws.recv())
                    out.append(msg)
                    if msg.get("serverContent", {}).get("turnComplete"):
                        break
        return out

    return asyncio.run(run())


def closed_with(url: str, key: str, **kw: Any) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        session(url, key, **kw)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def test_turns_are_answered_with_model_turns_and_usage_that_grows_with_the_context(
    start_upstream: Callable[..., Upstream],
) -> None:
    upstream = start_upstream(SCENARIO)
    msgs = session(upstream.url, P1_A, texts=["Hello", "Tell me more"], version="v1")
    assert msgs[0] == {"setupComplete": {}}
    usages = [m["usageMetadata"] for m in msgs if "usageMetadata" in m]
    assert len(usages) == 2
    assert all(u["totalTokenCount"] == u["promptTokenCount"] + u["responseTokenCount"] for u in usages)
    assert usages[1]["promptTokenCount"] > usages[0]["promptTokenCount"]  # the first turn is context for the second
    texts = [p["text"] for m in msgs for p in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])]
    assert texts and all(texts)
    stats = upstream.stats()
    assert stats["by_operation"]["BidiGenerateContent"] == 1 and stats["by_project"] == {"p1": 1}


def test_refusals_use_googles_close_codes(start_upstream: Callable[..., Upstream]) -> None:
    upstream = start_upstream({**SCENARIO, "limits": {MODEL: {"rpm": 1}}})
    code, reason = closed_with(upstream.url, BAD_1)
    assert code == 1007 and "API key not valid" in reason
    code, reason = closed_with(upstream.url, P1_A, model="gemini-no-such-live")
    assert code == 1008 and "is not found for API version v1beta" in reason
    code, reason = closed_with(upstream.url, P1_A, setup=json.dumps({"hello": 1}))
    assert code == 1007 and "first message must be setup" in reason
    session(upstream.url, P1_A)
    code, reason = closed_with(upstream.url, P1_B)  # the same project: its quota is per project
    assert code == 1011 and reason.startswith("You exceeded your current quota") and len(reason.encode()) <= 123
    assert upstream.stats()["rate_limited"] == {"rpm": 1}
