"""Operations: `/metrics` scraped after real traffic and parsed with prometheus_client's own parser; `/healthz` vs
`/readyz`; the key=value log lines (events, live level, secrets scrubbed)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy_service import logs
from tests.conftest import BAD_1, CLIENT_TOKEN, P1_A, POOL_KEYS, SCENARIO, Proxy, Upstream

BODY = {"contents": [{"parts": [{"text": "hello"}]}]}


def scrape(proxy: Proxy) -> dict[str, Any]:
    resp = httpx.get(f"{proxy.url}/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    return {fam.name: fam for fam in text_string_to_metric_families(resp.text)}


def sample(families: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    fam = families[family]
    return sum(
        s.value
        for s in fam.samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_after_real_traffic(start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]) -> None:
    upstream = start_upstream({**SCENARIO, "limits": {"gemini-2.0-flash": {"rpm": 1}}})
    proxy = start_proxy(upstream.url, api_keys=f"{BAD_1},{POOL_KEYS}", strategy="round_robin")
    before = scrape(proxy)
    headers = {"x-goog-api-key": CLIENT_TOKEN}
    with httpx.Client(base_url=proxy.url, headers=headers, timeout=30) as client:
        for _ in range(4):
            assert client.post("/v1beta/models/gemini-2.5-flash-lite:generateContent", json=BODY).status_code == 200
        stream = client.post("/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent?alt=sse", json=BODY)
        assert stream.status_code == 200
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "gemini-2.5-flash-lite", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {CLIENT_TOKEN}"},
        )
        assert chat.status_code == 200
        for _ in range(5):  # rpm 1 per project on this model: 429s, then the pool refuses
            client.post("/v1beta/models/gemini-2.0-flash:generateContent", json=BODY)
        assert (
            client.post(
                "/v1beta/models/gemini-2.5-flash-lite:generateContent", json=BODY, headers={"x-goog-api-key": "wrong"}
            ).status_code
            == 401
        )
        assert client.post("/v1beta/models/x%20y:generateContent", json=BODY).status_code == 400
        pasted_key = (
            "AIzaSy" + "K" * 33
        )  # a key pasted where the model goes: upstream says 404, /metrics never shows it
        assert client.post(f"/v1beta/models/{pasted_key}:generateContent", json=BODY).status_code == 404
    proxy.flush()
    asyncio.run(proxy.gateway.read_duckdb_memory())  # what the job does every few seconds, on a worker thread
    after = scrape(proxy)

    def delta(family: str, name: str | None = None, **labels: str) -> float:
        return sample(after, family, name, **labels) - sample(before, family, name, **labels)

    req = "keyrack_requests_total"
    assert delta("keyrack_requests", req, surface="gemini", model="gemini-2.5-flash-lite", status="200") == 5
    assert delta("keyrack_requests", req, surface="openai", model="gemini-2.5-flash-lite", status="200") == 1
    # refused calls never claim a model label (anyone can send them): "other", like invalid names
    assert delta("keyrack_requests", req, surface="gemini", model="gemini-2.5-flash-lite", status="401") == 0
    assert delta("keyrack_requests", req, surface="gemini", model="other", status="401") == 1
    assert delta("keyrack_requests", req, surface="gemini", model="other", status="400") == 1  # invalid name
    assert delta("keyrack_requests", req, surface="gemini", model="other", status="404") == 1
    assert delta("keyrack_requests", req, surface="gemini", model="gemini-2.0-flash", status="429") >= 1
    assert delta("keyrack_upstream_attempts", "keyrack_upstream_attempts_total", outcome="ok") >= 7
    assert delta("keyrack_upstream_attempts", "keyrack_upstream_attempts_total", outcome="invalid_key") == 1
    assert delta("keyrack_upstream_attempts", "keyrack_upstream_attempts_total", outcome="rate_limited") >= 1
    assert delta("keyrack_upstream_rate_limits", "keyrack_upstream_rate_limits_total", kind="minute") >= 1

    # Latency histogram by surface: counts match the requests, buckets are cumulative and end at +Inf.
    hist = "keyrack_request_duration_seconds"
    assert delta(hist, f"{hist}_count", surface="openai") == 1
    assert delta(hist, f"{hist}_count", surface="gemini") >= 13
    buckets = [s for s in after[hist].samples if s.name == f"{hist}_bucket" and s.labels["surface"] == "gemini"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == sample(
        after, hist, f"{hist}_count", surface="gemini"
    )
    assert all(a.value <= b.value for a, b in itertools.pairwise(buckets))
    assert delta("keyrack_stream_first_byte_seconds", "keyrack_stream_first_byte_seconds_count", surface="gemini") == 1

    # State read at scrape time.
    assert sample(after, "keyrack_keys", status="invalid") == 1
    assert sample(after, "keyrack_keys", status="cooling") >= 1
    assert sum(s.value for s in after["keyrack_keys"].samples) == 5
    assert "keyrack_event_queue_depth" in after and "keyrack_event_writer_lag_seconds" in after
    assert sample(after, "keyrack_event_flush_seconds") >= 0
    assert sample(after, "keyrack_events_written", "keyrack_events_written_total", table="requests") >= 14
    assert sample(after, "keyrack_event_write_failures", "keyrack_event_write_failures_total") == 0
    assert sample(after, "keyrack_upstream_in_flight") == 0
    assert sample(after, "keyrack_ready") == 1
    # DuckDB's own account: the rows appended since the last checkpoint are held in memory.
    assert sample(after, "keyrack_duckdb_memory_bytes", tag="IN_MEMORY_TABLE") > 0
    # No secret in the exposition.
    text = httpx.get(f"{proxy.url}/metrics").text
    assert CLIENT_TOKEN not in text and P1_A not in text and BAD_1 not in text and pasted_key not in text


def test_healthz_is_liveness_and_readyz_is_readiness(proxy: Proxy) -> None:
    assert httpx.get(f"{proxy.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{proxy.url}/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "keys": proxy.gateway.pool.counts(),
        "storage": "ok",
        "resources": "ok",
    }
    proxy.gateway.ready = False  # e.g. during shutdown
    try:
        assert httpx.get(f"{proxy.url}/readyz").status_code == 503
        assert httpx.get(f"{proxy.url}/healthz").status_code == 200  # alive, just not ready
    finally:
        proxy.gateway.ready = True


# -- logs -------------------------------------------------------------------------------------------------------------


def format_line(record_logger: str, level: int, msg: str, *args: Any, **extra: Any) -> str:
    record = logging.LogRecord(record_logger, level, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(record, k, v)
    return logs.KeyValueFormatter().format(record)


def test_log_lines_are_one_line_key_value_and_scrub_secrets() -> None:
    line = format_line(
        "keyrack.pool",
        logging.WARNING,
        "key_status",
        event="key_status",
        fields={"key_id": "k_1", "detail": 'bad "key"\nnext', "n": 3, "on": True},
    )
    assert "\n" not in line
    assert line.split(" ", 1)[1] == (
        'level=WARNING logger=keyrack.pool event=key_status key_id=k_1 detail="bad \\"key\\"\\nnext" n=3 on=true'
    )
    secret = "AIza" + "x" * 35
    assert secret not in format_line("keyrack", logging.INFO, "leaked %s", secret)

    def source() -> list[str]:
        return ["client-token-very-secret", "short"]

    logs.add_secret_source(source)
    try:
        line = format_line("keyrack", logging.INFO, "token=%s short=%s", "client-token-very-secret", "short")
    finally:
        logs.remove_secret_source(source)
    assert "client-token-very-secret" not in line and "clie…cret" in line
    assert "short=short" in line  # too short to scrub safely: secrets are never that short in practice
    try:
        raise ValueError("boom " + secret)
    except ValueError:
        import sys

        record = logging.LogRecord("keyrack", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logs.KeyValueFormatter().format(record)
    assert "\n" not in line and 'exc="Traceback' in line and secret not in line


def test_key_status_changes_and_config_changes_are_logged(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, api_keys=f"{BAD_1},p1:{P1_A}", strategy="round_robin")
    gw = proxy.gateway
    caplog.set_level(logging.INFO, logger="keyrack")
    for _ in range(2):
        httpx.post(
            f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
            json=BODY,
            headers={"x-goog-api-key": CLIENT_TOKEN},
        )
    bad = next(k for k in gw.pool.keys.values() if k.secret == BAD_1)
    changes = [r for r in caplog.records if getattr(r, "event", None) == "key_status"]
    assert len(changes) == 1, "an invalid key is logged once, when it changes status"
    assert changes[0].fields["key_id"] == bad.id and changes[0].fields["to"] == "invalid"  # type: ignore[attr-defined]
    gw.pool.enable(bad)
    gw.pool.disable(bad)
    assert [r.fields["to"] for r in caplog.records if getattr(r, "event", None) == "key_status"][1:] == [  # type: ignore[attr-defined]
        "active",
        "disabled",
    ]

    asyncio.run_coroutine_threadsafe(
        gw.update_config({"log_level": "DEBUG", "access_tokens": [CLIENT_TOKEN, "second-token-123"]}), gw.loop
    ).result(10)
    assert logging.getLogger("keyrack").level == logging.DEBUG  # applied live
    changed = [r for r in caplog.records if getattr(r, "event", None) == "config_changed"]
    assert changed and changed[-1].fields["fields"] == ["access_tokens", "log_level"]  # type: ignore[attr-defined]
    assert changed[-1].fields["log_level"] == "DEBUG"  # type: ignore[attr-defined]  # secret values come masked
    asyncio.run_coroutine_threadsafe(gw.update_config({"log_level": "INFO"}), gw.loop).result(10)
    assert logging.getLogger("keyrack").level == logging.INFO
    text = "\n".join(logs.KeyValueFormatter().format(r) for r in caplog.records)
    assert BAD_1 not in text and "second-token-123" not in text and CLIENT_TOKEN not in text
