"""Tests for proxy_service.quota: 429 parsing, the Pacific day, windows, limits and the tracker."""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import time
from typing import Any, Literal

import pytest

from proxy_service.quota import (
    _COMPACT_AT,
    DEFAULT_LIMITS,
    ModelLimits,
    QuotaTracker,
    QuotaViolation,
    UsageWindow,
    cooldown_until,
    limits_for,
    next_pacific_midnight,
    pacific_day,
    parse_rate_limit,
)

UTC = datetime.UTC


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """Epoch of a UTC wall time; written by hand so the tests do not reuse the code's own zone maths."""
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --------------------------------------------------------------------------------------------------------
# 429 bodies (reference §5.3)

MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, "
    "head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 10, "
    "model: gemini-2.5-flash\nPlease retry in 37.312805215s."
)
HELP = {
    "@type": "type.googleapis.com/google.rpc.Help",
    "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
}
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
RPD_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
TPM_ID = "GenerateContentInputTokensPerModelPerMinute-FreeTier"


def violation(quota_id: str, value: str | None = "10", model: str = "gemini-2.5-flash") -> dict[str, Any]:
    v: dict[str, Any] = {
        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    if value is not None:
        v["quotaValue"] = value
    return v


def quota_failure(*violations: dict[str, Any]) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": list(violations)}


def retry_info(delay: Any) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def body(*details: dict[str, Any], message: str = MESSAGE) -> dict[str, Any]:
    err = {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED", "details": list(details)}
    return {"error": err}


CANONICAL = body(HELP, quota_failure(violation(RPM_ID)), retry_info("37s"))


def test_canonical_minute_body() -> None:
    assert parse_rate_limit(CANONICAL) == QuotaViolation("minute", RPM_ID, 37.0, 10, "gemini-2.5-flash")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_detail_order_does_not_matter(order: tuple[int, ...]) -> None:
    details = [HELP, quota_failure(violation(RPD_ID, "250")), retry_info("36s")]
    v = parse_rate_limit(body(*(details[i] for i in order)))
    assert (v.kind, v.quota_id, v.retry_delay_s, v.limit) == ("day", RPD_ID, 36.0, 250)


def test_bytes_str_pretty_and_list_wrapped_bodies() -> None:
    expected = parse_rate_limit(CANONICAL)
    pretty = json.dumps(CANONICAL, indent=2)
    assert parse_rate_limit(pretty) == expected
    assert parse_rate_limit(pretty.encode()) == expected
    assert parse_rate_limit([CANONICAL]) == expected
    assert parse_rate_limit(json.dumps([CANONICAL], indent=2).encode()) == expected
    assert parse_rate_limit(CANONICAL["error"]) == expected  # already unwrapped envelope


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        ("37s", 37.0),
        ("0.5s", 0.5),
        ("1.312805215s", 1.312805215),
        ("0s", 0.0),
        ({"seconds": "2", "nanos": 500_000_000}, 2.5),
    ],
)
def test_retry_delay_parsing(delay: Any, expected: float) -> None:
    v = parse_rate_limit(body(quota_failure(violation(RPM_ID)), retry_info(delay), message=""))
    assert v.retry_delay_s == pytest.approx(expected, abs=1e-9)


def test_retry_delay_falls_back_to_message() -> None:
    v = parse_rate_limit(body(quota_failure(violation(RPM_ID))))
    assert v.retry_delay_s == pytest.approx(37.312805215, abs=1e-9)
    go_style = body(quota_failure(violation(RPM_ID)), message="x. Please retry in 1m2.5s.")
    assert parse_rate_limit(go_style).retry_delay_s == pytest.approx(62.5)
    assert parse_rate_limit(body(message="Please retry in 850ms.")).retry_delay_s == pytest.approx(0.85)


def test_retry_delay_missing_or_malformed_is_none() -> None:
    assert parse_rate_limit(body(quota_failure(violation(RPM_ID)), message="no hint")).retry_delay_s is None
    bad = body(quota_failure(violation(RPM_ID)), retry_info("soon"), message="no hint")
    assert parse_rate_limit(bad).retry_delay_s is None
    negative = body(retry_info("-3s"), message="no hint")
    assert parse_rate_limit(negative).retry_delay_s is None


