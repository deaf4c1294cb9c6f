"""Alert rules (validation naming the field) and the state machine, with an injected clock."""

from __future__ import annotations

import pytest

from proxy_service.alerts.rules import METRICS, RuleError, default_rules, parse_rule
from proxy_service.alerts.state import AlertState, Machine, Timing, advance

BASE = {"name": "r", "metric": "success_rate", "op": "<", "threshold": 0.9, "window_s": 60}


def test_a_full_rule_round_trips_and_defaults_apply() -> None:
    rule = parse_rule(
        {
            **BASE,
            "for_s": 30,
            "severity": "critical",
            "filters": {"model": "gemini-2.5-pro"},
            "group_by": "project",
            "channels": ["c1", "c1"],
        }
    )
    assert rule.enabled and rule.repeat_s == 3600 and rule.channels == ("c1",)
    again = parse_rule(rule.to_dict())
    assert again == rule


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"metric": "nope"}, "metric"),
        ({"op": "=="}, "op"),
        ({"window_s": -5}, "window_s"),
        ({"window_s": 1.5}, "window_s"),
        ({"window_s": 10**9}, "window_s"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": 1e30}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"for_s": -1}, "for_s"),
        ({"severity": "page"}, "severity"),
        ({"channels": "c1"}, "channels"),
        ({"filters": {"colour": "x"}}, "filters.colour"),
        ({"filters": {"model": "a b;drop"}}, "filters.model"),
        ({"group_by": "colour"}, "group_by"),
        ({"enabled": "yes"}, "enabled"),
        ({"name": ""}, "name"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_fields_are_named(patch: dict, field: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule({**BASE, **patch})
    assert err.value.field == field


def test_missing_required_fields_and_unknown_channels_are_named() -> None:
    body = dict(BASE)
    del body["window_s"]
    with pytest.raises(RuleError, match="window_s"):
        parse_rule(body)
    with pytest.raises(RuleError) as err:
        parse_rule({**BASE, "channels": ["nope"]}, known_channels={"c1"})
    assert err.value.field == "channels"


def test_grouping_and_filters_must_suit_the_metric() -> None:
    with pytest.raises(RuleError) as err:
        parse_rule({**BASE, "metric": "invalid_keys", "group_by": "model"})
    assert err.value.field == "group_by"
    with pytest.raises(RuleError) as err:
        parse_rule({**BASE, "metric": "invalid_keys", "filters": {"model": "m"}})
    assert err.value.field == "filters"


def test_a_patch_keeps_the_rest_and_the_id() -> None:
    rule = parse_rule(BASE)
    patched = parse_rule({"threshold": 0.5, "enabled": False}, base=rule)
    assert (patched.id, patched.metric, patched.threshold, patched.enabled) == (rule.id, rule.metric, 0.5, False)


def test_default_rules_are_valid_disabled_and_use_known_metrics() -> None:
    rules = default_rules()
    assert len(rules) >= 8 and all(not r.enabled for r in rules)
    assert {r.metric for r in rules} <= set(METRICS)
    assert {
        "invalid_keys",
        "active_keys",
        "success_rate",
        "error_rate",
        "exhausted_rate",
        "upstream_429_rate",
        "p95_latency_ms",
        "calls",
    } <= set(METRICS)


def test_breach_comparisons_and_missing_data() -> None:
    for op, value, expected in [
        (">", 2, True),
        (">", 1, False),
        (">=", 1, True),
        ("<", 0.5, True),
        ("<=", 1, True),
        ("<", 1, False),
    ]:
        assert parse_rule({**BASE, "op": op, "threshold": 1}).breached(value) is expected
    assert parse_rule(BASE).breached(None) is False


# -- the state machine -----------------------------------------------------------------------------------------------
def run(st: AlertState, timing: Timing, steps: list[tuple[float, bool]], silenced: set[float] | None = None) -> list:
    out = []
    for now, breached in steps:
        t = advance(st, 1.0, breached, timing, now, now in (silenced or set()))
        out.append((now, st.phase, t.kind if t else None, t.notify if t else None))
    return out


def test_pending_then_firing_after_for_then_resolved_once() -> None:
    st = AlertState("r")
    got = run(
        st,
        Timing(for_s=30, repeat_s=0),
        [(0, True), (15, True), (29, True), (30, True), (45, True), (60, False), (75, False)],
    )
    assert got == [
        (0, "pending", None, None),
        (15, "pending", None, None),
        (29, "pending", None, None),
        (30, "firing", "fired", True),
        (45, "firing", None, None),
        (60, "inactive", "resolved", True),
        (75, "inactive", None, None),
    ]


def test_a_blip_shorter_than_for_never_fires() -> None:
    st = AlertState("r")
    got = run(st, Timing(for_s=30), [(0, True), (20, False), (25, True), (50, True), (55, True)])
    assert [g[2] for g in got] == [None, None, None, None, "fired"]  # the clock restarted at 25


def test_for_zero_fires_at_once_and_repeat_renotifies() -> None:
    st = AlertState("r")
    got = run(st, Timing(for_s=0, repeat_s=60), [(0, True), (30, True), (60, True), (90, True), (125, True)])
    assert [(g[0], g[2]) for g in got] == [(0, "fired"), (30, None), (60, "repeat"), (90, None), (125, "repeat")]


def test_silence_holds_messages_but_not_state() -> None:
    st = AlertState("r")
    got = run(st, Timing(for_s=0, repeat_s=0), [(0, True), (10, True), (20, True), (30, False)], silenced={0, 10})
    # fired silenced (recorded, not sent); told once the silence ended; the resolution then is sent too
    assert [(g[2], g[3]) for g in got] == [("fired", False), (None, None), ("repeat", True), ("resolved", True)]


def test_a_resolution_nobody_heard_fire_is_not_sent() -> None:
    st = AlertState("r")
    got = run(st, Timing(), [(0, True), (10, False)], silenced={0})
    assert [(g[2], g[3]) for g in got] == [("fired", False), ("resolved", False)]


def test_machine_tracks_label_sets_and_clears_vanished_ones() -> None:
    m = Machine("r")
    a, b = (("model", "a"),), (("model", "b"),)
    out = m.step({a: 5.0, b: 5.0}, {a: True, b: True}, Timing(), 0)
    assert sorted(st.labels for st, t in out if t.kind == "fired") == [a, b]
    out = m.step({a: 5.0}, {a: True}, Timing(), 10)  # b no longer reported: it resolves
    assert [(st.labels, t.kind) for st, t in out] == [(b, "resolved")]
    assert set(m.states) == {a}
    assert m.states[a].since == 0
