"""Demo history: the 24 days before the demo's first start, written once so that every page (Trends, Explore, the
error log, the Forecast) has a past that the live demo plausibly continues.

The history is drawn from `mix.py`, the description the live traffic generator follows: the same clients (their
client ids, so their labels), keys and projects, models, operations and surfaces, the same bad requests, upstream
faults per attempt (retried on another key, as the relay does), `exhausted` refusals when a model's demand is over
the pool's capacity, and the same mean rate with its daily and weekly rhythm. So it has `requests`, `attempts` and
`error_logs` rows in the live demo's proportions.

It is written into the DuckDB file while no proxy holds it, before the first start only (a restarted demo keeps its
history and what was recorded since, and its rollup stays valid); the proxy's rollup folds it in once, in the
background. History rows are marked by their request id (`demo-…`; live ids are hex), which the Forecast page uses
to say where recorded data begins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy_service.demo import mix, traffic
from proxy_service.demo.rhythm import rhythm

if TYPE_CHECKING:
    import duckdb
    import numpy as np
    import pyarrow as pa


ID_PREFIX = "demo-"
MAX_CALLS = 600_000  # the first start stays quick whatever `--rate` is (a faster demo then outruns its history)
DAYS = 24  # both seasonalities, a 7-day backtest and 3 days to calibrate its band (see forecast/demand.py)
_OVERLOADED = "The model is overloaded. Please try again later."  # the fake upstream's own messages
_INTERNAL = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
# Attempt faults, in mix.RETRYABLE order then an upstream 429: (status or None for transport, attempt outcome,
# Google's error status, the error log's message, the call's status when every attempt ended so).
FAULTS: tuple[tuple[int | None, str, str | None, str, int], ...] = (
    (503, "server_error", "UNAVAILABLE", _OVERLOADED, 503),
    (500, "server_error", "INTERNAL", _INTERNAL, 500),
    (None, "timeout", None, "attempt {n}: ReadTimeout: no answer within the request timeout", 504),
    (None, "connection_error", None, "attempt {n}: RemoteProtocolError: Server disconnected", 502),
    (429, "rate_limited", "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan.", 429),
)
_LATENCY_MS = {"streamGenerateContent": 2500.0, "generateContent": 900.0, "chat.completions": 1100.0}
_FAULT_LATENCY_MS = (130.0, 130.0, 6000.0, 40.0, 110.0)
_GENERATIVE = ("generateContent", "streamGenerateContent", "chat.completions")


@dataclass
class Pool:
    """Who calls through what: client ids per habit name (traffic.HABITS) and the valid keys' (key_id, project)."""

    clients: dict[str, str]
    keys: list[tuple[str, str]]


def pool_of(api_keys: str, invalid: list[str], clients: dict[str, str]) -> Pool:
    """The history's pool from the demo's KEYRACK_API_KEYS (without its revoked keys) and client ids by habit."""
    from proxy_service.keys import key_id, parse_key_list

    keys = [(key_id(k.secret), k.project or "") for k in parse_key_list(api_keys) if k.secret not in invalid]
    return Pool(clients, keys)


def _spend(
    models: Sequence[str | None],
    model_idx: np.ndarray,
    projects: Cat,
    prompt: np.ndarray,
    output: np.ndarray,
    served: np.ndarray,
) -> dict[str, Any]:
    """The rows' served model, tier and costs as the relay records them (`prices.PriceBook` on the shipped prices,
    the demo's `DEMO_TIERS`); the history's prompts are far below the long-prompt tier."""
    import numpy as np

    from proxy_service.demo.scenario import DEMO_TIERS
    from proxy_service.prices import PriceBook, default_prices

    book = PriceBook(default_prices())
    rates = [book.price(m) for m in models]
    r_in = np.array([p.input_per_mtok / 1e6 if p else np.nan for p in rates])[model_idx]
    r_out = np.array([p.output_per_mtok / 1e6 if p else np.nan for p in rates])[model_idx]
    listed = np.where(served, prompt * r_in + output * r_out, np.nan)
    paid = np.array([DEMO_TIERS.get(p or "") == "paid" for p in [*projects.values, None]])[projects.codes]  # -1: none
    tier = np.where(served, paid.astype(np.int32), -1)
    return {
        "served_model": Cat(np.where(served, model_idx, -1), list(models)),
        "tier": Cat(tier, ["free", "paid"]),
        "list_cost_usd": listed,
        "cost_usd": np.where(paid, listed, np.where(np.isnan(listed), np.nan, 0.0)),
    }


