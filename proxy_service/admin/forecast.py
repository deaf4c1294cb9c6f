"""Admin API: forecasts — quota exhaustion today, demand ahead, and the capacity planner (contract: ARCHITECTURE.md).

The exhaustion view reads the pool's in-memory counters (cheap, on the loop); demand answers come from the engine's
cache, fitted in a worker process on a schedule; the planner is arithmetic over the pool. Nothing here runs on the
request path.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service import known_models
from proxy_service.admin.common import iso, json_body, ok, q_choice
from proxy_service.analytics import preagg_read
from proxy_service.demo.history import latest_history
from proxy_service.errors import ApiError, NotReady
from proxy_service.forecast import demand
from proxy_service.forecast.engine import REFRESH_S, TOTAL
from proxy_service.forecast.exhaustion import SAMPLE_S, quota_view, user_model
from proxy_service.forecast.planner import Targets, plan
from proxy_service.quota import DEFAULT_LIMITS

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

MAX_TARGET = 1e9
MAX_REMOVE = 1000
FIRST_REFRESH_S = 5.0  # after startup: let the rollup settle first


def _reader(gw: Gateway) -> Any:
    async def rows(lo: datetime, hi: datetime) -> list[tuple[datetime, str, int]]:
        rollup = gw.rollup
        if rollup.usable:
            await gw.write(rollup.fold)  # batches appended since the last fold
        if not rollup.usable:  # 90 days of raw rows is too much to scan: wait for the rebuild instead
            done = rollup.progress
            share = f" ({done:.0%} done)" if done is not None else ""
            raise NotReady(f"the rollup is being rebuilt{share}; demand forecasts are fitted after it")
        rows = await gw.read(lambda cur: preagg_read.hourly_calls(cur, lo, hi))
        gw.forecast.demo_until = await gw.read(latest_history)
        real = _real_model(gw)  # a series per model users name; the total ('') keeps every call
        return [r for r in rows if r[1] == TOTAL or real(r[1])]

    return rows


def start_jobs(gw: Gateway) -> None:
    eng = gw.forecast
    gw.jobs.every(lambda: SAMPLE_S, lambda: eng.meter.sample(gw.pool, time.time()), "forecast-rate")

    async def refresh() -> None:
        await eng.refresh(_reader(gw))
        if eng.waiting:  # skipped (the rollup rebuilding): `every` says so once and runs it again soon
            raise NotReady(eng.waiting)

    def interval() -> float:  # soon after startup (the rollup settles first), then every REFRESH_S
        return FIRST_REFRESH_S if eng.fitted_at is None and eng.last_error is None else REFRESH_S

    gw.jobs.every(interval, refresh, "forecast-refresh")

    async def closer() -> None:  # the worker process goes with the gateway
        try:
            await asyncio.Event().wait()
        finally:
            eng.close()

    gw.jobs.every(lambda: 0.0, closer, "forecast-close")


def _real_model(gw: Gateway) -> Callable[[str], bool]:
    """Whether a name is a model as users name it and one that exists: no pseudo quota bucket (`*`, `#count`), and
    known to Keyrack (built in, configured, or served by upstream) — not any name a client asked for."""
    configured = known_models.configured(gw.config.model_limits)
    return lambda model: user_model(model) and known_models.is_known(model, configured)


def _known_models(gw: Gateway) -> set[str]:
    real = _real_model(gw)
    models = set(DEFAULT_LIMITS) | set(gw.config.model_limits) | {m for _s, m in gw.pool.tracker.pairs() if real(m)}
    return models | gw.forecast.known_series()


def _model(gw: Gateway, value: Any, required: bool) -> str:
    if value is None or value == "" or value == "total":
        if required:
            raise ApiError(400, "model is required, e.g. gemini-2.5-flash", "model")
        return TOTAL
    if not isinstance(value, str):
        raise ApiError(400, "model must be a string", "model")
    name = value.removeprefix("models/")
    if name not in _known_models(gw):
        raise ApiError(400, f"unknown model {value[:100]!r}: no traffic, limit or forecast for it", "model")
    return name


def _times(view: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        if view.get(k) is not None:
            view[k] = iso(view[k])


# -- handlers ------------------------------------------------------------------------------------------------------
async def quota(gw: Gateway, _request: Request) -> Response:
    view = quota_view(gw.pool, gw.forecast.meter, time.time(), _real_model(gw))
    for row in (*view["items"], *view["pool"]):
        _times(row, ("exhausts_at", "resets_at"))
    if view["soonest"]:
        _times(view["soonest"], ("exhausts_at",))
    view["now"] = iso(view["now"])
    return ok(view)


async def demand_forecast(gw: Gateway, request: Request) -> Response:
    model = _model(gw, request.query_params.get("model"), required=False)
    granularity = q_choice(request, "granularity", ("hour", "day"), "hour")
    raw = request.query_params.get("horizon_h")
    default = 24 if granularity == "hour" else demand.HORIZON_H
    try:
        horizon = int(raw) if raw not in (None, "") else default
    except ValueError:
        raise ApiError(400, f"horizon_h must be a whole number of hours, not {raw!r}", "horizon_h") from None
    if not 1 <= horizon <= demand.HORIZON_H:
        raise ApiError(400, f"horizon_h must be between 1 and {demand.HORIZON_H} (14 days)", "horizon_h")
    eng = gw.forecast
    if not await eng.ensure_fitted(_reader(gw)):
        # Why there is no forecast yet, for the page to say in the reader's language: the history it needs is being
        # rebuilt, the first fit is running, or the last one failed (retried every REFRESH_S).
        reason = "rollup" if eng.waiting else "failed" if eng.last_error else "fitting"
        pending = {"status": "pending", "model": model or None, "retry_after_s": 30, "error": eng.last_error}
        progress = gw.rollup.progress if reason == "rollup" else None
        return ok({**pending, "waiting": eng.waiting, "reason": reason, "progress": progress, "refresh_s": REFRESH_S})
    view = eng.demand_view(model, horizon, granularity)
    _times(view, ("fitted_at", "backtest_at"))
    return ok(view)


async def refresh_now(gw: Gateway, request: Request) -> Response:
    """Refit every demand series now (shares a refresh already running) and say how long it took; `?backtest=1`
    reruns the calibration and the backtest too (otherwise they run when due, every 6 hours)."""
    full = q_choice(request, "backtest", ("0", "1"), "0") == "1"
    eng = gw.forecast
    await eng.refresh(_reader(gw), full)
    return ok(
        {
            "fitted_at": iso(eng.fitted_at),
            "backtest_at": iso(eng.backtest_at),
            "fit_seconds": eng.fit_seconds,
            "series": len(eng.results),
            "error": eng.last_error,
            "waiting": eng.waiting,
        }
    )


def _target(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not math.isfinite(v)):
        raise ApiError(400, f"{name} must be a number", name)
    if not 0 <= v <= MAX_TARGET:  # compared exactly: an integer past a float's range never becomes one
        raise ApiError(400, f"{name} must be between 0 and {MAX_TARGET:.0e}", name)
    return float(v)


def _limit(body: dict[str, Any], name: str) -> int | None:
    limits = body.get("limits")
    if limits is None:
        return None
    if not isinstance(limits, dict):
        raise ApiError(400, 'limits must be an object such as {"rpm": 10, "rpd": 500}', "limits")
    unknown = set(limits) - {"rpm", "rpd"}
    if unknown:
        raise ApiError(400, f"limits: unknown field {sorted(unknown)[0][:50]!r} (rpm, rpd)", "limits")
    v = limits.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TARGET:
        raise ApiError(400, f"limits.{name} must be a whole number between 0 and {MAX_TARGET:.0e}", f"limits.{name}")
    return v


def _defaults(gw: Gateway, model: str) -> tuple[float | None, str | None, float | None, str | None]:
    """The forecast's peak when there is a forecast, else the current rate and today's projection."""
    res = gw.forecast.results.get(model)
    if res is not None and res.get("status") == "ok":
        yhat = res["yhat"]
        days = [sum(yhat[i : i + 24]) for i in range(0, len(yhat) - 23, 24)]
        return max(yhat) / 60.0, "forecast_peak", max(days), "forecast_peak"
    now = time.time()
    row = next((p for p in quota_view(gw.pool, gw.forecast.meter, now)["pool"] if p["model"] == model), None)
    if row is None:
        return None, None, None, None
    left_min = max(0.0, (row["resets_at"] - now) / 60.0)
    return row["rate_per_min"], "current_rate", row["used"] + row["rate_per_min"] * left_min, "current_projection"


async def plan_capacity(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    unknown = set(body) - {"model", "target_rpm", "target_rpd", "remove_projects", "limits"}
    if unknown:
        name = sorted(unknown)[0][:50]
        raise ApiError(400, f"unknown field {name!r} (model, target_rpm, target_rpd, remove_projects, limits)", name)
    model = _model(gw, body.get("model"), required=True)
    rpm, rpd = _target(body, "target_rpm"), _target(body, "target_rpd")
    limit_rpm, limit_rpd = _limit(body, "rpm"), _limit(body, "rpd")
    remove = body.get("remove_projects") or []
    if not isinstance(remove, list) or not all(isinstance(p, str) for p in remove) or len(remove) > MAX_REMOVE:
        raise ApiError(400, f"remove_projects must be a list of at most {MAX_REMOVE} project names", "remove_projects")
    scopes = {k.scope for k in list(gw.pool.keys.values()) if k.status == "active"}
    missing = [p for p in remove if p not in scopes]
    if missing:
        raise ApiError(400, f"remove_projects: unknown project {missing[0][:64]!r}", "remove_projects")
    d_rpm, s_rpm, d_rpd, s_rpd = _defaults(gw, model)
    targets = Targets(
        rpm if rpm is not None else d_rpm,
        rpd if rpd is not None else d_rpd,
        "given" if rpm is not None else s_rpm,
        "given" if rpd is not None else s_rpd,
    )
    return ok(plan(gw.pool, model, targets, remove, limit_rpm, limit_rpd))


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/forecast/quota", ["GET"], quota),
    ("/forecast/demand", ["GET"], demand_forecast),
    ("/forecast/plan", ["POST"], plan_capacity),
    ("/forecast/refresh", ["POST"], refresh_now),
]
