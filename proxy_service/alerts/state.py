"""The alert state machine, per (rule, label set): inactive → pending → firing → resolved (→ inactive).

Pure and clock-free: every step is given `now`. A breach starts `pending`; still breached `for_s` seconds later it
is `firing` (at once when `for_s` is 0); while firing it is re-notified every `repeat_s` (0 = never); when the
breach clears a firing alert is `resolved` (one message) and a pending one simply goes back to inactive.
Silenced alerts change state exactly the same way, but their messages are held back: a firing alert whose silence
ends is notified at the next step, and a silenced resolution of an alert nobody was told about stays quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Labels = tuple[tuple[str, str], ...]
Phase = Literal["inactive", "pending", "firing"]
Kind = Literal["fired", "repeat", "resolved"]
STATE_CODE = {"inactive": 0, "pending": 1, "firing": 2}


@dataclass
class AlertState:
    rule_id: str
    labels: Labels = ()
    phase: Phase = "inactive"
    since: float | None = None  # start of pending, then start of firing
    pending_since: float | None = None
    value: float | None = None
    notified_at: float | None = None  # the last firing message sent (None: nobody was told yet)


@dataclass(frozen=True)
class Transition:
    kind: Kind
    notify: bool  # False when silenced
    at: float
    started_at: float  # when the alert started firing


@dataclass
class Timing:
    for_s: float = 0.0
    repeat_s: float = 0.0


@dataclass
class Machine:
    """All states of one rule, keyed by label set."""

    rule_id: str
    states: dict[Labels, AlertState] = field(default_factory=dict)

    def step(
        self,
        values: dict[Labels, float | None],
        breached: dict[Labels, bool],
        timing: Timing,
        now: float,
        silenced: dict[Labels, bool] | None = None,
    ) -> list[tuple[AlertState, Transition]]:
        """Advance every label set seen now or alive before; a label set that disappeared counts as clear."""
        out: list[tuple[AlertState, Transition]] = []
        silenced = silenced or {}
        for labels in set(values) | set(self.states):
            st = self.states.get(labels) or AlertState(self.rule_id, labels)
            t = advance(st, values.get(labels), breached.get(labels, False), timing, now, silenced.get(labels, False))
            if t is not None:
                out.append((st, t))
            if st.phase == "inactive":
                self.states.pop(labels, None)
            else:
                self.states[labels] = st
        return out


def advance(
    st: AlertState, value: float | None, breached: bool, timing: Timing, now: float, silenced: bool = False
) -> Transition | None:
    """One evaluation of one (rule, label set); mutates `st`, returns what to record/notify, if anything."""
    st.value = value
    if not breached:
        if st.phase == "firing":
            started = st.since if st.since is not None else now
            told = st.notified_at is not None
            st.phase, st.since, st.pending_since, st.notified_at = "inactive", None, None, None
            # A resolution is worth a message only to those who heard it fire.
            return Transition("resolved", told and not silenced, now, started)
        st.phase, st.since, st.pending_since = "inactive", None, None
        return None
    if st.phase == "inactive":
        st.phase, st.since, st.pending_since = "pending", now, now
    if st.phase == "pending":
        assert st.pending_since is not None
        if now - st.pending_since < timing.for_s:
            return None
        st.phase, st.since = "firing", now
        if silenced:
            return Transition("fired", False, now, now)
        st.notified_at = now
        return Transition("fired", True, now, now)
    # firing and still breached
    started = st.since if st.since is not None else now
    if silenced:
        return None
    if st.notified_at is None:  # it fired (or repeated) under a silence that has ended since
        st.notified_at = now
        return Transition("repeat", True, now, started)
    if timing.repeat_s > 0 and now - st.notified_at >= timing.repeat_s:
        st.notified_at = now
        return Transition("repeat", True, now, started)
    return None
