"""Log-bucket latency histograms, shared by the stats rollup and the explore cube.

A value v falls in bucket lb = ceil(ln(v) / ln(GAMMA)); reading a bucket back as 2·GAMMA^lb/(GAMMA+1) is within
±2 % (GAMMA = 1.04) of every value in it, so a nearest-rank percentile read from the histogram is within ±2 % of the
exact one, and histograms add up exactly across buckets, dimensions and time.
"""

from __future__ import annotations

GAMMA = 1.04


def lb_sql(col: str) -> str:
    """The bucket of a numeric SQL expression (values ≤ 0.01 share the lowest bucket)."""
    return f"CAST(ceil(ln(greatest({col}, 0.01)) / ln({GAMMA})) AS SMALLINT)"
