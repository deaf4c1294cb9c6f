"""The seam between the gateway and its mode: `Node`, what differs between one process (`EmbeddedNode`, here) and a
cluster replica (`cluster.node.Cluster`): the store and the writer, the pool, how keys and settings are persisted
and told to the others, leadership, secrets, state, export selects, user SQL's views, the rollup's rebuild mode.

The gateway asks its node and never branches on the mode; a node gets `Hooks` (callbacks into the gateway), never
the gateway itself. docs/internals.md documents both sides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb

from proxy_service import clients, logs
from proxy_service.analytics import queries
from proxy_service.analytics.rollup import Rollup
from proxy_service.analytics.sql_sandbox import Sandbox
from proxy_service.background import Background
from proxy_service.clients import ClientBook, ClientUse
from proxy_service.events import Columns, EventWriter, insert_columns
from proxy_service.pool import Pool, stored_epoch
from proxy_service.quota import ModelLimits, pacific_day_start
from proxy_service.resources import Share
from proxy_service.settings import Config, ConfigError, Settings
from proxy_service.spill import Spill
from proxy_service.store import Store, private_dir

log = logging.getLogger("keyrack")


@dataclass
class Hooks:
    """What a node may call back into once serving (given to `Node.start`)."""

    loop: asyncio.AbstractEventLoop  # the serving loop, for callbacks from the writer thread
    background: Background  # the one owner of background tasks: a node's loops go there
    rollup: Rollup  # folded before the embedded shutdown; compacted by the cluster's leader
    reload_config: Callable[[], Awaitable[None]]  # re-read the stored settings and apply them if they changed
    reload_alerts: Callable[[], Awaitable[None]]  # re-read the stored alert rules, channels and silences
    # Refuse the revoked client ids and retired token hashes a message names, then re-read the stored records.
    reload_clients: Callable[[list[str], list[str]], Awaitable[None]]


class Node(Protocol):
    """What a gateway needs from its mode (see the module's docstring)."""

    @property
    def store(self) -> Store:
        """The database (a DuckDB file, or the cluster's lake behind the same interface)."""
        ...

    @property
    def writer(self) -> EventWriter:
        """The one writer (the cluster's journals and commits to the lake)."""
        ...

    @property
    def rebuilds_rollup_in_background(self) -> bool:
        """True: the rollup's rebuild (new version, zone change) runs in chunks once serving. False: before serving
        (the lake's folds run on every replica and cannot skip the rows a chunk will read), and a zone change does
        not rezone it."""
        ...

    def make_pool(
        self, strategy: str, *, default_cooldown_s: float, failure_threshold: int, limits: dict[str, ModelLimits]
    ) -> Pool: ...

    def make_sandbox(self, directory: Path, slots: int, memory_mb: int, threads: int) -> Sandbox:
        """Where user SQL runs: worker processes over a Parquet snapshot of the public tables (never this process)."""
        ...

    def install_safe_views(self, cur: duckdb.DuckDBPyConnection) -> None: ...

    def export_selects(self) -> dict[str, str] | None:
        """The export's query per table when it differs from snapshot.EXPORTS."""
        ...

    def load_config(self, seed: Config) -> Config:
        """`seed` with the saved settings applied (invalid saved settings are ignored, with a warning)."""
        ...

    def restore_usage(self, pool: Pool) -> None:
        """Today's calls back into the pool's quota windows after a restart (a cluster keeps them in Redis)."""
        ...

    def persist_keys(self) -> None:
        """Queue the pool's changed keys for storage (and tell the other replicas)."""
        ...

    def restore_client_usage(self, book: ClientBook) -> None:
        """The clients' calls and tokens of this day and month back after a restart (a cluster shares them in
        Redis instead: `share_client_usage`)."""
        ...

    async def share_client_usage(self, day: str, month: str, own: dict[str, ClientUse]) -> dict[str, ClientUse] | None:
        """Give the others this process's client use (`ClientUse`: calls and tokens of `day` and `month`, calls in
        the last minute and in flight) and get theirs, per client; None when it could not be exchanged now (empty
        when alone)."""
        ...

    async def share_paid_spend(self, day: str, own_usd: float) -> float | None:
        """Tell the others this process's paid spend of Pacific quota day `day` and get the sum of theirs (so that
        `paid_daily_cap_usd` holds cluster-wide); None when it could not be exchanged now (0 when alone)."""
        ...

    def broadcast(self, message: dict[str, Any]) -> None:
        """Tell the other replicas that something stored changed (`{"kind": "config"|"alerts"|...}`)."""
        ...

    def leads(self) -> bool:
        """Whether this process runs the cluster-wide jobs (alert evaluation, retention, compaction)."""
        ...

    def secrets(self) -> list[str]:
        """Secret text of the node's own settings (service URLs), for `keys.redact`."""
        ...

    def shared_resources(self) -> Share | None:
        """Where the resource → project map is shared with the other replicas (None when alone)."""
        ...

    def state(self) -> dict[str, Any]:
        """Extra /metrics state (`{"cluster": ...}`), empty when there is none."""
        ...

    def readiness(self) -> dict[str, Any]:
        """Extra /readyz fields, empty when there are none."""
        ...

    def startup_fields(self) -> dict[str, Any]:
        """Extra fields of the startup log line (secrets masked)."""
        ...

    async def share_alert_states(self, payload: str) -> None:
        """The leader's alert states, for the others (nothing to share with when alone)."""
        ...

    async def alert_states(self) -> str | None:
        """The leader's last shared alert states, None when there are none."""
        ...

    async def refresh_before_rule_change(self, reload_alerts: Callable[[], Awaitable[None]]) -> None:
        """Before a rule is named: read the stored rules when another process may have changed them."""
        ...

    async def start(self, hooks: Hooks) -> None:
        """Once serving (the writer started): start the node's loops on `hooks.background`."""
        ...

    async def stop(self) -> None:
        """Before the writer stops (the background tasks have been cancelled)."""
        ...

    async def close(self) -> None:
        """After the writer has stopped, before the store closes."""
        ...


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None) if epoch else None


