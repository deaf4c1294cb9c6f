"""The ASGI app: routes, and the gateway that owns the store, the writer, the pool, the upstream client and the
background jobs (key flushes, re-checks, rollup compaction, retention, snapshots)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import duckdb
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy_service import clients, heap, logs, metrics
from proxy_service.admin import api as admin_api
from proxy_service.admin import forecast as admin_forecast
from proxy_service.alerts import history as alert_history
from proxy_service.alerts.engine import AlertEngine
from proxy_service.analytics import queries, snapshot
from proxy_service.analytics.rollup import Rollup
from proxy_service.analytics.sql_sandbox import Sandbox
from proxy_service.background import Background
from proxy_service.cluster import config as cluster_config
from proxy_service.errors import MethodNotAllowed, NotFound
from proxy_service.events import EventWriter
from proxy_service.forecast.engine import ForecastEngine
from proxy_service.keys import KeySpec, parse_key_list
from proxy_service.node import EmbeddedNode, Hooks, Node
from proxy_service.pool import Key, Pool, key_from_row
from proxy_service.quota import ModelLimits
from proxy_service.relay import Relay, Surface
from proxy_service.resources import UploadSession
from proxy_service.settings import Config, ConfigError, Settings, check_access, is_loopback
from proxy_service.store import StatsSource, StorageFault, Store, closing, utcnow
from proxy_service.surfaces import gemini, live, openai
from proxy_service.surfaces import resources as resources_surface
from proxy_service.surfaces.common import error_response
from proxy_service.upstream import answer_cap, build_client, client_settings, parse_error, read_answer

log = logging.getLogger("keyrack")
KEY_FLUSH_S = 2.0  # key counters reach the database in batches, never per request
CLIENT_SHARE_S = 1.0  # how often replicas exchange their clients' usage (a limit may be overrun by one period's calls)
RECHECK_TICK_S = 5.0
FAILURE_RECHECK_S = 30.0
JOB_WRITE_TIMEOUT_S = 600.0  # background jobs may wait for a long retention delete; admin answers may not
COMPACT_TICK_S = 60.0
REBUILD_TICK_S = 1.0  # how soon a rebuild the compaction or a zone change started gets going
RETENTION_TICK_S = 600.0
SNAPSHOT_IDLE_TICK_S = 60.0  # how often a disabled snapshot job looks again at snapshot_interval_s
QUERY_SLOTS = 2  # user SQL queries running at once
EXPLORE_SLOTS = 2  # Explore reads running at once (admin/explore.py: the others wait, then 503)
CACHE_TRIM_S = 10.0  # DuckDB's cache of checkpointed blocks cut back to store.CACHE_KEEP_BYTES (Store.trim_cache)
MEMORY_TICK_S = 5.0  # DuckDB's own memory account for /metrics, read on a worker thread (not at scrape time)
T = TypeVar("T")


def open_node(settings: Settings) -> Node:
    """The node for the settings' mode: embedded (one process, one DuckDB file, the pool in memory), or a cluster
    replica when the cluster settings are given (its modules are imported only then)."""
    cluster_cfg = cluster_config.from_settings(settings)  # ClusterConfigError: a one-line startup error
    if cluster_cfg is None:
        return EmbeddedNode(settings)
    from proxy_service.cluster.node import Cluster

    return Cluster(cluster_cfg, settings.data_dir)


class Gateway:
    """Everything the proxy process owns, in one place; routes and background jobs hang off it. What other modules
    may use of it is declared in `gateway.Gateway` (docs/internals.md); what differs by mode is its `node`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loopback = is_loopback(settings.host)  # open mode (no client tokens) is allowed only then
        self.node: Node = open_node(settings)
        self.store: Store = self.node.store
        self.writer: EventWriter = self.node.writer
        self.jobs = Background()  # every background loop of the process, cancelled together at shutdown
        self.query_slots = asyncio.Semaphore(QUERY_SLOTS)
        self.explore_slots = asyncio.Semaphore(EXPLORE_SLOTS)
        # User SQL: worker processes over a Parquet snapshot of the public tables, never this process (in a cluster
        # the snapshot is written from the lake).
        self.sandbox: Sandbox = self.node.make_sandbox(
            settings.data_dir / "sql-sandbox", QUERY_SLOTS, settings.sql_memory_mb, settings.duckdb_threads
        )
        self._config = self.node.load_config(settings.config())
        cfg = self._config
        self.rollup = Rollup(cfg.display_timezone)  # its local days are the display zone's
        self._setup_storage()
        try:  # the effective config (saved values win over env) must not open a non-loopback proxy
            check_access(settings.host, cfg)
        except ConfigError:
            self.store.close()
            raise
        self.pool: Pool = self.node.make_pool(
            cfg.strategy,
            default_cooldown_s=cfg.default_cooldown_s,
            failure_threshold=cfg.failure_threshold,
            limits=_limits(cfg),
        )
        self.clients = self._load_clients(cfg)
        self.store.after_reopen = self._local_objects
        self.pool.set_billing(cfg.project_tiers, cfg.paid_daily_cap_usd)
        self.relay = Relay(self.pool, self.writer, lambda: self._config, self.clients)
        self.resources = resources_surface.resource_map(self)  # which project owns each resource
        self.upload_sessions: dict[str, UploadSession] = {}  # Keyrack's resumable upload ids
        self.started_at = time.time()
        self.ready = False
        self.duckdb_memory: dict[str, int] = {}  # by tag, read every MEMORY_TICK_S
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, for callers on other threads
        self._collector = metrics.StateCollector(self.metrics_state)
        self._load_keys(parse_key_list(settings.api_keys))
        self.alerts = AlertEngine(self)
        self.forecast = ForecastEngine()  # rate meter and demand cache (admin/forecast.py schedules and serves it)

    # -- storage ---------------------------------------------------------------------------------------------------
    def _setup_storage(self) -> None:
        """Safe views for user SQL and the rollup (checked or rebuilt), then the hook that keeps the rollup current."""

        def setup(cur: duckdb.DuckDBPyConnection) -> None:
            self.node.install_safe_views(cur)
            # In the background: a rebuild (new version, display zone changed, rows changed while stopped) only
            # starts here; the "rollup-rebuild" job runs it in chunks once serving.
            self.rollup.install(cur, background=self.node.rebuilds_rollup_in_background)

        self.writer.submit(setup).result()  # inline: the writer has not started yet
        self.writer.after_append.append(self.rollup.on_append)

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `fn(cursor)` on a worker thread with its own cursor (never on the event loop, which serves the proxy)."""

        def job() -> T:
            with closing(self.store.read_cursor()) as cur:
                return fn(cur)

        return await asyncio.to_thread(job)

    async def read_stats(self, fn: Callable[[duckdb.DuckDBPyConnection, StatsSource], T]) -> T:
        """`read` for the stats queries: `fn(cursor, source)` with the store's stats cursor and raw-row source (a
        cluster replica's read no catalog but one snapshot check: the rollup and the range edges from its mirror)."""

        def job() -> T:
            with self.store.stats_reader() as (cur, source):
                return fn(cur, source)

        return await asyncio.to_thread(job)

    async def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], timeout: float | None = None) -> T:
        """Run `fn(cursor)` on the writer thread, after the events queued before it (serialised with the appends).
        Raises WriterUnavailable after a bounded wait (`writer.write_timeout`): an admin answer never hangs."""
        return await self.writer.run(fn, timeout)

    async def export(self) -> snapshot.Export:
        """Parquet snapshots of the tables into `<data dir>/exports`."""
        directory = self.settings.data_dir / "exports"
        selects = self.node.export_selects()
        return await self.read(lambda cur: snapshot.export(cur, directory, selects))

    # -- configuration -------------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config

    async def reload_config(self) -> None:
        """Re-read the saved settings and apply them if they changed (another replica saved them: `Hooks`)."""
        new = await asyncio.to_thread(self.node.load_config, self.settings.config())
        if new != self._config:
            await self._apply(new)

    async def update_config(self, patch: dict[str, Any]) -> Config:
        """Validate, persist, apply live. Raises ConfigError naming the bad fields (an open proxy on a non-loopback
        bind is one), WriterUnavailable when the change could not be saved (then nothing changed)."""
        new = self._config.updated(patch)
        check_access(self.settings.host, new)
        before = self._config.model_dump()  # dumps on both sides: a field of models (prices) compares as plain data
        changed = {k: v for k, v in new.model_dump().items() if v != before.get(k)}
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = [(k, json.dumps(v), now) for k, v in changed.items()]
        if rows:
            await self.writer.run(lambda cur: cur.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?, ?)", rows))
        await self._apply(new)
        if rows:
            self.node.broadcast({"kind": "config"})
        if changed:  # secret values masked as their field metadata says
            masked = {k: Config.masked_value(k, v) for k, v in sorted(changed.items())}
            logs.event(log, "config_changed", fields=sorted(changed), **masked)
        return new

    async def reset_config(self) -> Config:
        new = self.settings.config()
        check_access(self.settings.host, new)
        await self.writer.run(lambda cur: cur.execute("DELETE FROM settings"))
        await self._apply(new)
        self.node.broadcast({"kind": "config"})
        logs.event(log, "config_reset")
        return new

    async def _apply(self, new: Config) -> None:
        old, self._config = self._config, new
        if old.access_tokens != new.access_tokens or old.client_labels != new.client_labels:
            changed = self.clients.sync_config(new.access_tokens, new.client_labels)
            labels, table = self._client_labels(self.clients, new), self.store.client_labels

            def write(cur: duckdb.DuckDBPyConnection) -> None:
                clients.save(cur, changed)
                queries.set_client_labels(cur, labels, table)

            self.writer.submit(write)
        if old.display_timezone != new.display_timezone and self.node.rebuilds_rollup_in_background:
            self.writer.submit(lambda cur: self.rollup.rezone(cur, new.display_timezone))  # rebuilt in the background
        self.pool.strategy = new.strategy
        self.pool.default_cooldown_s = new.default_cooldown_s
        self.pool.failure_threshold = new.failure_threshold
        self.pool.tracker.set_overrides(_limits(new))
        self.pool.set_billing(new.project_tiers, new.paid_daily_cap_usd)
        logging.getLogger("keyrack").setLevel(new.log_level)
        if client_settings(old) != client_settings(new) and self.relay.client is not None:
            previous, self.relay.client = self.relay.client, build_client(new)
            # In-flight calls keep the old client; close it once they have had time to finish.
            asyncio.get_running_loop().call_later(
                new.request_timeout_s + 5, lambda: asyncio.ensure_future(previous.aclose())
            )

    # -- clients -------------------------------------------------------------------------------------------------
    def _load_clients(self, cfg: Config) -> clients.ClientBook:
        """The client records (tokens of `access_tokens` among them) and their usage so far this month (inline: the
        writer has not started)."""
        secret = self.writer.submit(clients.install_secret).result()
        book = clients.ClientBook(secret, self.pool.free_share, lambda: self._config.priority_reserve)
        self.writer.submit(lambda cur: book.replace_all(clients.load(cur))).result()
        changed = book.sync_config(cfg.access_tokens, cfg.client_labels)
        self.writer.submit(lambda cur: clients.save(cur, changed)).result()
        self.node.restore_client_usage(book)
        labels = self._client_labels(book, cfg)
        self.writer.submit(lambda cur: queries.set_client_labels(cur, labels, self.store.client_labels)).result()
        return book

    def _local_objects(self, cur: duckdb.DuckDBPyConnection) -> None:
        """What a new in-memory connection of the cluster's store needs made again (`LakeStore.reopen`)."""
        self.node.install_safe_views(cur)
        queries.set_client_labels(cur, self._client_labels(self.clients, self._config), self.store.client_labels)

    @staticmethod
    def _client_labels(book: clients.ClientBook, cfg: Config) -> dict[str, str]:
        """Names of clients in analytics: the records' labels, and config labels for ids without a record."""
        return {**cfg.client_labels, **{c.id: c.label for c in book.by_id.values()}}

    async def save_clients(self, changed: list[clients.Client], retired: list[str] | None = None) -> None:
        """Store changed client records (waits for the writer: WriterUnavailable when it could not), their analytics
        labels, and tell the other replicas (a revocation holds everywhere within the bus's delay)."""
        labels = [(c.id, c.label) for c in changed]
        table = self.store.client_labels

        def write(cur: duckdb.DuckDBPyConnection) -> None:
            clients.save(cur, changed)
            cur.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", labels)

        await self.writer.run(write)
        # What must stop working at once travels in the message itself: the others act before re-reading the rows.
        revoked = [c.id for c in changed if c.revoked_at is not None]
        self.node.broadcast({"kind": "clients", "revoked": revoked, "retired": retired or []})

    async def reload_clients(self, revoked: list[str] | None = None, retired: list[str] | None = None) -> None:
        """Refuse the `revoked` clients and `retired` token hashes at once, then re-read the stored client records
        (another replica changed them: `Hooks`); the analytics labels are rewritten only when they changed."""
        self.clients.stop(revoked or [], retired or [])
        records = await self.read(clients.load)
        before = self._client_labels(self.clients, self._config)
        self.clients.replace_all(records)
        labels = self._client_labels(self.clients, self._config)
        if labels != before:
            table = self.store.client_labels
            self.writer.submit(lambda cur: queries.set_client_labels(cur, labels, table))

    async def share_client_usage(self) -> None:
        """Exchange the clients' day and month usage with the other replicas, so their limits hold cluster-wide
        (within this job's period; alone it is an empty exchange)."""
        day, month, own = self.clients.own_usage()
        peers = await self.node.share_client_usage(day, month, own)
        if peers is not None:
            self.clients.set_peers(day, peers)

    async def share_paid_spend(self) -> None:
        """Exchange the paid projects' spend of the quota day with the other replicas (paid_daily_cap_usd is one
        cap for the whole cluster); nothing to do without a cap."""
        if self.pool.paid_cap_usd is None or not self.pool.paid_projects:
            return
        day, own = self.pool.own_paid_spend(time.time())
        peers = await self.node.share_paid_spend(day, own)
        if peers is not None:
            self.pool.peers_paid_spend(day, peers)

    def persist_clients(self) -> None:
        """`last_used_at` of the clients used since the last time, in one batch (never per request)."""
        used = self.clients.take_last_used()
        if used:
            self.writer.submit(lambda cur: clients.save_last_used(cur, used))

    # -- keys ----------------------------------------------------------------------------------------------------
    def _load_keys(self, seeds: list[KeySpec]) -> None:
        cur = self.store.cursor()
        rows = cur.execute("SELECT * FROM keys ORDER BY created_at").fetchall()
        names = [d[0] for d in cur.description]
        cur.close()
        for row in rows:
            r = dict(zip(names, row, strict=True))
            self.pool.load(key_from_row(r))
        added, _ = self.pool.add(seeds)
        if added:
            log.info("added %d upstream key(s) from KEYRACK_API_KEYS", len(added))
        self.persist_keys()
        self.node.restore_usage(self.pool)

    def persist_keys(self) -> None:
        """Queue the changed keys' rows for storage (one statement, whatever the number of keys; a cluster replica
        also tells the others)."""
        self.node.persist_keys()

    def require_storage(self) -> None:
        """For an admin change that is saved in the background: refuse it (StorageFault, 503) while the data disk
        fails, rather than accept what a restart would forget."""
        if self.writer.fault is not None:
            raise StorageFault(self.writer.fault)

    async def verify(self, key: Key) -> dict[str, Any]:
        """A real minimal upstream call with this key (listing one model costs no generation quota)."""
        assert self.relay.client is not None
        started = time.perf_counter()
        client, cfg = self.relay.client, self._config
        try:
            # Bounded like a call's answer: the size cap and the call deadline.
            async with asyncio.timeout(cfg.call_deadline_s):
                request = client.build_request(
                    "GET", "/v1beta/models", params={"pageSize": "1"}, headers={"x-goog-api-key": key.secret}
                )
                resp = await client.send(request, stream=True)
                try:
                    body = await read_answer(resp, answer_cap(cfg))
                finally:
                    await resp.aclose()
            status = resp.status_code
        except Exception as exc:  # network trouble (or an oversized answer) says nothing about the key
            self.pool.checked(key, False, f"verify failed: {type(exc).__name__}")
            return {
                "id": key.id,
                "ok": False,
                "status": None,
                "message": f"upstream unreachable: {type(exc).__name__}",
                "latency_ms": (time.perf_counter() - started) * 1000,
            }
        latency = (time.perf_counter() - started) * 1000
        if status == 200:
            self.pool.checked(key, True)
            return {"id": key.id, "ok": True, "status": 200, "message": "key works", "latency_ms": latency}
        err = parse_error(body)
        message = f"{status} {err.reason or err.status or ''}: {err.message}".strip()
        if status in (400, 401, 403) and (status != 400 or err.reason == "API_KEY_INVALID"):
            self.pool.invalid(key, message)
        self.pool.checked(key, False, message)
        return {"id": key.id, "ok": False, "status": status, "message": message, "latency_ms": latency}

    # -- background jobs -----------------------------------------------------------------------------------------
    def leads(self) -> bool:
        """Whether this process runs the cluster-wide jobs (alert evaluation, retention, lake compaction): always
        when embedded; in cluster mode only the replica elected leader (cluster/leader.py), so they never run twice."""
        return self.node.leads()

    async def recheck(self) -> None:
        now = time.time()
        interval = self._config.recheck_interval_s
        # A key disabled by a failure streak was most likely hit by an upstream incident (a 503 storm trips every
        # key at once), so it is looked at again sooner than an invalid one.
        every = {
            k.id: min(interval, FAILURE_RECHECK_S) if k.status == "disabled" else interval
            for k in self.pool.keys.values()
            if k.needs_recheck
        }
        due = [self.pool.keys[kid] for kid, s in every.items() if now - (self.pool.keys[kid].last_checked_at or 0) >= s]
        due = due[:20]  # bounded per tick; the rest come on later ticks
        if due:  # in a cluster one replica probes each key per interval (a Redis slot); alone, every key is ours
            won = await self.pool.claim_probes({k.id: every[k.id] for k in due})
            due = [k for k in due if k.id in won]
        for key in due:
            await self.verify(key)

    def _start_storage_jobs(self) -> None:
        async def compact() -> None:
            await self.write(self.rollup.compact, JOB_WRITE_TIMEOUT_S)
            # The compaction reads the rollup tables' recent blocks: out of the cache again at once.
            await self.write(self.store.trim_cache, JOB_WRITE_TIMEOUT_S)

        async def retention() -> None:
            if not self.leads():
                return
            cfg = self._config
            days = {
                "requests": cfg.retention_requests_days,
                "attempts": cfg.retention_attempts_days,
                "error_logs": cfg.retention_error_logs_days,
            }
            now = utcnow()
            cutoffs = snapshot.retention_cutoffs(days, now)
            deleted = await self.write(
                lambda cur: snapshot.apply_retention(cur, cutoffs, self.rollup), JOB_WRITE_TIMEOUT_S
            )
            if any(deleted.values()):  # rewritten now, not on the next query's time
                await asyncio.to_thread(self.sandbox.refresh_quietly)
            alerts_cutoff = now - timedelta(days=cfg.retention_alert_history_days)
            await self.write(lambda cur: alert_history.prune(cur, alerts_cutoff), JOB_WRITE_TIMEOUT_S)

        async def periodic_export() -> None:
            if self._config.snapshot_interval_s > 0:
                await self.export()

        async def rebuild() -> None:
            # One local day per writer job: appends and admin writes queue behind one chunk at most.
            while self.rollup.rebuilding is not None:
                await self.write(self.rollup.rebuild_step, JOB_WRITE_TIMEOUT_S)

        async def trim_cache() -> None:
            await self.write(self.store.trim_cache, JOB_WRITE_TIMEOUT_S)

        self.jobs.every(lambda: COMPACT_TICK_S, compact, "rollup-compact")
        self.jobs.every(lambda: CACHE_TRIM_S, trim_cache, "duckdb-cache-trim")
        self.jobs.every(lambda: REBUILD_TICK_S, rebuild, "rollup-rebuild", at_start=True)
        self.jobs.every(lambda: RETENTION_TICK_S, retention, "retention")
        # The first snapshot at start: the Parquet files exist (and can be queried) from the first minute on.
        self.jobs.every(
            lambda: self._config.snapshot_interval_s or SNAPSHOT_IDLE_TICK_S, periodic_export, "snapshot", at_start=True
        )

    async def read_duckdb_memory(self) -> None:
        self.duckdb_memory = await asyncio.to_thread(self.store.memory)

    def metrics_state(self) -> dict[str, Any]:
        s = self.writer.stats
        return {
            **self.node.state(),
            "keys": self.pool.counts(),
            "depth": self.writer.depth,
            "flush_ms": s.last_flush_ms,
            "lag": self.writer.lag_seconds(),
            "written": dict(s.written),
            "failures": s.failures,
            "dead_letters": s.dead_letters,
            # Not "alive" while events are not being stored: the thread runs, but nothing reaches the database.
            "writer_alive": self.writer.alive and self.writer.storing,
            "store_ok": self.writer.storing,
            "spill_rows": self.writer.spill.rows,
            "dropped": s.dropped,
            "in_flight": sum(k.in_flight for k in list(self.pool.keys.values())),
            "paid_spend": {"own": self.pool.paid_spent_usd, "peers": self.pool.paid_peers_usd},
            "ready": self.is_ready(),
            "started_at": self.started_at,
            "duckdb_memory": self.duckdb_memory,
        }

    def is_ready(self) -> bool:
        """Ready to serve and to record: one answer for /readyz and the keyrack_ready metric."""
        return self.ready and self.writer.alive and self.writer.storing and self.resources.fault is None

    def not_ready_reason(self) -> str | None:
        if not self.ready:
            return "starting or stopping"
        if not self.writer.alive:
            return "the event writer is not running"
        if not self.writer.storing:
            return self.writer.storage_state()
        return self.resources.fault  # the resource map's side file cannot be written (the map is kept in memory)

    def secrets(self) -> list[str]:
        """What `keys.redact` hides (log lines, upstream text): secret settings as their metadata declares, and
        the pool's keys."""
        keys = [k.secret for k in list(self.pool.keys.values())]
        return [*self.settings.secret_values(), *self._config.secret_values(), *keys, *self.node.secrets()]

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        logs.add_secret_source(self.secrets)
        logging.getLogger("keyrack").setLevel(self._config.log_level)  # the saved config may differ from env
        self.writer.start()
        self.sandbox.start()
        await self.node.start(
            Hooks(
                loop=self.loop,
                background=self.jobs,
                rollup=self.rollup,
                reload_config=self.reload_config,
                reload_alerts=self.alerts.reload,
                reload_clients=self.reload_clients,
            )
        )
        self.relay.client = build_client(self._config)
        metrics.REGISTRY.register(self._collector)
        self.jobs.every(lambda: KEY_FLUSH_S, self.persist_keys, "persist-keys")
        self.jobs.every(lambda: KEY_FLUSH_S, self.persist_clients, "persist-clients")
        self.jobs.every(lambda: CLIENT_SHARE_S, self.share_client_usage, "share-client-usage")
        self.jobs.every(lambda: CLIENT_SHARE_S, self.share_paid_spend, "share-paid-spend")
        self.jobs.every(lambda: MEMORY_TICK_S, self.read_duckdb_memory, "duckdb-memory", at_start=True)
        trim = heap.trimmer()
        if trim is not None:  # on a worker thread: a trim walks the heap's free lists, never on the event loop
            self.jobs.every(lambda: heap.TRIM_TICK_S, lambda: asyncio.to_thread(trim), "malloc-trim")
        reclaim = heap.library_reclaimer()
        if reclaim is not None:  # on a worker thread too: a walk over /proc/self/maps and a few syscalls
            self.jobs.every(lambda: heap.RECLAIM_TICK_S, lambda: asyncio.to_thread(reclaim), "library-pageout")
        self.jobs.every(lambda: RECHECK_TICK_S, self.recheck, "recheck")
        self._start_storage_jobs()
        admin_forecast.start_jobs(self)  # rate meter, demand refits (worker process)
        self.alerts.quota_rate = self.forecast.meter.per_min  # "runs out before reset" rules
        self.alerts.start()
        logs.add_secret_source(self.alerts.secrets)
        self.ready = True
        self._log_startup()
        try:
            yield
        finally:
            self.ready = False
            await self.jobs.stop()  # one list: the gateway's jobs, the node's loops, the alert evaluator
            await self.alerts.stop()
            await self.resources.flush()  # the resource map's last appends reach its file
            logs.remove_secret_source(self.alerts.secrets)
            await asyncio.to_thread(self.sandbox.close)
            await self.node.stop()
            self.persist_keys()
            self.persist_clients()
            self.writer.stop()
            await self.node.close()
            metrics.REGISTRY.unregister(self._collector)
            if self.relay.client is not None:
                await self.relay.client.aclose()
            self.store.close()
            s = self.writer.stats
            logs.event(
                log,
                "shutdown",
                uptime_s=round(time.time() - self.started_at, 1),
                flushed_requests=s.written["requests"],
                flushed_attempts=s.written["attempts"],
                flushed_error_logs=s.written["error_logs"],
                unwritten=self.writer.depth,
                write_failures=s.failures,
            )
            logs.remove_secret_source(self.secrets)

    def _log_startup(self) -> None:
        cfg, counts = self._config, self.pool.counts()
        up = urlsplit(cfg.upstream_url)  # scheme and host only: a URL may carry credentials
        logs.event(
            log,
            "startup",
            host=self.settings.host,
            port=self.settings.port,
            data_dir=str(self.settings.data_dir),
            upstream=f"{up.scheme}://{up.hostname}" + (f":{up.port}" if up.port else ""),
            keys=len(self.pool.keys),
            **{f"keys_{status}": n for status, n in counts.items()},
            projects=len({k.project for k in self.pool.keys.values() if k.project}),
            strategy=cfg.strategy,
            access_tokens=len(cfg.access_tokens),
            clients=sum(1 for c in self.clients.by_id.values() if c.revoked_at is None),
            admin_api="on" if self.settings.admin_token else "off",
            outbound_proxy="on" if cfg.outbound_proxy else "off",
            log_level=cfg.log_level,
            **self.node.startup_fields(),
        )


