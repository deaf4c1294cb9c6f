"""The pool's decisions, with a controlled clock."""

from __future__ import annotations

import pytest

from proxy_service.errors import PoolExhausted
from proxy_service.keys import KeySpec, key_id
from proxy_service.pool import Pool
from proxy_service.quota import ModelLimits, QuotaViolation, next_pacific_midnight

MODEL = "gemini-2.5-flash"
T0 = 1_790_000_000.0  # a fixed instant (2026-09-21)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_pool(strategy: str = "quota_aware", **kw: object) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool(strategy, clock=clock, **kw)  # type: ignore[arg-type]
    pool.add([KeySpec("a1", "pa"), KeySpec("a2", "pa"), KeySpec("b1", "pb"), KeySpec("c1")])
    return pool, clock


def use(pool: Pool, model: str = MODEL) -> str:
    key = pool.choose(model)
    pool.started(key, model)
    pool.finished(key)
    pool.succeeded(key, model)
    return key.secret


def minute_429(delay: float = 30.0, limit: int | None = None) -> QuotaViolation:
    return QuotaViolation("minute", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", delay, limit, MODEL)


def test_add_dedupes_and_ids_are_stable_hashes() -> None:
    pool, _ = make_pool()
    added, dups = pool.add([KeySpec("a1", "pa"), KeySpec("new")])
    assert dups == 1 and added == [key_id("new")]
    assert key_id("new") == key_id("new") and "new" not in key_id("new")


def test_round_robin_visits_every_key_in_turn() -> None:
    pool, _ = make_pool("round_robin")
    assert sorted(use(pool) for _ in range(4)) == ["a1", "a2", "b1", "c1"]


def test_least_used_prefers_the_key_with_fewest_requests() -> None:
    pool, _ = make_pool("least_used")
    for secret in ("a1", "a2", "b1"):
        pool.started(pool.keys[key_id(secret)], MODEL)
    assert use(pool) == "c1"


def test_quota_aware_spreads_over_projects_before_reusing_one() -> None:
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=10)})
    first_three = {pool.keys[key_id(use(pool))].scope for _ in range(3)}
    assert first_three == {"pa", "pb", key_id("c1")}  # three scopes, not two keys of project pa


def test_quota_aware_refuses_when_no_scope_has_headroom() -> None:
    pool, clock = make_pool(limits={MODEL: ModelLimits(rpm=2)})
    served = [use(pool) for _ in range(6)]  # 3 scopes × 2 rpm
    assert len(served) == 6
    with pytest.raises(PoolExhausted) as exc:
        pool.choose(MODEL)
    assert 1 <= exc.value.retry_after <= 60
    clock.now += 61
    assert use(pool)  # the minute window rolled over


def test_keys_of_one_project_share_headroom() -> None:
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=1)})
    scopes = [pool.keys[key_id(use(pool))].scope for _ in range(3)]
    assert sorted(scopes) == sorted(["pa", "pb", key_id("c1")])
    with pytest.raises(PoolExhausted):
        pool.choose(MODEL)  # a2 is idle, but its project pa has used its one request


def test_minute_429_cools_the_scope_for_that_model_only() -> None:
    pool, clock = make_pool("round_robin")
    a1 = pool.keys[key_id("a1")]
    cd = pool.rate_limited(a1, MODEL, minute_429(30))
    assert cd.until == pytest.approx(T0 + 30)
    assert pool.status_of(pool.keys[key_id("a2")]) == "cooling"  # same project
    assert {use(pool) for _ in range(6)} == {"b1", "c1"}
    assert use(pool, "gemini-2.5-pro") in {"a1", "a2", "b1", "c1"}  # other models unaffected
    chosen = {pool.choose("gemini-2.5-pro").secret for _ in range(8)}
    assert {"a1", "a2"} <= chosen
    clock.now += 31
    assert {use(pool) for _ in range(8)} == {"a1", "a2", "b1", "c1"}


def test_day_429_cools_until_pacific_midnight_and_bare_429_uses_default() -> None:
    pool, _ = make_pool(default_cooldown_s=45)
    day = QuotaViolation("day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", 36.0, None, MODEL)
    assert pool.rate_limited(pool.keys[key_id("a1")], MODEL, day).until == next_pacific_midnight(T0)
    bare = QuotaViolation("unknown", None, None, None, None)
    assert pool.rate_limited(pool.keys[key_id("b1")], MODEL, bare).until == pytest.approx(T0 + 45)


