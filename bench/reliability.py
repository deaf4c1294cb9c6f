"""Reliability soak: the tests' fault-injection soak (tests/reliability/soak.py), run for minutes.

A real `keyrack serve` in front of the fake upstream injecting 503 bursts, timeouts, connection resets, mid-stream
errors and invalid keys; closed-loop clients send the demo's request mix. Reports throughput, answers by status,
attempts by outcome and the proxy's RSS over time, and checks the invariants: every request answered with a
well-formed body, recorded exactly once with its attempts, no secret written anywhere, a clean exit on SIGTERM,
memory flat (growth between the first and last samples under --max-growth-mb).

    python -m bench.reliability [--duration 120] [--workers 12] [--rss-every 10] [--max-growth-mb 60]

Writes bench/results/reliability.json; exits 1 when an invariant fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb

from bench.common import RESULTS, markdown_table, write_json
from tests.reliability.harness import dump_tables, query
from tests.reliability.soak import (
    ADMIN_TOKEN,
    CLIENT_TOKEN,
    UPSTREAM_KEYS,
    answer_problems,
    recording_problems,
    run_soak,
    status_counts,
)


def secret_leaks(data_dir: Path, log: str) -> list[str]:
    places = {"proxy log": log}
    for table, rows in dump_tables(data_dir / "keyrack.duckdb").items():
        places[f"table {table}"] = "\n".join(map(repr, rows))
    for path in sorted((data_dir / "exports").glob("**/*.parquet")):
        places[f"export {path.name}"] = "\n".join(
            map(repr, duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetchall())
        )
    secrets = [CLIENT_TOKEN, ADMIN_TOKEN, *UPSTREAM_KEYS]
    return [f"{where}: {s[:8]}…" for where, text in places.items() for s in secrets if s in text]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    ap.add_argument("--workers", type=int, default=12, help="concurrent closed-loop clients (default 12)")
    ap.add_argument("--rss-every", type=float, default=10.0, help="RSS sampling period, seconds (default 10)")
    ap.add_argument(
        "--max-growth-mb", type=float, default=20.0, help="allowed RSS growth over the run's 2nd half (default 20 MB)"
    )
    args = ap.parse_args()

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="keyrack-soak-") as tmp:
        soak = run_soak(Path(tmp), args.duration, args.workers, args.rss_every)
        leaks = secret_leaks(soak.data_dir, soak.log)
        recording = recording_problems(soak)
        answers = answer_problems(soak)
        attempts = dict(query(soak.db, "SELECT outcome, count(*) FROM attempts GROUP BY ALL"))
        outcomes = dict(query(soak.db, "SELECT outcome, count(*) FROM requests GROUP BY ALL"))

    statuses = status_counts(soak)
    growth = soak.rss_end_mb - soak.rss_start_mb
    # Warm-up (DuckDB's buffer pool, allocator arenas, caches) raises RSS in the first minute or two whatever the
    # code; a leak keeps growing. So flatness is judged on the second half of the run: its growth must stay small.
    half = [mb for t, mb in soak.rss_mb if t >= soak.duration / 2]
    late_growth = (max(half) - half[0]) if half else growth
    checks = {
        "every request answered, well formed": not answers,
        "recorded exactly once, with its attempts": not recording,
        "no secret in log, tables or exports": not leaks,
        "clean exit 0 after SIGTERM, nothing unwritten": soak.exit_code == 0 and "unwritten=0" in soak.log,
        "no proxy_error, no traceback": "Traceback" not in soak.log and not outcomes.get("proxy_error"),
        f"RSS flat after warm-up (2nd-half growth < {args.max_growth_mb:g} MB)": late_growth < args.max_growth_mb,
    }
    figures = {
        "duration_s": round(soak.duration, 1),
        "workers": args.workers,
        "requests": len(soak.outcomes),
        "requests_per_s": round(len(soak.outcomes) / soak.duration, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "request_outcomes": outcomes,
        "attempt_outcomes": attempts,
        "upstream_faults": soak.upstream_stats.get("faults", {}),
        "rss_mb": [(round(t, 1), round(mb, 1)) for t, mb in soak.rss_mb],
        "rss_growth_mb": round(growth, 1),
        "rss_second_half_growth_mb": round(late_growth, 1),
        "checks": checks,
        "problems": answers + recording + leaks,
        "started": started,
    }
    write_json(RESULTS / "reliability.json", figures)

    print(f"## Reliability soak — {soak.duration:.0f} s, {args.workers} clients, faults injected\n")
    print(
        markdown_table(
            ["figure", "value"],
            [
                ["requests", len(soak.outcomes)],
                ["requests/s", figures["requests_per_s"]],
                ["answers by status", ", ".join(f"{k}: {v}" for k, v in figures["statuses"].items())],
                ["request outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))],
                ["attempt outcomes", ", ".join(f"{k}: {v}" for k, v in sorted(attempts.items()))],
                [
                    "faults injected upstream",
                    ", ".join(f"{k}: {v}" for k, v in sorted(Counter(figures["upstream_faults"]).items())),
                ],
                [
                    "RSS start → end (MB)",
                    f"{soak.rss_start_mb:.0f} → {soak.rss_end_mb:.0f} (max {max(mb for _, mb in soak.rss_mb):.0f})",
                ],
            ],
        )
    )
    print()
    print(markdown_table(["invariant", "holds"], [[name, "yes" if ok else "NO"] for name, ok in checks.items()]))
    for problem in figures["problems"][:20]:
        print(f"  - {problem}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
