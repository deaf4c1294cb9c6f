"""The forecast engine: the rate meter's schedule, the demand cache and the fitting worker process.

Demand fits are CPU-bound Python (statsforecast/statsmodels); in a thread of the proxy they would hold the GIL
against the event loop and cost proxy throughput. They run instead in one child process (spawned, so it inherits
no threads or sockets; niced, so the proxy wins a contended core), fed small arrays of hourly counts read from the
1-hour rollup on a worker thread. The cache is replaced whole when a refresh finishes; readers never wait for a
fit unless nothing has been fitted yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from proxy_service.analytics.buckets import floor_time
from proxy_service.errors import NotReady
from proxy_service.forecast import demand
from proxy_service.forecast.exhaustion import RateMeter

log = logging.getLogger("keyrack.forecast")
HISTORY_DAYS = 90
BACKTEST_EVERY_S = 6 * 3600.0  # a 7-day backtest barely moves in 15 minutes: rerun it (and the calibration) 4x a day
REFRESH_S = 900.0  # hourly data: a new point every hour; every 15 minutes keeps the first refresh after an hour close
FIRST_WAIT_S = 60.0  # how long a reader waits for the very first fit before answering "pending"
TOTAL = ""  # the series id of all models together


def _worker_init() -> None:
    with contextlib.suppress(OSError):
        os.nice(10)  # the proxy wins a contended core
    if sys.platform.startswith("linux"):  # die with the proxy, whatever kills it: never an orphan fitting away
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def build_series(rows: list[tuple[datetime, str, int]], end: datetime) -> dict[str, tuple[datetime, list[float]]]:
    """Dense hourly series per model ('' = total) from sparse rollup rows, each from its first hour with calls up to
    `end` (exclusive, an hour boundary)."""
    first: dict[str, datetime] = {}
    counts: dict[str, dict[datetime, int]] = {}
    for bucket, model, n in rows:
        b = floor_time(bucket, 3600)
        if b >= end:
            continue
        counts.setdefault(model, {})[b] = counts.get(model, {}).get(b, 0) + n
        if n > 0 and (model not in first or b < first[model]):
            first[model] = b
    out: dict[str, tuple[datetime, list[float]]] = {}
    for model, start in first.items():
        hours = int((end - start).total_seconds() // 3600)
        c = counts[model]
        out[model] = (start, [float(c.get(start + timedelta(hours=i), 0)) for i in range(hours)])
    return out


class ForecastEngine:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.meter = RateMeter()
        self.results: dict[str, dict[str, Any]] = {}  # series id → forecast_many's answer + its time axis
        self.history: dict[str, tuple[datetime, list[float]]] = {}
        self.fitted_at: float | None = None
        self.fit_seconds: float | None = None
        self.last_error: str | None = None
        self.waiting: str | None = None  # why the last refresh was skipped (its input not ready yet), if it was
        self.backtest_at: float | None = None  # the last full refresh (calibration + backtest + forecast)
        self.demo_until: datetime | None = None  # history before this was backfilled by the demo, not recorded
        self._executor: ProcessPoolExecutor | None = None
        self._running: asyncio.Task[None] | None = None
        self._closed = False

    # -- the worker process --------------------------------------------------------------------------------------
    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
            )
        return self._executor

    def close(self) -> None:
        """At shutdown: the refresh in flight stops (its read would meet a closed store), the worker goes."""
        self._closed = True
        if self._running is not None and not self._running.done():
            self._running.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- refreshing ----------------------------------------------------------------------------------------------
    async def refresh(self, read_rows: Callable[[datetime, datetime], Any], full: bool = False) -> None:
        """Read the history (`read_rows(lo, hi)` awaitable, on a worker thread) and refit every series off-process:
        with calibration and backtest when `full` or due (`BACKTEST_EVERY_S`), else the forecast fit only.
        Concurrent callers share the one refresh in flight."""
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._refresh(read_rows, full))
        await asyncio.shield(self._running)

    async def _refresh(self, read_rows: Callable[[datetime, datetime], Any], full: bool) -> None:
        end = floor_time(datetime.fromtimestamp(self.clock(), UTC).replace(tzinfo=None), 3600)
        started = time.perf_counter()
        try:
            rows = await read_rows(end - timedelta(days=HISTORY_DAYS), end)
            history = build_series(rows, end)
            payload: dict[str, Any] = {model: ys for model, (_start, ys) in history.items()}
            full = full or self.backtest_at is None or self.clock() - self.backtest_at >= BACKTEST_EVERY_S
            known = (
                None
                if full
                else {
                    sid: {k: r[k] for k in ("backtest", "daily_backtest", "scale")}
                    for sid, r in self.results.items()
                    if r.get("status") == "ok"
                }
            )
            if any(len(ys) >= demand.NEED_DAYS * 24 for ys in payload.values()):
                loop = asyncio.get_running_loop()
                fit = functools.partial(demand.forecast_many, payload, demand.HORIZON_H, known)
                results = await loop.run_in_executor(self._pool(), fit)
            else:  # only "not enough history" answers: no fit, no worker process (a fresh install starts none), no numpy
                results = {sid: demand.unready(len(ys)) for sid, ys in payload.items()}
        except NotReady as exc:  # the history is not readable yet (rollup rebuilding): not a failure
            self.waiting = str(exc)
            return
        except Exception as exc:
            if self._closed:  # the proxy is stopping: what failed is the store or worker going away, not a fault
                return
            self.last_error, self.waiting = f"{type(exc).__name__}: {exc}"[:300], None
            log.exception("demand forecast refresh failed")
            return
        if full:
            self.backtest_at = self.clock()
        for res in results.values():
            res["start"] = end  # the first forecast hour (UTC)
        self.results, self.history = results, history
        self.fitted_at, self.fit_seconds, self.last_error = self.clock(), time.perf_counter() - started, None
        self.waiting = None
        log.info("demand forecasts refreshed: %d series in %.1f s", len(results), self.fit_seconds)

    async def ensure_fitted(self, read_rows: Callable[[datetime, datetime], Any]) -> bool:
        """Wait (bounded) for a first fit when there is none yet; True when results exist."""
        if self.fitted_at is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.refresh(read_rows), FIRST_WAIT_S)
        return self.fitted_at is not None

    # -- reading -------------------------------------------------------------------------------------------------
    def known_series(self) -> set[str]:
        return set(self.results)

    def demand_view(self, model: str, horizon_h: int, granularity: str) -> dict[str, Any]:
        """The cached forecast of `model` ('' = total) for the admin API: hourly or daily points with the history."""
        res = self.results.get(model)
        base: dict[str, Any] = {
            "backtest_at": self.backtest_at,
            "model": model or None,
            "granularity": granularity,
            "fitted_at": self.fitted_at,
            "demo_until": self.demo_until,
        }
        if res is None:
            return {**base, "status": "insufficient_history", "need_days": demand.NEED_DAYS, "have_days": 0.0}
        if res["status"] != "ok":
            return {**base, **{k: res[k] for k in ("status", "need_days", "have_days")}}
        start: datetime = res["start"]
        hist_start, ys = self.history.get(model, (start, []))
        if granularity == "hour":
            n = min(horizon_h, len(res["yhat"]))
            points = [
                {"ts": start + timedelta(hours=i), "yhat": res["yhat"][i], "lo": res["lo"][i], "hi": res["hi"][i]}
                for i in range(n)
            ]
            keep = min(len(ys), 7 * 24)
            history = [
                {"ts": hist_start + timedelta(hours=len(ys) - keep + i), "calls": ys[len(ys) - keep + i]}
                for i in range(keep)
            ]
            backtest = res["backtest"]
        else:
            days = max(1, -(-horizon_h // 24))
            points = []
            for d in range(min(days, len(res["yhat"]) // 24)):
                sl = slice(24 * d, 24 * d + 24)
                points.append(
                    {
                        "ts": start + timedelta(days=d),
                        "yhat": sum(res["yhat"][sl]),
                        "lo": sum(res["lo"][sl]),
                        "hi": sum(res["hi"][sl]),
                    }
                )
            history = []
            for d in range(len(ys) // 24):  # whole UTC days ending at the forecast start
                sl = slice(len(ys) - 24 * (d + 1), len(ys) - 24 * d)
                history.append({"ts": start - timedelta(days=d + 1), "calls": sum(ys[sl])})
            history.reverse()
            history = history[-28:]
            backtest = res["daily_backtest"]
        return {
            **base,
            "status": "ok",
            "method": res["method"],
            "have_days": res["have_days"],
            "points": points,
            "history": history,
            "backtest": backtest,
        }
