"""The alert history's bounds (`alert_events`): rows older than `retention_alert_history_days` go, and so do the
oldest rows past `MAX_ROWS`, applied by the retention job (app.py) on the writer thread like the other tables'.

The per-channel notification cap and the series cap per rule bound how fast rows can come; these bound how many
stay, whatever happened in between.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

MAX_ROWS = 100_000


def prune(cur: duckdb.DuckDBPyConnection, cutoff: datetime, max_rows: int = MAX_ROWS) -> int:
    """Delete rows older than `cutoff`, then the oldest beyond `max_rows`. Returns rows deleted."""
    row = cur.execute("DELETE FROM alert_events WHERE ts < ?", [cutoff]).fetchone()
    deleted = int(row[0]) if row else 0
    count = cur.execute("SELECT count(*) FROM alert_events").fetchone()
    over = (int(count[0]) if count else 0) - max_rows
    if over > 0:
        # The ts of the row that stays oldest: everything before it goes (ties at that instant may keep a few more).
        edge = cur.execute("SELECT ts FROM alert_events ORDER BY ts DESC LIMIT 1 OFFSET ?", [max_rows - 1]).fetchone()
        if edge is not None:
            row = cur.execute("DELETE FROM alert_events WHERE ts < ?", [edge[0]]).fetchone()
            deleted += int(row[0]) if row else 0
    return deleted