def hourly_profile(hours: np.ndarray) -> np.ndarray:
    """Relative demand per UTC hour: `rhythm.rhythm` (mean 1) and a slow rise (+1 % a day) up to the last hour."""
    import numpy as np

    if not len(hours):
        return np.zeros(0)
    week = np.array([rhythm(int(h)) for h in hours])
    return week * np.maximum(1.0 + 0.01 * (hours - hours[-1]) / 24.0, 0.2)


class Cat:
    """A string column as codes into its few values (-1 or a None value: NULL): millions of rows stay arrays."""

    def __init__(self, codes: np.ndarray, values: Sequence[str | None]) -> None:
        self.codes, self.values = codes, list(values)

    def __getitem__(self, index: Any) -> Cat:
        return Cat(self.codes[index], self.values)

    def concat(self, *others: Cat) -> Cat:
        import numpy as np

        values = list(self.values)
        parts = [self.codes]
        for o in others:
            offset = len(values)
            values += o.values
            parts.append(np.where(o.codes >= 0, o.codes + offset, -1))
        return Cat(np.concatenate(parts), values)


def history_tables(end: datetime, days: int, rate: float, pool: Pool, seed: int = 0) -> dict[str, pa.Table]:
    """`requests`, `attempts` and `error_logs` rows for the `days` before `end` (naive UTC, an hour boundary), at
    the live demo's mean rate for `--rate` `rate` (capped at MAX_CALLS calls in all)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = mix.shapes(rate)
    first = int(end.replace(tzinfo=UTC).timestamp() // 3600) - days * 24
    hours = np.arange(first, first + days * 24, dtype=np.int64)
    expected = min(mix.calls_per_hour(rate), MAX_CALLS / max(len(hours), 1)) * hourly_profile(hours)
    counts = rng.poisson(expected)
    n = int(counts.sum())
    hour_of = np.repeat(np.arange(len(hours)), counts)
    ts = hours[hour_of] * 3600 + rng.uniform(0, 3600, n)
    order = np.argsort(ts, kind="stable")
    ts, hour_of = ts[order], hour_of[order]
    share = np.array([s.share for s in shapes])
    pick = rng.choice(len(shapes), n, p=share / share.sum())

    def attr(get: Any, dtype: Any) -> np.ndarray:
        return np.array([get(s) for s in shapes], dtype=dtype)[pick]

    def cat(get: Any) -> Cat:
        values = sorted({get(s) for s in shapes}, key=str)
        return Cat(attr(lambda s: values.index(get(s)), np.int32), values)

    models: list[str | None] = [*sorted({s.model for s in shapes if s.model})]
    clients = [pool.clients.get(h.name) for h in traffic.HABITS]
    c: dict[str, Any] = {
        "ts": ts,
        "model_idx": attr(lambda s: models.index(s.model) if s.model else -1, np.int32),
        "stream": attr(lambda s: s.stream, bool),
        "refused": attr(lambda s: s.refused[0] if s.refused else 0, np.int16),
        "slow": attr(lambda s: _LATENCY_MS.get(s.operation, 160.0), float),
        "generative": attr(lambda s: s.operation in _GENERATIVE, bool),
        "op": cat(lambda s: s.operation),
        "surface": cat(lambda s: s.surface),
        "client": Cat(attr(lambda s: _habit_index(s.client), np.int32), clients),
        "models": models,
    }
    c["upstream_no"] = rng.random(n) < attr(lambda s: s.upstream_refuses, float)
    c["upstream_no_status"] = attr(lambda s: s.upstream_status, np.int16)

    # Over capacity, the pool refuses the share above it `exhausted` (per model and hour: it follows the rhythm).
    known = [m for m in models if m]
    model_share = np.array([sum(s.share for s in shapes if s.model == m) for m in known])
    per_min = expected[:, None] * model_share[None, :] / 60.0
    profile = expected / max(mix.calls_per_hour(rate), 1e-9)  # the hours' relative demand
    over = np.array(
        [
            [mix.exhausted_share(m, d, mix.bursts_per_min(m, rate, r)) for m, d in zip(known, row, strict=True)]
            for row, r in zip(per_min, profile, strict=True)
        ]
    )
    load = per_min / np.array([mix.capacity_per_min(m) or 1e9 for m in known])[None, :]
    has_model = c["model_idx"] >= 0
    mi = np.where(has_model, c["model_idx"], 0)
    c["exhausted"] = has_model & (c["refused"] == 0) & (rng.random(n) < np.where(has_model, over[hour_of, mi], 0.0))
    c["forwarded"] = (c["refused"] == 0) & ~c["exhausted"]
    rate_limited = np.where(has_model, np.minimum(0.05, 0.02 * load[hour_of, mi]), 0.0)
    return _tables(rng, c, rate_limited, pool)


def _habit_index(name: str | None) -> int:
    names = [h.name for h in traffic.HABITS]
    return names.index(name) if name in names else -1


def _tables(rng: np.random.Generator, c: dict[str, Any], rate_limited: np.ndarray, pool: Pool) -> dict[str, pa.Table]:
    import numpy as np

    n = len(c["ts"])
    top = mix.ATTEMPTS_MAX
    # Each attempt fails with the scenario's fault shares (and a 429 as its model nears capacity) and is retried on
    # the next key; Google refusing the request as the client's fault ends the call after one attempt.
    plain, streamed = mix.fault_share(False), mix.fault_share(True)
    p = np.stack([np.where(c["stream"], streamed[k], plain[k]) for k in mix.RETRYABLE] + [rate_limited], axis=1)
    edges = np.cumsum(p, axis=1)
    draws = rng.random((n, top))
    fault = np.full((n, top), -1, np.int8)  # -1: the attempt went through
    for j in range(len(FAULTS) - 1, -1, -1):
        fault[draws < edges[:, j : j + 1]] = j
    fault[c["upstream_no"]] = -1
    failed = np.cumprod(fault >= 0, axis=1).sum(axis=1)  # failed attempts before the first that went through
    fwd = c["forwarded"]
    n_att = np.where(fwd, np.minimum(failed + 1, top), 0)
    gave_up = fwd & (failed >= top)
    broken = fwd & ~gave_up & c["stream"] & (rng.random(n) < mix.FAULTS.get("midstream", 0.0))

    att_call = np.repeat(np.arange(n), n_att)
    starts = np.cumsum(n_att) - n_att
    att_no = np.arange(len(att_call)) - starts[att_call]
    att_fault = np.where(att_no < failed[att_call], fault[att_call, np.minimum(att_no, top - 1)], -1)
    first_key = rng.integers(0, len(pool.keys), n)
    att_key = (first_key[att_call] + att_no) % len(pool.keys)
    ok_ms = c["slow"][att_call] * rng.lognormal(0, 0.45, len(att_call))
    fault_ms = np.array(_FAULT_LATENCY_MS)[np.maximum(att_fault, 0)] * rng.lognormal(0, 0.2, len(att_call))
    att_ms = np.where(att_fault < 0, ok_ms, fault_ms)
    cum = np.cumsum(att_ms)
    before = np.concatenate([[0.0], cum])[starts]  # the attempts' time of the calls before
    att_ts = c["ts"][att_call] + (cum - before[att_call]) / 1000.0
    call_ms = np.where(fwd, np.bincount(att_call, att_ms, n) + rng.uniform(1, 4, n), rng.uniform(0.5, 3, n))
    last_key = np.where(n_att > 0, att_key[np.maximum(starts + n_att - 1, 0)] if len(att_key) else 0, -1)
    last_fault = np.maximum(fault[:, top - 1], 0)

    # The calls' answers, as codes into OUTCOMES / ERROR_STATUSES.
    outcomes = ["success", "client_error", "unauthorized", "exhausted", "upstream_error", "stream_error"]
    statuses = ["bad_request", "unauthorized", "exhausted", "NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE"]
    statuses += [f[2] for f in FAULTS if f[2] and f[2] not in statuses]
    status = np.full(n, 200, np.int16)
    outcome = np.zeros(n, np.int32)
    error_status = np.full(n, -1, np.int32)
    refused = c["refused"]
    no = fwd & c["upstream_no"]
    status[refused > 0] = refused[refused > 0]
    status[c["exhausted"]] = 429
    status[no] = c["upstream_no_status"][no]
    status[gave_up] = np.array([f[4] for f in FAULTS], np.int16)[last_fault[gave_up]]
    for mask, o, e in (
        (refused == 400, "client_error", "bad_request"),
        (refused == 401, "unauthorized", "unauthorized"),
        (c["exhausted"], "exhausted", "exhausted"),
        (no & (status == 404), "client_error", "NOT_FOUND"),
        (no & (status == 400), "client_error", "INVALID_ARGUMENT"),
        (broken, "stream_error", "UNAVAILABLE"),
    ):
        outcome[mask], error_status[mask] = outcomes.index(o), statuses.index(e)
    outcome[gave_up] = outcomes.index("upstream_error")
    fault_error = np.array([statuses.index(f[2]) if f[2] else -1 for f in FAULTS])
    error_status[gave_up] = fault_error[last_fault[gave_up]]

    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pc.binary_join_element_wise(ID_PREFIX, pc.cast(pa.array(np.arange(n)), pa.string()), "")
    models = Cat(c["model_idx"], c["models"])
    keys, projects = Cat(last_key, [k for k, _ in pool.keys]), Cat(last_key, [p for _, p in pool.keys])
    prompt = np.where(fwd, rng.integers(8, 120, n), 0)
    output = np.where((outcome == 0) & c["generative"], rng.integers(20, 600, n), 0)
    requests = {
        "ts": c["ts"],
        "request_id": ids,
        "client_id": c["client"],
        "surface": c["surface"],
        "operation": c["op"],
        "model": models,
        "stream": c["stream"],
        "status": status,
        "outcome": Cat(outcome, list(outcomes)),
        "attempts": n_att.astype(np.int16),
        "key_id": keys,
        "project": projects,
        "latency_ms": call_ms,
        "ttfb_ms": np.where(c["stream"] & fwd, call_ms * rng.uniform(0.1, 0.3, n), np.nan),
        "prompt_tokens": prompt.astype(np.int32),
        "output_tokens": output.astype(np.int32),
        "total_tokens": (prompt + output).astype(np.int32),
        "error_status": Cat(error_status, statuses),
        **_spend(c["models"], c["model_idx"], projects, prompt, output, fwd & (outcome == 0)),
    }
    att_ok = att_fault < 0
    no_att = c["upstream_no"][att_call]
    fault_status = np.array([f[0] or 0 for f in FAULTS], np.int16)[np.maximum(att_fault, 0)]
    att_status = np.where(att_ok, np.where(no_att, c["upstream_no_status"][att_call], 200), fault_status)
    att_outcomes = [f[1] for f in FAULTS] + ["ok", "client_error"]
    att_outcome = np.where(att_ok, np.where(no_att, len(FAULTS) + 1, len(FAULTS)), att_fault).astype(np.int32)
    att_keys = Cat(att_key, [k for k, _ in pool.keys])
    attempts = {
        "ts": att_ts,
        "request_id": pc.take(ids, pa.array(att_call)),
        "attempt": (att_no + 1).astype(np.int16),
        "key_id": att_keys,
        "project": Cat(att_key, [p for _, p in pool.keys]),
        "model": models[att_call],
        "upstream_status": np.where(att_status == 0, np.nan, att_status),
        "error_status": Cat(np.where(att_ok, -1, fault_error[np.maximum(att_fault, 0)]), statuses),
        "latency_ms": att_ms,
        "outcome": Cat(att_outcome, att_outcomes),
    }
    # The error log: every failed attempt, every exhausted refusal, every broken stream (as the relay records them).
    fa = np.flatnonzero(~att_ok)
    ex = np.flatnonzero(c["exhausted"])
    br = np.flatnonzero(broken)
    fault_messages = [f[3].format(n=a + 1) for f in FAULTS for a in range(top)]
    waits = list(range(2, 42))
    cooling = [
        f"Every key for {m} is cooling down after Google answered 429 (per-minute quota "
        f"GenerateRequestsPerMinutePerProjectPerModel-FreeTier); retry in {w}s."
        for m in c["models"]
        for w in waits
    ]
    messages = Cat(att_fault[fa] * top + att_no[fa], fault_messages).concat(
        Cat(c["model_idx"][ex] * len(waits) + rng.integers(0, len(waits), len(ex)), cooling),
        Cat(np.zeros(len(br), np.int32), [f"upstream error inside the stream: 503 {_OVERLOADED}"]),
    )
    calls = np.concatenate([att_call[fa], ex, br])
    nothing = np.full(len(ex), -1)
    kinds = [f[1] for f in FAULTS] + ["exhausted", "stream_error"]
    errors = {
        "id": pc.binary_join_element_wise(f"{ID_PREFIX}e", pc.cast(pa.array(np.arange(len(calls))), pa.string()), ""),
        "ts": np.concatenate([att_ts[fa], c["ts"][ex], c["ts"][br] + call_ms[br] / 1000.0]),
        "request_id": pc.take(ids, pa.array(calls)),
        "key_id": Cat(np.concatenate([att_key[fa], nothing, last_key[br]]), att_keys.values),
        "model": models[calls],
        "status": np.concatenate([attempts["upstream_status"][fa], np.full(len(ex), 429.0), np.full(len(br), 503.0)]),
        "error_type": Cat(np.concatenate([att_fault[fa], np.full(len(ex), 5), np.full(len(br), 6)]), kinds),
        "message": messages,
    }
    return {"requests": _arrow(requests), "attempts": _arrow(attempts), "error_logs": _arrow(errors)}


_INT_COLUMNS = {"upstream_status", "status"}  # NaN-for-NULL floats that the store keeps as SMALLINT


def _arrow(columns: dict[str, Any]) -> pa.Table:
    """An Arrow table (timestamps from epoch seconds; Cat columns dictionary-encoded; NaN is NULL)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[str, pa.Array] = {}
    for name, values in columns.items():
        if name == "ts":
            out[name] = pa.array((np.asarray(values) * 1e6).astype("datetime64[us]"), pa.timestamp("us"))
        elif isinstance(values, Cat):
            valid = np.array([v is not None for v in values.values] + [False])
            codes = values.codes.astype(np.int32)
            mask = ~valid[np.where(codes >= 0, codes, len(values.values))]
            dictionary = pa.array([v or "" for v in values.values], pa.string())
            indices = pa.array(np.where(mask, 0, codes), pa.int32(), mask=mask)
            # Decoded here: DuckDB reads plain strings about twice as fast as dictionary-encoded ones.
            out[name] = pc.take(dictionary, indices) if len(dictionary) else pa.nulls(len(codes), pa.string())
        elif isinstance(values, np.ndarray) and name in _INT_COLUMNS:
            out[name] = pa.array(np.nan_to_num(values).astype(np.int16), pa.int16(), mask=np.isnan(values))
        elif isinstance(values, np.ndarray) and values.dtype.kind == "f":
            out[name] = pa.array(values, mask=np.isnan(values))
        elif isinstance(values, np.ndarray):
            out[name] = pa.array(values)
        else:
            out[name] = values
    return pa.table(out)