def load_saved_config(store: Store, seed: Config) -> Config:
    cur = store.cursor()
    try:
        rows = cur.execute("SELECT name, value FROM settings").fetchall()
    finally:
        cur.close()
    saved = {name: json.loads(value) for name, value in rows}
    try:
        return seed.updated({k: v for k, v in saved.items() if k in Config.model_fields})
    except ConfigError as exc:
        log.warning("ignoring invalid saved settings: %s", exc)
        return seed


class EmbeddedNode:
    """One process: one DuckDB file, the pool in memory, always the leader, nobody to tell."""

    rebuilds_rollup_in_background = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(
            settings.db_path,
            settings.duckdb_memory_limit,
            settings.duckdb_threads,
            settings.duckdb_block_size,
            settings.duckdb_row_group_size,
            settings.duckdb_wal_autocheckpoint,
        )
        self.writer = EventWriter(self.store, spill=_spill(settings))
        self.pool: Pool | None = None
        self.hooks: Hooks | None = None

    def make_pool(
        self, strategy: str, *, default_cooldown_s: float, failure_threshold: int, limits: dict[str, ModelLimits]
    ) -> Pool:
        self.pool = Pool(
            strategy, default_cooldown_s=default_cooldown_s, failure_threshold=failure_threshold, limits=limits
        )
        return self.pool

    def make_sandbox(self, directory: Path, slots: int, memory_mb: int, threads: int) -> Sandbox:
        return Sandbox(self.store, self.writer, directory, slots, memory_mb, threads)

    def install_safe_views(self, cur: duckdb.DuckDBPyConnection) -> None:
        queries.install_safe_views(cur)

    def export_selects(self) -> None:
        return None

    def load_config(self, seed: Config) -> Config:
        return load_saved_config(self.store, seed)

    def restore_usage(self, pool: Pool) -> None:
        """Today's calls per (scope, model), back from the attempts table: the quota windows live in memory, and a
        restart that forgot them would let quota_aware spend the Pacific day's quota (and the minute's) again."""
        now = time.time()
        cur = self.store.cursor()
        try:
            rows = queries.quota_usage(cur, pacific_day_start(now), now - 60, now + 3600)
            spend = queries.paid_spend(cur, pacific_day_start(now))  # toward paid_daily_cap_usd
        finally:
            cur.close()
        if spend:
            pool.spent(spend)
        for scope, model, today, recent in rows:
            pool.tracker.restore(scope, model, today, [stored_epoch(t) or now for t in recent], now)
        if rows:
            logs.event(log, "quota_usage_restored", pairs=len(rows), calls_today=sum(r[2] for r in rows))

    def restore_client_usage(self, book: ClientBook) -> None:
        """Today's and this month's calls and tokens per client, back from the requests table."""
        if not book.by_id:
            return
        now = time.time()
        cur = self.store.cursor()
        try:
            book.restore(clients.usage_rows(cur, now))
        finally:
            cur.close()

    async def share_client_usage(self, day: str, month: str, own: dict[str, ClientUse]) -> dict[str, ClientUse]:
        return {}  # alone: nobody else uses the clients' limits

    async def share_paid_spend(self, day: str, own_usd: float) -> float:
        return 0.0  # alone: nobody else spends on the paid projects

    def persist_keys(self) -> None:
        """The changed keys' rows to the writer (one statement, whatever the number of keys)."""
        pool = self.pool
        assert pool is not None
        dirty, deleted = pool.dirty, pool.deleted
        pool.dirty, pool.deleted = set(), set()
        rows = [pool.keys[k] for k in dirty if k in pool.keys]
        if not rows and not deleted:
            return
        key_rows: Columns = {
            "key_id": [k.id for k in rows],
            "secret": [k.secret for k in rows],
            "label": [k.label for k in rows],
            "project": [k.project for k in rows],
            "status": [k.status for k in rows],
            "created_at": [_ts(k.created_at) for k in rows],
            "last_used_at": [_ts(k.last_used_at) for k in rows],
            "consecutive_failures": [k.consecutive_failures for k in rows],
            "total_failures": [k.total_failures for k in rows],
            "requests": [k.requests for k in rows],
            "successes": [k.successes for k in rows],
            "last_error": [k.last_error for k in rows],
            "last_checked_at": [_ts(k.last_checked_at) for k in rows],
            "disabled_reason": [k.disabled_reason for k in rows],
        }
        gone = list(deleted)
        loop = self.hooks.loop if self.hooks is not None else None

        def write(cur: Any) -> None:
            if gone:
                cur.execute("DELETE FROM keys WHERE list_contains(?, key_id)", [gone])
            if rows:
                insert_columns(cur, "keys", key_rows, replace=True)

        def written(future: Future[None]) -> None:
            # Not saved (a storage fault): the keys are dirty again, written with the next flush that works.
            if future.cancelled() or future.exception() is not None:

                def again() -> None:
                    pool.dirty.update(k.id for k in rows if k.id not in pool.deleted)
                    pool.deleted.update(gone)

                if loop is not None and not loop.is_closed():  # the pool's sets belong to the event loop
                    loop.call_soon_threadsafe(again)
                else:
                    again()

        self.writer.submit(write).add_done_callback(written)

    def broadcast(self, message: dict[str, Any]) -> None:
        return None

    def leads(self) -> bool:
        return True

    def secrets(self) -> list[str]:
        return []

    def shared_resources(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {}

    def readiness(self) -> dict[str, Any]:
        return {}

    def startup_fields(self) -> dict[str, Any]:
        return {}

    async def share_alert_states(self, payload: str) -> None:
        return None

    async def alert_states(self) -> None:
        return None

    async def refresh_before_rule_change(self, reload_alerts: Callable[[], Awaitable[None]]) -> None:
        return None  # this process made every stored change itself: what it holds is current

    async def start(self, hooks: Hooks) -> None:
        self.hooks = hooks

    async def stop(self) -> None:
        return None

    async def close(self) -> None:
        if self.hooks is not None and not self.writer.alive:
            # The rows appended since the rollup's last fold (up to FOLD_EVERY_S of them), folded now (inline: the
            # writer has ended): the next start finds the rollup in step with `requests` and rebuilds nothing.
            self.writer.submit(self.hooks.rollup.fold)


def _spill(settings: Settings) -> Spill:
    """The event spill: memory, then `event_spill_dir` if it is on another disk than the data dir (a spill onto the
    disk that just failed would fail with it)."""
    directory = settings.event_spill_dir
    if directory is not None:
        private_dir(directory)
        if directory.stat().st_dev == settings.data_dir.stat().st_dev:
            raise ConfigError(
                {
                    "event_spill_dir": f"{directory} is on the same disk as the data dir {settings.data_dir}: "
                    "it would fail with it. Choose a directory on another disk, or leave it empty (memory only)."
                }
            )
    return Spill(
        settings.event_spill_memory_rows,
        settings.event_spill_memory_mb * 2**20,
        directory,
        settings.event_spill_dir_mb * 2**20,
    )