def test_all_cooling_raises_with_seconds_to_the_earliest_key() -> None:
    pool, _ = make_pool("round_robin")
    for secret, delay in (("a1", 50), ("b1", 20), ("c1", 40)):
        pool.rate_limited(pool.keys[key_id(secret)], MODEL, minute_429(delay))
    with pytest.raises(PoolExhausted) as exc:
        pool.choose(MODEL)
    assert exc.value.retry_after == 20
    assert exc.value.headers()["retry-after"] == "20"


def test_invalid_keys_are_skipped_until_a_recheck_passes() -> None:
    pool, _ = make_pool("round_robin")
    c1 = pool.keys[key_id("c1")]
    pool.invalid(c1, "400 API_KEY_INVALID")
    assert "c1" not in {use(pool) for _ in range(8)}
    assert c1.needs_recheck and pool.counts()["invalid"] == 1
    pool.checked(c1, ok=True)
    assert c1.status == "active" and "c1" in {use(pool) for _ in range(8)}


def test_consecutive_failures_disable_and_a_success_resets_the_streak() -> None:
    pool, _ = make_pool("round_robin", failure_threshold=3)
    b1 = pool.keys[key_id("b1")]
    pool.failed(b1, "503")
    pool.failed(b1, "503")
    pool.succeeded(b1, MODEL)
    assert b1.consecutive_failures == 0
    for _ in range(3):
        pool.failed(b1, "503")
    assert b1.status == "disabled" and b1.disabled_reason == "failures" and b1.needs_recheck
    pool.disable(pool.keys[key_id("c1")])
    assert not pool.keys[key_id("c1")].needs_recheck  # a manual disable is not undone by re-checks


def test_exclude_skips_keys_already_tried_for_the_call() -> None:
    pool, _ = make_pool("round_robin")
    tried = {key_id("a1"), key_id("a2"), key_id("b1")}
    assert pool.choose(MODEL, tried).secret == "c1"
    with pytest.raises(PoolExhausted, match="Every usable key was tried"):
        pool.choose(MODEL, tried | {key_id("c1")})


def test_no_usable_key_says_so() -> None:
    pool, _ = make_pool()
    for key in list(pool.keys.values()):
        pool.disable(key)
    with pytest.raises(PoolExhausted, match="invalid or disabled"):
        pool.choose(MODEL)


def test_reset_clears_cooldowns_and_failure_state_but_not_a_manual_disable() -> None:
    pool, _ = make_pool()
    a1 = pool.keys[key_id("a1")]
    pool.rate_limited(a1, MODEL, minute_429(30))
    pool.invalid(a1, "bad")
    pool.reset(a1)
    assert a1.status == "active" and not pool.cooldowns_of(a1)
    pool.disable(a1)
    pool.reset(a1)
    assert a1.status == "disabled"


def test_learned_limit_from_a_429_steers_quota_aware_away() -> None:
    pool, _ = make_pool()
    a1 = pool.keys[key_id("a1")]
    pool.rate_limited(a1, MODEL, minute_429(1, limit=3))
    assert pool.tracker.limits("pa", MODEL).rpm == 3


def test_built_in_limits_order_but_never_refuse_until_a_429_confirms_them() -> None:
    pool, _ = make_pool()  # no configured limits: gemini-2.5-flash has the built-in free-tier guess of rpm 10
    assert pool.tracker.sources("pa", MODEL) == {"rpm": "builtin", "rpd": "builtin", "tpm": "builtin"}
    started = []
    for _ in range(100):  # 10× the guess over 3 scopes, all in flight at once: nothing refused, nothing capped
        key = pool.choose(MODEL)
        pool.started(key, MODEL)
        started.append(key)
    assert {k.scope for k in started} == {"pa", "pb", key_id("c1")}
    assert pool.retry_after(MODEL) == 0.0
    for key in started:
        pool.finished(key)
    key = pool.choose(MODEL)
    pool.started(key, MODEL)
    pool.finished(key)
    pool.rate_limited(key, MODEL, minute_429(20, limit=10))  # Google confirms: the limit is real
    assert pool.tracker.sources("pb", MODEL)["rpm"] == "learned"  # learned limits apply model-wide
    with pytest.raises(PoolExhausted):
        pool.choose(MODEL)


