"""Which label sets an alert rule may hold: values Keyrack knows, and at most `MAX_SERIES` of them per rule.

A rule grouped by model, project or key gets one series (a state machine, a /metrics line, messages) per value it
sees, and the values come from the data, which carries what clients send. So a grouped rule keeps only values that
Keyrack itself knows:
- model: `known_models` (the built-in limits table, the operator's `model_limits`, models upstream served to an
  authenticated client), never a name someone merely sent;
- project: a project (or, for a key without one, the scope Keyrack counts it under) of a key in the pool;
- key: the id of a key in the pool;
- "" (no project, no key: a call Keyrack refused before choosing a key) is one value like any other; a call
  without a model (or with a junk name, which is dropped) has no place in a rule grouped by model.
Label sets with any other value are left out of the rule's series (the ungrouped figures still count the calls of
authenticated clients) and counted: the rule's `series` state and `keyrack_alert_series_excluded` say how many.

Over the cap, the rule keeps the series that already have state, then the worst values, and folds the rest into one
series labelled `(others)` that carries the worst of their values: a breach among them still fires — once, for all
of them — and the fold is counted the same way. Nothing is ever dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from proxy_service import known_models
from proxy_service.alerts.rules import Rule
from proxy_service.alerts.state import Labels

if TYPE_CHECKING:
    from proxy_service.pool import Pool

MAX_SERIES = 100
OTHERS = "(others)"


@dataclass(frozen=True)
class KnownLabels:
    configured_models: frozenset[str]
    projects: frozenset[str]
    keys: frozenset[str]

    @classmethod
    def of(cls, pool: Pool, model_limits: Collection[str]) -> KnownLabels:
        keys = list(pool.keys.values())
        return cls(
            known_models.configured(model_limits),
            frozenset({k.project for k in keys if k.project} | {k.scope for k in keys}),
            frozenset(k.id for k in keys),
        )

    def model(self, name: str) -> bool:
        return known_models.is_known(name, self.configured_models)

    def admits(self, labels: Labels) -> bool:
        for dim, value in labels:
            if dim == "model":
                ok = self.model(value)
            elif dim == "project":
                ok = value == "" or value in self.projects
            elif dim == "key":
                ok = value == "" or value in self.keys
            else:
                ok = False
            if not ok:
                return False
        return True


@dataclass
class Admission:
    """What the last evaluation of a rule did with the label sets it saw."""

    series: int = 0  # label sets evaluated (the fold counts as one)
    unknown: int = 0  # left out: a value Keyrack does not know
    folded: int = 0  # over the cap: evaluated together as (others)
    cap: int = MAX_SERIES

    def view(self) -> dict[str, Any]:
        return asdict(self)


def _worst(rule: Rule, values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if rule.op in (">", ">=") else min(finite)


def admit(
    rule: Rule,
    values: dict[Labels, float | None],
    live: Collection[Labels],
    known: KnownLabels,
    cap: int = MAX_SERIES,
) -> tuple[dict[Labels, float | None], Admission]:
    """The label sets `rule` evaluates now (`live`: those with state from before) and what was left out."""
    adm = Admission(cap=cap)
    kept: dict[Labels, float | None] = {}
    for labels, value in values.items():
        if known.admits(labels):
            kept[labels] = value
        else:
            adm.unknown += 1
    if len(kept) <= cap:
        adm.series = len(kept)
        return kept, adm
    high_is_bad = rule.op in (">", ">=")

    def rank(item: tuple[Labels, float | None]) -> tuple[bool, float, Labels]:
        labels, v = item
        badness = v if v is not None and math.isfinite(v) else -math.inf
        if not high_is_bad and v is not None and math.isfinite(v):
            badness = -v
        return (labels not in live, -badness, labels)

    ranked = sorted(kept.items(), key=rank)
    own, rest = ranked[: cap - 1], ranked[cap - 1 :]
    out = dict(own)
    out[((rule.group_by, OTHERS),)] = _worst(rule, [v for _l, v in rest])
    adm.series, adm.folded = len(out), len(rest)
    return out, adm
