"""Which model a call goes to: aliases (client-facing names for Gemini models) and fallback chains.

An alias is resolved before the first attempt (`aliased`); a fallback only when the pool has no headroom left for
the model asked (`next_fallback`: the relay asks after Keyrack's own 429, or after every key it tried answered 429),
never after a client error, and only for a client that opted in (the relay checks `fallback_enabled`, the global
setting until client records carry their own flag). Either way the call is pointed at the other model (`retarget`): the native
surface names the model in its path, the OpenAI surface in its JSON body, so only those are rewritten, and only
for the rare call that changes model. The answer then carries `x-keyrack-served-model` and the request row both
names (`model` asked, `served_model`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from starlette.responses import Response

SERVED_MODEL_HEADER = "x-keyrack-served-model"


class Routed(Protocol):
    """What routing reads and rewrites of a call (`relay.Call`)."""

    model: str | None
    asked: str | None
    path: str
    body: bytes
    project: str | None

    @property
    def surface(self) -> str: ...


def retarget(call: Routed, model: str) -> None:
    """Point `call` at `model`: its quota bucket, and the path or body that names the model upstream."""
    old = call.model
    if call.asked is None:
        call.asked = old
    call.model = model
    marker = f"/models/{old}"
    head, found, tail = call.path.partition(marker)
    if found and (not tail or tail[0] == ":"):
        call.path = f"{head}/models/{model}{tail}"
    if call.surface == "openai" and call.body:
        try:
            doc = json.loads(call.body)
        except ValueError:
            return
        if isinstance(doc, dict) and "model" in doc:
            doc["model"] = model
            call.body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def aliased(call: Routed, aliases: Mapping[str, str]) -> None:
    """Resolve an alias the client named (one step: an alias never names another alias)."""
    target = aliases.get(call.model) if call.model else None
    if target is not None and target != call.model:
        retarget(call, target)


def next_fallback(call: Routed, chains: Mapping[str, Sequence[str]], tried: set[str]) -> str | None:
    """The next model of the asked model's chain after the ones tried, or None (no chain; a call bound to a
    project's resource, which only that model's project can serve). The caller checks the client opted in."""
    if call.project is not None or not call.model:
        return None
    asked = call.asked or call.model
    for model in chains.get(asked) or chains.get(call.model) or ():
        if model not in tried and model != asked:
            return model
    return None


def with_aliases(body: bytes, aliases: dict[str, str], openai: bool) -> bytes:
    """A models list (native `{"models": [...]}` or OpenAI `{"data": [...]}`) with each alias listed as a model
    of its own, described as its target; the body unchanged when it is not such a list."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        return body
    field = "data" if openai else "models"
    items = doc.get(field) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return body
    for name, target in sorted(aliases.items()):
        if openai:
            items.append({"id": name, "object": "model", "owned_by": "keyrack", "target": target})
            continue
        # The target's own entry under the alias's name, so SDKs see the same methods and limits.
        base = next((i for i in items if isinstance(i, dict) and i.get("name") == f"models/{target}"), {})
        items.append({**base, "name": f"models/{name}", "displayName": f"{name} → {target}", "baseModelId": target})
    return json.dumps(doc, ensure_ascii=False).encode()


def listed(resp: Response, aliases: Mapping[str, str], openai: bool) -> Response:
    """A models-list answer with the aliases in it (an error answer, or none configured: as it is)."""
    if not aliases or resp.status_code != 200 or not isinstance(resp.body, bytes):
        return resp
    headers = {k: v for k, v in resp.headers.items() if k != "content-length"}
    return Response(with_aliases(resp.body, dict(aliases), openai), 200, headers=headers)
