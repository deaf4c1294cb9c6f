"""Which project owns each Gemini resource (file, cached content, batch, operation): the resource → project map.

A file uploaded with a key of project A is invisible to every key of project B (403 PERMISSION_DENIED), and so are
cached contents, batches and operations. Keyrack records the project (and key) that created each resource and
sends every later call naming it to a key of that project, whatever the strategy.

The map lives in memory (a lookup on the generate path is a dict read) and is durable in a small append-only side
file, `<data dir>/resources.jsonl`: a create is rare, so one appended line per create is fine, written on a worker
thread (never the event loop). Loading replays the file, drops what has expired and rewrites it compacted. An entry
expires with its resource: files after Google's 48 h, caches at their expireTime, batches and operations when
deleted (or after `JOB_TTL_S`, past any batch's life at Google). An append that fails (a full or read-only disk) is
not silent: a logged warning, `fault` (which /readyz reports, as it does the event store's), and the whole map is
written again from memory every RETRY_S until the disk takes it; calls go on being pinned from memory meanwhile.

The generate path asks `names_in(body)` for the resources a request body names; it looks for the two markers
(`cachedContent`, `files/`) with a bytes search first and runs the regex only on bodies that contain one, so a plain
prompt costs two substring scans and no parsing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from proxy_service.logs import event

log = logging.getLogger("keyrack.resources")
FILE_TTL_S = 48 * 3600.0  # Google deletes an uploaded file after 48 hours
JOB_TTL_S = 7 * 86400.0  # batches and operations: forgotten when deleted, at the latest after this
CACHE_TTL_S = 3600.0  # Google's default TTL for a cached content created without one
RETRY_S = 1.0  # while the side file cannot be written, how often it is tried again
KINDS = ("files", "cachedContents", "batches", "operations")
# A resource name as Google spells it: the collection, then an id of lowercase letters, digits and dashes.
NAME = re.compile(r"^(files|cachedContents|batches|operations)/[a-z0-9][a-z0-9_-]{0,127}$")
_CACHE_REF = re.compile(rb'"cached_?[cC]ontent"\s*:\s*"(cachedContents/[a-z0-9_-]{1,128})"')
_FILE_REF = re.compile(rb'"(?:file_?[uU]ri|fileName|file_name)"\s*:\s*"(?:[^"]{0,200}/)?(files/[a-z0-9_-]{1,128})')


@dataclass(frozen=True, slots=True)
class Owner:
    """Who created a resource: the project (the scope keys are pinned to) and the key that made it."""

    name: str
    project: str
    key_id: str
    expires_at: float
    size_bytes: int = 0


# What events call each kind (`requests.resource_kind`); a Live session is "live" (it names no resource).
EVENT_KINDS = {"files": "file", "cachedContents": "cachedContent", "batches": "batch", "operations": "operation"}


def kind_of(name: str) -> str:
    return name.partition("/")[0]


def event_kind(name: str) -> str | None:
    """The event's resource kind of a resource name (None for a name of no known collection)."""
    return EVENT_KINDS.get(kind_of(name))


