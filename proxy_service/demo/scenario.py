"""The demo's pool and the fake upstream's scenario: fake keys in several projects (two of them revoked) and limits
tight enough that cooldowns show on the dashboard."""

from __future__ import annotations

import hashlib
import time
from typing import Any

DEMO_PROJECTS = ("acme-prod", "acme-staging", "research", "batch-jobs", "free-tier")
KEYS_PER_PROJECT = 2
# The demo's billing tiers (KEYRACK_PROJECT_TIERS of the demo proxy, and the tier of its history's rows): two paid
# projects take the overflow, so Trends shows spend beside the list-price line.
DEMO_TIERS = {"acme-prod": "paid", "batch-jobs": "paid"}
# Per project and model, as Google counts them; tight for the demo's rate (rhythm.DEFAULT_RATE), so that its busy
# hours and batch bursts run into them and cooldowns show.
DEMO_LIMITS: dict[str, dict[str, int | None]] = {
    "default": {"rpm": 3},
    "gemini-2.5-flash": {"rpm": 4},
    "gemini-2.5-flash-lite": {"rpm": 4},
    "gemini-2.5-pro": {"rpm": 2},
    "gemini-2.0-flash": {"rpm": 3},
    "gemini-embedding-001": {"rpm": 4},
    "text-embedding-004": {"rpm": 4},
}
DEMO_ERROR_RATES = {"503": 0.03, "500": 0.01, "midstream": 0.02, "timeout": 0.004, "reset": 0.004}


def demo_key(name: str) -> str:
    """A fake key shaped like a real one (AIza + 35 characters), the same on every run."""
    digest = hashlib.sha256(f"keyrack-demo:{name}".encode()).hexdigest()
    return "AIzaSyDemo" + digest[:29]


def demo_pool() -> tuple[str, dict[str, Any]]:
    """(KEYRACK_API_KEYS for the proxy, the fake upstream's scenario)."""
    projects = {p: [demo_key(f"{p}-{i}") for i in range(1, KEYS_PER_PROJECT + 1)] for p in DEMO_PROJECTS}
    invalid = [demo_key("revoked-1"), demo_key("revoked-2")]
    api_keys = [f"{p}:{k}" for p, keys in projects.items() for k in keys] + [f"legacy:{k}" for k in invalid]
    scenario = {
        "projects": projects,
        "invalid_keys": invalid,
        "limits": DEMO_LIMITS,
        "latency_ms": 120,
        "ttft_ms": 350,
        "tokens_per_s": 45,
        "error_rates": DEMO_ERROR_RATES,
        "timeout_s": 8,
        "seed": int(time.time()),
    }
    return ",".join(api_keys), scenario
