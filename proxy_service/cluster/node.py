"""`Cluster`: what one replica adds to the gateway in cluster mode — Redis clients, the lake store and writer, the
shared pool, and the background loops (heartbeat, key/config broadcast, compactor election).

Keys and settings: PostgreSQL (`keyrack.keys`, `keyrack.settings`) is the one source of truth. A replica that
changes a key or the config writes it there, then publishes `{"kind": "keys"|"config", ...}` on the Redis channel
`<prefix>:bus`, sealed with the cluster secret (trust.py: the others ignore anything else); every other replica
re-reads those rows and applies them. A full re-read every `RELOAD_S` repairs anything a lost
message (Redis restarting) missed. Per-key counters are deltas committed to the lake with the events
(`LakeWriter.count_keys`, lake table `key_counts`): appends, so replicas never conflict and outages only delay them.

Cluster-wide jobs run on one replica, the leader elected in `leader.py` (alert evaluation, retention — see the
gateway — and compaction). Compaction: every `COMPACT_S` the leader runs `lake.compact_lake` (fold the rollup rows
that several commits left for one bucket, flush inlined rows, merge small files, expire old snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from proxy_service.analytics import queries
from proxy_service.analytics.rollup import fold_batch
from proxy_service.analytics.sql_sandbox import Sandbox
from proxy_service.clients import ClientUse
from proxy_service.cluster import shared
from proxy_service.cluster.config import ClusterConfig, ClusterStartError, mask_url, secrets_of
from proxy_service.cluster.lake import LakeError, LakeStore, compact_lake, key_counts
from proxy_service.cluster.leader import Leader
from proxy_service.cluster.pool import MARKER_TTL_MS, REDIS_ERRORS, ClusterPool
from proxy_service.cluster.resources import SharedResources
from proxy_service.cluster.sql_snapshot import LakeSnapshot
from proxy_service.cluster.trust import Trust
from proxy_service.cluster.writer import LakeWriter
from proxy_service.logs import event
from proxy_service.node import Hooks, load_saved_config
from proxy_service.pool import Key, Pool, key_from_row, stored_epoch
from proxy_service.quota import next_pacific_midnight, pacific_day, pacific_day_start
from proxy_service.settings import Config

log = logging.getLogger("keyrack.cluster")
HEARTBEAT_S = 1.0
ALIVE_S = 5.0  # a replica silent for longer is not counted in N
NOW_FRESH_S = ALIVE_S  # a replica's snapshot of its clients' last minute and calls in flight counts this long
RELOAD_S = 10.0
COMPACT_S = 30.0
JOURNAL_PRUNE_S = 3600.0  # the leader drops old journal ids this often (a delete fails concurrent commits once)
ALERT_STATES_S = 300  # how long the leader's last shared alert states stay readable (it rewrites them each evaluation)
REQUEST_TIMEOUT_S = 0.5  # Redis on the request path: fail fast, degrade, never hang
# Reads of what anyone with Redis access can write are bounded: the shared alert states (bytes), the live hash
# (replicas). Past them the value is not a replica's.
ALERT_STATES_MAX = 8 << 20
LIVE_MAX = 1000


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None) if epoch else None


class Cluster:
    """The cluster replica's `node.Node`: the lake store and writer, the shared pool, Redis, the leader's lease."""

    rebuilds_rollup_in_background = False  # the lake's rollup is rebuilt before serving (see node.Node)

    def __init__(self, cfg: ClusterConfig, data_dir: Any) -> None:
        self.cfg = cfg
        self.replica = cfg.replica_id
        self.prefix = cfg.redis_prefix
        self._client_pushed: dict[tuple[str, str], tuple[int, int]] = {}  # (day or month, client) → (calls, tokens)
        self.bus, self.live = f"{self.prefix}:bus", f"{self.prefix}:live"
        # Key statuses told by bus messages, numbered: a stored row read while a newer message was applied is stale
        # for that key (its write was announced after commit, so the message holds the newer state).
        self._told: dict[str, int] = {}
        self._told_seq = 0
        self.redis = redis.Redis.from_url(cfg.redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise ClusterStartError(f"cannot reach Redis at {mask_url(cfg.redis_url)}: {exc}") from None
        self.aredis = aredis.Redis.from_url(
            cfg.redis_url,
            socket_timeout=REQUEST_TIMEOUT_S,
            socket_connect_timeout=REQUEST_TIMEOUT_S,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        try:
            self.store = LakeStore(cfg, self.init_lock, data_dir / "lake-mirror.duckdb")
        except LakeError as exc:
            raise ClusterStartError(str(exc)) from None
        self.writer = LakeWriter(
            self.store,
            self.replica,
            data_dir / "spill",
            cfg.commit_interval_s,
            max_carry_rows=cfg.max_waiting_rows,
            init_lock=self.init_lock,
        )
        self.writer.before_commit.append(_fold_requests)
        self.trust = Trust(self.store.secret, self.prefix)
        self.leader = Leader(self.aredis, f"{self.prefix}:leader", self.replica, trust=self.trust)
        self.pool: ClusterPool | None = None
        self.hooks: Hooks | None = None  # callbacks into the gateway, from start() on
        self.compactions = 0
        self._journal_pruned_at = -JOURNAL_PRUNE_S

    @contextlib.contextmanager
    def init_lock(self) -> Iterator[None]:
        name = f"{self.prefix}:lock:init"
        with contextlib.suppress(redis.RedisError):  # a lock no replica could hold (no or an absurd expiry): gone
            ttl = self.redis.pttl(name)
            if ttl == -1 or ttl > 120_000:
                self.redis.delete(name)
                log.warning("removed a lake initialisation lock no replica could hold (expiry %s ms)", ttl)
        lock = self.redis.lock(name, timeout=120, blocking_timeout=120)
        if not lock.acquire():
            raise ClusterStartError("another replica holds the lake initialisation lock for over 120 s")
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                lock.release()

    def make_pool(self, *args: Any, **kwargs: Any) -> ClusterPool:
        self.pool = ClusterPool(
            *args, redis=self.aredis, replica=self.replica, prefix=self.prefix, trust=self.trust, **kwargs
        )
        return self.pool

    def secrets(self) -> list[str]:
        return [s for url in (self.cfg.redis_url, self.cfg.lake_catalog, self.cfg.lake_data) for s in secrets_of(url)]

    def shared_resources(self) -> SharedResources:
        return SharedResources(self.aredis, self.prefix, self.trust)

    # -- what the gateway asks its node (node.Node) ------------------------------------------------------------------
    def make_sandbox(self, directory: Path, slots: int, memory_mb: int, threads: int) -> Sandbox:
        # The snapshot is written from the lake (sql_snapshot.LakeSnapshot), first by the first query: at start it
        # would be a whole export of the lake on every replica at once, on the lake connection the cluster's own
        # start is using (a replica whose snapshot overlapped its start then hung on SIGTERM).
        return Sandbox(
            self.store,
            self.writer,
            directory,
            slots,
            memory_mb,
            threads,
            LakeSnapshot,
            snapshot_at_start=False,
        )

    def install_safe_views(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.store.install_safe_views(cur)  # replica-local, with fully qualified bodies

    def export_selects(self) -> dict[str, str]:
        return self.store.export_selects()

    def load_config(self, seed: Config) -> Config:
        return load_saved_config(self.store, seed)

    def restore_usage(self, pool: Pool) -> None:
        return None  # the quota windows live in Redis (restore_day_counts refills them after a Redis loss)

    def restore_client_usage(self, book: Any) -> None:
        return None  # the clients' day and month usage lives in Redis (`share_client_usage`)

    async def share_paid_spend(self, day: str, own_usd: float) -> float | None:
        """This replica's paid spend of `day` as its own field of `<prefix>:paid:<day>` (a total, so a lost exchange
        is made good by the next), and the sum of the other replicas' fields."""
        key = f"{self.prefix}:paid:{day}"
        pipe = self.aredis.pipeline(transaction=False)
        pipe.hset(key, self.replica, repr(float(own_usd)))
        pipe.expire(key, 2 * 86400)
        pipe.hgetall(key)
        try:
            answers = await pipe.execute()
        except REDIS_ERRORS:
            return None
        total = 0.0
        for field, value in answers[-1].items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            if name == self.replica:
                continue
            try:
                usd = float(value)
            except ValueError:  # not written by a replica: ignored, as the other shared state's malformed values
                self.trust.reject("paid_spend_malformed")
                continue
            if math.isfinite(usd) and usd > 0:
                total += usd
        return total

    async def share_client_usage(self, day: str, month: str, own: dict[str, ClientUse]) -> dict[str, ClientUse] | None:
        """Add this replica's client usage since its last exchange to the cluster's day and month counters
        (`<prefix>:cu:d:<day>`, `<prefix>:cu:m:<month>`: hash fields `<client>:c` calls, `<client>:t` tokens), and
        read them back: the others' share is the total minus what this replica has added. Calls of the last minute
        and in flight are a snapshot per replica (`<prefix>:cu:now`, field `<replica>|<client>`, value "minute,in
        flight,epoch ms"), read back from the others' fresh ones (a stopped replica's age out in NOW_FRESH_S). None
        on a Redis error (the next exchange adds what this one could not)."""
        keys = {"d": f"{self.prefix}:cu:d:{day}", "m": f"{self.prefix}:cu:m:{month}"}
        now_key = f"{self.prefix}:cu:now"
        staged = {k: v for k, v in self._client_pushed.items() if k[0] in (day, month)}
        pipe = self.aredis.pipeline(transaction=False)
        stamp = int(time.time() * 1000)
        for cid, (calls_d, tokens_d, calls_m, tokens_m, minute, flight) in own.items():
            for kind, period, calls, tokens in (("d", day, calls_d, tokens_d), ("m", month, calls_m, tokens_m)):
                before = staged.get((period, cid), (0, 0))
                if calls != before[0]:
                    pipe.hincrby(keys[kind], f"{cid}:c", calls - before[0])
                if tokens != before[1]:
                    pipe.hincrby(keys[kind], f"{cid}:t", tokens - before[1])
                staged[(period, cid)] = (calls, tokens)
            pipe.hset(now_key, f"{self.replica}|{cid}", f"{minute},{flight},{stamp}")
        pipe.expire(now_key, 300)
        pipe.expire(keys["d"], 2 * 86400)
        pipe.expire(keys["m"], 40 * 86400)
        pipe.hgetall(keys["d"])
        pipe.hgetall(keys["m"])
        pipe.hgetall(now_key)
        try:
            answers = await pipe.execute()
        except REDIS_ERRORS:
            return None
        self._client_pushed = staged
        totals: dict[str, list[int]] = {}
        for slot, hashed in ((0, answers[-3]), (2, answers[-2])):
            for field, value in hashed.items():
                cid, _, what = (field.decode() if isinstance(field, bytes) else str(field)).rpartition(":")
                row = totals.setdefault(cid, [0, 0, 0, 0])
                row[slot + (what == "t")] = int(value)
        current, stale = self._peers_now(answers[-1], stamp)
        if stale:  # stopped replicas' snapshots: gone, so the hash holds only live replicas' clients
            with contextlib.suppress(*REDIS_ERRORS):
                await self.aredis.hdel(now_key, *stale)
        peers: dict[str, ClientUse] = {}
        for cid in totals.keys() | current.keys():
            cd, td, cm, tm = totals.get(cid, (0, 0, 0, 0))
            mine_d, mine_m = staged.get((day, cid), (0, 0)), staged.get((month, cid), (0, 0))
            minute, flight = current.get(cid, (0, 0))
            peers[cid] = (
                max(0, cd - mine_d[0]),
                max(0, td - mine_d[1]),
                max(0, cm - mine_m[0]),
                max(0, tm - mine_m[1]),
                minute,
                flight,
            )
        return peers

    def _peers_now(self, hashed: dict[Any, Any], stamp: int) -> tuple[dict[str, tuple[int, int]], list[str]]:
        """The other replicas' fresh snapshots of calls in the last minute and in flight, summed per client (values
        that are not a replica's are ignored and counted, as the other shared state's malformed values), and the
        fields of snapshots a minute old or older (their replica stopped)."""
        out: dict[str, tuple[int, int]] = {}
        stale: list[str] = []
        for field, value in hashed.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            replica, _, cid = name.partition("|")
            if replica == self.replica or not cid:
                continue
            try:
                minute, flight, at = (
                    int(v) for v in (value.decode() if isinstance(value, bytes) else value).split(",")
                )
            except ValueError:
                self.trust.reject("client_use_malformed")
                stale.append(name)
                continue
            if stamp - at >= 60_000:
                stale.append(name)
            if not 0 <= stamp - at <= NOW_FRESH_S * 1000 or not (0 <= minute <= 10**9 and 0 <= flight <= 10**9):
                continue  # a stopped replica's (or a clock far off): not counted
            m, f = out.get(cid, (0, 0))
            out[cid] = (m + minute, f + flight)
        return out, stale

    def leads(self) -> bool:
        return self.leader.leading

    def readiness(self) -> dict[str, Any]:
        # Redis away is "degraded", not "not ready": every replica would be pulled out of the balancer at once.
        c = self.cluster_state()
        return {
            "cluster": {
                "replica": c["replica"],
                "replicas": c["replicas"],
                "leader": c["leader_id"],
                "redis": "degraded" if c["redis_degraded"] else "ok",
                "lake": "retrying" if c["lake_last_error"] else "ok",
                "lake_waiting_rows": c["lake_waiting_rows"],
            }
        }

    def startup_fields(self) -> dict[str, Any]:
        return {f"cluster_{k}": v for k, v in self.cfg.masked().items()}

    async def refresh_before_rule_change(self, reload_alerts: Callable[[], Awaitable[None]]) -> None:
        await reload_alerts()  # a name another replica took a moment ago (its broadcast not heard yet, or lost)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    async def start(self, hooks: Hooks) -> None:
        self.hooks = hooks
        try:  # the keys were loaded with the stored totals only: add every replica's counter deltas from the lake
            await self._reload_keys(None)
        except Exception as exc:
            log.warning("reading the keys' counters failed (%s); the periodic reload retries", type(exc).__name__)
        for name, coro in (
            ("heartbeat", self._heartbeat()),
            ("bus", self._listen()),
            ("reload", self._reload_loop()),
            ("leader", self.leader.run()),
            ("compactor", self._compactor()),
        ):
            hooks.background.spawn(coro, f"cluster-{name}")

    async def stop(self) -> None:
        """After the gateway's background tasks (this node's loops among them) have been cancelled."""
        await self.leader.resign()
        if self.pool is not None:
            await self.pool.drain()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.aredis.hdel(self.live, self.replica)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.aredis.aclose()
        with contextlib.suppress(Exception):
            self.redis.close()

    def state(self) -> dict[str, Any]:
        return {"cluster": self.cluster_state()}

    def cluster_state(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "replica": self.replica,
            "replicas": pool.replicas if pool else 1,
            **self.leader.state(),
            "redis_degraded": bool(pool and pool.degraded),
            "lake_waiting_rows": self.writer.depth,
            "lake_spilled_rows": self.writer.spilled_rows,
            "lake_last_error": self.writer.last_error,
            "rejected": dict(self.trust.rejected),
            "leases_taken_back": self.leader.seized,
        }

    # -- alert states (written by the leader, read by the others) -----------------------------------------------------
    async def share_alert_states(self, payload: str) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.aredis.set(
                f"{self.prefix}:alerts", self.trust.signed(payload, "alerts"), px=ALERT_STATES_S * 1000
            )

    async def alert_states(self) -> str | None:
        try:
            value = await self.aredis.getrange(f"{self.prefix}:alerts", 0, ALERT_STATES_MAX)
        except REDIS_ERRORS:
            return None
        if not value:
            return None
        if len(value) > ALERT_STATES_MAX:
            self.trust.reject("alerts_oversized")
            return None
        return self.trust.unsigned(value, "alerts", reason="alerts_forged")

    # -- heartbeat and degraded mode ----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            try:
                now_ms = int(time.time() * 1000)
                pipe = self.aredis.pipeline(transaction=False)
                pipe.hset(self.live, self.replica, self.trust.signed(str(now_ms), "live", self.replica))
                pipe.hlen(self.live)
                if self.pool is not None:
                    pipe.pexpire(self.pool.marker, MARKER_TTL_MS)  # 0: gone (Redis lost this replica's state)
                _, size, *marked = await pipe.execute()
                if int(size) > LIVE_MAX:  # not written by replicas: start it over (each replica is back within 1 s)
                    self.trust.reject("heartbeats_flooded")
                    await self.aredis.delete(self.live)
                    await self.aredis.hset(
                        self.live, self.replica, self.trust.signed(str(now_ms), "live", self.replica)
                    )
                live = await self.aredis.hgetall(self.live)
                beats = self._heartbeats(live)
                alive = {k: v for k, v in beats.items() if v is not None and now_ms - v <= ALIVE_S * 1000}
                # Gone for a minute, or not written by a replica (counted): out of the hash.
                dead = [k for k, v in beats.items() if v is None or now_ms - v > 60_000]
                if dead:
                    await self.aredis.hdel(self.live, *dead)
                if self.pool is not None:
                    n = max(1, len(alive))
                    if self.pool.degraded or not marked[0] or self.pool.cautious():
                        # `live` may have been emptied with the rest: it refills over a heartbeat, and until then
                        # the 1/N of the degraded rule must not become 1/1.
                        n = max(n, self.pool.replicas)
                    self.pool.replicas = n
                    # The first replica to see an empty Redis (new, or restarted without persistence) refills it.
                    empty = await self.aredis.set(f"{self.prefix}:born", self.replica, nx=True)
                    cut = self.pool.degraded_since or time.time()
                    if self.pool.heard():
                        await self.pool.recover()
                        await self._reload()  # messages may have been lost while Redis was away
                    elif self.pool.degraded:
                        pass  # not for long enough yet
                    elif not marked[0]:
                        await self.pool.resync()  # emptied without an outage seen here (flushed, fast restart)
                    elif self.pool.offline:
                        await self.pool.reconcile()  # calls admitted locally while a round trip failed
                    if empty and not marked[0]:  # this replica's marker survived: Redis was not emptied
                        await self._restore_days(cut)
            except REDIS_ERRORS as exc:
                if self.pool is not None:
                    self.pool.redis_failed(exc)
            except Exception:
                log.exception("cluster heartbeat failed")
            await asyncio.sleep(HEARTBEAT_S)

    def _heartbeats(self, live: dict[Any, Any]) -> dict[str, int | None]:
        """Each replica's last heartbeat (ms) from the `live` hash; None for an entry no replica wrote."""
        beats: dict[str, int | None] = {}
        for name, raw in list(live.items())[:LIVE_MAX]:
            replica = shared.text(name)
            value = self.trust.unsigned(raw, "live", replica, reason="heartbeat_forged")
            beats[replica] = int(value) if value is not None and value.isdigit() else None
        return beats

    async def _restore_days(self, cut: float) -> None:
        """Redis came up empty (restarted without persistence, or new): put back today's calls per (scope, model)
        from the lake, so no day limit is spent twice. Calls from `cut` on (this replica's outage start) are added
        by the replicas themselves (their reconciled local admissions, new reservations). The minute windows come
        back from each replica's own record (`ClusterPool.resync`), not from here: the lake lags by a commit."""
        now = time.time()
        try:
            rows = await asyncio.to_thread(self._read_usage, pacific_day_start(now), cut)
            ttl = int((next_pacific_midnight(now) - now) * 1000) + 3_600_000
            pipe = self.aredis.pipeline(transaction=False)
            for scope, model, today, _recent in rows:
                key = shared.scope_keys(self.prefix, scope, model.removeprefix("models/"), pacific_day(now).isoformat())
                pipe.incrby(key[1], today)
                pipe.pexpire(key[1], ttl)
            await pipe.execute()
        except Exception as exc:  # the lake or Redis failed: let the next heartbeat try again
            with contextlib.suppress(*REDIS_ERRORS):
                await self.aredis.delete(f"{self.prefix}:born")
            log.warning("restoring the day counts failed (%s); retrying", type(exc).__name__)
            return
        event(log, "redis_day_counts_restored", replica=self.replica, pairs=len(rows), calls=sum(r[2] for r in rows))

    def _read_usage(self, day_start: float, cut: float) -> list[tuple[str, str, int, list[datetime]]]:
        cur = self.store.cursor()
        try:
            return queries.quota_usage(cur, day_start, cut - 60, cut)
        finally:
            cur.close()

    # -- keys and config: persist, broadcast, apply ----------------------------------------------------------------------
    def persist_keys(self) -> None:
        """Hand the keys' counter deltas to the lake writer (journaled and committed with the events, once: appends,
        so replicas never conflict and an outage only delays them), write changed keys' other fields to PostgreSQL,
        then tell the other replicas."""
        pool = self.pool
        assert pool is not None
        dirty, deleted, changed = pool.dirty, pool.deleted, pool.changed
        pool.dirty, pool.deleted, pool.changed = set(), set(), set()
        keys = [pool.keys[k] for k in dirty | changed if k in pool.keys]
        if not keys and not deleted:
            return
        deltas: dict[str, tuple[int, int, int]] = {}
        for k in keys:
            base = pool.persisted.get(k.id, (0, 0, 0))
            now = (k.requests, k.successes, k.total_failures)
            if now != base:
                deltas[k.id] = (now[0] - base[0], now[1] - base[1], now[2] - base[2])
            pool.persisted[k.id] = now
        if deltas:
            self.writer.count_keys(deltas)
        rows = _key_table(keys)
        status_rows = rows.filter(pa.array([k.id in changed for k in keys], pa.bool_())) if keys and changed else None
        gone = list(deleted)

        def write(cur: Any) -> None:
            for attempt in range(3):  # another replica updating the same rows: PostgreSQL refuses one, try again
                try:
                    _write_keys(cur, gone, rows, status_rows)
                    return
                except duckdb.Error as exc:
                    if "could not serialize" not in str(exc) or attempt == 2:
                        raise

        fut = self.writer.submit(write)
        loop = self.hooks.loop if self.hooks is not None else None

        def retry(f: Future[Any]) -> None:
            # Not written (PostgreSQL away, a conflict with another replica's write): the next round writes them again.
            if f.cancelled() or f.exception() is None or loop is None or loop.is_closed():
                return

            def again() -> None:
                pool.dirty.update(k.id for k in keys)
                pool.changed.update(k for k in changed if k in pool.keys)
                pool.deleted.update(k for k in deleted if k not in pool.keys)

            loop.call_soon_threadsafe(again)

        fut.add_done_callback(retry)
        announce = sorted(changed | deleted)
        if announce:
            # The status travels in the message (applied at once); a replica that lacks a key reads its row (the
            # secret never goes over Redis).
            status = {k.id: [k.status, k.disabled_reason, k.label, k.project] for k in keys if k.id in changed}
            self.announce(fut, {"kind": "keys", "ids": announce, "status": status})

    def announce(self, fut: Future[Any], message: dict[str, Any]) -> None:
        """Publish `message` once `fut` (the write to PostgreSQL) has succeeded."""
        loop = self.hooks.loop if self.hooks is not None else None

        def done(f: Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and loop is not None and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._publish(message), loop)

        fut.add_done_callback(done)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Publish `message` now (called on the event loop after the change is stored)."""
        assert self.hooks is not None, "broadcast before start"
        self.hooks.background.spawn(self._publish(message), "cluster-broadcast")

    async def _publish(self, message: dict[str, Any]) -> None:
        """Sealed with the cluster secret (time and nonce included): the others ignore anything else on the bus."""
        try:
            await self.aredis.publish(self.bus, self.trust.seal({**message, "from": self.replica}))
        except REDIS_ERRORS as exc:  # the periodic reload will carry it
            log.warning(
                "cluster broadcast failed (%s); other replicas pick it up within %ss", type(exc).__name__, RELOAD_S
            )

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            pubsub = self.aredis.pubsub()
            try:
                await pubsub.subscribe(self.bus)
                backoff = 0.2
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None:
                        continue
                    data = self.trust.open(msg["data"])  # None: not a replica's (counted), stale or replayed
                    if data is None or data.get("from") == self.replica:
                        continue
                    if data.get("kind") == "keys":
                        ids = [i for i in data.get("ids", []) if isinstance(i, str)][:10_000]
                        status = data["status"] if isinstance(data.get("status"), dict) else {}
                        await self._reload_keys(self._apply_status(ids, status))
                    elif data.get("kind") == "config":
                        await self._reload_config()
                    elif data.get("kind") == "alerts" and self.hooks is not None:
                        await self.hooks.reload_alerts()
                    elif data.get("kind") == "clients" and self.hooks is not None:
                        revoked = [i for i in data.get("revoked") or [] if isinstance(i, str)][:10_000]
                        retired = [h for h in data.get("retired") or [] if isinstance(h, str)][:10_000]
                        await self.hooks.reload_clients(revoked, retired)
            except REDIS_ERRORS:
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception:
                log.exception("cluster bus listener failed")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                await self._reload()
            except Exception as exc:
                log.warning("cluster reload failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    async def _reload(self) -> None:
        await self._reload_keys(None)
        await self._reload_config()
        if self.hooks is not None:
            await self.hooks.reload_alerts()
            await self.hooks.reload_clients([], [])

    def _read(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        cur = self.store.cursor()
        try:
            rows = cur.execute(sql, params or []).fetchall()
            return [d[0] for d in cur.description], rows
        finally:
            cur.close()

    def _read_keys(self, ids: list[str] | None) -> dict[str, dict[str, Any]]:
        """The stored keys (all, or `ids`), each with `lake_counts`: every replica's committed counter deltas."""
        cur = self.store.cursor()
        try:
            if ids is None:
                cur.execute("SELECT * FROM keys")
            else:
                cur.execute("SELECT * FROM keys WHERE list_contains(?, key_id)", [ids])
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            counts = key_counts(cur, ids)
        finally:
            cur.close()
        return {r["key_id"]: {**r, "lake_counts": counts.get(r["key_id"], (0, 0, 0))} for r in rows}

    def _apply_status(self, ids: list[str], status: dict[str, Any]) -> list[str]:
        """Apply the statuses carried by a message; returns the ids that need their stored row."""
        pool = self.pool
        assert pool is not None
        need = []
        for kid in ids:
            key, st = pool.keys.get(kid), status.get(kid)
            if key is None or not isinstance(st, list) or len(st) != 4 or kid in pool.changed:
                need.append(kid)
                continue
            if st[0] in ("active", "invalid", "disabled"):
                key.status, key.disabled_reason, key.label, key.project = st[0], st[1], st[2], st[3]
                self._told_seq += 1
                self._told[kid] = self._told_seq
        return need

    async def _reload_keys(self, ids: list[str] | None) -> None:
        """Apply the stored state of `ids` (None: every key) to this replica's pool."""
        pool = self.pool
        assert pool is not None
        if ids == []:
            return
        since = self._told_seq
        stored = await asyncio.to_thread(self._read_keys, ids)
        wanted = set(stored) | set(ids or pool.keys)
        for kid in wanted:
            r = stored.get(kid)
            key = pool.keys.get(kid)
            if self._told.get(kid, 0) > since:
                continue  # a message applied while this read ran is newer than the row it read
            if r is None:
                if key is not None and kid not in pool.dirty and kid not in pool.changed:
                    pool.keys.pop(kid, None)  # deleted elsewhere (not a local add still waiting to be written)
                continue
            if key is None:
                if kid in pool.deleted:
                    continue
                loaded = key_from_row(r)
                loaded.requests, loaded.successes, loaded.total_failures = (
                    a + b
                    for a, b in zip(
                        (loaded.requests, loaded.successes, loaded.total_failures), r["lake_counts"], strict=True
                    )
                )
                pool.load(loaded)
                continue
            if kid in pool.changed:
                continue  # a local change not written yet wins; it is announced right after
            key.status, key.disabled_reason = r["status"], r["disabled_reason"]
            key.label, key.project = r["label"], r["project"]
            key.last_checked_at = stored_epoch(r["last_checked_at"])
            key.last_used_at = max(key.last_used_at or 0.0, stored_epoch(r["last_used_at"]) or 0.0) or None
            # Counters: every replica's totals as stored, plus what this replica has not written yet (the deltas
            # stay exact: the next delta is counted from the stored totals). Consecutive failures live in Redis.
            stored_counts = (r["requests"] or 0, r["successes"] or 0, r["total_failures"] or 0)
            stored_counts = tuple(a + b for a, b in zip(stored_counts, r["lake_counts"], strict=True))
            local = (key.requests, key.successes, key.total_failures)
            base = pool.persisted.get(kid, (0, 0, 0))
            key.requests, key.successes, key.total_failures = (
                c + (n - b) for c, n, b in zip(stored_counts, local, base, strict=True)
            )
            pool.persisted[kid] = stored_counts

    async def _reload_config(self) -> None:
        assert self.hooks is not None
        await self.hooks.reload_config()

    # -- compactor ---------------------------------------------------------------------------------------------------
    async def _compactor(self) -> None:
        while True:
            await asyncio.sleep(COMPACT_S)
            if not self.leader.leading:
                continue
            try:
                await self.compact()
            except Exception as exc:
                log.warning("lake compaction failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    async def compact(self) -> dict[str, int]:
        """Fold duplicate rollup rows, merge small files, expire old snapshots (the elected compactor runs it)."""
        assert self.hooks is not None
        rollup = self.hooks.rollup

        prune = time.monotonic() - self._journal_pruned_at >= JOURNAL_PRUNE_S
        result = await asyncio.wrap_future(self.writer.submit(lambda cur: compact_lake(cur, rollup, prune)))
        if prune:
            self._journal_pruned_at = time.monotonic()
        self.compactions += 1
        event(log, "lake_compacted", replica=self.replica, **result)
        return result


def _write_keys(cur: Any, gone: list[str], rows: pa.Table, status_rows: pa.Table | None) -> None:
    if gone:
        cur.execute("DELETE FROM keys WHERE list_contains(?, key_id)", [gone])
    if rows.num_rows:
        cur.register("_key_rows", rows)
        try:
            cur.execute(_UPSERT_KEYS)
            if status_rows is not None and status_rows.num_rows:
                cur.register("_key_rows", status_rows)
                cur.execute(_UPSERT_STATUS)
        finally:
            cur.unregister("_key_rows")


def _fold_requests(cur: Any, tables: dict[str, pa.Table]) -> None:
    batch = tables.get("requests")
    if batch is not None and batch.num_rows:
        fold_batch(cur, batch.drop_columns(["replica"]) if "replica" in batch.column_names else batch)


# Counters are not written here (they go to the lake's key_counts): a new row starts at 0, an existing one keeps its
# stored totals (from before counters moved to the lake; readers add the lake's deltas).
_UPSERT_KEYS = """
    INSERT INTO keys BY NAME SELECT * FROM _key_rows ON CONFLICT (key_id) DO UPDATE SET
        last_used_at = greatest(keys.last_used_at, excluded.last_used_at),
        last_checked_at = greatest(keys.last_checked_at, excluded.last_checked_at),
        last_error = coalesce(excluded.last_error, keys.last_error),
        consecutive_failures = excluded.consecutive_failures"""
_UPSERT_STATUS = """
    INSERT INTO keys BY NAME SELECT * FROM _key_rows ON CONFLICT (key_id) DO UPDATE SET
        status = excluded.status, disabled_reason = excluded.disabled_reason, label = excluded.label,
        project = excluded.project"""


def _key_table(keys: list[Key]) -> pa.Table:
    zeros = pa.array([0] * len(keys), pa.int64())
    return pa.table(
        {
            "key_id": [k.id for k in keys],
            "secret": [k.secret for k in keys],
            "label": pa.array([k.label for k in keys], pa.string()),
            "project": pa.array([k.project for k in keys], pa.string()),
            "status": [k.status for k in keys],
            "created_at": pa.array([_ts(k.created_at) for k in keys], pa.timestamp("us")),
            "last_used_at": pa.array([_ts(k.last_used_at) for k in keys], pa.timestamp("us")),
            "consecutive_failures": pa.array([k.consecutive_failures for k in keys], pa.int32()),
            "total_failures": zeros,
            "requests": zeros,
            "successes": zeros,
            "last_error": pa.array([k.last_error for k in keys], pa.string()),
            "last_checked_at": pa.array([_ts(k.last_checked_at) for k in keys], pa.timestamp("us")),
            "disabled_reason": pa.array([k.disabled_reason for k in keys], pa.string()),
        }
    )
