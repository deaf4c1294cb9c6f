"""Steady load through a real `keyrack serve` process in front of a fake upstream that injects 503 bursts, timeouts
(longer than the proxy's request timeout), connection resets, mid-stream errors and invalid keys (see soak.py).

One soak run (a module fixture) feeds several checks: every answer is well formed, every request is recorded
exactly once (and its attempts too), the proxy never crashes and stops cleanly, memory stays flat, and nothing the
proxy wrote (log file, every table, Parquet exports) holds a full upstream key or a client/admin token.
`bench/reliability.py` runs the same soak for longer.
"""

from __future__ import annotations

import duckdb
import pytest

from tests.reliability.harness import dump_tables, query
from tests.reliability.soak import (
    ADMIN_TOKEN,
    CLIENT_TOKEN,
    UPSTREAM_KEYS,
    SoakResult,
    answer_problems,
    recording_problems,
    run_soak,
    status_counts,
)

LOAD_SECONDS = 10.0
MIN_REQUESTS = 250  # enough for every fault to show; a loaded machine runs longer (up to 3 × LOAD_SECONDS)


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> SoakResult:
    return run_soak(tmp_path_factory.mktemp("soak"), LOAD_SECONDS, workers=12, rss_every=5.0, min_requests=MIN_REQUESTS)


def test_the_soak_exercised_every_fault(soak: SoakResult) -> None:
    faults = soak.upstream_stats["faults"]
    assert all(faults.get(kind, 0) > 0 for kind in ("503", "500", "timeout", "reset", "midstream")), faults
    outcomes = dict(query(soak.db, "SELECT outcome, count(*) FROM attempts GROUP BY ALL"))
    for kind in ("ok", "server_error", "timeout", "connection_error", "invalid_key", "client_error"):
        assert outcomes.get(kind, 0) > 0, outcomes
    assert len(soak.outcomes) >= MIN_REQUESTS, f"only {len(soak.outcomes)} requests in {soak.duration:.1f}s"


def test_every_client_request_gets_a_well_formed_answer(soak: SoakResult) -> None:
    assert not answer_problems(soak)
    # Not a ratio: while a 503 burst has every key disabled, refusals are instant and closed-loop clients send many.
    assert status_counts(soak)[200] >= 100, status_counts(soak)


def test_every_request_is_recorded_exactly_once_with_its_attempts(soak: SoakResult) -> None:
    assert not recording_problems(soak)
    assert query(soak.db, "SELECT count(*) FROM requests WHERE outcome = 'proxy_error'")[0][0] == 0


def test_the_proxy_never_crashed_and_stopped_cleanly(soak: SoakResult) -> None:
    assert soak.exit_code == 0, soak.log[-3000:]
    assert "event=shutdown" in soak.log and "unwritten=0 write_failures=0" in soak.log
    assert "Traceback" not in soak.log and "level=ERROR" not in soak.log, soak.log[-3000:]


def test_memory_stays_flat(soak: SoakResult) -> None:
    growth = soak.rss_end_mb - soak.rss_start_mb
    assert growth < 60, f"RSS grew {growth:.0f} MB ({soak.rss_start_mb:.0f} → {soak.rss_end_mb:.0f}) in one soak"


def test_nothing_the_proxy_wrote_holds_a_secret(soak: SoakResult) -> None:
    secrets = [CLIENT_TOKEN, ADMIN_TOKEN, *UPSTREAM_KEYS]
    places: dict[str, str] = {"proxy log": soak.log}
    for table, rows in dump_tables(soak.db).items():
        places[f"table {table}"] = "\n".join(map(repr, rows))
    assert "table requests" in places and "table error_logs" in places and "table keys" in places
    for path in sorted((soak.data_dir / "exports").glob("**/*.parquet")):
        rows = duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetchall()
        places[f"export {path.name}"] = "\n".join(map(repr, rows))
    leaks = [(where, s[:8]) for where, text in places.items() for s in secrets if s in text]
    assert not leaks, leaks
    # The error log did record the failing body, redacted.
    bodies = query(soak.db, "SELECT request_body FROM error_logs WHERE request_body LIKE '%my key is%'")
    assert bodies and all("AIza…" in b for (b,) in bodies)