def backfill(
    db_path: Path, rate: float, pool: Pool, days: int = DAYS, now: datetime | None = None, seed: int = 0
) -> int:
    """Write the demo history into `db_path` unless it has some already; returns the calls written."""
    import duckdb

    from proxy_service.store import SCHEMA, derived_of

    con = duckdb.connect(str(db_path))
    try:
        for table in ("requests", "attempts", "error_logs"):
            con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({SCHEMA[table]})")
        if latest_history(con) is not None:
            return 0  # a restarted demo keeps its history (and what was recorded since)
        t = now or datetime.now(UTC)
        t = t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t  # naive = UTC, as stored
        end = t.replace(minute=0, second=0, microsecond=0)
        first = con.execute("SELECT min(ts) FROM requests").fetchone()
        if first and first[0] is not None:  # never overlap what was really recorded
            end = min(end, first[0].replace(minute=0, second=0, microsecond=0))
        tables = history_tables(end, days, rate, pool, seed)
        con.execute("BEGIN TRANSACTION")
        for name, table in tables.items():
            derived = "".join(f", {expr} AS {col}" for col, expr in derived_of(name, table.column_names).items())
            con.register("demo_history", table)
            con.execute(f"INSERT INTO {name} BY NAME SELECT *{derived} FROM demo_history")
            con.unregister("demo_history")
        con.execute("COMMIT")
        return int(tables["requests"].num_rows)
    finally:
        con.close()


def latest_history(cur: duckdb.DuckDBPyConnection) -> datetime | None:
    """The newest history call (None when there is no demo history): recorded data begins after it."""
    row = cur.execute(f"SELECT max(ts) FROM requests WHERE request_id LIKE '{ID_PREFIX}%'").fetchone()
    return row[0] if row else None
