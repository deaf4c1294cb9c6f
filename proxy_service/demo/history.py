"""Demo history: weeks of seasonal call records written before the demo proxy starts, so that the Forecast page has
something real to fit on first start. Every row is marked `client_id = 'demo-backfill'` (the Forecast page says so).

Shape: a daily cycle (quiet nights, a busy afternoon), quieter weekends, a slow rise and Poisson noise, per model in
the demo traffic's proportions, at the demo's average rate up to a cap (`MAX_ROWS`: the first start must stay quick;
the live demo traffic then runs busier than its history, which the forecast shows as a step). Written straight into the DuckDB file while no proxy
holds it; the proxy's rollup sees the new rows at startup and rebuilds (seconds for a few million rows).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


CLIENT_ID = "demo-backfill"
MAX_ROWS = 300_000  # ≈ 520 calls/h over 24 days: the live demo (2/s by default) is busier, so its hours step up
DAYS = 24  # both seasonalities, a 7-day backtest and 3 days to calibrate its band (see forecast/demand.py)


def hourly_profile(hours: np.ndarray) -> np.ndarray:
    """Relative demand per UTC hour (mean ≈ 1): day/night cycle, weekend dip and a slow rise."""
    import numpy as np

    hour_of_day = (hours % 24).astype(float)
    weekday = ((hours // 24) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    daily = 1.0 + 0.6 * np.sin(2 * np.pi * (hour_of_day - 9.0) / 24.0)
    weekly = np.where(weekday >= 5, 0.65, 1.1)
    trend = 1.0 + 0.01 * (hours - (hours[-1] if len(hours) else 0)) / 24.0  # +1 % a day up to now
    return daily * weekly * np.maximum(trend, 0.2)


def history_table(
    end: datetime, days: int, per_hour: dict[str, float], seed: int = 0, projects: tuple[str, ...] = ("demo",)
) -> pa.Table:
    """Request rows for the `days` before `end` (naive UTC, an hour boundary) at `per_hour` mean calls per model."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    first = int(end.replace(tzinfo=UTC).timestamp() // 3600) - days * 24
    hours = np.arange(first, first + days * 24, dtype=np.int64)
    profile = hourly_profile(hours)
    stamps, model_idx = [], []
    for i, (_model, mean) in enumerate(per_hour.items()):
        counts = rng.poisson(mean * profile)
        starts = np.repeat(hours * 3600, counts)
        stamps.append(starts + rng.uniform(0, 3600, len(starts)))
        model_idx.append(np.full(len(starts), i, dtype=np.int32))
    ts = np.concatenate(stamps) if stamps else np.zeros(0)
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    ok = pa.array(rng.random(n) >= 0.04)
    # Arrow compute and dictionary columns: three million Python strings would take minutes on a busy machine.
    ids = pc.binary_join_element_wise("demo-", pc.cast(pa.array(np.arange(n)), pa.string()), "")
    models = pa.array(list(per_hour), pa.string())
    project_names = pa.array(list(projects), pa.string())
    return pa.table(
        {
            "ts": pa.array((ts[order] * 1e6).astype("datetime64[us]"), pa.timestamp("us")),
            "request_id": ids,
            "client_id": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([CLIENT_ID])),
            "surface": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array(["gemini"])),
            "operation": pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array(["generateContent"])),
            "model": pa.DictionaryArray.from_arrays(np.concatenate(model_idx)[order] if model_idx else [], models),
            "stream": pa.array(np.zeros(n, dtype=bool)),
            "status": pc.cast(pc.if_else(ok, 200, 503), pa.int16()),
            "outcome": pc.if_else(ok, "success", "upstream_error"),
            "attempts": pa.array(np.ones(n, dtype=np.int16)),
            "project": pa.DictionaryArray.from_arrays(
                rng.integers(0, len(projects), n).astype(np.int32), project_names
            ),
            "latency_ms": pa.array(rng.lognormal(math.log(600), 0.5, n)),
            "total_tokens": pa.array(rng.integers(50, 1500, n).astype(np.int32)),
        }
    )


def backfill(
    db_path: Path,
    per_hour: dict[str, float],
    days: int = DAYS,
    now: datetime | None = None,
    projects: tuple[str, ...] = ("demo",),
) -> int:
    """Write the demo history into `db_path` unless it holds some already; returns the rows written."""
    import duckdb

    from proxy_service.store import SCHEMA

    con = duckdb.connect(str(db_path))
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS requests ({SCHEMA['requests']})")
        row = con.execute("SELECT count(*) FROM requests WHERE client_id = ?", [CLIENT_ID]).fetchone()
        if row and row[0]:
            return 0  # a restarted demo keeps its history (and what was recorded since)
        t = now or datetime.now(UTC)
        t = t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t  # naive = UTC, as stored
        end = t.replace(minute=0, second=0, microsecond=0)
        first = con.execute("SELECT min(ts) FROM requests").fetchone()
        if first and first[0] is not None:  # never overlap what was really recorded
            end = min(end, first[0].replace(minute=0, second=0, microsecond=0))
        table = history_table(end, days, per_hour, projects=projects)
        con.register("demo_history", table)
        con.execute("INSERT INTO requests BY NAME SELECT * FROM demo_history")
        con.unregister("demo_history")
        return table.num_rows
    finally:
        con.close()


def demo_rates(rate_per_s: float, weights: dict[str, float], days: int = DAYS) -> dict[str, float]:
    """Mean calls per hour per model: the demo's rate in its model proportions, capped at `MAX_ROWS` rows in all so
    that the first start stays quick (a few seconds) whatever `--rate` is."""
    total = sum(weights.values()) or 1.0
    per_hour = min(rate_per_s * 3600, MAX_ROWS / (days * 24))
    return {m: per_hour * w / total for m, w in weights.items()}
