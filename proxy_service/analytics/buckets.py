"""Time buckets: the one flooring rule for the rollup, the analytics queries, retention, alert backtests and the
forecasts. Its own module, free of DuckDB, because the forecast worker process needs it too (and without DuckDB
that process is much smaller, and the proxy's DuckDB library pages are its own to reclaim: heap.py)."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta

_EPOCH = datetime(1970, 1, 1)


def floor_time(t: datetime, grain_s: int) -> datetime:
    """The start of the `grain_s`-second bucket holding `t` (naive UTC), buckets aligned on the epoch as DuckDB's
    time_bucket aligns them for grains that divide a day."""
    s = calendar.timegm(t.timetuple())
    return _EPOCH + timedelta(seconds=s - s % grain_s)
