"""Capacity planning: how many projects (and so keys) a target load needs, what removing projects or a changed limit
does to the headroom, and which keys carry no weight.

Quota belongs to a Google Cloud project, not to a key: keys of one project share its per-model limits, so a second
key in a project adds nothing. Capacity is therefore counted per project (a key without a known project counts as
its own project, which is what the pool assumes too). Pure: the pool is read, never changed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy_service.pool import Pool


@dataclass(frozen=True)
class Targets:
    rpm: float | None
    rpd: float | None
    rpm_source: str | None  # "given" | "forecast_peak" | "current_rate"
    rpd_source: str | None  # "given" | "forecast_peak" | "current_projection"


def _capacity(values: list[int | None]) -> float | None:
    if any(v is None for v in values):
        return None  # an unlimited project: no finite capacity
    return float(sum(v for v in values if v is not None))


def _needed(target: float | None, per_project: int | None) -> int:
    if not target or target <= 0:
        return 0
    if per_project is None:
        return 1  # no known limit: one project serves any load as far as anyone knows
    if per_project <= 0:
        return -1  # cannot be served at all
    return math.ceil(target / per_project)


def _row(dim: str, target: float | None, before: float | None, after: float | None) -> dict[str, Any]:
    def room(cap: float | None) -> float | None:
        return None if cap is None or target is None else cap - target

    def pct(cap: float | None) -> float | None:
        return None if cap is None or target is None or cap <= 0 else round(100.0 * (cap - target) / cap, 1)

    return {
        "dim": dim,
        "target": target,
        "capacity_before": before,
        "capacity_after": after,
        "headroom_before": room(before),
        "headroom_after": room(after),
        "headroom_before_pct": pct(before),
        "headroom_after_pct": pct(after),
    }


def plan(
    pool: Pool,
    model: str,
    targets: Targets,
    remove_projects: list[str] | None = None,
    limit_rpm: int | None = None,
    limit_rpd: int | None = None,
) -> dict[str, Any]:
    """Projects and keys needed for `targets` on `model`, with the before/after headroom of the given changes."""
    tracker = pool.tracker
    removed = set(remove_projects or [])
    by_scope: dict[str, list[str]] = {}
    project_of: dict[str, str | None] = {}
    for key in list(pool.keys.values()):
        if key.status == "active":
            by_scope.setdefault(key.scope, []).append(key.id)
            project_of[key.scope] = key.project
    projects: list[dict[str, Any]] = []
    for scope in sorted(by_scope):
        lim = tracker.limits(scope, model)
        after_rpm = limit_rpm if limit_rpm is not None else lim.rpm
        after_rpd = limit_rpd if limit_rpd is not None else lim.rpd
        projects.append(
            {
                "project": project_of[scope],
                "scope": scope,
                "keys": len(by_scope[scope]),
                "rpm": lim.rpm,
                "rpd": lim.rpd,
                "rpm_source": tracker.limit_source(scope, model, "rpm"),
                "rpd_source": tracker.limit_source(scope, model, "rpd"),
                "removed": scope in removed,
                "rpm_after": after_rpm,
                "rpd_after": after_rpd,
            }
        )
    kept = [p for p in projects if not p["removed"]]
    model_lim = tracker.limits("", model)  # what a new project would get: model-wide learned > configured > built-in
    per_rpm = limit_rpm if limit_rpm is not None else model_lim.rpm
    per_rpd = limit_rpd if limit_rpd is not None else model_lim.rpd
    if kept:
        # A typical project of this pool (the median), not the best one: plans should not rest on an outlier.
        rpms = [p["rpm_after"] for p in kept]
        rpds = [p["rpd_after"] for p in kept]
        per_rpm = None if None in rpms else int(statistics.median_low(rpms))
        per_rpd = None if None in rpds else int(statistics.median_low(rpds))
    need_rpm, need_rpd = _needed(targets.rpm, per_rpm), _needed(targets.rpd, per_rpd)
    notes: list[str] = []
    if -1 in (need_rpm, need_rpd):
        notes.append(f"{model} has a limit of 0 in this pool: no number of projects serves it (no quota on this tier)")
        needed = None
    else:
        needed = max(need_rpm, need_rpd)
    headroom = [
        _row("rpm", targets.rpm, _capacity([p["rpm"] for p in projects]), _capacity([p["rpm_after"] for p in kept])),
        _row("rpd", targets.rpd, _capacity([p["rpd"] for p in projects]), _capacity([p["rpd_after"] for p in kept])),
    ]
    idle: list[dict[str, Any]] = [
        {"project": project_of[s], "keys": ids, "extra": len(ids) - 1}
        for s, ids in sorted(by_scope.items())
        if len(ids) > 1
    ]
    for group in idle:
        notes.append(
            f"project {group['project']} has {len(group['keys'])} keys sharing one quota: "
            f"{group['extra']} of them add no capacity"
        )
    unknown = [p["scope"] for p in projects if p["project"] is None]
    if unknown:
        notes.append(
            f"{len(unknown)} key(s) have no project set; each is counted as its own project — if some share "
            "a project, the real capacity is lower"
        )
    if per_rpd is None and targets.rpd:
        notes.append(
            "no per-day limit is known for this model: the per-day target needs no extra project as far as "
            "the pool knows (a 429 teaches the real limit)"
        )
    if targets.rpm_source == "forecast_peak":
        notes.append("target rpm = the forecast's busiest hour / 60: bursts inside a minute can go higher")
    return {
        "model": model,
        "targets": {
            "rpm": targets.rpm,
            "rpm_source": targets.rpm_source,
            "rpd": targets.rpd,
            "rpd_source": targets.rpd_source,
        },
        "per_project": {"rpm": per_rpm, "rpd": per_rpd},
        "projects_now": len(projects),
        "projects_after": len(kept),
        "projects_needed": needed,
        "keys_needed": needed,  # one key per project is enough; more keys in a project add nothing
        "projects_to_add": None if needed is None else max(0, needed - len(kept)),
        "headroom": headroom,
        "projects": projects,
        "idle_keys": idle,
        "notes": notes,
    }
