"""Time on screen: the display time zone from the proxy's config, UTC ↔ wall clock, date ranges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from dashboard.logic import cache


def tz_name() -> str:
    return str(cache.config_values().get("display_timezone") or "UTC")


def tz() -> ZoneInfo:
    try:
        return ZoneInfo(tz_name())
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local(col: pd.Series) -> pd.Series:
    """UTC times → naive wall-clock times in the display zone (what tables and charts show)."""
    if col.empty:
        return col
    if not pd.api.types.is_datetime64_any_dtype(col):
        col = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
    if col.dt.tz is None:
        col = col.dt.tz_localize("UTC")
    return col.dt.tz_convert(tz()).dt.tz_localize(None)


def day_range_utc(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in the display zone, as aware UTC datetimes."""
    zone = tz()
    lo = datetime.combine(start, datetime.min.time(), zone).astimezone(UTC)
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    return lo, hi


def today() -> date:
    return datetime.now(tz()).date()


def date_range(value: Any, default: tuple[date, date]) -> tuple[date, date]:
    """A st.date_input range value (possibly half-picked) → (start, end)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2:
            return value[0], value[1]
        if len(value) == 1:
            return value[0], value[0]
        return default
    if isinstance(value, date):
        return value, value
    return default
