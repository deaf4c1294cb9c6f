"""The demo's demand over time, shared by its live traffic (traffic.py) and its history (history.py, via mix.py):
the mean rate, a daily and weekly rhythm, and the batch bursts of one client."""

from __future__ import annotations

import math
import random
import time

# Demo traffic, requests/s averaged over a week (`keyrack demo --rate`): low enough that the history at the same rate
# stays small (the first start writes 24 days of it and rolls them up), with limits tight enough that cooldowns show.
DEFAULT_RATE = 0.25
BURST_SIZE = (10, 20)  # calls in one batch burst of the nightly-reports client
BURST_SPAN_S = (2.0, 5.0)
BURST_KINDS = ("generate", "generate", "stream_sse", "batch_embed")
BURST_MODELS = ("gemini-2.5-flash", "gemini-2.5-flash", "gemini-2.5-flash-lite")
BURST_CLIENT = "nightly-reports"
_BURST_GAP_S = (20.0, 45.0)  # between bursts at 2 requests/s and more
_WEEKLY = (1.1, 0.65)  # weekdays, weekends
WEEKLY_MEAN = (5 * _WEEKLY[0] + 2 * _WEEKLY[1]) / 7


def rhythm(hour: int) -> float:
    """Relative demand in the UTC hour `hour` (hours since the epoch), mean 1 over a week: quiet nights, a busy
    afternoon, quieter weekends."""
    daily = 1.0 + 0.6 * math.sin(2 * math.pi * ((hour % 24) - 9.0) / 24.0)
    weekday = ((hour // 24) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    return daily * (_WEEKLY[1] if weekday >= 5 else _WEEKLY[0]) / WEEKLY_MEAN


def rhythm_now(t: float | None = None) -> float:
    return rhythm(int((time.time() if t is None else t) // 3600))


def _stretch(rate: float) -> float:
    return max(1.0, 2.0 / max(rate, 0.01))  # below 2 requests/s the bursts come proportionally rarer


def burst_gap_s(rate: float, rng: random.Random) -> float:
    """Seconds to the next burst (at the week's mean demand)."""
    return rng.uniform(*_BURST_GAP_S) * _stretch(rate)


def burst_gap_mean_s(rate: float) -> float:
    return sum(_BURST_GAP_S) / 2 * _stretch(rate)


def burst_rate(rate: float) -> float:
    """Mean calls/s the bursts add to `rate`."""
    return (sum(BURST_SIZE) / 2) / burst_gap_mean_s(rate)
