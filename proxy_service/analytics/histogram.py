"""Log-bucket latency histograms, shared by every reader of the pre-aggregates and of raw rows.

A value v falls in bucket lb = ceil(ln(v) / ln(GAMMA)); reading a bucket back as 2·GAMMA^lb/(GAMMA+1) is within
±2 % (GAMMA = 1.04) of every value in it, so a nearest-rank percentile read from the histogram is within ±2 % of the
exact one, and histograms add up exactly across buckets, dimensions and time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

GAMMA = 1.04


def lb_sql(col: str) -> str:
    """The bucket of a numeric SQL expression (values ≤ 0.01 share the lowest bucket)."""
    return f"CAST(ceil(ln(greatest({col}, 0.01)) / ln({GAMMA})) AS SMALLINT)"


def _quantiles(hist: pa.Table, qs: tuple[float, ...]) -> tuple[Any, list[Any]]:
    """Nearest-rank quantiles per group of a histogram table sorted by (gk, lb), gk identifying the group: the
    first row of each group and, per q, the values (vectorised with numpy)."""
    import numpy as np

    gk = hist.column("gk").to_numpy()  # equal neighbours are the same group
    lb = hist.column("lb").to_numpy()
    n = hist.column("n").to_numpy()
    starts = np.concatenate(([0], np.flatnonzero(gk[1:] != gk[:-1]) + 1))
    cum = np.cumsum(n)
    before = cum[starts] - n[starts]
    totals = np.add.reduceat(n, starts)
    values = []
    for q in qs:
        # The first histogram cell whose running count reaches q·total, within each group (cum is monotonic).
        idx = np.searchsorted(cum, before + np.maximum(q * totals, 1e-9) - 1e-9, side="left")
        values.append(2 * np.power(GAMMA, lb[idx]) / (GAMMA + 1))
    return starts, values


def percentiles(hist: pa.Table, qs: tuple[float, ...]) -> dict[tuple[Any, Any], tuple[float, ...]]:
    """Nearest-rank quantiles per (b, g) of a histogram table (columns b, g, gk = a hash of (b, g), lb, n) sorted by
    (gk, lb): the one read-back of p50/p95 for the stats, Explore and alert backtests."""
    import pyarrow as pa

    if hist.num_rows == 0:
        return {}
    starts, values = _quantiles(hist, qs)
    first = pa.array(starts)
    bs, gs = hist.column("b").take(first).to_pylist(), hist.column("g").take(first).to_pylist()
    return {(bs[k], gs[k]): tuple(float(v[k]) for v in values) for k in range(len(starts))}


def percentiles_by_key(hist: pa.Table, qs: tuple[float, ...]) -> dict[int, tuple[float, ...]]:
    """Like `percentiles`, per group key `gk` alone (a histogram grouped by a hash of its group, not by the group's
    text: grouping 10M rows by two text columns costs about twice as much as by one integer)."""
    import pyarrow as pa

    if hist.num_rows == 0:
        return {}
    starts, values = _quantiles(hist, qs)
    gks = hist.column("gk").take(pa.array(starts)).to_pylist()
    return {gks[k]: tuple(float(v[k]) for v in values) for k in range(len(starts))}