def test_retry_info_wins_over_message() -> None:
    assert parse_rate_limit(CANONICAL).retry_delay_s == 37.0  # not the message's 37.31


def test_tokens_classification() -> None:
    v = parse_rate_limit(body(retry_info("12s"), quota_failure(violation(TPM_ID, "250000"))))
    assert (v.kind, v.quota_id, v.limit, v.retry_delay_s) == ("tokens", TPM_ID, 250000, 12.0)


@pytest.mark.parametrize(
    ("ids", "kind"),
    [
        ((RPM_ID, RPD_ID), "day"),
        ((RPD_ID, RPM_ID), "day"),
        ((RPM_ID, TPM_ID), "tokens"),
        ((TPM_ID, RPM_ID), "tokens"),
        ((TPM_ID, RPD_ID, RPM_ID), "day"),
        (("SomethingElse", RPM_ID), "minute"),
    ],
)
def test_most_severe_violation_wins(ids: tuple[str, ...], kind: str) -> None:
    values = {RPM_ID: "10", RPD_ID: "250", TPM_ID: "250000", "SomethingElse": "1"}
    v = parse_rate_limit(body(quota_failure(*(violation(i, values[i]) for i in ids)), retry_info("5s")))
    assert v.kind == kind
    assert v.quota_id is not None and v.limit == int(values[v.quota_id])  # fields come from the chosen one


def test_violations_split_over_two_quota_failures() -> None:
    v = parse_rate_limit(body(quota_failure(violation(RPM_ID)), quota_failure(violation(RPD_ID, "250"))))
    assert (v.kind, v.limit) == ("day", 250)


def test_limit_and_model_fall_back_to_message() -> None:
    msg = (
        "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
        "limit: 0, model: gemini-2.5-pro\nPlease retry in 20s."
    )
    v0 = violation(RPD_ID, None)
    del v0["quotaDimensions"]
    v = parse_rate_limit(body(quota_failure(v0), message=msg))
    assert (v.kind, v.limit, v.model, v.retry_delay_s) == ("day", 0, "gemini-2.5-pro", 20.0)


def test_message_only_body_keeps_numbers_but_kind_unknown() -> None:
    # Without a quotaId nothing says minute or day (both share the metric name).
    v = parse_rate_limit({"error": {"code": 429, "message": MESSAGE, "status": "RESOURCE_EXHAUSTED"}})
    assert (v.kind, v.quota_id, v.limit, v.model) == ("unknown", None, 10, "gemini-2.5-flash")
    assert v.retry_delay_s == pytest.approx(37.312805215)


