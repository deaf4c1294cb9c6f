"""The resource → project map and the resumable upload sessions, shared by the replicas through Redis.

A file uploaded through one replica is used through another: each create is also written to
`<prefix>:res:<name>` (expiring with the resource), and a replica that does not know a name a call carries asks
Redis once and keeps the answer. An upload's chunks may reach another replica than its start: the session is in
`<prefix>:up:<session id>` for as long as Google keeps an upload session. Values are sealed with the cluster secret
(trust.py): a value someone else wrote into Redis is ignored, never followed. Redis away is not fatal: the replica
keeps its own map (durable in its data dir) and answers from it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from proxy_service.cluster.trust import Trust
from proxy_service.resources import Owner

log = logging.getLogger("keyrack.cluster")


class SharedResources:
    def __init__(self, client: aredis.Redis, prefix: str, trust: Trust) -> None:
        self.redis = client
        self.prefix = prefix
        self.trust = trust

    async def _put(self, key: str, value: dict[str, Any], ttl_s: float, purpose: str) -> None:
        sealed = self.trust.signed(json.dumps(value), purpose, key)  # the tag covers the Redis key too
        try:
            await self.redis.set(key, sealed, px=max(1000, int(ttl_s * 1000)))
        except RedisError as exc:
            log.warning("resource map: Redis write failed (%s); this replica keeps its own copy", type(exc).__name__)

    async def _get(self, key: str, purpose: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.get(key)
        except RedisError as exc:
            log.warning("resource map: Redis read failed (%s)", type(exc).__name__)
            return None
        if raw is None:
            return None
        payload = self.trust.unsigned(raw, purpose, key, reason=f"{purpose}_unsigned")
        if payload is None:
            return None
        try:
            value = json.loads(payload)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def put_owner(self, owner: Owner) -> None:
        await self._put(f"{self.prefix}:res:{owner.name}", asdict(owner), owner.expires_at - time.time(), "resource")

    async def owner(self, name: str) -> Owner | None:
        value = await self._get(f"{self.prefix}:res:{name}", "resource")
        try:
            return Owner(**value) if value is not None else None
        except TypeError:
            return None

    async def drop(self, name: str) -> None:
        try:
            await self.redis.delete(f"{self.prefix}:res:{name}")
        except RedisError as exc:
            log.warning("resource map: Redis delete failed (%s)", type(exc).__name__)

    async def put_session(self, sid: str, session: dict[str, Any], ttl_s: float) -> None:
        await self._put(f"{self.prefix}:up:{sid}", session, ttl_s, "upload")

    async def session(self, sid: str) -> dict[str, Any] | None:
        return await self._get(f"{self.prefix}:up:{sid}", "upload")

    async def drop_session(self, sid: str) -> None:
        try:
            await self.redis.delete(f"{self.prefix}:up:{sid}")
        except RedisError as exc:
            log.warning("upload session: Redis delete failed (%s)", type(exc).__name__)