def test_configured_limits_are_enforced_without_a_429() -> None:
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=1)})
    assert pool.tracker.sources("pa", MODEL)["rpm"] == "configured"
    assert pool.tracker.sources("pa", "gemini-2.0-flash")["rpm"] == "builtin"
    for _ in range(3):
        use(pool)
    with pytest.raises(PoolExhausted):
        pool.choose(MODEL)


def test_a_success_past_the_guess_disproves_it() -> None:
    pool, _ = make_pool()
    for _ in range(30):
        use(pool)  # the built-in guess (rpm 10 × 3 scopes) says every scope is full: nothing beyond it yet
    assert pool.tracker.limits("pa", MODEL).rpm == 10
    use(pool)  # served past the guess: a higher tier
    assert pool.tracker.limits("pa", MODEL).rpm is None and pool.tracker.sources("pa", MODEL)["rpm"] is None
    assert pool.headroom(MODEL) == 1.0


def test_looking_never_moves_the_cursor() -> None:
    looked, plain = make_pool("round_robin")[0], make_pool("round_robin")[0]
    order = []
    for _ in range(8):
        assert looked.retry_after(MODEL) == 0.0 and looked.headroom(MODEL) > 0.0
        order.append(use(looked))
    assert order == [use(plain) for _ in range(8)]


def test_retry_after_is_the_earliest_of_cooldowns_and_hard_limits() -> None:
    pool, clock = make_pool(limits={MODEL: ModelLimits(rpm=1)})
    first = []
    for _ in range(3):
        first.append(pool.keys[key_id(use(pool))])  # each scope uses its one request: at T0, T0+5, T0+10
        clock.now += 5
    assert pool.retry_after(MODEL) == pytest.approx(45.0)  # the first scope's request leaves its window at T0+60
    pool.rate_limited(first[0], MODEL, minute_429(55))  # ...but a 429 cools that scope until T0+70
    assert pool.retry_after(MODEL) == pytest.approx(50.0)  # so the second scope, at T0+65, is the earliest
    with pytest.raises(PoolExhausted) as exc:
        pool.choose(MODEL)
    assert exc.value.retry_after == 50 and "retry in 50s." in exc.value.message
    assert exc.value.headers()["retry-after"] == "50" and exc.value.headers()["retry-after-ms"] == "50000"
    clock.now = T0 + 65
    assert pool.retry_after(MODEL) == 0.0 and pool.headroom(MODEL) == 1.0  # pb's window is empty again
    for key in list(pool.keys.values()):
        pool.disable(key)
    assert pool.retry_after(MODEL) is None and pool.headroom(MODEL) == 0.0


def test_refused_attempts_give_their_quota_slot_back_but_timeouts_keep_it() -> None:
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=5)})
    a1 = pool.keys[key_id("a1")]
    pool.started(a1, MODEL)
    pool.failed(a1, "503 UNAVAILABLE", MODEL)  # upstream refused: it did not count the call
    assert pool.tracker.usage("pa", MODEL, T0)["rpm_used"] == 0
    pool.started(a1, MODEL)
    pool.failed(a1, "timeout")  # upstream may have served it: stays counted
    assert pool.tracker.usage("pa", MODEL, T0)["rpm_used"] == 1


# -- what the quota-pressure benchmark found (bench/quota_pressure.py) --------------------------------------------
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"


def _pool(limits: dict[str, ModelLimits]) -> tuple[Pool, list[float]]:
    now = [T0]
    pool = Pool("quota_aware", limits=limits, clock=lambda: now[0])
    pool.add([KeySpec("a1", "pa"), KeySpec("a2", "pa")])
    return pool, now


def test_a_refused_attempt_gives_its_slot_back() -> None:
    pool, now = _pool({MODEL: ModelLimits(rpm=3)})
    a1 = pool.keys[key_id("a1")]
    for _ in range(2):
        pool.started(a1, MODEL)
        now[0] += 1
    pool.started(a1, MODEL)  # upstream refuses this one (its own window disagreed): 429
    pool.rate_limited(a1, MODEL, QuotaViolation("minute", RPM_ID, 1.0, 3, MODEL))
    assert pool.tracker.usage("pa", MODEL, now[0])["rpm_used"] == 2  # upstream counted 2, so do we
    now[0] += 1.5  # the 429's cooldown is over: the slot the refused call never used is free
    assert pool.choose(MODEL).scope == "pa"


