"""Admin API: client records (create, list, details, change, revoke, rotate). Issue 27's contract.

A token is shown once, in the answer that made it (create, rotate); every other answer carries none, and no hash
either. A record is never deleted: DELETE revokes it (refused at once here, on the other replicas as soon as the
bus tells them), and its history stays in the events under its id.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import json_body, ok, parse_time
from proxy_service.analytics import preagg_read
from proxy_service.clients import CLASSES, LIMITS, Client, new_token
from proxy_service.errors import ApiError
from proxy_service.settings import is_model_name
from proxy_service.store import utcnow

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

FIELDS = ("label", "owner", "class", "models", "limits", "expires_at", "fallback")
MAX_LABEL = 100
MAX_MODELS = 200
MAX_LIMIT = 10**12  # beyond any real quota: a larger number is a typo, refused rather than taken as "no limit"
MAX_GRACE_S = 30 * 86400
MAX_CLIENTS = 100_000


def _bad(message: str, field: str, status: int = 422) -> ApiError:
    return ApiError(status, message, field, reason="invalid_value")


def _fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The record's fields from a create or change body, validated one by one (the first bad one is named)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}", unknown[0])
    out: dict[str, Any] = {}
    if creating and "label" not in body:
        raise _bad("label is required: a name for the client, e.g. 'nightly-batch'", "label", 400)
    if "label" in body:
        label = body["label"]
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL or not label.isprintable():
            raise _bad(f"label must be a non-empty printable text of at most {MAX_LABEL} characters", "label")
        out["label"] = label.strip()
    if "owner" in body:
        owner = body["owner"]
        if owner is not None and (not isinstance(owner, str) or len(owner) > MAX_LABEL or not owner.isprintable()):
            raise _bad(f"owner must be a text of at most {MAX_LABEL} characters, or null", "owner")
        out["owner"] = owner.strip() or None if isinstance(owner, str) else None
    if "class" in body:
        cls = body["class"]
        if cls not in CLASSES:
            raise _bad(f"class must be one of {', '.join(CLASSES)}, not {str(cls)[:40]!r}", "class")
        out["cls"] = cls
    if "models" in body:
        models = body["models"]
        if models is not None:
            if not isinstance(models, list) or len(models) > MAX_MODELS:
                raise _bad(f"models must be a list of at most {MAX_MODELS} model ids, or null (every model)", "models")
            for m in models:
                if not isinstance(m, str) or not is_model_name(m.removeprefix("models/")):
                    raise _bad(f"models: {str(m)[:80]!r} is not a model id such as gemini-2.5-flash", "models")
            models = frozenset(m.removeprefix("models/") for m in models)
        out["models"] = models
    if "limits" in body:
        limits = body["limits"]
        if limits is None:
            limits = {}
        if not isinstance(limits, dict):
            raise _bad(f"limits must be an object with any of {', '.join(LIMITS)}", "limits")
        bad = sorted(set(limits) - set(LIMITS))
        if bad:
            raise ApiError(400, f"unknown limit {bad[0]!r}: the limits are {', '.join(LIMITS)}", f"limits.{bad[0]}")
        clean: dict[str, int] = {}
        for name, value in limits.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
                raise _bad(
                    f"limits.{name} must be a whole number from 0 to {MAX_LIMIT}, or null (no limit)", f"limits.{name}"
                )
            clean[name] = value
        out["limits"] = clean
    if "fallback" in body:
        value = body["fallback"]
        if value is not None and not isinstance(value, bool):
            raise _bad("fallback must be true, false or null (the fallback_enabled setting decides)", "fallback")
        out["fallback"] = value
    if "expires_at" in body:
        value = body["expires_at"]
        if value is None:
            out["expires_at"] = None
        else:
            epoch = parse_time(value, "expires_at").replace(tzinfo=UTC).timestamp()  # naive UTC
            if epoch <= time.time():
                raise _bad(f"expires_at {value!r} is in the past: a client must expire in the future", "expires_at")
            out["expires_at"] = epoch
    return out


def _find(gw: Gateway, request: Request) -> Client:
    cid = request.path_params["id"]
    client = gw.clients.by_id.get(cid)
    if client is None:
        raise ApiError(404, f"no client with id {cid[:40]!r}", reason="not_found")
    return client


async def create(gw: Gateway, request: Request) -> Response:
    fields = _fields(await json_body(request), creating=True)
    if len(gw.clients.by_id) >= MAX_CLIENTS:
        raise ApiError(409, f"this Keyrack already has {MAX_CLIENTS} clients: revoke some first")
    token = new_token()
    client = Client(id="c_" + uuid.uuid4().hex[:12], token_hash=gw.clients.hash(token), **fields)
    await gw.save_clients([client])  # stored before it is usable or shown
    gw.clients.put(client)
    return ok({**gw.clients.view(client), "token": token}, 201)


async def list_clients(gw: Gateway, _request: Request) -> Response:
    """Every record with its usage against its limits, then the client ids seen in the last 90 days without one
    (open mode's callers, tokens removed long ago), each with its calls of those 90 days and its label."""
    since = utcnow() - timedelta(days=90)
    seen = dict(await gw.read(lambda cur: preagg_read.client_calls(cur, since)))
    labels = gw.config.client_labels
    records = sorted(gw.clients.by_id.values(), key=lambda c: c.created_at)
    items = [{**gw.clients.view(c), "client_id": c.id, "calls_90d": seen.get(c.id, 0)} for c in records]
    for cid in sorted((set(seen) | set(labels)) - set(gw.clients.by_id)):
        items.append(
            {"id": cid, "client_id": cid, "label": labels.get(cid), "calls_90d": seen.get(cid, 0), "source": "events"}
        )
    return ok({"items": items})


async def details(gw: Gateway, request: Request) -> Response:
    return ok(gw.clients.view(_find(gw, request)))


async def change(gw: Gateway, request: Request) -> Response:
    client = _find(gw, request)
    fields = _fields(await json_body(request), creating=False)
    if client.revoked_at is not None:
        raise ApiError(409, f"client {client.id} is revoked: make a new one", reason="revoked")
    updated = replace(client, **fields)
    await gw.save_clients([updated])
    gw.clients.put(updated)
    return ok(gw.clients.view(updated))


async def revoke(gw: Gateway, request: Request) -> Response:
    client = _find(gw, request)
    if client.revoked_at is None:
        updated = replace(client, revoked_at=time.time())
        await gw.save_clients([updated])
        gw.clients.put(updated)
        client = updated
    return ok(gw.clients.view(client))


async def rotate(gw: Gateway, request: Request) -> Response:
    client = _find(gw, request)
    raw = await request.body()
    body = await json_body(request) if raw.strip() else {}
    unknown = sorted(set(body) - {"grace_s"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}: rotate takes grace_s", unknown[0])
    grace = body.get("grace_s", 0)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= MAX_GRACE_S:
        raise _bad(f"grace_s must be a number of seconds from 0 to {MAX_GRACE_S} (30 days)", "grace_s")
    if client.revoked_at is not None:
        raise ApiError(409, f"client {client.id} is revoked: make a new one", reason="revoked")
    token = new_token()
    now = time.time()
    updated = replace(
        client,
        token_hash=gw.clients.hash(token),
        old_hash=client.token_hash if grace > 0 else None,
        old_until=now + grace if grace > 0 else None,
        source="api",  # a rotated config token is the API's now: the config's token no longer opens it
    )
    # Without grace the old token stops at once on every replica, not when each re-reads the record.
    await gw.save_clients([updated], retired=[client.token_hash] if grace <= 0 else [])
    gw.clients.put(updated)
    view = gw.clients.view(updated)
    return ok({**view, "token": token, "rotated_at": utcnow()})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/clients", ["POST"], create),
    ("/clients", ["GET"], list_clients),
    ("/clients/{id}", ["GET"], details),
    ("/clients/{id}", ["PATCH"], change),
    ("/clients/{id}", ["DELETE"], revoke),
    ("/clients/{id}/rotate", ["POST"], rotate),
]
