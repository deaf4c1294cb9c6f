"""SQL page helpers: example queries and result downloads."""

from __future__ import annotations

import io

import pandas as pd

# (i18n key of the title, SQL). The tables are those of docs/ARCHITECTURE.md.
EXAMPLES: list[tuple[str, str]] = [
    (
        "sql.ex.calls_by_model",
        """SELECT model,
       count(*) AS calls,
       round(avg(CASE WHEN outcome = 'success' THEN 1 ELSE 0 END) * 100, 1) AS success_pct,
       round(quantile_cont(latency_ms, 0.95)) AS p95_ms,
       sum(total_tokens) AS tokens
FROM requests
WHERE ts > now() - INTERVAL 24 HOUR
GROUP BY model
ORDER BY calls DESC""",
    ),
    (
        "sql.ex.hourly",
        """SELECT date_trunc('hour', ts) AS hour,
       count(*) AS calls,
       count(*) FILTER (WHERE outcome <> 'success') AS failures,
       round(quantile_cont(latency_ms, 0.95)) AS p95_ms
FROM requests
WHERE ts > now() - INTERVAL 2 DAY
GROUP BY hour
ORDER BY hour""",
    ),
    (
        "sql.ex.keys_429",
        """SELECT key_id, project, count(*) AS rate_limited
FROM attempts
WHERE outcome = 'rate_limited' AND ts >= current_date
GROUP BY key_id, project
ORDER BY rate_limited DESC
LIMIT 20""",
    ),
    (
        "sql.ex.quota_ids",
        """SELECT quota_id, model, count(*) AS hits, round(avg(retry_delay_s), 1) AS avg_retry_s
FROM attempts
WHERE quota_id IS NOT NULL
GROUP BY quota_id, model
ORDER BY hits DESC""",
    ),
    (
        "sql.ex.errors_by_type",
        """SELECT error_type, status, count(*) AS entries, max(ts) AS last_seen
FROM error_logs
WHERE ts > now() - INTERVAL 7 DAY
GROUP BY error_type, status
ORDER BY entries DESC""",
    ),
    (
        "sql.ex.spend",
        """SELECT date_trunc('day', ts) AS day, project, tier, served_model,
       count(*) AS calls,
       round(sum(cost_usd), 4) AS spend_usd,
       round(sum(list_cost_usd), 4) AS list_price_usd
FROM requests
WHERE ts > now() - INTERVAL 30 DAY
GROUP BY ALL
ORDER BY day DESC, spend_usd DESC""",
    ),
    (
        "sql.ex.tokens_by_project",
        """SELECT CAST(ts AS DATE) AS day, coalesce(project, '–') AS project,
       sum(prompt_tokens) AS prompt, sum(output_tokens) AS output, sum(total_tokens) AS total
FROM requests
GROUP BY ALL
ORDER BY day DESC, total DESC
LIMIT 200""",
    ),
    (
        "sql.ex.slowest",
        """SELECT ts, request_id, model, key_id, status, outcome, latency_ms, ttfb_ms, attempts
FROM requests
WHERE ts > now() - INTERVAL 24 HOUR
ORDER BY latency_ms DESC
LIMIT 50""",
    ),
]


def to_csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    return buf.getvalue()


def displayable(df: pd.DataFrame) -> pd.DataFrame:
    """Columns st.dataframe cannot draw (nested lists/maps, bytes) shown as text."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, dict, bytes, tuple))).any():
            out[col] = out[col].map(lambda v: v if v is None else str(v))
    return out
