"""What the live demo sends and what becomes of it, as shares: the one description the demo's traffic generator
follows (traffic.py) and its history is drawn from (history.py), so that the history reads as the live demo's past.

- `rhythm.py`: the demand over the week (quiet nights, a busy afternoon, quieter weekends), mean 1, and the batch
  bursts. The live generator multiplies its rate by it, the history draws its hourly counts from it.
- `shapes()`: every kind of call the demo's clients make (client, surface, operation, model, stream) with its share
  of the calls and how Keyrack answers it (forwarded, refused by Keyrack, refused by Google), from the clients'
  habits and the batch bursts of traffic.py.
- The upstream's faults per attempt (scenario.py's error rates) and the pool's capacity per model (its limits times
  its projects): over capacity the share above it is refused `exhausted`, as the live pool does.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from proxy_service.demo import scenario, traffic
from proxy_service.demo.rhythm import (
    BURST_CLIENT,
    BURST_KINDS,
    BURST_MODELS,
    BURST_SIZE,
    DEFAULT_RATE,
    burst_gap_mean_s,
    burst_rate,
)


@dataclass(frozen=True)
class Shape:
    """One kind of call the demo makes, with its share of all calls."""

    client: str | None  # the habit's name (its client's label); None: a wrong token (unauthenticated)
    surface: str
    operation: str
    model: str | None
    stream: bool
    share: float
    refused: tuple[int, str] | None = None  # Keyrack answers itself: (status, outcome), no key, no attempt
    upstream_refuses: float = 0.0  # the share Google refuses as the client's fault (400/404), after one attempt
    upstream_status: int = 400


# Calls Keyrack refuses itself, and calls Google refuses as the client's fault (traffic.py's bad requests).
_REFUSED = {
    "bad_json": (400, "client_error"),
    "bad_model_name": (400, "client_error"),
    "wrong_token": (401, "unauthorized"),
}
_UPSTREAM_404 = ("unknown_model",)
_UPSTREAM_400 = {"bad_field": 1.0, "count": 0.3}  # countTokens with a generationConfig (30 % of bodies carry one)


def _operation(spec: traffic.Spec) -> str:
    if spec.surface == "openai":
        return "embeddings" if spec.path.endswith("/embeddings") else "chat.completions"
    if spec.method == "GET":
        return "getModel" if spec.model else "listModels"
    return spec.path.split(":", 1)[1].split("?", 1)[0]


def _shape(client: str, kind: str, model: str, share: float) -> Shape:
    spec = traffic.make_request(random.Random(0), "t", kind, model)
    name = None if kind == "wrong_token" else client
    if kind == "bad_model_name":  # not a model id's shape: Keyrack does not keep it (surfaces.common.untrusted)
        spec.model = None
    refused = _REFUSED.get(kind)
    upstream = 1.0 if kind in _UPSTREAM_404 else _UPSTREAM_400.get(kind, 0.0)
    return Shape(
        name,
        spec.surface,
        _operation(spec),
        spec.model,
        spec.stream,
        share,
        refused,
        upstream,
        404 if kind in _UPSTREAM_404 else 400,
    )


def shapes(rate: float = DEFAULT_RATE) -> list[Shape]:
    """Every kind of call of the live demo at `rate`, with its share (the shares sum to 1)."""
    habits = traffic.HABITS
    weight = sum(h.weight for h in habits)
    base, bursts = rate, burst_rate(rate)
    parts: dict[tuple[str, str, str], float] = {}

    def add(client: str, kinds: dict[str, float], models: dict[str, float], share: float) -> None:
        kw, mw = sum(kinds.values()), sum(models.values())
        for kind, k in kinds.items():
            for model, m in models.items():
                key = (client, kind, model)
                parts[key] = parts.get(key, 0.0) + share * k / kw * m / mw

    for h in habits:
        add(h.name, h.mix, h.models, base / (base + bursts) * h.weight / weight)
    burst_kinds = {k: float(BURST_KINDS.count(k)) for k in BURST_KINDS}
    burst_models = {m: float(BURST_MODELS.count(m)) for m in BURST_MODELS}
    add(BURST_CLIENT, burst_kinds, burst_models, bursts / (base + bursts))
    merged: dict[Shape, float] = {}
    for (client, kind, model), share in parts.items():
        s = _shape(client, kind, model, 0.0)
        merged[s] = merged.get(s, 0.0) + share  # kinds that ignore the model (embeddings) merge into one shape
    return [dataclasses.replace(s, share=share) for s, share in merged.items()]


def calls_per_hour(rate: float = DEFAULT_RATE) -> float:
    """The live demo's mean calls per hour at `rate` (its base rate and its bursts)."""
    return (rate + burst_rate(rate)) * 3600


# -- the upstream's faults and the pool's capacity (scenario.py) ----------------------------------------------------
FAULTS = scenario.DEMO_ERROR_RATES
RETRYABLE = ("503", "500", "timeout", "reset")  # per attempt; a mid-stream fault breaks a stream after it began
ATTEMPTS_MAX = 4  # settings.max_retries (3) + 1


def fault_share(stream: bool) -> dict[str, float]:
    """Per attempt: the share of each retryable fault (a midstream fault on a non-stream call is a 500)."""
    shares = {k: FAULTS.get(k, 0.0) for k in RETRYABLE}
    if not stream:
        shares["500"] += FAULTS.get("midstream", 0.0)
    return shares


def capacity_per_min(model: str) -> float:
    """Calls a minute the demo pool takes for `model`: its per-project limit times the projects with valid keys."""
    limits = scenario.DEMO_LIMITS.get(model)
    if limits is None:
        return 0.0
    return float(limits.get("rpm") or 0) * len(scenario.DEMO_PROJECTS)


COOLDOWN_S = 60.0  # how long a burst over a model's capacity leaves its projects cooling (Google's minute window)


def bursts_per_min(model: str | None, rate: float, rhythm: float) -> float:
    """How many batch bursts a minute hit `model` at `rate` in an hour of relative demand `rhythm`."""
    share = BURST_MODELS.count(model or "") / len(BURST_MODELS)
    return rhythm * 60.0 / burst_gap_mean_s(rate) * share


def exhausted_share(model: str | None, per_min: float, bursts: float = 0.0) -> float:
    """The share of `per_min` calls for `model` refused `exhausted` (every key cooling): what is over capacity, and
    around each of `bursts` batch bursts a minute, the burst's calls past the capacity left and the calls of the
    cooldown that follows (what the live demo's pool does, roughly)."""
    if model not in scenario.DEMO_LIMITS or per_min <= 0:  # an unknown model is refused by Google, not the pool
        return 0.0
    cap = capacity_per_min(model)
    size = sum(BURST_SIZE) / 2
    past = min(size, max(0.0, size - (cap - per_min)))
    refused = max(0.0, per_min - cap) + bursts * (past + per_min * COOLDOWN_S / 60.0)
    return min(0.9, refused / per_min)