def test_2024_style_body_is_unknown() -> None:
    old = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    assert parse_rate_limit(old) == QuotaViolation("unknown", None, None, None, None)
    assert parse_rate_limit([old]) == QuotaViolation("unknown", None, None, None, None)


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        b"",
        "",
        "not json",
        b"\xff\xfe\x00",
        "null",
        "42",
        "[]",
        "{}",
        "[1, 2]",
        '{"error": "boom"}',
        {"error": {"details": "x", "message": 5}},
        {"error": {"details": [1, None, {"@type": 5}, {}]}},
        {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": 3}]}},
        "[" * 100_000,  # deep nesting: json raises RecursionError
        "<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_garbage_is_unknown_and_never_raises(garbage: Any) -> None:
    assert parse_rate_limit(garbage) == QuotaViolation("unknown", None, None, None, None)


def test_parse_does_not_mutate_input() -> None:
    original = copy.deepcopy(CANONICAL)
    parse_rate_limit(CANONICAL)
    assert original == CANONICAL


# --------------------------------------------------------------------------------------------------------
# The Pacific quota day


def test_pacific_day_boundaries() -> None:
    # PDT (UTC-7) in June: the Pacific day changes at 07:00 UTC, not at 00:00 UTC.
    assert pacific_day(utc(2026, 6, 16, 6, 59, 59)) == datetime.date(2026, 6, 15)
    assert pacific_day(utc(2026, 6, 16, 7, 0, 0)) == datetime.date(2026, 6, 16)
    assert pacific_day(utc(2026, 6, 16, 0, 30)) == datetime.date(2026, 6, 15)
    # PST (UTC-8) in January.
    assert pacific_day(utc(2026, 1, 10, 7, 59, 59)) == datetime.date(2026, 1, 9)
    assert pacific_day(utc(2026, 1, 10, 8, 0, 0)) == datetime.date(2026, 1, 10)


def test_next_pacific_midnight_ordinary_days() -> None:
    assert next_pacific_midnight(utc(2026, 6, 15, 20, 0)) == utc(2026, 6, 16, 7)  # summer, 13:00 PDT
    assert next_pacific_midnight(utc(2026, 1, 9, 20, 0)) == utc(2026, 1, 10, 8)  # winter, 12:00 PST
    assert next_pacific_midnight(utc(2026, 1, 10, 8) - 0.5) == utc(2026, 1, 10, 8)
    # Strictly after: at midnight itself the answer is the following midnight.
    assert next_pacific_midnight(utc(2026, 1, 10, 8)) == utc(2026, 1, 11, 8)
    # Year end.
    assert next_pacific_midnight(utc(2027, 1, 1, 7, 0)) == utc(2027, 1, 1, 8)


def test_dst_start_2026_03_08() -> None:
    midnight_8th = utc(2026, 3, 8, 8)  # 00:00 PST
    midnight_9th = utc(2026, 3, 9, 7)  # 00:00 PDT
    assert next_pacific_midnight(midnight_8th - 1) == midnight_8th
    assert next_pacific_midnight(midnight_8th + 1) == midnight_9th
    assert next_pacific_midnight(utc(2026, 3, 8, 10, 30)) == midnight_9th  # 02:30 local does not exist
    assert next_pacific_midnight(midnight_9th - 1) == midnight_9th
    assert next_pacific_midnight(midnight_9th + 1) == utc(2026, 3, 10, 7)
    assert midnight_8th - next_pacific_midnight(utc(2026, 3, 7, 12)) == 0
    assert midnight_8th - utc(2026, 3, 7, 8) == 24 * 3600  # the day before the change: 24 h
    assert midnight_9th - midnight_8th == 23 * 3600  # the change day: 23 h
    assert pacific_day(midnight_9th - 1) == datetime.date(2026, 3, 8)


def test_dst_end_2026_11_01() -> None:
    midnight_1st = utc(2026, 11, 1, 7)  # 00:00 PDT
    midnight_2nd = utc(2026, 11, 2, 8)  # 00:00 PST
    assert next_pacific_midnight(midnight_1st - 1) == midnight_1st
    assert next_pacific_midnight(midnight_1st + 1) == midnight_2nd
    assert next_pacific_midnight(utc(2026, 11, 1, 8, 30)) == midnight_2nd  # 01:30 local, first pass
    assert next_pacific_midnight(utc(2026, 11, 1, 9, 30)) == midnight_2nd  # 01:30 local, second pass
    assert next_pacific_midnight(midnight_2nd - 1) == midnight_2nd
    assert next_pacific_midnight(midnight_2nd + 1) == utc(2026, 11, 3, 8)
    assert next_pacific_midnight(utc(2026, 10, 31, 12)) == midnight_1st
    assert midnight_1st - utc(2026, 10, 31, 7) == 24 * 3600  # the day before the change: 24 h
    assert midnight_2nd - midnight_1st == 25 * 3600  # the change day: 25 h


# --------------------------------------------------------------------------------------------------------
# cooldown_until

NOW = utc(2026, 6, 15, 20, 0)  # 13:00 PDT


@pytest.mark.parametrize("kind", ["minute", "tokens"])
def test_cooldown_minute_and_tokens_use_retry_delay(kind: Literal["minute", "tokens"]) -> None:
    assert cooldown_until(QuotaViolation(kind, None, 37.5, None, None), NOW, 60) == NOW + 37.5
    assert cooldown_until(QuotaViolation(kind, None, None, None, None), NOW, 60) == NOW + 60
    assert cooldown_until(QuotaViolation(kind, None, 0.2, None, None), NOW, 60) == NOW + 1  # at least 1 s
    assert cooldown_until(QuotaViolation(kind, None, None, None, None), NOW, 0) == NOW + 1


def test_cooldown_day_ignores_short_retry_delay() -> None:
    v = parse_rate_limit(body(quota_failure(violation(RPD_ID, "250")), retry_info("36s")))
    assert cooldown_until(v, NOW, 60) == utc(2026, 6, 16, 7)
    # Just before midnight the cooldown is short, just after it is a whole day.
    assert cooldown_until(v, utc(2026, 6, 16, 6, 59), 60) == utc(2026, 6, 16, 7)
    assert cooldown_until(v, utc(2026, 6, 16, 7, 0, 1), 60) == utc(2026, 6, 17, 7)


def test_cooldown_unknown_uses_default() -> None:
    assert cooldown_until(parse_rate_limit(b"garbage"), NOW, 90) == NOW + 90
    assert cooldown_until(QuotaViolation("unknown", None, 5.0, None, None), NOW, 90) == NOW + 90


# --------------------------------------------------------------------------------------------------------
# UsageWindow

T0 = utc(2026, 6, 15, 20, 0) + 0.123  # 13:00:00.123 PDT; fractional on purpose


def test_minute_window_rolls_over_exactly_at_60s() -> None:
    w = UsageWindow()
    w.record(T0)
    w.record(T0 + 10)
    assert w.next_minute_slot(T0 + 1) == T0 + 60
    assert w.requests_last_minute(T0 + 59.999) == 2
    assert w.requests_last_minute(T0 + 60) == 1  # the first request leaves at t + 60 exactly
    assert w.next_minute_slot(T0 + 60) == T0 + 70
    assert w.requests_last_minute(T0 + 70) == 0
    assert w.next_minute_slot(T0 + 70) == T0 + 70  # empty: now


def test_tokens_window() -> None:
    w = UsageWindow()
    w.record(T0, tokens=100)
    w.record(T0 + 5)
    w.add_tokens(T0 + 20, 250)
    w.add_tokens(T0 + 21, 0)
    assert w.tokens_last_minute(T0 + 30) == 350
    assert w.requests_last_minute(T0 + 30) == 2
    assert w.tokens_last_minute(T0 + 60) == 250
    assert w.tokens_last_minute(T0 + 80) == 0


def test_daily_counter_resets_at_pacific_not_utc_midnight() -> None:
    w = UsageWindow()
    w.record(utc(2026, 6, 15, 23, 59))  # 16:59 PDT
    w.record(utc(2026, 6, 16, 0, 1))  # UTC day changed, Pacific day did not
    assert w.requests_today(utc(2026, 6, 16, 0, 2)) == 2
    w.record(utc(2026, 6, 16, 6, 59, 59))  # 23:59:59 PDT
    assert w.requests_today(utc(2026, 6, 16, 6, 59, 59)) == 3
    assert w.requests_today(utc(2026, 6, 16, 7, 0, 0)) == 0  # Pacific midnight
    w.record(utc(2026, 6, 16, 7, 0, 1))
    assert w.requests_today(utc(2026, 6, 16, 8)) == 1
    assert w.requests_last_minute(utc(2026, 6, 16, 7, 0, 1)) == 2  # the minute window spans midnight
    assert w.requests_today(utc(2026, 6, 20, 12)) == 0  # several days later


def test_daily_counter_on_dst_day() -> None:
    w = UsageWindow()
    w.record(utc(2026, 11, 1, 7, 30))  # 00:30 PDT on the 25-hour day
    w.record(utc(2026, 11, 2, 7, 30))  # 23:30 PST, same Pacific day
    assert w.requests_today(utc(2026, 11, 2, 7, 59)) == 2
    assert w.requests_today(utc(2026, 11, 2, 8, 0)) == 0


def test_window_memory_is_bounded() -> None:
    w = UsageWindow()
    for i in range(20_000):
        w.record(T0 + i * 0.5, tokens=10)
    assert w.requests_last_minute(T0 + 19_999 * 0.5) == 120
    # The arrays keep the live minute plus a dead prefix that is cut off once it is as long as the live part (and at
    # least _COMPACT_AT entries): bounded by the rate, not by how long the proxy has run.
    bound = max(2 * 121, _COMPACT_AT + 121)
    assert len(w._req) <= bound and len(w._tok_t) <= bound and len(w._tok_n) <= bound
    assert w.tokens_last_minute(T0 + 19_999 * 0.5) == 1200


def test_window_answers_like_a_plain_list_through_many_compactions() -> None:
    # A long random run (bursts, gaps, interleaved clocks, refused requests un-counted, tokens) against the obvious
    # model: every time still in the minute window, kept in a list. The array's cut-off prefix must never show.
    import random

    rng = random.Random(11)
    w = UsageWindow()
    reqs: list[float] = []
    toks: list[tuple[float, int]] = []
    now = T0
    for step in range(30_000):
        now += rng.choice((0.0, 0.001, 0.01, 0.2, 3.0)) if step % 5000 else 70.0
        at = now - rng.choice((0.0, 0.0, 0.0, 0.002))  # now and then a caller's slightly older clock
        w.record(at)
        reqs.append(at if not reqs or at >= reqs[-1] else reqs[-1])
        if rng.random() < 0.05:
            w.forget_last(now)
            reqs = [t for t in reqs if t + 60 > now]
            if reqs:
                reqs.pop()
        if rng.random() < 0.7:
            n = rng.randint(1, 500)
            w.add_tokens(now, n)
            toks.append((now if not toks or now >= toks[-1][0] else toks[-1][0], n))
        reqs = [t for t in reqs if t + 60 > now]
        toks = [(t, n) for t, n in toks if t + 60 > now]
        if step % 97 == 0 or step % 5000 < 3:
            assert w.requests_last_minute(now) == len(reqs)
            assert w.tokens_last_minute(now) == sum(n for _, n in toks)
            assert w.next_minute_slot(now) == (reqs[0] + 60 if reqs else now)
            limit = max(1, len(reqs) // 2)  # at least 1: "fewer than 0" never happens
            assert w.requests_below_at(limit, now) == (reqs[len(reqs) - limit] + 60 if len(reqs) >= limit else now)
            total = sum(n for _, n in toks)
            want, left = now, total
            if total >= 1000:
                for t, n in toks:
                    left -= n
                    if left < 1000:
                        want = t + 60
                        break
            assert w.tokens_below_at(1000, now) == want
    assert len(w._req) <= max(2 * len(reqs) + 1, _COMPACT_AT + len(reqs) + 1)


def test_out_of_order_records_are_still_counted() -> None:
    w = UsageWindow()
    w.record(T0 + 1)
    w.record(T0)  # an interleaved caller with a slightly older clock
    assert w.requests_last_minute(T0 + 2) == 2
    assert w.requests_last_minute(T0 + 61) == 0


# --------------------------------------------------------------------------------------------------------
# limits_for


def test_limits_for_builtin_and_prefixes() -> None:
    flash = DEFAULT_LIMITS["gemini-2.5-flash"]
    assert flash == ModelLimits(rpm=10, rpd=250, tpm=250_000)
    assert limits_for("gemini-2.5-flash") == flash
    assert limits_for("models/gemini-2.5-flash") == flash
    assert limits_for("gemini-2.5-flash-preview-05-20") == flash
    assert limits_for("gemini-2.5-flash-lite") == ModelLimits(rpm=15, rpd=1000, tpm=250_000)
    assert limits_for("gemini-2.5-flash-lite-preview-06-17") == ModelLimits(rpm=15, rpd=1000, tpm=250_000)
    assert limits_for("gemini-2.0-flash-001") == ModelLimits(rpm=15, rpd=1500, tpm=1_000_000)
    assert limits_for("gemini-2.0-flash-lite") == ModelLimits(rpm=30, rpd=1500, tpm=1_000_000)
    assert limits_for("gemini-2.5-pro") == ModelLimits(rpm=5, rpd=100, tpm=250_000)
    assert limits_for("gemini-embedding-001").tpm is None
    assert limits_for("gemma-3-27b-it") == ModelLimits()
    assert limits_for("") == ModelLimits()


def test_limits_for_overrides() -> None:
    paid = ModelLimits(rpm=1000, rpd=None, tpm=1_000_000)
    fallback = ModelLimits(rpm=1, rpd=2, tpm=3)
    ov = {"gemini-2.5-flash": paid, "models/gemma-3": ModelLimits(rpm=30), "default": fallback}
    assert limits_for("gemini-2.5-flash", ov) == paid  # whole entry replaced, rpd None = unlimited
    assert limits_for("gemini-2.5-flash-preview-05-20", ov) == paid
    # The longer built-in name beats the shorter override.
    assert limits_for("gemini-2.5-flash-lite", ov) == DEFAULT_LIMITS["gemini-2.5-flash-lite"]
    assert limits_for("gemma-3-27b-it", ov) == ModelLimits(rpm=30)  # models/ stripped from override keys
    assert limits_for("unknown-model", ov) == fallback
    assert limits_for("gemini-2.5-pro", ov) == DEFAULT_LIMITS["gemini-2.5-pro"]  # default only for unknowns
    assert limits_for("gemini-2.5-pro-exp", {"gemini-2.5-pro-exp": ModelLimits(rpm=2)}) == ModelLimits(rpm=2)


# --------------------------------------------------------------------------------------------------------
# QuotaTracker

SMALL = {"m": ModelLimits(rpm=10, rpd=100, tpm=1000)}


def minute(limit: int | None = None) -> QuotaViolation:
    return QuotaViolation("minute", RPM_ID, 30.0, limit, "m")


def test_headroom_tightest_dimension_and_clamping() -> None:
    t = QuotaTracker(SMALL)
    assert t.headroom("p", "m", T0) == 1.0
    for i in range(3):
        t.record("p", "m", T0 + i)
    assert t.headroom("p", "m", T0 + 3) == pytest.approx(0.7)  # rpm 7/10 free beats rpd 97/100
    t.add_tokens("p", "m", T0 + 3, 900)
    assert t.headroom("p", "m", T0 + 3) == pytest.approx(0.1)  # tpm now tightest
    t.add_tokens("p", "m", T0 + 4, 5000)
    assert t.headroom("p", "m", T0 + 4) == 0.0  # over the limit clamps to 0
    assert t.headroom("p", "m", T0 + 64) == pytest.approx(0.97)  # minute over: rpd 97/100 left
    assert t.headroom("p", "unlisted-model", T0) == 1.0
    t.record("p", "unlisted-model", T0)
    assert t.headroom("p", "unlisted-model", T0) == 1.0  # no known limit


def test_headroom_shared_project_scope() -> None:
    t = QuotaTracker(SMALL)
    # Two keys of project "proj" record into the same scope; a project-less key has its own.
    for _ in range(4):
        t.record("proj", "m", T0)
        t.record("proj", "models/m", T0)
    t.record("key-abc", "m", T0)
    assert t.headroom("proj", "m", T0 + 1) == pytest.approx(0.2)
    assert t.headroom("proj", "models/m", T0 + 1) == pytest.approx(0.2)
    assert t.headroom("key-abc", "m", T0 + 1) == pytest.approx(0.9)
    assert t.headroom("proj", "other", T0 + 1) == 1.0


def test_daily_headroom_resets_at_pacific_midnight() -> None:
    t = QuotaTracker({"m": ModelLimits(rpd=2)})
    start = utc(2026, 6, 16, 6, 58)  # 23:58 PDT
    t.record("p", "m", start)
    t.record("p", "m", start + 1)
    assert t.headroom("p", "m", start + 2) == 0.0
    assert t.available_at("p", "m", start + 2) == utc(2026, 6, 16, 7)
    assert t.headroom("p", "m", utc(2026, 6, 16, 7)) == 1.0


def test_available_at() -> None:
    t = QuotaTracker({"m": ModelLimits(rpm=2, rpd=100, tpm=1000)})
    assert t.available_at("p", "m", T0) == T0
    t.record("p", "m", T0)
    assert t.available_at("p", "m", T0 + 1) == T0 + 1  # headroom left
    t.record("p", "m", T0 + 5)
    assert t.available_at("p", "m", T0 + 6) == T0 + 60  # oldest leaves the window
    assert t.headroom("p", "m", T0 + 60) == pytest.approx(0.5)

    t2 = QuotaTracker({"m": ModelLimits(tpm=1000)})
    t2.record("p", "m", T0, tokens=300)
    t2.record("p", "m", T0 + 10, tokens=400)
    t2.record("p", "m", T0 + 20, tokens=500)
    # 1200 used: dropping the first 300 leaves 900 < 1000.
    assert t2.available_at("p", "m", T0 + 21) == T0 + 60
    t2.add_tokens("p", "m", T0 + 22, 5000)
    assert t2.available_at("p", "m", T0 + 23) == T0 + 82  # only when the 5000 leave too

    t3 = QuotaTracker({"m": ModelLimits(rpm=1, rpd=1)})
    t3.record("p", "m", NOW)
    assert t3.available_at("p", "m", NOW + 1) == utc(2026, 6, 16, 7)  # day beats the minute slot


def test_available_at_after_limit_learned_below_usage() -> None:
    t = QuotaTracker({"m": ModelLimits(rpm=100)})
    for i in range(6):
        t.record("p", "m", T0 + i)
    t.learn("p", "m", minute(limit=3), T0 + 6)
    # 6 in the window, limit 3: free again once 4 have left, i.e. when the request at T0+3 leaves.
    assert t.available_at("p", "m", T0 + 7) == T0 + 63
    assert t.headroom("p", "m", T0 + 63) == pytest.approx(1 / 3)


def test_learn_from_quota_value_and_model_wide_default() -> None:
    t = QuotaTracker(SMALL)
    t.learn("a", "m", minute(limit=4), T0)
    assert t.limits("a", "m") == ModelLimits(rpm=4, rpd=100, tpm=1000)
    assert t.limits("b", "m") == ModelLimits(rpm=4, rpd=100, tpm=1000)  # model-wide fallback
    assert t.limits("b", "other") == ModelLimits()  # only that model
    t.record("b", "m", T0)
    assert t.headroom("b", "m", T0) == pytest.approx(0.75)
    # b learns its own limit; it wins for b, and becomes the new model-wide guess, but a keeps its own.
    t.learn("b", "m", minute(limit=8), T0)
    assert t.limits("b", "m").rpm == 8
    assert t.limits("a", "m").rpm == 4
    assert t.limits("c", "m").rpm == 8
    # Learned limits survive new overrides and beat them.
    t.set_overrides({"m": ModelLimits(rpm=50, rpd=5)})
    assert t.limits("a", "m") == ModelLimits(rpm=4, rpd=5, tpm=None)


def test_learn_from_observed_counts() -> None:
    t = QuotaTracker(SMALL)
    for i in range(7):
        t.record("p", "m", T0 + i)
    t.learn("p", "m", minute(), T0 + 7)
    assert t.limits("p", "m").rpm == 7
    assert t.headroom("p", "m", T0 + 7) == 0.0
    assert t.available_at("p", "m", T0 + 7) == T0 + 60
    t.add_tokens("p", "m", T0 + 8, 640)
    t.learn("p", "m", QuotaViolation("tokens", TPM_ID, 5.0, None, "m"), T0 + 8)
    assert t.limits("p", "m").tpm == 640
    t.learn("p", "m", QuotaViolation("day", RPD_ID, 36.0, None, "m"), T0 + 9)
    assert t.limits("p", "m").rpd == 7
    assert t.limits("other-scope", "m") == ModelLimits(rpm=7, rpd=7, tpm=640)


def test_learn_without_evidence_changes_nothing() -> None:
    t = QuotaTracker(SMALL)
    t.learn("p", "m", minute(), T0)  # nothing recorded: a 0 would wrongly block the scope
    t.record("q", "m", T0)
    t.learn("q", "m", minute(), T0 + 120)  # the recorded request already left the window
    assert t.limits("q", "m") == SMALL["m"]
    assert t.headroom("q", "m", T0 + 120) == pytest.approx(0.99)
    t.learn("p", "m", QuotaViolation("unknown", None, 10.0, 3, "m"), T0)
    assert t.limits("p", "m") == SMALL["m"]
    assert t.headroom("p", "m", T0) == 1.0


def test_limit_zero_blocks_scope_until_next_pacific_day() -> None:
    t = QuotaTracker()
    now = utc(2026, 6, 15, 20, 0)
    v = parse_rate_limit(body(quota_failure(violation(RPD_ID, "0", "gemini-2.5-pro")), retry_info("20s")))
    t.learn("p", "gemini-2.5-pro", v, now)
    assert t.headroom("p", "gemini-2.5-pro", now + 1) == 0.0
    assert t.available_at("p", "gemini-2.5-pro", now + 1) == utc(2026, 6, 16, 7)
    assert t.limits("p", "gemini-2.5-pro").rpd == 0
    assert t.usage("p", "gemini-2.5-pro", now + 1)["headroom"] == 0.0
    # Another project is not blocked (it may have billing), and the model-wide guess is unchanged.
    assert t.headroom("q", "gemini-2.5-pro", now + 1) == 1.0
    assert t.limits("q", "gemini-2.5-pro") == DEFAULT_LIMITS["gemini-2.5-pro"]
    # Next Pacific day: one more chance with the normal limits.
    later = utc(2026, 6, 16, 7, 0, 1)
    assert t.headroom("p", "gemini-2.5-pro", later) == 1.0
    assert t.limits("p", "gemini-2.5-pro") == DEFAULT_LIMITS["gemini-2.5-pro"]


def test_limit_zero_without_known_dimension_still_blocks() -> None:
    t = QuotaTracker()
    t.learn("p", "x", QuotaViolation("unknown", None, None, 0, "x"), NOW)
    assert t.headroom("p", "x", NOW) == 0.0
    assert t.available_at("p", "x", NOW) == utc(2026, 6, 16, 7)


def test_configured_zero_limit() -> None:
    t = QuotaTracker({"m": ModelLimits(rpd=0)})
    assert t.headroom("p", "m", NOW) == 0.0
    assert t.available_at("p", "m", NOW) == utc(2026, 6, 16, 7)
    t.record("p", "m", NOW)
    assert t.headroom("p", "m", NOW) == 0.0
    assert t.available_at("p", "m", NOW) == utc(2026, 6, 16, 7)


def test_usage_report() -> None:
    t = QuotaTracker(SMALL)
    t.record("p", "m", T0, tokens=100)
    t.record("p", "m", T0 + 1)
    t.add_tokens("p", "m", T0 + 1, 150)
    assert t.usage("p", "m", T0 + 2) == {
        "rpm_used": 2,
        "rpm_limit": 10,
        "rpd_used": 2,
        "rpd_limit": 100,
        "tpm_used": 250,
        "tpm_limit": 1000,
        "headroom": pytest.approx(0.75),
        "rpm_source": "configured",
        "rpd_source": "configured",
        "tpm_source": "configured",
        "available_in_s": 0.0,
    }
    assert t.usage("nobody", "m", T0)["rpm_used"] == 0
    assert ("nobody", "m") not in t._entries  # reads do not allocate


def test_tracker_prunes_idle_entries() -> None:
    t = QuotaTracker(SMALL)
    t.learn("keep", "m", minute(limit=3), T0)
    for i in range(10_000):
        t.record(f"s{i}", "m", T0 + i)  # all within one Pacific day
    assert len(t._entries) == 10_001  # still counted today: kept
    next_day = next_pacific_midnight(T0 + 10_000)
    assert t.prune(next_day + 61) == 10_000
    assert t.limits("keep", "m").rpm == 3
    t.learn("zero", "m", QuotaViolation("day", RPD_ID, 1.0, 0, "m"), T0)
    assert t.prune(T0 + 1) == 0  # blocked: kept
    assert t.prune(next_day + 1) == 1  # the block expired with the quota day
    # Automatic pruning while growing on a later day keeps the table bounded.
    t2 = QuotaTracker()
    day = 86_400.0
    for i in range(50_000):
        t2.record(f"s{i}", "m", T0 + (i // 1000) * day)
    assert len(t2._entries) < 10_000


def test_headroom_speed_sanity() -> None:
    """Not a timed assertion: prints headroom calls/s with ~50 requests in each window."""
    t = QuotaTracker({"gemini-2.0-flash-lite": ModelLimits(rpm=100, rpd=1000, tpm=1_000_000)})
    scopes = [f"p{i}" for i in range(20)]
    for s in scopes:
        for i in range(50):
            t.record(s, "gemini-2.0-flash-lite", T0 + i, tokens=1000)
    now = T0 + 55
    assert t.headroom("p0", "gemini-2.0-flash-lite", now) == pytest.approx(0.5)
    n = 100_000
    start = time.perf_counter()
    for _ in range(n // len(scopes)):
        for s in scopes:
            t.headroom(s, "gemini-2.0-flash-lite", now)
    rate = n / (time.perf_counter() - start)
    print(f"\nheadroom: {rate:,.0f} calls/s")
