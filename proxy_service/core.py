"""`Core`: the part of the gateway the alert engine may use (storage, configuration, the pool, the node, background
tasks). `gateway.Gateway` extends it with what request handlers and admin routes use; only `app.py` knows the
concrete class. Both are documented in docs/internals.md.

Typing-only module: nothing here runs, and it imports the product's types under TYPE_CHECKING only, so no module
that types against it joins an import loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import duckdb

    from proxy_service.analytics.rollup import Rollup
    from proxy_service.background import Background
    from proxy_service.clients import ClientBook
    from proxy_service.events import EventWriter
    from proxy_service.node import Node
    from proxy_service.pool import Pool
    from proxy_service.settings import Config, Settings
    from proxy_service.store import Store

T = TypeVar("T")


class Core(Protocol):
    """Storage, configuration, the pool and the mode's node, as the alert engine sees them."""

    @property
    def settings(self) -> Settings:
        """The process settings (env + `.env`), fixed at start."""
        ...

    @property
    def config(self) -> Config:
        """The live configuration (saved values over env); replaced as a whole by a change, never mutated."""
        ...

    @property
    def node(self) -> Node:
        """What differs by mode (embedded or cluster replica): broadcast, leadership, shared alert states."""
        ...

    @property
    def store(self) -> Store:
        """The database; `store.cursor()` for a short blocking read on a worker thread (prefer `read`)."""
        ...

    @property
    def writer(self) -> EventWriter:
        """The one writer thread; `writer.submit(fn)` queues `fn(cursor)` after the events already queued."""
        ...

    @property
    def pool(self) -> Pool:
        """The keys, their statuses, cooldowns and quota windows (event loop only)."""
        ...

    @property
    def clients(self) -> ClientBook:
        """The client records (hashed tokens, classes, limits) and their usage: authentication and admission."""
        ...

    @property
    def rollup(self) -> Rollup:
        """The exact pre-aggregates kept in step by the writer."""
        ...

    @property
    def jobs(self) -> Background:
        """The one owner of background tasks: `jobs.every(...)`, `jobs.spawn(...)`; cancelled together at shutdown."""
        ...

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`fn(cursor)` on a worker thread with its own cursor, never on the event loop."""
        ...

    async def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float | None = None) -> T:
        """`fn(cursor)` on the writer thread, serialised with the appends; WriterUnavailable after a bounded wait."""
        ...

    def leads(self) -> bool:
        """Whether this process runs the cluster-wide jobs (always when embedded; the elected leader in a cluster)."""
        ...
