"""A small per-session cache in front of the admin client, and the one way pages show a failed call.

Streamlit reruns the page on every click; `cached(api().keys)(...)` keeps one click from costing the same API
calls twice. Pages call the client's methods themselves (typed), this only remembers the answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import streamlit as st

from dashboard.logic import auth, fmt, i18n
from dashboard.logic.client import AdminClient, AdminError

TTL_S = 5.0
# Admin calls a page makes together run side by side (`prefetch`): the proxy answers each on its own read thread, so
# a page waits for its slowest answer instead of the sum of all. Shared by every session of this server process.
_CALLS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="admin-call")
TABLES = ("tbl_active", "tbl_inactive", "tbl_errors")
P = ParamSpec("P")
R = TypeVar("R")


def api() -> AdminClient:
    return auth.client()


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_freeze(v) for v in value)
    return value


def _key(method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return (method.__name__, _freeze(args), _freeze(kwargs), st.session_state.get("_data_version", 0))


def prefetch(ttl: float, *calls: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
    """Make the admin calls (method, positional args) a page is about to make all at once, and remember their answers
    as `cached` does, so the page's own `cached(method)(*args)` calls find them. A call that fails is not
    remembered: the page's own call then fails the usual way (and shows its error in place)."""
    cache: dict[Any, tuple[float, Any]] = st.session_state.setdefault("_cache", {})
    now = time.monotonic()
    todo = {}
    for method, args in calls:
        key = _key(method, args, {})
        hit = cache.get(key)
        if (hit is None or now - hit[0] >= ttl) and key not in todo:
            todo[key] = _CALLS.submit(method, *args)
    for key, future in todo.items():
        try:
            value = future.result()
        except AdminError:
            continue
        cache[key] = (time.monotonic(), value)


def cached(method: Callable[P, R], ttl: float = TTL_S) -> Callable[P, R]:
    """`method` (a client method), its answers remembered for `ttl` seconds in this session (until `bump()`)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        cache: dict[Any, tuple[float, Any]] = st.session_state.setdefault("_cache", {})
        key = _key(method, args, kwargs)
        now = time.monotonic()
        hit = cache.get(key)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]  # type: ignore[no-any-return]
        value = method(*args, **kwargs)
        for old in [k for k, (at, _v) in cache.items() if now - at > 120]:
            del cache[old]
        cache[key] = (now, value)
        return value

    return call


def safe(method: Callable[P, R], ttl: float = TTL_S) -> Callable[P, R | None]:
    """`cached(method)`, but an AdminError is shown in place and None returned (the page keeps rendering)."""

    def call(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return cached(method, ttl)(*args, **kwargs)
        except AdminError as exc:
            show_error(exc)
            return None

    return call


def bump() -> None:
    """Forget cached answers and table selections (after a change, or on Refresh): rows may have moved."""
    st.session_state["_data_version"] = st.session_state.get("_data_version", 0) + 1
    st.session_state.pop("_cache", None)
    for name in TABLES:
        st.session_state.pop(name, None)


def show_error(exc: AdminError) -> None:
    if exc.kind == "unauthorized":
        st.session_state.pop("auth", None)
    st.error(fmt.error_text(exc), icon=":material/error:")


def config() -> dict[str, Any]:
    answer = safe(api().config, ttl=30.0)() or {}
    i18n.remember_default((answer.get("values") or {}).get("language"))
    return answer


def config_values() -> dict[str, Any]:
    return config().get("values") or {}
