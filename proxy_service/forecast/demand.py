"""Hourly demand forecasts per model (and for the total) with prediction intervals and an honest backtest.

The model: statsforecast's MSTL (multiple seasonal-trend decomposition by Loess) with daily (24 h) and, once two
weeks of history exist, weekly (168 h) seasonality; the deseasonalised rest goes to AutoETS. Why this and not the
alternatives: docs/ARCHITECTURE.md ("Forecasts"), measured by `bench/forecast.py`.

A full refresh makes three fits per series, each on at most the `FIT_DAYS` before its cut-off (a routine refresh
between two full ones makes only the third, reusing the last full run's band factor and backtest — see `known`):
1. calibration — cut off before the backtest's window (with a training part of the same seasonal setup), forecast
   up to the backtest window: how much wider than the model's own 90 % band the band must be to hold 90 % of what
   really came (the band from the ETS part ignores the error of the seasonal estimate, and covers too little);
   where history leaves no room for it (e.g. exactly 3 or 21 days), the backtest says `"calibrated": false`;
2. backtest — cut off one hold-out window (≤ 7 days) before the end, widen by the calibration factor, and score
   MAPE and coverage on the held-out hours: the numbers shown next to every forecast, never fitted on them;
3. final — all history, `HORIZON_H` hours ahead, widened by the factor from both windows.
Daily points are sums of the hourly ones (their band is the sum of the hourly bands: errors within a day move
together more often than they cancel, so this errs wide).

Everything here is pure (arrays in, dicts out) and runs in the forecast worker process (`engine.py`), never in the
proxy's own process: fitting is CPU-bound Python that would hold the GIL against the event loop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


NEED_DAYS = 3
FIT_DAYS = 28  # four weekly cycles: enough for both seasonalities; longer fits cost time, not accuracy (measured)
WEEKLY_FROM_H = 2 * 168  # MSTL needs two full cycles of a period
HORIZON_H = 14 * 24
HOLDOUT_MAX_H = 7 * 24
LEVEL = 90
# statsmodels' STL evaluates its trend and low-pass loess at every point (jump 1; R's stl uses ~10 % of the window);
# every 10th / 5th point, linearly interpolated, cuts a full refresh to a fraction with the same backtest MAPE and
# coverage (bench/forecast.py times refreshes and reports both).
STL_KWARGS = {"trend_jump": 10, "low_pass_jump": 5}
# Additive error only: the deseasonalised series of a quiet model touches zero or dips below, where a multiplicative
# error is ill-posed; halving AutoETS's search saves time again and measured a lower median backtest MAPE
# (bench/forecast.py reports the MAPE).
ETS_MODEL = "AZN"
METHOD = "statsforecast MSTL (24 h, 168 h) + AutoETS"


def holdout_hours(have_h: int) -> int:
    """Held-out window for the backtest: 7 days when there is room for it, down to 1 day with 3 days of history."""
    return int(min(HOLDOUT_MAX_H, 24 * max(1, (have_h // 24 - 2) // 2)))


def calibration_hours(have_h: int, holdout_h: int) -> int:
    """Length of the calibration window before the backtest's (0 = none): whole days, at most the backtest's, leaving
    a training part of the same seasonal setup as the backtest's (≥ 2 weeks when that one is weekly, else ≥ 2 days)."""
    train_h = have_h - holdout_h
    floor = WEEKLY_FROM_H if train_h >= WEEKLY_FROM_H else 48
    hc = min(holdout_h, (train_h - floor) // 24 * 24)
    return hc if hc >= 24 else 0


def unready(have_h: int) -> dict[str, Any]:
    """The answer for a series too short (or too empty) to fit. Needs no numpy: the proxy builds it itself."""
    return {"status": "insufficient_history", "need_days": NEED_DAYS, "have_days": round(have_h / 24, 1)}


def _fit_predict(series: dict[str, np.ndarray], h: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One StatsForecast run per seasonal setup; returns yhat, lo, hi per series id."""
    import numpy as np
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    groups: dict[tuple[int, ...], list[str]] = {}
    for sid, y in series.items():
        groups.setdefault((24, 168) if len(y) >= WEEKLY_FROM_H else (24,), []).append(sid)
    for seasons, ids in groups.items():
        frames = [
            pd.DataFrame({"unique_id": sid, "ds": np.arange(len(series[sid]), dtype=np.int64), "y": series[sid]})
            for sid in ids
        ]
        df = pd.concat(frames, ignore_index=True)
        model = MSTL(
            season_length=list(seasons), trend_forecaster=AutoETS(model=ETS_MODEL), stl_kwargs=dict(STL_KWARGS)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = StatsForecast(models=[model], freq=1).forecast(df=df, h=h, level=[LEVEL])
        for sid, part in fc.groupby("unique_id", sort=False):
            out[str(sid)] = (
                part["MSTL"].to_numpy(float),
                part[f"MSTL-lo-{LEVEL}"].to_numpy(float),
                part[f"MSTL-hi-{LEVEL}"].to_numpy(float),
            )
    return out


def _needed_scale(actual: np.ndarray, yhat: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per point, the factor by which the band around yhat must grow to contain the actual value."""
    import numpy as np

    up = np.maximum(hi - yhat, 1e-9)
    down = np.maximum(yhat - lo, 1e-9)
    return np.where(actual >= yhat, (actual - yhat) / up, (yhat - actual) / down)


def _widen(yhat: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    return yhat - scale * (yhat - lo), yhat + scale * (hi - yhat)


def score(actual: np.ndarray, yhat: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, float | None]:
    """MAPE over the hours with traffic (a zero hour has no percentage error) and the share inside the band."""
    import numpy as np

    nz = actual > 0
    mape = float(np.mean(np.abs(actual[nz] - yhat[nz]) / actual[nz])) if nz.any() else None
    coverage = float(np.mean((actual >= lo) & (actual <= hi))) if len(actual) else None
    return {"mape": mape, "coverage": coverage}


def _tail(y: np.ndarray, end: int) -> np.ndarray:
    return y[max(0, end - FIT_DAYS * 24) : end]


def _clip(a: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.maximum(a, 0.0)


def forecast_many(
    series: Mapping[str, list[float] | np.ndarray],
    horizon_h: int = HORIZON_H,
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Forecast each hourly series (oldest first, ending with the last complete hour).

    Returns per id either `{"status": "ok", "yhat", "lo", "hi", "backtest", "daily_backtest", "have_days",
    "scale"}` (lists of `horizon_h` floats) or `{"status": "insufficient_history", "need_days", "have_days"}`.
    `known`: per id, the `backtest`, `daily_backtest` and `scale` of an earlier full run; those series get the final
    fit only (one fit instead of three), their band widened by the known scale and their backtest carried over.
    """
    import numpy as np

    ys = {sid: np.asarray(y, dtype=float) for sid, y in series.items()}
    out: dict[str, dict[str, Any]] = {}
    ready: dict[str, np.ndarray] = {}
    for sid, y in ys.items():
        if len(y) < NEED_DAYS * 24 or not np.any(y > 0):
            out[sid] = unready(len(y))
        else:
            ready[sid] = y
    if not ready:
        return out
    final = _fit_predict({sid: _tail(y, len(y)) for sid, y in ready.items()}, horizon_h)  # the forecast itself
    for sid in [s for s in ready if s in (known or {})]:
        k, y = (known or {})[sid], ready.pop(sid)
        fy, flo, fhi = final[sid]
        flo, fhi = _widen(fy, flo, fhi, float(k["scale"]))
        out[sid] = {
            **_result(y, fy, flo, fhi),
            "backtest": k["backtest"],
            "daily_backtest": k["daily_backtest"],
            "scale": k["scale"],
        }
    hb = {sid: holdout_hours(len(y)) for sid, y in ready.items()}
    # 1. calibration windows, just before the backtest's, fitted with the backtest's seasonal setup (a factor measured on
    #    a daily-only fit says nothing about a daily + weekly one): as long as the backtest window where room allows.
    needed: dict[str, list[np.ndarray]] = {sid: [] for sid in ready}
    cal_groups: dict[int, dict[str, np.ndarray]] = {}
    for sid, y in ready.items():
        hc = calibration_hours(len(y), hb[sid])
        if hc:
            cal_groups.setdefault(hc, {})[sid] = _tail(y, len(y) - hb[sid] - hc)
    for hc, group in cal_groups.items():
        for sid, (yhat, lo, hi) in _fit_predict(group, hc).items():
            end = len(ready[sid]) - hb[sid]
            needed[sid].append(_needed_scale(ready[sid][end - hc : end], yhat, lo, hi))
    # 2. backtest on the last window, widened by the calibration factor only
    by_h: dict[int, dict[str, np.ndarray]] = {}
    for sid, y in ready.items():
        by_h.setdefault(hb[sid], {})[sid] = _tail(y, len(y) - hb[sid])
    back: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for h, group in by_h.items():
        back.update(_fit_predict(group, h))

    for sid, y in ready.items():
        h = hb[sid]
        scale = _scale(needed[sid])
        actual = y[len(y) - h :]
        yhat, lo, hi = back[sid]
        lo, hi = _widen(yhat, lo, hi, scale)
        yhat, lo, hi = _clip(yhat), _clip(lo), _clip(hi)
        backtest = {
            **score(actual, yhat, lo, hi),
            "holdout_h": h,
            "level": LEVEL / 100,
            "scale": round(scale, 3),
            "calibrated": bool(needed[sid]),
        }
        days = h // 24
        daily = score(
            actual.reshape(days, 24).sum(1),
            yhat.reshape(days, 24).sum(1),
            lo.reshape(days, 24).sum(1),
            hi.reshape(days, 24).sum(1),
        )
        final_scale = _scale([*needed[sid], _needed_scale(actual, *back[sid])])
        fy, flo, fhi = final[sid]
        flo, fhi = _widen(fy, flo, fhi, final_scale)
        out[sid] = {
            **_result(y, fy, flo, fhi),
            "backtest": backtest,
            "daily_backtest": {**daily, "holdout_days": days},
            "scale": round(final_scale, 3),
        }
    return out


def _result(y: np.ndarray, fy: np.ndarray, flo: np.ndarray, fhi: np.ndarray) -> dict[str, Any]:
    return {
        "status": "ok",
        "have_days": round(len(y) / 24, 1),
        "yhat": _clip(fy).tolist(),
        "lo": _clip(flo).tolist(),
        "hi": _clip(fhi).tolist(),
        "method": METHOD if len(y) >= WEEKLY_FROM_H else "statsforecast MSTL (24 h) + AutoETS",
    }


def _scale(needed: list[np.ndarray]) -> float:
    """The smallest widening (≥ 1) that puts LEVEL % of the given points inside the band."""
    import numpy as np

    if not needed:
        return 1.0
    allv = np.concatenate(needed)
    allv = allv[np.isfinite(allv)]
    if not len(allv):
        return 1.0
    q = float(np.quantile(allv, LEVEL / 100))
    return max(1.0, q) if math.isfinite(q) else 1.0
