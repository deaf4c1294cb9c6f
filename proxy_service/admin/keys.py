"""Admin API: upstream keys (list, add, delete, verify, reset, enable, disable, batch, details, reveal).

The pool is the source of truth (keys live in memory; `gw.persist_keys()` queues the changed rows for the keys
table). Listing never carries a secret; `reveal` is the one way to read one, and each reveal is written to the
error logs as an `audit` entry (key id and client address, never the secret).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import iso, json_body, ok, q_int, q_time
from proxy_service.analytics import queries
from proxy_service.errors import ApiError
from proxy_service.events import ErrorEvent
from proxy_service.keys import PROJECT_RULE, Finding, KeySpec, extract_keys, key_id, valid_project
from proxy_service.pool import Cooldown, Key, shown_status

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.admin")
STATUSES = ("active", "cooling", "invalid", "disabled")
ACTIONS = ("verify", "reset", "enable", "disable", "delete")
SORTS = (
    "id",
    "label",
    "project",
    "status",
    "masked",
    "created_at",
    "last_used_at",
    "last_checked_at",
    "consecutive_failures",
    "total_failures",
    "requests",
    "successes",
    "last_error",
)
MAX_BATCH = 10_000
VERIFY_CONCURRENCY = 8
_DONE = {"reset": "reset", "enable": "enabled", "disable": "disabled"}


# -- views ---------------------------------------------------------------------------------------------------------
def key_view(key: Key, cooling: list[tuple[str, Cooldown]]) -> dict[str, Any]:
    return {
        "id": key.id,
        "label": key.label,
        "project": key.project,
        "status": shown_status(key, bool(cooling)),
        "masked": key.masked,
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "last_checked_at": iso(key.last_checked_at),
        "consecutive_failures": key.consecutive_failures,
        "total_failures": key.total_failures,
        "requests": key.requests,
        "successes": key.successes,
        "last_error": key.last_error,
        "disabled_reason": key.disabled_reason,
        "cooling": [
            {"model": m, "scope": key.scope, "until": iso(cd.until), "reason": cd.reason, "quota_id": cd.quota_id}
            for m, cd in sorted(cooling, key=lambda x: x[0])
        ],
    }


def _view(gw: Gateway, key: Key) -> dict[str, Any]:
    return key_view(key, gw.pool.cooldowns_of(key))


def _key(gw: Gateway, key_id: str) -> Key:
    key = gw.pool.keys.get(key_id)
    if key is None:
        raise ApiError(404, f"unknown key id {key_id[:64]!r}", "id")
    return key


def _matches(key: Key, q: str) -> bool:
    q = q.lower()
    return (
        q in (key.label or "").lower()
        or q in key.id.lower()
        or (len(q) <= 4 and q in key.secret[-4:].lower())
        or q == key.masked.lower()
    )


# -- list / add ----------------------------------------------------------------------------------------------------
async def list_keys(gw: Gateway, request: Request) -> Response:
    p = request.query_params
    statuses = {s.strip() for s in (p.get("status") or "").split(",") if s.strip()}
    bad = statuses - set(STATUSES)
    if bad:
        raise ApiError(400, f"status must be among {', '.join(STATUSES)} (got {sorted(bad)[0]!r})", "status")
    project, q = p.get("project") or None, (p.get("q") or "").strip()
    min_failures = q_int(request, "min_failures", 0, 0, 1_000_000_000)
    created_from, created_to = q_time(request, "created_from"), q_time(request, "created_to")
    sort = p.get("sort") or "created_at"
    if sort not in SORTS:
        raise ApiError(400, f"sort must be one of {', '.join(SORTS)} (got {sort!r})", "sort")
    order = p.get("order") or "asc"
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order must be asc or desc (got {order!r})", "order")
    page = q_int(request, "page", 1, 1, 1_000_000)
    page_size = q_int(request, "page_size", 50, 1, 1000)

    now = time.time()
    cooling = gw.pool.cooling_by_scope(now)
    lo = created_from.replace(tzinfo=UTC).timestamp() if created_from else None
    hi = created_to.replace(tzinfo=UTC).timestamp() if created_to else None
    views: list[tuple[Key, dict[str, Any]]] = []
    for key in list(gw.pool.keys.values()):
        view = key_view(key, cooling.get(key.scope, []))
        if statuses and view["status"] not in statuses:
            continue
        if (project and key.project != project) or (q and not _matches(key, q)):
            continue
        if key.total_failures < min_failures:
            continue
        if (lo is not None and key.created_at < lo) or (hi is not None and key.created_at >= hi):
            continue
        views.append((key, view))

    def sort_key(item: tuple[Key, dict[str, Any]]) -> tuple[bool, Any]:
        key, view = item
        value = view[sort] if sort in ("status", "masked") else getattr(key, sort)
        return (value is None) != (order == "desc"), value if value is not None else 0

    views.sort(key=sort_key, reverse=order == "desc")
    start = (page - 1) * page_size
    items = [v for _, v in views[start : start + page_size]]
    return ok({"items": items, "total": len(views), "page": page, "page_size": page_size, "counts": gw.pool.counts()})


async def add_keys(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    text, project, label = body.get("text"), body.get("project"), body.get("label")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "text is required: paste one or more keys (any text; keys are extracted)", "text")
    if project is not None and (not isinstance(project, str) or not valid_project(project)):
        raise ApiError(400, f"project must be {PROJECT_RULE}", "project")
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise ApiError(400, "label must be a string of at most 200 characters", "label")
    found = extract_keys(text, project or None)
    specs, warnings = [], [asdict(f) for f in found.repeated]
    for s in found.keys:
        kid = key_id(s.secret)
        have = gw.pool.keys.get(kid)
        if have is None:
            specs.append(KeySpec(s.secret, s.project, label or None))
        elif s.project and have.project != s.project:
            where = f"project {have.project}" if have.project else "no project"
            msg = f"already in the pool under {where}; left there (delete it first to move it to {s.project})"
            warnings.append(asdict(Finding(found.lines[s.secret], "other_project", msg, key_id=kid)))
        else:
            warnings.append(asdict(Finding(found.lines[s.secret], "duplicate", "already in the pool", key_id=kid)))
    gw.require_storage()
    added, _ = gw.pool.add(specs)
    gw.persist_keys()
    if added:
        log.info("admin added %d key(s): %s", len(added), ", ".join(added[:20]))
    rejected = [asdict(f) for f in found.rejected]
    duplicates = sum(w["code"] in ("duplicate", "other_project") for w in warnings)
    # `rejected` / `duplicates` are counts; `rejections` / `warnings` say which line and why, with a `code` the
    # dashboard translates (not_a_key, bad_length, bad_characters, duplicate, duplicate_in_text, other_project).
    return ok(
        {
            "added": len(added),
            "duplicates": duplicates,
            "rejected": len(rejected),
            "added_ids": added,
            "rejections": rejected,
            "warnings": sorted(warnings, key=lambda w: w["line"]),
        }
    )


# -- single-key actions -------------------------------------------------------------------------------------------
async def _act(gw: Gateway, key: Key, action: str) -> dict[str, Any]:
    """Apply one action; returns {"id", "ok", "message", ...}. Does not persist."""
    if action == "verify":
        result = await gw.verify(key)
        return {
            "id": key.id,
            "ok": bool(result["ok"]),
            "message": result["message"],
            "status": result.get("status"),
            "latency_ms": round(result.get("latency_ms") or 0, 1),
        }
    if action == "delete":
        gw.pool.remove(key.id)
        return {"id": key.id, "ok": True, "message": "deleted"}
    getattr(gw.pool, action)(key)
    return {"id": key.id, "ok": True, "message": _DONE[action]}


def _action_endpoint(action: str) -> Any:
    async def handler(gw: Gateway, request: Request) -> Response:
        key = _key(gw, request.path_params["id"])
        result = await _act(gw, key, action)
        gw.persist_keys()
        log.info("admin %s key %s: %s", action, key.id, "ok" if result["ok"] else "failed")
        if action != "delete":
            result["key"] = _view(gw, key)
        return ok(result)

    return handler


async def batch(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    action, ids = body.get("action"), body.get("ids")
    if action not in ACTIONS:
        raise ApiError(400, f"action must be one of {', '.join(ACTIONS)} (got {action!r})", "action")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "ids must be a list of key ids", "ids")
    if len(ids) > MAX_BATCH:
        raise ApiError(400, f"at most {MAX_BATCH} ids per batch", "ids")
    ids = list(dict.fromkeys(ids))
    slots = asyncio.Semaphore(VERIFY_CONCURRENCY)

    async def one(key_id: str) -> dict[str, Any]:
        key = gw.pool.keys.get(key_id)
        if key is None:
            return {"id": key_id, "ok": False, "message": "unknown key id"}
        async with slots:
            try:
                return await _act(gw, key, str(action))
            except Exception as exc:  # one key's trouble must not fail the batch
                log.exception("batch %s failed for %s", action, key_id)
                return {"id": key_id, "ok": False, "message": f"{type(exc).__name__}"}

    results = list(await asyncio.gather(*(one(i) for i in ids)))
    gw.persist_keys()
    good = sum(1 for r in results if r["ok"])
    log.info("admin batch %s on %d key(s): %d ok", action, len(ids), good)
    return ok({"action": action, "results": results, "ok": good, "failed": len(results) - good})


async def delete_key(gw: Gateway, request: Request) -> Response:
    return await _action_endpoint("delete")(gw, request)


async def details(gw: Gateway, request: Request) -> Response:
    key = _key(gw, request.path_params["id"])
    view = _view(gw, key)

    def load(cur: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return queries.usage_by_model(cur, key.id), queries.recent_calls(cur, key.id, 20)

    usage, recent = await gw.read(load)
    now = time.time()
    models = [u["model"] for u in usage if u["model"]] + [c["model"] for c in view["cooling"]]
    headroom = [
        {"model": m, "scope": key.scope, **gw.pool.tracker.usage(key.scope, m, now)} for m in dict.fromkeys(models)
    ]
    for r in recent:  # the request's own id is enough to find it; the error text is capped
        if r.get("error_message"):
            r["error_message"] = r["error_message"][:500]
    return ok(
        {
            "key": view,
            "usage_by_model": usage,
            "recent_calls": recent,
            "cooldowns": view["cooling"],
            "headroom": headroom,
        }
    )


async def reveal(gw: Gateway, request: Request) -> Response:
    key = _key(gw, request.path_params["id"])
    client = request.client.host if request.client else "unknown"
    gw.writer.record(
        ErrorEvent(
            id=uuid.uuid4().hex[:16],
            ts=datetime.now(UTC).replace(tzinfo=None),
            request_id=None,
            key_id=key.id,
            model=None,
            status=None,
            error_type="audit",
            message=f"secret of key {key.id} revealed through the admin API to {client}",
        )
    )
    log.warning("admin revealed the secret of key %s to %s", key.id, client)
    return Response(
        ok({"id": key.id, "secret": key.secret}).body,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/keys", ["GET"], list_keys),
    ("/keys", ["POST"], add_keys),
    ("/keys/batch", ["POST"], batch),
    ("/keys/{id}", ["GET"], details),
    ("/keys/{id}", ["DELETE"], delete_key),
    ("/keys/{id}/verify", ["POST"], _action_endpoint("verify")),
    ("/keys/{id}/reset", ["POST"], _action_endpoint("reset")),
    ("/keys/{id}/enable", ["POST"], _action_endpoint("enable")),
    ("/keys/{id}/disable", ["POST"], _action_endpoint("disable")),
    ("/keys/{id}/reveal", ["POST"], reveal),
]