def test_a_limit_learned_from_observed_usage_is_not_one_too_high() -> None:
    pool, now = _pool({MODEL: ModelLimits()})
    a1 = pool.keys[key_id("a1")]
    for _ in range(5):  # upstream admitted 5 ...
        pool.started(a1, MODEL)
        now[0] += 1
    pool.started(a1, MODEL)  # ... and refused the 6th, with a 429 that gives no quotaValue
    pool.rate_limited(a1, MODEL, QuotaViolation("minute", RPM_ID, 30.0, None, MODEL))
    assert pool.tracker.limits("pa", MODEL).rpm == 5


# -- why a refusal happens (issue 25, item 7): the 429's message and its Google details say it ----------------------


def refusal(pool: Pool) -> PoolExhausted:
    with pytest.raises(PoolExhausted) as exc:
        pool.choose(MODEL)
    return exc.value


def quota_ids(exc: PoolExhausted) -> list[str]:
    return [v["quotaId"] for d in exc.details() if d["@type"].endswith("QuotaFailure") for v in d["violations"]]


def test_a_configured_limit_refusal_names_the_configured_limit_not_a_cooldown() -> None:
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=1)})
    for _ in range(3):
        use(pool)
    exc = refusal(pool)
    assert "configured limit of 1 request per minute" in exc.message and "cooling" not in exc.message
    assert exc.cause == "configured_limit"
    assert quota_ids(exc) == ["GenerateRequestsPerMinutePerProjectPerModel"]


def test_a_learned_limit_refusal_says_it_was_learned_from_google() -> None:
    pool, clock = make_pool()
    for _ in range(3):
        use(pool)  # each of the three scopes served one call
    second = pool.keys[key_id("a2")]
    pool.started(second, MODEL)  # pa's second call of the minute: Google refuses it, saying the limit is 1
    pool.rate_limited(second, MODEL, minute_429(delay=5.0, limit=1))
    clock.now += 6  # the cooldown is over, the learned limit (1 per minute, for every scope) is not
    exc = refusal(pool)
    assert "limit learned from Google's 429s (1 request per minute)" in exc.message, exc.message
    assert "configured" not in exc.message and exc.cause == "learned_limit"
    assert quota_ids(exc) == ["GenerateRequestsPerMinutePerProjectPerModel"]


def test_every_scope_cooling_says_cooling_with_googles_quota_id_and_kind() -> None:
    pool, _ = make_pool()
    day = QuotaViolation("day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", 30.0, None, MODEL)
    for secret in ("a1", "b1", "c1"):
        pool.rate_limited(pool.keys[key_id(secret)], MODEL, day)
    exc = refusal(pool)
    assert "cooling down after Google answered 429 (per-day quota" in exc.message and exc.cause == "upstream_cooldown"
    assert quota_ids(exc) == ["GenerateRequestsPerDayPerProjectPerModel-FreeTier"]
    retry = [d["retryDelay"] for d in exc.details() if d["@type"].endswith("RetryInfo")]
    assert retry == [f"{exc.retry_after}s"] and exc.retry_after > 60


def test_mixed_refusals_name_each_and_the_details_follow_the_scope_that_frees_first() -> None:
    """A project out for the day beside one at a per-minute limit: the wait and the quota id are the minute's."""
    pool, _ = make_pool(limits={MODEL: ModelLimits(rpm=1)})
    for _ in range(3):
        use(pool)
    day = QuotaViolation("day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", 30.0, None, MODEL)
    pool.rate_limited(pool.keys[key_id("a1")], MODEL, day)
    exc = refusal(pool)
    assert "configured limit of 1 request per minute" in exc.message and "per-day quota" in exc.message
    assert quota_ids(exc) == ["GenerateRequestsPerMinutePerProjectPerModel"] and exc.retry_after <= 60


def test_a_bare_upstream_429_cooldown_gives_retry_info_without_inventing_a_quota() -> None:
    pool, _ = make_pool()
    bare = QuotaViolation("unknown", None, None, None, None)
    for secret in ("a1", "b1", "c1"):
        pool.rate_limited(pool.keys[key_id(secret)], MODEL, bare)
    exc = refusal(pool)
    assert "cooling down after Google answered 429 (no quota details)" in exc.message
    assert quota_ids(exc) == [] and any(d["@type"].endswith("RetryInfo") for d in exc.details())


