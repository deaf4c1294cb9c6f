"""Admin API: pool-wide quota headroom — for each (scope, model) in recent use or cooling, RPM / RPD / TPM used vs
limit (with the limit's source when the tracker reports it), cooling until when and why, and when capacity frees
up; and a per-model summary. The same numbers as a key's Headroom tab, for the whole pool, tightest first."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import iso, ok, q_int
from proxy_service.analytics import pool_queries
from proxy_service.store import utcnow

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

DIMS = ("rpm", "rpd", "tpm")


def scope_row(gw: Gateway, scope: str, model: str, now: float) -> dict[str, Any]:
    """One (scope, model): the tracker's usage, the live cooldown, and when a call can go through again."""
    usage = dict(gw.pool.tracker.usage(scope, model, now))
    keys = [k for k in gw.pool.keys.values() if k.scope == scope]
    cd = gw.pool.cooldowns.get((scope, model))
    cooling = cd is not None and cd.until > now
    wait = usage.pop("available_in_s", None)
    frees_at = (
        cd.until
        if cooling and cd is not None
        else (now + wait if isinstance(wait, (int, float)) and wait > 0 else None)
    )
    return {
        "scope": scope,
        "project": keys[0].project if keys and keys[0].project else None,
        "model": model,
        "keys": sum(1 for k in keys if k.status == "active"),
        **{f"{d}_{part}": usage.get(f"{d}_{part}") for d in DIMS for part in ("used", "limit", "source")},
        "headroom": 0.0 if cooling else float(usage.get("headroom") or 0.0),
        "cooling_until": iso(cd.until) if cooling and cd is not None else None,
        "cooling_reason": cd.reason if cooling and cd is not None else None,
        "frees_at": iso(frees_at) if frees_at is not None else None,
    }


def model_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: how many scopes can take a call now, the best headroom among them, the earliest time a blocked
    model frees up, and used/limit summed over scopes."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(
            r["model"],
            {
                "model": r["model"],
                "scopes": 0,
                "open_scopes": 0,
                "cooling_scopes": 0,
                "headroom": 0.0,
                "frees_at": None,
                **{f"{d}_{p}": 0 for d in DIMS for p in ("used", "limit")},
            },
        )
        m["scopes"] += 1
        m["cooling_scopes"] += 1 if r["cooling_until"] else 0
        m["open_scopes"] += 1 if r["headroom"] > 0 else 0
        m["headroom"] = max(m["headroom"], r["headroom"])
        for d in DIMS:
            m[f"{d}_used"] += r[f"{d}_used"] or 0
            limit = r[f"{d}_limit"]
            m[f"{d}_limit"] = None if limit is None or m[f"{d}_limit"] is None else m[f"{d}_limit"] + limit
        if r["frees_at"] and (m["frees_at"] is None or r["frees_at"] < m["frees_at"]):
            m["frees_at"] = r["frees_at"]
    return sorted(out.values(), key=lambda m: (m["headroom"], m["model"]))


async def headroom(gw: Gateway, request: Request) -> Response:
    hours = q_int(request, "hours", 24, 1, 24 * 31)
    since = utcnow() - timedelta(hours=hours)
    used = await gw.read(lambda cur: pool_queries.recent_key_models(cur, since))
    now = gw.pool.clock()
    scope_of = {k.id: k.scope for k in gw.pool.keys.values()}
    pairs = {(scope_of[kid], model) for kid, model in used if kid in scope_of}
    pairs |= {(scope, model) for (scope, model), cd in list(gw.pool.cooldowns.items()) if cd.until > now}
    rows = [scope_row(gw, scope, model, now) for scope, model in pairs]
    rows.sort(key=lambda r: (r["headroom"], r["frees_at"] or "", r["model"], r["scope"]))
    return ok({"generated_at": iso(now), "hours": hours, "models": model_rows(rows), "scopes": rows})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/pool/headroom", ["GET"], headroom),
]