def _limits(cfg: Config) -> dict[str, ModelLimits]:
    return {m: ModelLimits(**lim) for m, lim in cfg.model_limits.items()}


def create_app(settings: Settings | None = None) -> Starlette:
    gw = Gateway(settings or Settings())

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "uptime_s": round(time.time() - gw.started_at, 1)})

    async def readyz(_request: Request) -> Response:
        ok = gw.is_ready()
        body: dict[str, Any] = {"ready": ok, "keys": gw.pool.counts(), "storage": gw.writer.storage_state()}
        body["resources"] = gw.resources.fault or "ok"
        if not ok:
            body["reason"] = gw.not_ready_reason()
        body.update(gw.node.readiness())
        return JSONResponse(body, status_code=200 if ok else 503)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # An unknown path or method answers in the shape of the surface the path belongs to (the openai SDK reads only
    # OpenAI's shape); anything else in Google's.
    async def not_found(request: Request, _exc: Exception) -> Response:
        surface: Surface = "openai" if openai.owns(request) else "gemini"
        path = request.url.path[:200]
        return error_response(surface, NotFound(f"Unknown path {path}. See the Keyrack README for routes."))

    async def not_allowed(request: Request, _exc: Exception) -> Response:
        surface: Surface = "openai" if openai.owns(request) else "gemini"
        path = request.url.path[:200]
        return error_response(surface, MethodNotAllowed(f"Method {request.method} is not allowed on {path}."))

    # Starlette tries the routes in order, a path match each: the data plane's first (the native /v1beta surface
    # shares no path with the others; /v1 must come after the OpenAI surface's /v1/models), the rest after.
    routes: list[Any] = [
        *gemini.routes(gw, ("v1beta",)),
        *openai.routes(gw),
        *gemini.routes(gw, ("v1",)),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        admin_api.mount(gw),
        *live.routes(gw),
        *resources_surface.routes(gw),
    ]
    app = Starlette(routes=routes, lifespan=gw.lifespan, exception_handlers={404: not_found, 405: not_allowed})
    app.state.gateway = gw
    return app
