"""Clients page: the client records as a table (use against each limit), and the bodies its forms send.

Pure functions over the admin API's answers (`GET /admin/api/clients`), so they are tested without Streamlit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

LIMITS = ("rpm", "rpd", "tpd", "calls_per_month", "tokens_per_month", "concurrency")
CLASSES = ("interactive", "standard", "batch")
COLUMNS = ["id", "label", "owner", "class", "status", *LIMITS, "limit_at", "models", "last_used_at", "expires_at"]


def use_text(usage: dict[str, Any] | None) -> str:
    """One limit's use: "12 / 100", or just "12" when it has no limit."""
    if not usage:
        return ""
    used, limit = usage.get("used", 0), usage.get("limit")
    return f"{used:,} / {limit:,}" if limit is not None else f"{used:,}"


def records(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listing's records (not the ids only seen in events)."""
    return [c for c in items if c.get("source") in ("api", "config")]


def soonest_limit(limit_at: Mapping[str, Any] | None, label: Callable[[str], str] = str) -> str:
    """The per-day or per-month limit a client reaches first at its pace ("Calls / day · 2026-12-08 14:05"), or ""."""
    due = sorted((str(at), name) for name, at in (limit_at or {}).items() if at)
    if not due:
        return ""
    at, name = due[0]
    return f"{label(name)} · {at.replace('T', ' ')[:16]}"


def frame(items: list[dict[str, Any]], label: Callable[[str], str] = str) -> pd.DataFrame:
    """`label`: a limit's name as the page shows it."""
    rows = []
    for c in records(items):
        usage = c.get("usage") or {}
        rows.append(
            {
                "id": c["id"],
                "label": c.get("label") or "",
                "owner": c.get("owner") or "",
                "class": c.get("class") or "",
                "status": c.get("status") or "",
                **{name: use_text(usage.get(name)) for name in LIMITS},
                "limit_at": soonest_limit(c.get("limit_at"), label),
                "models": ", ".join(c["models"]) if c.get("models") is not None else "*",
                "last_used_at": c.get("last_used_at") or "",
                "expires_at": c.get("expires_at") or "",
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


BUSY_COLUMNS = ["label", "class", "rpm", "rpd", "tpd", "concurrency", "limit_at"]


def busiest(items: list[dict[str, Any]], n: int = 8, label: Callable[[str], str] = str) -> pd.DataFrame:
    """Monitor's clients panel: the active records that made calls today, busiest first (calls in the last minute,
    then today), with their use against limits and the soonest forecast limit."""
    rows = []
    for c in records(items):
        usage = c.get("usage") or {}
        today = (usage.get("rpd") or {}).get("used", 0)
        if c.get("status") != "active" or not today:
            continue
        minute = (usage.get("rpm") or {}).get("used", 0)
        rows.append(
            (
                (-minute, -today),
                {
                    "label": c.get("label") or c["id"],
                    "class": c.get("class") or "",
                    **{name: use_text(usage.get(name)) for name in ("rpm", "rpd", "tpd", "concurrency")},
                    "limit_at": soonest_limit(c.get("limit_at"), label),
                },
            )
        )
    rows.sort(key=lambda r: r[0])
    return pd.DataFrame([r[1] for r in rows[:n]], columns=BUSY_COLUMNS)


def near_limit(items: list[dict[str, Any]], share: float = 0.8) -> list[tuple[str, str, float]]:
    """(label, limit, used share) of every active client at or above `share` of a limit, fullest first."""
    out = []
    for c in records(items):
        if c.get("status") != "active":
            continue
        for name, u in (c.get("usage") or {}).items():
            limit = u.get("limit")
            if limit:
                used = u.get("used", 0) / limit
                if used >= share:
                    out.append((str(c.get("label")), name, used))
    return sorted(out, key=lambda x: -x[2])


def create_body(
    label: str, cls: str, owner: str, models: str, limits: Mapping[str, int | None], expires_at: str | None
) -> dict[str, Any]:
    """The POST body the create form means: blank fields left out, models as a list (blank: every model)."""
    body: dict[str, Any] = {"label": label.strip(), "class": cls}
    if owner.strip():
        body["owner"] = owner.strip()
    names = [m.strip() for m in models.replace("\n", ",").split(",") if m.strip()]
    if names:
        body["models"] = names
    chosen = {k: v for k, v in limits.items() if v}
    if chosen:
        body["limits"] = chosen
    if expires_at:
        body["expires_at"] = expires_at
    return body
