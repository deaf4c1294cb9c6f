"""Issue 23, the LOW items of the alerting and forecast surfaces: every number and date is bounded with a precise
400/422 naming the field (integers past a float's range, years 1 and 9999 with an offset); silence labels are
bounded; secrets anywhere in a channel URL never show in an answer, the history or a log line; a port past 65535 is
refused, and a stored row that no longer parses never breaks the channel list or its deletion; rule names are unique.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from proxy_service import logs
from tests.conftest import ADMIN_TOKEN, Proxy

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
HUGE = 10**309  # past a float's range: json encodes it, Python reads it back as an int
RULE = {"name": "r", "metric": "calls", "op": ">", "threshold": 1, "window_s": 60}


@pytest.fixture
def http(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url + "/admin/api", headers=AUTH, timeout=60) as client:
        yield client


def _refused(r: httpx.Response, field: str, statuses: tuple[int, ...] = (400, 422)) -> str:
    assert r.status_code in statuses, (field, r.status_code, r.text)
    err = r.json()["error"]
    assert err["field"] == field, (field, err)
    return str(err["message"])


def test_numbers_and_dates_out_of_range_are_refused_naming_the_field(http: httpx.Client) -> None:
    rule_id = http.post("/alerts/rules", json={**RULE, "name": "base"}).json()["id"]
    for field in ("threshold", "window_s", "for_s", "repeat_s"):
        for value in (HUGE, -HUGE):
            _refused(http.post("/alerts/rules", json={**RULE, field: value}), field)
            _refused(http.patch(f"/alerts/rules/{rule_id}", json={field: value}), field)
            _refused(http.post("/alerts/backtest", json={**RULE, field: value}), field)
    # silences: an end in year 1 or 9999 with an offset (its UTC instant is outside the calendar), a huge duration
    for until in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "9999-12-31"):
        _refused(http.post("/alerts/silences", json={"rule_id": rule_id, "until": until}), "until")
    for duration in (HUGE, -HUGE, 1e308):
        _refused(http.post("/alerts/silences", json={"rule_id": rule_id, "duration_s": duration}), "duration_s")
    for bound in ("from", "to"):
        for when in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
            _refused(http.get("/alerts/history", params={bound: when}), bound)
    # the capacity planner
    plan = {"model": "gemini-2.5-flash"}
    for field in ("target_rpm", "target_rpd"):
        for value in (HUGE, -HUGE):
            _refused(http.post("/forecast/plan", json={**plan, field: value}), field)
    for dim in ("rpm", "rpd"):
        _refused(http.post("/forecast/plan", json={**plan, "limits": {dim: HUGE}}), f"limits.{dim}")
    assert http.post("/forecast/plan", json={**plan, "target_rpm": 10}).status_code == 200


def test_silence_labels_are_bounded(http: httpx.Client) -> None:
    rule_id = http.post("/alerts/rules", json={**RULE, "name": "silenced"}).json()["id"]

    def silence(**body: Any) -> httpx.Response:
        return http.post("/alerts/silences", json={"rule_id": rule_id, "duration_s": 60, **body})

    _refused(silence(labels={f"l{i}": "x" for i in range(1000)}), "labels.l0")
    _refused(silence(labels={"colour": "red"}), "labels.colour")
    _refused(silence(labels={"x" * 10_000: "v"}), "labels." + "x" * 32)
    _refused(silence(labels={"model": "m" * 10_000}), "labels.model")
    _refused(silence(labels={"model": ""}), "labels.model")
    _refused(silence(labels={"model": "bad\nvalue"}), "labels.model")
    _refused(silence(labels={"model": 5}), "labels.model")
    _refused(silence(labels=["model"]), "labels")
    _refused(silence(rule_id=["not", "a", "string"]), "rule_id")
    ok = silence(labels={"model": "gemini-2.5-flash", "project": "p1"}, comment="maintenance")
    assert ok.status_code == 201, ok.text
    assert ok.json()["labels"] == {"model": "gemini-2.5-flash", "project": "p1"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_secrets_anywhere_in_a_channel_url_never_show(
    proxy: Proxy, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = _closed_port()
    channels = {
        "json": (
            f"json://127.0.0.1:{port}/hooks/PathSecret0001?+X-Api-Key=HeaderSecret0002&:token=FieldSecret0003",
            ["PathSecret0001", "HeaderSecret0002", "FieldSecret0003"],
        ),
        "webhook": (
            f"webhook+http://127.0.0.1:{port}/hook/WebhookPathSecret0004?token=QuerySecret0005",
            ["WebhookPathSecret0004", "QuerySecret0005"],
        ),
        "ntfy": ("ntfy://ntfy.sh/NtfyTopicSecret0006", ["NtfyTopicSecret0006"]),
        "gotify": ("gotify://gotify.example.com/GotifyTokenSecret08", ["GotifyTokenSecret08"]),
        "mailto": ("mailto://ops:MailPassSecret0007@example.com?to=oncall@example.com", ["MailPassSecret0007"]),
        "slack": ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", ["TIiajkdnlazkcOXrIdevi7FQ", "T1JJ3T3L2"]),
        "discord": ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", ["JHMHI8qBe7bk2ZwO5U711o3dV_js"]),
        "tgram": (
            "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544",
            ["AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"],
        ),
    }
    answers: list[str] = []
    ids = {}
    for name, (url, _secrets) in channels.items():
        r = http.post("/alerts/channels", json={"name": name, "url": url})
        assert r.status_code == 201, (name, r.text)
        answers.append(r.text)
        ids[name] = r.json()["id"]
    assert http.get("/alerts/channels").json()["items"][0]["url"].endswith("****")
    answers.append(http.get("/alerts/channels").text)
    for name in ("json", "webhook"):  # nothing listens there: the failure's reason is shown and recorded
        r = http.post(f"/alerts/channels/{ids[name]}/test")
        assert r.status_code == 200 and r.json()["ok"] is False, r.text
        answers.append(r.text)
    answers.append(http.get("/alerts/history", params={"limit": 5000}).text)
    proxy.flush()
    logged = "\n".join(logs.KeyValueFormatter().format(rec) for rec in caplog.records)
    for name, (_url, secrets) in channels.items():
        for secret in secrets:
            assert all(secret not in a for a in answers), (name, secret)
            assert secret not in logged, (name, secret)


def test_ports_out_of_range_are_refused_and_a_bad_stored_row_never_breaks_the_list(
    proxy: Proxy, http: httpx.Client
) -> None:
    for url in (
        "webhook+http://127.0.0.1:99999/hook",
        "webhook+https://example.com:65536/hook",
        "json://127.0.0.1:70000/hook",
        "mailto://u:password@example.com:123456",
        f"json://127.0.0.1:{HUGE}/hook"[:1900],
    ):
        assert "port" in _refused(http.post("/alerts/channels", json={"name": "p", "url": url}), "url", (422,)), url
    good = http.post("/alerts/channels", json={"name": "good", "url": "json://127.0.0.1:8080/hook"}).json()["id"]
    # Rows stored before validation existed (or by hand): a port past 65535, a URL that parses as nothing.
    bad = {"bad_port": "webhook+http://127.0.0.1:99999/hook", "garbage": "::::://[[[::99999999999999999"}

    def store(cur: Any) -> None:
        for cid, url in bad.items():
            cur.execute("INSERT INTO alert_channels VALUES (?, ?, ?, NULL, 0)", [cid, cid, url])

    proxy.gateway.writer.submit(store).result(30)
    engine = proxy.gateway.alerts
    assert proxy.gateway.loop is not None
    asyncio.run_coroutine_threadsafe(engine.reload(), proxy.gateway.loop).result(30)
    listing = http.get("/alerts/channels")
    assert listing.status_code == 200, listing.text
    assert {c["id"] for c in listing.json()["items"]} == {good, *bad}
    assert "99999999999999999" not in listing.text
    for cid in bad:
        assert http.delete(f"/alerts/channels/{cid}").status_code == 200
    assert {c["id"] for c in http.get("/alerts/channels").json()["items"]} == {good}


def test_rule_names_are_unique(http: httpx.Client) -> None:
    first = http.post("/alerts/rules", json={**RULE, "name": "Error storm"})
    assert first.status_code == 201, first.text
    for name in ("Error storm", "  error STORM ", "Invalid keys"):  # the last one is a default rule's
        assert "already named" in _refused(http.post("/alerts/rules", json={**RULE, "name": name}), "name", (409,))
    other = http.post("/alerts/rules", json={**RULE, "name": "Other"}).json()["id"]
    _refused(http.patch(f"/alerts/rules/{other}", json={"name": "error storm"}), "name", (409,))
    assert http.patch(f"/alerts/rules/{other}", json={"name": "Other", "threshold": 2}).status_code == 200
    names = [r["name"].casefold() for r in http.get("/alerts/rules").json()["items"]]
    assert len(names) == len(set(names))
