"""The model names Keyrack knows: the only ones a label may carry (a /metrics series, an alert series).

A model name arrives in a URL or a body chosen by whoever calls, with a token or without. Every distinct label value
is state — memory here and in every Prometheus that scrapes /metrics, a series an alert rule evaluates, messages to
people — so a name becomes a label only when Keyrack knows it as a model:
- it is in the built-in limits table (`quota.DEFAULT_LIMITS`) or in the operator's `model_limits` (exact names: a
  made-up `gemini-2.5-flash-x` inherits the table's limits by prefix, but is not known for that), or
- upstream served it to an authenticated client (a 2xx answer: the model exists, and the caller holds a token).
  Served names are learned per process, at most `MAX_LEARNED`; past that a new one is not learned (and stays out
  of labels) until a restart, which a pool of real Gemini models never comes near.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable

from proxy_service.quota import DEFAULT_LIMITS
from proxy_service.settings import is_model_name

MAX_LEARNED = 200

_learned: set[str] = set()
_lock = threading.Lock()


def _bare(model: str) -> str:
    return model.removeprefix("models/")


def learn(model: str | None) -> bool:
    """Note that upstream served `model` to an authenticated client. Returns whether it is known now."""
    if not model:
        return False
    name = _bare(model)
    if name in _learned or name in DEFAULT_LIMITS:
        return True
    if not is_model_name(name) or "AIza" in name:
        return False
    with _lock:
        if len(_learned) >= MAX_LEARNED:
            return False
        _learned.add(name)
    return True


def configured(model_limits: Iterable[str]) -> frozenset[str]:
    """The model names of a `model_limits` setting (its keys, without "default")."""
    return frozenset(_bare(m) for m in model_limits if m != "default")


def is_known(model: str | None, configured_names: Collection[str] = ()) -> bool:
    """Whether `model` may be a label: built in, configured (`configured(...)`), or served before."""
    if not model:
        return False
    name = _bare(model)
    return name in DEFAULT_LIMITS or name in _learned or name in configured_names


def learned() -> frozenset[str]:
    with _lock:
        return frozenset(_learned)
