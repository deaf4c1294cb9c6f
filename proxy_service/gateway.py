"""`Gateway`: what request handlers (surfaces), admin routes and the forecast jobs may use of the proxy's gateway,
declared as a typed protocol in the style of Datasette's internals page (docs/internals.md documents each member).
Only `app.py` knows the concrete class; every other module types against this one, so the modules that serve
requests never import the app (no import loop, typing-only ones included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from proxy_service.core import Core

if TYPE_CHECKING:
    import duckdb

    from proxy_service.alerts.engine import AlertEngine
    from proxy_service.analytics import snapshot
    from proxy_service.analytics.sql_sandbox import Sandbox
    from proxy_service.clients import Client
    from proxy_service.forecast.engine import ForecastEngine
    from proxy_service.pool import Key
    from proxy_service.relay import Relay
    from proxy_service.resources import ResourceMap, UploadSession
    from proxy_service.settings import Config
    from proxy_service.store import StatsSource

T = TypeVar("T")


class Gateway(Core, Protocol):
    """`Core` (storage, config, pool, node, background tasks) and the request path, the engines and admin actions."""

    @property
    def loopback(self) -> bool:
        """Whether the proxy listens on loopback only (open mode, no client tokens, is allowed only then)."""
        ...

    @property
    def relay(self) -> Relay:
        """The request path: choose a key, call upstream, learn, record."""
        ...

    async def save_clients(self, changed: list[Client], retired: list[str] | None = None) -> None:
        """Store changed client records, refresh their analytics labels, tell the other replicas (`retired`: token
        hashes that stop working at once, e.g. the one a rotation without grace replaced)."""
        ...

    @property
    def alerts(self) -> AlertEngine:
        """Alert rules, channels, silences and their evaluation."""
        ...

    @property
    def forecast(self) -> ForecastEngine:
        """The forecast engine's rate meter and demand cache (scheduled by admin/forecast.py)."""
        ...

    @property
    def sandbox(self) -> Sandbox:
        """Where user SQL runs: worker processes over a Parquet snapshot (in a cluster, written from the lake)."""
        ...

    @property
    def query_slots(self) -> asyncio.Semaphore:
        """User SQL queries running at once."""
        ...

    @property
    def explore_slots(self) -> asyncio.Semaphore:
        """Explore reads running at once (the others wait, then 503)."""
        ...

    @property
    def resources(self) -> ResourceMap:
        """Which project (and key) created each file, cached content, batch and operation (surfaces/resources.py)."""
        ...

    @property
    def upload_sessions(self) -> dict[str, UploadSession]:
        """Keyrack's resumable upload ids → the upstream session each stands for."""
        ...

    @property
    def started_at(self) -> float:
        """When the gateway was built (epoch seconds)."""
        ...

    async def read_stats(self, fn: Callable[[duckdb.DuckDBPyConnection, StatsSource], T]) -> T:
        """`read` for the stats queries: `fn(cursor, source)` with the store's stats cursor and raw-row source."""
        ...

    async def export(self) -> snapshot.Export:
        """Parquet snapshots of the tables into `<data dir>/exports`."""
        ...

    def persist_keys(self) -> None:
        """Queue the pool's changed keys for storage (a cluster replica also tells the others)."""
        ...

    def require_storage(self) -> None:
        """Raise StorageFault (503) while the data disk fails, for changes saved in the background."""
        ...

    async def verify(self, key: Key) -> dict[str, Any]:
        """One real, quota-free upstream call with `key`; its outcome is learned by the pool."""
        ...

    async def update_config(self, patch: dict[str, Any]) -> Config:
        """Validate, persist, apply live (ConfigError names the bad fields; WriterUnavailable: nothing changed)."""
        ...

    async def reset_config(self) -> Config:
        """Forget the saved settings: back to env and defaults."""
        ...
