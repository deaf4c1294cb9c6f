"""How an alert metric's value reads, in one place for the proxy's messages and the dashboard's tables (both must
say 20.9 % for the same 0.2093). A light module with no imports from Keyrack, so the dashboard process can use it
without loading the alert engine."""

from __future__ import annotations

import math


def format_value(v: float | None, unit: str = "", missing: str = "n/a") -> str:
    """A value in its unit's words: a ratio in percent (0.2093 → 20.9 %), milliseconds in ms, an already-percent
    value with %, a factor with ×, US dollars with $, a count in whole numbers; `missing` for no value (None or NaN)."""
    if v is None:
        return missing
    v = float(v)
    if math.isnan(v):
        return missing
    if unit == "ratio":
        return f"{v * 100:.1f} %"
    if unit == "pct":
        return f"{v:.1f} %"
    if unit == "ms":
        return f"{v:,.0f} ms"
    if unit == "x":
        return f"{v:,.2f}×"
    if unit == "usd":
        return f"${v:,.2f}" if abs(v) >= 1 or v == 0 else f"${v:.4g}"
    if math.isinf(v):
        return f"{v}"
    return f"{v:,.0f}" if v == int(v) else f"{v:,.4g}"