def answered_name(body: bytes) -> str | None:
    """The name of the resource a create answered with (`{"name": ...}`, or `{"file": {"name": ...}}` for an
    upload), when it is one; read only for calls that create a resource (rare), never on the generate path."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    inner = doc.get("file", doc) if isinstance(doc, dict) else None
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) and NAME.match(name) else None


def expiry(name: str, doc: dict[str, object], now: float) -> float:
    """When the resource `name` (answered as `doc`) stops existing at Google."""
    kind = kind_of(name)
    if kind == "files":
        return now + FILE_TTL_S
    if kind == "cachedContents":
        expire = doc.get("expireTime")
        if isinstance(expire, str):
            try:
                return datetime.fromisoformat(expire.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        return now + CACHE_TTL_S
    return now + JOB_TTL_S


def names_in(body: bytes) -> list[str]:
    """The cached content and files a request body names (a cheap check first: most bodies name none)."""
    found: list[str] = []
    if b"achedContent" in body or b"ached_content" in body:
        found.extend(m.decode() for m in _CACHE_REF.findall(body))
    if b"files/" in body:
        found.extend(m.decode() for m in _FILE_REF.findall(body))
    return found


@dataclass(slots=True)
class UploadSession:
    """A resumable upload Keyrack opened upstream: where its chunks go and with which key."""

    upstream_path: str  # the upstream upload URL's path and query (its host is the configured upstream's)
    key_id: str
    project: str
    opened: float
    client_id: str | None  # the client that started it: its chunks are recorded as that client's


class Share(Protocol):
    """Where replicas share the map and the upload sessions (cluster mode: `cluster.resources.SharedResources`)."""

    async def put_owner(self, owner: Owner) -> None: ...

    async def owner(self, name: str) -> Owner | None: ...

    async def drop(self, name: str) -> None: ...

    async def put_session(self, sid: str, session: dict[str, Any], ttl_s: float) -> None: ...

    async def session(self, sid: str) -> dict[str, Any] | None: ...

    async def drop_session(self, sid: str) -> None: ...


class ResourceMap:
    """name → Owner, in memory, durable in `path` (None: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.owners: dict[str, Owner] = {}
        self._lock = threading.Lock()
        # One thread for the appends: they reach the file in the order they were made (a create before its delete).
        self._appender = ThreadPoolExecutor(1, thread_name_prefix="keyrack-resources")
        self._pending: set[asyncio.Future[None]] = set()
        self.shared: Share | None = None  # cluster mode: the replicas' map in Redis
        # Why the side file cannot be written now (full or read-only disk), None when it can: /readyz says so.
        self.fault: str | None = None
        self.failed_writes = 0  # writes of the side file that failed (appends and retries)
        self._retry: threading.Timer | None = None
        if path is not None:
            self._load(path)

    # -- durability -------------------------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        now = time.time()
        if path.exists():
            for line in path.read_text("utf-8").splitlines():
                try:
                    row = json.loads(line)
                    if row.get("deleted"):
                        self.owners.pop(row["name"], None)
                    else:
                        self.owners[row["name"]] = Owner(**row)
                except (ValueError, TypeError, KeyError):
                    log.warning("skipping a damaged line in %s", path)
        self.owners = {n: o for n, o in self.owners.items() if o.expires_at > now}
        self._rewrite(path)
        if self.owners:
            event(log, "resources_loaded", resources=len(self.owners))

    def _rewrite(self, path: Path) -> None:
        """Write the whole map (what has not expired) to `path` at once: compaction at load, and the way back from a
        fault (every entry is in memory, so whatever the failed appends held is written)."""
        now = time.time()
        owners = [o for o in dict(self.owners).values() if o.expires_at > now]  # a copy: the loop may add meanwhile
        tmp = path.with_suffix(".tmp")
        with self._lock:
            tmp.write_text("".join(json.dumps(asdict(o)) + "\n" for o in owners), "utf-8")
            tmp.replace(path)

    def _append(self, row: dict[str, object]) -> None:
        """Append one line (the appender thread). A failure is never silent: logged, `fault` set (/readyz says it),
        and the file rewritten whole from memory every RETRY_S until the disk takes it again."""
        path = self.path
        if path is None:
            return
        if self.fault is not None:
            self._recover()  # the rewrite holds `row` too: it is in memory already
            return
        try:
            with self._lock, path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as exc:
            self._failed(path, exc)

    def _recover(self) -> None:
        path = self.path
        if path is None or self.fault is None:
            return
        try:
            self._rewrite(path)
        except OSError as exc:
            self._failed(path, exc)
            return
        log.warning("resource map: %s is written again (was: %s); nothing was lost", path, self.fault)
        self.fault = None

    def _failed(self, path: Path, exc: OSError) -> None:
        self.failed_writes += 1
        if self.fault is None:
            log.warning(
                "resource map: cannot write %s (%s); the map is kept in memory and written again every %g s until "
                "the disk takes it (a restart meanwhile would forget the resources made since)",
                path,
                exc.strerror or type(exc).__name__,
                RETRY_S,
            )
        self.fault = f"resource map not saved: {exc.strerror or type(exc).__name__} ({path.name})"
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Timer(RETRY_S, self._retry_now)
            self._retry.daemon = True
            self._retry.start()

    def _retry_now(self) -> None:
        self._retry = None
        if self.fault is not None:  # on the appender thread, in order with the appends
            self._appender.submit(self._recover)

    def _persist(self, row: dict[str, object]) -> None:
        """Append on a worker thread; the answer to the client does not wait for the disk."""
        if self.path is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop (a test, a script): write inline
            self._append(row)
            return
        fut = loop.run_in_executor(self._appender, self._append, row)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for the appends under way (shutdown, tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- the map ----------------------------------------------------------------------------------------------------
    def _share(self, job: Coroutine[Any, Any, None]) -> None:
        """Run a Redis write in the background (the answer does not wait for it); `flush` waits for it."""
        task = asyncio.ensure_future(job)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def record(self, owner: Owner) -> None:
        self.owners[owner.name] = owner
        self._persist(asdict(owner))
        if self.shared is not None:
            self._share(self.shared.put_owner(owner))

    def forget(self, name: str) -> None:
        if self.owners.pop(name, None) is not None:
            self._persist({"name": name, "deleted": True})
        if self.shared is not None:
            self._share(self.shared.drop(name))

    async def resolve(self, names: list[str]) -> Owner | None:
        """`pinned`, then (cluster mode) the other replicas' creates from Redis, kept here once seen."""
        found = self.pinned(names)
        if found is not None or self.shared is None:
            return found
        for name in names:
            owner = await self.shared.owner(name)
            if owner is not None and owner.expires_at > time.time():
                self.owners[name] = owner
                return owner
        return None

    def owner(self, name: str, now: float | None = None) -> Owner | None:
        o = self.owners.get(name)
        if o is None:
            return None
        if o.expires_at <= (time.time() if now is None else now):
            self.owners.pop(name, None)
            return None
        return o

    def pinned(self, names: list[str]) -> Owner | None:
        """The owner of the first known resource among `names` (a call naming resources of two projects cannot
        succeed anywhere; Google answers it with its own 403)."""
        for name in names:
            o = self.owner(name)
            if o is not None:
                return o
        return None

    def stored_bytes(self) -> dict[str, int]:
        """Live file bytes per project: new uploads go where the least is stored (storage is per project)."""
        now = time.time()
        out: dict[str, int] = {}
        for o in list(self.owners.values()):
            if o.expires_at > now and kind_of(o.name) == "files":
                out[o.project] = out.get(o.project, 0) + o.size_bytes
        return out