# -- billing tiers: free first, paid as overflow, the paid spend cap ------------------------------------------------
def tiered_pool(cap: float | None = None) -> tuple[Pool, Clock]:
    clock = Clock()
    pool = Pool("quota_aware", clock=clock)
    pool.add([KeySpec(f"f{i}", f"free{i}") for i in range(4)] + [KeySpec("p1", "paid"), KeySpec("p2", "paid")])
    pool.set_billing({"paid": "paid", "free0": "free"}, cap)
    return pool, clock


def test_free_capacity_is_used_first_and_only_the_overflow_lands_on_paid() -> None:
    pool, _ = tiered_pool()  # gemini-2.5-flash: the built-in free-tier guess, rpm 10 per project
    served = [pool.keys[key_id(use(pool))].project for _ in range(60)]  # 1.5x the free projects' minute
    assert all(p != "paid" for p in served[:40]), served[:40]
    assert served[40:] == ["paid"] * 20
    assert sorted(served[:40]) == sorted(f"free{i}" for i in range(4) for _ in range(10))
    # The paid project's successes past the guess prove nothing about the free tier: its guess stands.
    assert pool.tracker.limits("free0", MODEL).rpm == 10


def test_free_scopes_full_by_the_guess_are_still_used_when_paid_is_out() -> None:
    pool, _ = tiered_pool()
    for secret in ("p1", "p2"):
        pool.rate_limited(pool.keys[key_id(secret)], MODEL, minute_429())
    served = {pool.keys[key_id(use(pool))].project for _ in range(50)}
    assert served == {f"free{i}" for i in range(4)}  # the guess orders, never refuses


def test_paid_daily_cap_stops_paid_use_until_the_next_quota_day() -> None:
    pool, clock = tiered_pool(cap=0.05)
    for i in range(4):
        pool.rate_limited(pool.keys[key_id(f"f{i}")], MODEL, minute_429(delay=600))
    assert pool.choose(MODEL).project == "paid"
    pool.spent(0.03)
    assert pool.choose(MODEL).project == "paid"  # under the cap
    pool.spent(0.03)
    with pytest.raises(PoolExhausted) as err:
        pool.choose(MODEL)
    assert "paid_daily_cap_usd 0.05 reached" in str(err.value)
    wait = pool.retry_after(MODEL)
    assert wait is not None and 0 < wait <= 600 < next_pacific_midnight(T0) - T0  # the free cooldowns end first
    assert err.value.retry_after == pytest.approx(wait, abs=1)
    for i in range(4):
        pool.cooldowns.clear()
        pool.disable(pool.keys[key_id(f"f{i}")])
    assert pool.retry_after(MODEL) == pytest.approx(next_pacific_midnight(T0) - T0)  # paid: at the day's end
    clock.now = next_pacific_midnight(T0) + 1  # a new quota day: the spend starts from zero
    assert pool.choose(MODEL).project in {"paid", *(f"free{i}" for i in range(4))}
    assert not pool.paid_capped(clock.now) and pool.paid_spent_usd == 0.0
    pool.set_billing({"paid": "paid"}, None)
    pool.spent(1e9)
    assert not pool.paid_capped(clock.now)  # no cap set


def test_the_other_replicas_paid_spend_counts_toward_the_cap() -> None:
    now = 1_800_000_000.0
    pool = Pool(clock=lambda: now)
    pool.set_billing({"pp": "paid"}, 1.0)
    day, own = pool.own_paid_spend(now)
    assert own == 0.0 and not pool.paid_capped(now)
    pool.peers_paid_spend("1999-01-01", 5.0)  # another quota day: not this one's
    assert not pool.paid_capped(now)
    pool.peers_paid_spend(day, 0.6)
    pool.spent(0.3)
    assert not pool.paid_capped(now)
    pool.spent(0.2)
    assert pool.paid_capped(now) and pool.own_paid_spend(now) == (day, 0.5)


def test_a_success_after_the_keys_were_persisted_marks_its_key_for_the_next_write() -> None:
    """The counters are written in batches (the dirty keys); a call that started before a write and succeeded
    after it must be written by the next one, not only at the key's next call (a CI run saw the lake three
    successes short after the last calls of a load)."""
    pool, _ = make_pool()
    key = pool.choose(MODEL, set())
    pool.started(key, MODEL)
    pool.dirty.clear()  # the periodic write took the key here, the call still in flight
    pool.succeeded(key, MODEL)
    assert key.id in pool.dirty
    assert (key.requests, key.successes) == (1, 1)
