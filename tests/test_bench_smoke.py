"""The benchmarks still run and produce sane figures (tiny budgets: this checks the machinery, not the speed).

No timing assertions: only that each benchmark's core function measures something, loses nothing and reports
what it promises.
"""

from __future__ import annotations

from pathlib import Path

from bench import event_writer, live_relay, proxy_throughput, quota_pressure, run_all, upload_memory, upstream_answer


def test_proxy_throughput_measures_both_paths_and_loses_no_event(tmp_path: Path) -> None:
    f = proxy_throughput.run(duration=0.3, warmup=0.0, transport=False, minimal=False, workdir=tmp_path)
    rows = {(r["target"], r["concurrency"]): r for r in f["rows"]}
    assert set(rows) == {("direct", 1), ("direct", 32), ("proxy", 1), ("proxy", 32)} | {
        ("proxy on granian", c) for c in (1, 32)
    }
    for r in rows.values():
        assert r["ok"] > 0 and r["errors"] == 0 and r["rps"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    ev = f["events"]
    assert ev["responses_received"] >= rows[("proxy", 1)]["ok"] + rows[("proxy", 32)]["ok"]
    assert ev["lost"] == 0 and ev["requests_rows"] == ev["responses_received"] == ev["success_rows"]
    assert f["throughput_ratio_c32"] > 0 and f["granian_vs_uvicorn_c32"] > 0
    assert f["granian_events"]["lost"] == 0 and f["granian_events"]["exit_code"] == 0
    assert "| proxy | 32 |" in proxy_throughput.report(f)


def test_event_writer_writes_every_event(tmp_path: Path) -> None:
    f = event_writer.run(events=20_000, baseline_rows=50, workdir=tmp_path)
    w = f["writer"]
    assert w["events"] == 20_000 and w["requests_rows"] == w["attempts_rows"] == 10_000
    assert w["lost"] == 0 and w["failures"] == 0
    assert w["events_per_s"] > 0 and f["single_insert"]["rows"] == 50
    assert f["enqueue_us"] > 0 and f["ratio"] > 1
    assert "EventWriter" in event_writer.report(f)


def test_ideal_successes_is_the_sliding_window_bound() -> None:
    every_second = [float(t) for t in range(180)]
    assert quota_pressure.ideal_successes(every_second, 50) == 150  # 50 per minute × 3 minutes
    assert quota_pressure.ideal_successes(every_second[:30], 50) == 30  # demand below capacity


def test_quota_pressure_reports_the_three_strategies(tmp_path: Path) -> None:
    variants = quota_pressure.VARIANTS[:3]
    # 3 s at 1,200/min against 50/min of capacity: every strategy meets the limit within the run.
    f = quota_pressure.run(
        minutes=0.05, loads=(1200,), rpm_limit=10, variants=variants, workdir=tmp_path, table_cases=()
    )
    rows = {r["strategy"]: r for r in f["rows"]}
    assert set(rows) == {"round_robin", "least_used", "quota_aware"}
    for r in rows.values():
        assert r["demand"] == 60
        assert r["ok"] + r["client_429"] + r["other_errors"] == r["demand"]
        assert r["ok"] <= r["capacity"] == 50 and r["upstream_attempts"] >= r["ok"] > 0
        assert r["client_429_without_retry_after"] == 0
        assert r["db"].get("request_success", 0) == r["ok"]
    qa = rows["quota_aware"]
    assert qa["upstream_429"] == 0 and qa["client_429_keyrack"] > 0  # configured limit: refused, never sent upstream
    assert rows["round_robin"]["upstream_429"] > 0
    table = quota_pressure.report(f)
    assert all(name in table for name in rows) and "capacity served" in table


def test_quota_pressure_table_cases_report_guesses_that_never_refuse(tmp_path: Path) -> None:
    cases = (
        quota_pressure.TableCase("no limit at all (burst)", None, burst=(60, 16)),
        quota_pressure.TableCase("limit above the table", 25, load_per_capacity=12.0),
    )
    f = quota_pressure.run(minutes=0.05, loads=(), variants=(), workdir=tmp_path, table_cases=cases)
    burst, above = f["rows"]
    assert burst["strategy"] == "quota_aware, no limit at all (burst)" and burst["load_rpm"] == "burst 60 @ c=16"
    assert burst["ok"] == burst["demand"] == burst["capacity"] == 60 and burst["client_429"] == 0
    assert above["fake_rpm"] == 25 and above["demand"] == 75  # 1,500/min for 3 s: 15 a project, the table says 10
    assert above["keyrack_429_before_capacity"] == 0 and above["ok"] == above["demand"]  # the table (10) did not cap
    assert f["targets"]["quota_aware, no limit at all (burst): Keyrack 429s while capacity remained"]["met"]
    table = quota_pressure.report(f)
    assert "no limit at all (burst)" in table and "limit above the table" in table


def test_run_all_summarises_every_known_shape() -> None:
    outcome = run_all.Outcome(run_all.BENCHES[0], "absent", 0.0, "", None)
    assert run_all.summary_table([outcome]).count("\n") == 1  # header only: an absent bench adds no row


def test_proxy_throughput_against_another_checkout(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]  # this checkout against itself: the machinery, not a figure
    f = proxy_throughput.run(
        duration=0.3,
        warmup=0.0,
        transport=False,
        minimal=False,
        granian=False,
        workdir=tmp_path,
        against=repo,
        rounds=2,
    )
    a = f["against"]
    assert a["this_rps_c32"] > 0 and a["against_rps_c32"] > 0 and a["ratio_c32"] > 0 and a["errors"] == [0, 0]
    assert len(a["per_round"]) == 2 and "against_ratio_c32" in f["targets"]
    assert "ratio (this / against" in proxy_throughput.report(f)


def test_upstream_answer_stays_bounded(tmp_path: Path) -> None:
    f = upstream_answer.run(size_mb=40, cap_mb=4)
    assert f["status"] == 502 and f["upstream_wrote_mb"] < 40 and f["rss_peak_hwm_mb"] > 0
    assert "max_answer_mb" in f["message"] and "502" in upstream_answer.report(f)


def test_live_relay_measures_both_targets_and_records_every_session(tmp_path: Path) -> None:
    f = live_relay.run(sessions=2, turns=2, rounds=1, workdir=tmp_path)
    for target in ("direct", "keyrack"):
        assert f[target]["sessions"] == 2 and f[target]["turns"] == 4 and f[target]["turns_per_s"] > 0
        assert 0 < f[target]["turn_p50_ms"] <= f[target]["turn_p95_ms"]
    ev = f["events"]
    assert ev["sessions_recorded"] == ev["sessions_with_every_turn"] == 2 and ev["lost"] == 0 and ev["tokens"] > 0
    assert f["turns_per_s_ratio"] > 0 and "| keyrack |" in live_relay.report(f)


def test_memory_report_states_the_dashboard_attached_figure_beside_the_proxy_alone() -> None:
    from bench import memory

    def sample(rss: float) -> dict[str, float]:
        return {"VmRSS": rss, "RssAnon": rss / 2, "RssFile": rss / 2, "RssShmem": 0.0, "VmHWM": rss + 5}

    def phases(steady: float, polling: dict[str, object] | None) -> dict[str, object]:
        return {
            "start": sample(120.0),
            "after_load": sample(130.0),
            "steady": sample(steady),
            "idle_after": sample(125.0),
            "peak_mb": steady + 5,
            "load_rps_c32": 400.0,
            "soak_requests": 3000,
            "soak_major_faults": 0,
            "second_half": {"median": steady - 4, "min": steady - 8, "samples": 6},
            "polling": polling,
            "arrow_mapped": polling is not None,
        }

    polling = {"loads": {"monitor": 7, "trends": 6}, "failures": [], "dwell_s": 5.0, "dashboard_rss": sample(180.0)}
    f = {
        "load_s": 32.0,
        "soak_s": 300.0,
        "dashboard_attached": True,
        "load_average": [10.0, 12.0],
        "proxy": phases(160.0, polling),
        "alone": phases(128.0, None),
        "baseline": None,
        "breakdown": [],
        "targets": {"proxy_steady_mb": {"target": "<= 150", "met": False}},
    }
    text = memory.report(f)
    assert "proxy, dashboard attached: steady (soak 300 s, 2nd-half max) | 160.0" in text
    assert "same proxy, no dashboard: steady | 128.0" in text
    assert "160 / 128 MB = 1.25" in text and "7 Monitor and 6 Trends loads, 0 failed" in text
    assert "target proxy_steady_mb <= 150: MISSED" in text
    rows = run_all.rows_memory(f)
    assert rows[2][:2] == ["memory (RSS)", "**proxy, dashboard attached and polling: steady through the 300 s soak**"]
    assert rows[2][2:6] == ["**160 MB**", "no dashboard 128 MB", "1.25", "≤ 150 MB"]
    assert rows[-1][1:3] == ["machine load (1 min), before / after", "10 / 12"]  # beside the figure


def test_upload_memory_streams_an_upload_through_the_proxy(tmp_path: Path) -> None:
    f = upload_memory.run(mb=16, chunk_mb=4, workdir=tmp_path)
    assert f["mb"] == 16 and f["chunk_mb"] == 4
    assert f["peak_rss_mb"] >= f["baseline_rss_mb"] > 0
    assert f["ok"] == (f["growth_mb"] < upload_memory.TARGET_GROWTH_MB)


def test_clients_bench_measures_the_path_and_the_records_phase(tmp_path: Path) -> None:
    from bench import clients
    from bench.common import start_fake, wait_ready

    p = clients.path_cost(records=30, calls=200, repeats=1)
    assert p["records"] == 30 and p["us_per_call_records"] > 0 and p["us_per_call_before"] > 0
    fake = start_fake(tmp_path)
    try:
        wait_ready([fake])
        c = proxy_throughput._clients_phase(tmp_path, fake, 3, 0.3, 0.0, 1)
    finally:
        fake.stop()
    assert c["records"] == 3 and c["errors"] == [0, 0] and c["ratio_c32"] > 0
    assert len(c["p50_ms_c1"][0]) == len(c["p50_ms_c1"][1]) == 1
