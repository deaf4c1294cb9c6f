"""Clients as tenants: who may call the proxy, how much, and who is refused first when a model's quota runs low.

A client is a record: a label, an owner, a class (`interactive`, `standard`, `batch`), a model allow-list, limits
(calls per minute/day/month, tokens per day/month, calls at once), an expiry. Its token is stored only as a keyed
hash (HMAC-SHA256 under a per-install secret kept in the `client_secret` table): the clear token is shown once,
in the answer that made it. Tokens given in `access_tokens` become records too (`source = "config"`, with the id
`t_…` that events had before records existed, so a client's history stays one client).

On the request path everything is in memory: authentication is one HMAC and one dict lookup, admission a few
comparisons on the client's own counters and, for a call to a model, the pool's free share of that model (one pass
over its scopes). Nothing is written per request: `last_used_at` goes to the store in batches (`flush_last_used`).

Usage counters (calls and tokens per UTC minute window, UTC day and UTC month, calls in flight) live in memory and
come back from the `requests` table at start (`restore`), so a restart does not hand a client a fresh month.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb

from proxy_service.errors import ClientRefused

ClientClass = Literal["interactive", "standard", "batch"]
CLASSES: tuple[ClientClass, ...] = ("interactive", "standard", "batch")
LIMITS = ("rpm", "rpd", "tpd", "calls_per_month", "tokens_per_month", "concurrency")
LIMIT_WORDS = {
    "rpm": "per-minute call limit",
    "rpd": "daily call limit",
    "tpd": "daily token limit",
    "calls_per_month": "monthly call limit",
    "tokens_per_month": "monthly token limit",
    "concurrency": "concurrency limit",
}
MINUTE_S = 60.0
SEEN_TOKENS = 4096  # tokens whose hash is remembered (_hash_of_known); past it, the memory starts over
TOKEN_PREFIX = "krc_"
# Within a class, fair share is enforced only while the model's free share is below the class's reserve plus a band
# (`_check_fair_share`): at least FAIR_BAND, at most FAIR_BAND_MAX; above it there is enough for everyone and nobody
# is held back. PACE_MIN_S: the shortest time a client's pace is measured over (its first calls are no pace yet).
FAIR_BAND = 0.15
FAIR_BAND_MAX = 0.5
PACE_MIN_S = 10.0
PACE_MARGIN = 1.5  # the others' pace is measured, not promised: what it needs is kept with this margin
FREE_REUSE_S = 0.1
ACTIVE_S = 60.0  # a client that made no call in this long does not count towards its class's fair share


def new_token() -> str:
    """A client token: 32 random bytes, URL-safe, with a prefix that says what it is."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def config_client_id(token: str) -> str:
    """The id a token from `access_tokens` has always had in events (`t_` + 10 hex digits of its SHA-256)."""
    return "t_" + hashlib.sha256(token.encode()).hexdigest()[:10]


def _utc_day(now: float) -> int:
    return int(now // 86400)


def _utc_month(now: float) -> int:
    t = time.gmtime(now)
    return t.tm_year * 12 + t.tm_mon - 1


def _next_utc_midnight(now: float) -> float:
    return _utc_day_start(now) + 86400.0


def _next_utc_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _utc_day_start(now: float) -> float:
    return _utc_day(now) * 86400.0


def _utc_month_start(now: float) -> float:
    t = time.gmtime(now)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


# A period's limits forecast by its pace so far (`limit_forecast`): the period and when it started and ends.
FORECAST_PERIODS = {
    "rpd": (_utc_day_start, _next_utc_midnight),
    "tpd": (_utc_day_start, _next_utc_midnight),
    "calls_per_month": (_utc_month_start, _next_utc_month),
    "tokens_per_month": (_utc_month_start, _next_utc_month),
}
FORECAST_MIN_S = 600.0  # a pace is measured over at least this long (a period's first minutes are no pace yet)


def limit_forecast(used: int, limit: int, now: float, start: float, end: float) -> float | None:
    """When a per-day or per-month limit is reached at the pace of the period so far (epoch seconds): `now` when it
    already is, None when the pace does not reach it before the period ends (and resets it)."""
    if used >= limit:
        return now
    if used <= 0:
        return None
    pace = used / max(FORECAST_MIN_S, now - start)  # per second
    at = now + (limit - used) / pace
    return at if at < end else None


# What a replica shares of one client (`own_usage`, `set_peers`): calls and tokens today, calls and tokens this month,
# calls in the last minute, calls in flight.
ClientUse = tuple[int, int, int, int, int, int]


@dataclass
class Usage:
    """A client's counters (in memory; `restore` refills them after a restart)."""

    minute: deque[float] = field(default_factory=deque)  # admission times within the last minute
    day: int = 0
    calls_day: int = 0
    tokens_day: int = 0
    month: int = 0
    calls_month: int = 0
    tokens_month: int = 0
    in_flight: int = 0
    # The other replicas' calls and tokens of this day and month, calls in their last minute and in flight (cluster
    # mode: `ClientBook.set_peers`).
    peer_calls_day: int = 0
    peer_tokens_day: int = 0
    peer_calls_month: int = 0
    peer_tokens_month: int = 0
    peer_minute: int = 0
    peer_in_flight: int = 0

    def roll(self, now: float) -> None:
        day = _utc_day(now)
        if day != self.day:  # a month changes only with a day
            self.day, self.calls_day, self.tokens_day = day, 0, 0
            self.peer_calls_day = self.peer_tokens_day = 0
            month = _utc_month(now)
            if month != self.month:
                self.month, self.calls_month, self.tokens_month = month, 0, 0
                self.peer_calls_month = self.peer_tokens_month = 0
        cutoff = now - MINUTE_S
        minute = self.minute
        while minute and minute[0] <= cutoff:
            minute.popleft()

    def used(self, name: str) -> int:
        if name == "rpm":
            return len(self.minute) + self.peer_minute
        if name == "rpd":
            return self.calls_day + self.peer_calls_day
        if name == "tpd":
            return self.tokens_day + self.peer_tokens_day
        if name == "calls_per_month":
            return self.calls_month + self.peer_calls_month
        if name == "tokens_per_month":
            return self.tokens_month + self.peer_tokens_month
        return self.in_flight + self.peer_in_flight


@dataclass
class Client:
    id: str
    label: str
    token_hash: str
    cls: ClientClass = "standard"
    owner: str | None = None
    models: frozenset[str] | None = None  # None: every model
    limits: dict[str, int] = field(default_factory=dict)  # only the limits that are set
    expires_at: float | None = None
    created_at: float = field(default_factory=time.time)
    last_used_at: float | None = None
    revoked_at: float | None = None
    source: str = "api"  # "api" (the admin API) or "config" (a token in access_tokens)
    old_hash: str | None = None  # the token before the last rotation, valid until `old_until`
    old_until: float | None = None
    fallback: bool | None = None  # may its calls take a model's fallback chain (None: the `fallback_enabled` setting)
    usage: Usage = field(default_factory=Usage)

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None) if epoch is not None else None


def _epoch(value: datetime | None) -> float | None:
    return value.replace(tzinfo=UTC).timestamp() if value is not None else None


COLUMNS = (
    "id",
    "label",
    "owner",
    "class",
    "models",
    "limits",
    "expires_at",
    "created_at",
    "last_used_at",
    "revoked_at",
    "source",
    "token_hash",
    "old_hash",
    "old_until",
    "fallback",
)


def to_row(c: Client) -> tuple[Any, ...]:
    return (
        c.id,
        c.label,
        c.owner,
        c.cls,
        json.dumps(sorted(c.models)) if c.models is not None else None,
        json.dumps(c.limits, sort_keys=True),
        _ts(c.expires_at),
        _ts(c.created_at),
        _ts(c.last_used_at),
        _ts(c.revoked_at),
        c.source,
        c.token_hash,
        c.old_hash,
        _ts(c.old_until),
        c.fallback,
    )


def from_row(row: Mapping[str, Any]) -> Client:
    models = json.loads(row["models"]) if row["models"] else None
    cls: ClientClass = next((c for c in CLASSES if c == row["class"]), "standard")
    return Client(
        id=row["id"],
        label=row["label"],
        owner=row["owner"],
        cls=cls,
        models=frozenset(models) if models is not None else None,
        limits={k: int(v) for k, v in json.loads(row["limits"] or "{}").items() if k in LIMITS and v is not None},
        expires_at=_epoch(row["expires_at"]),
        created_at=_epoch(row["created_at"]) or time.time(),
        last_used_at=_epoch(row["last_used_at"]),
        revoked_at=_epoch(row["revoked_at"]),
        source=row["source"] or "api",
        token_hash=row["token_hash"],
        old_hash=row["old_hash"],
        old_until=_epoch(row["old_until"]),
        fallback=row.get("fallback"),
    )


def save(cur: duckdb.DuckDBPyConnection, clients: Iterable[Client]) -> None:
    """Upsert whole records (admin changes; `last_used_at` alone goes through `save_last_used`)."""
    rows = [to_row(c) for c in clients]
    if rows:
        marks = ", ".join("?" for _ in COLUMNS)
        cur.executemany(f"INSERT OR REPLACE INTO clients ({', '.join(COLUMNS)}) VALUES ({marks})", rows)


def save_last_used(cur: duckdb.DuckDBPyConnection, used: dict[str, float]) -> None:
    """Only `last_used_at`, only forwards: a replica's batch never overwrites another's change to the record."""
    for cid, at in used.items():
        cur.execute(
            "UPDATE clients SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            [_ts(at), cid, _ts(at)],
        )


def load(cur: duckdb.DuckDBPyConnection) -> list[Client]:
    rows = cur.execute(f"SELECT {', '.join(COLUMNS)} FROM clients").fetchall()
    return [from_row(dict(zip(COLUMNS, r, strict=True))) for r in rows]


def install_secret(cur: duckdb.DuckDBPyConnection) -> bytes:
    """The per-install key of the token hashes: made once (the first process to start), then read."""
    cur.execute("INSERT INTO client_secret VALUES ('token', ?) ON CONFLICT DO NOTHING", [secrets.token_hex(32)])
    row = cur.execute("SELECT value FROM client_secret WHERE name = 'token'").fetchone()
    assert row is not None
    return bytes.fromhex(str(row[0]))


class ClientBook:
    """Every client record in memory, by id and by token hash; admission and accounting on the request path."""

    def __init__(
        self,
        secret: bytes,
        free_share: Callable[[str], float],
        reserve: Callable[[], Mapping[str, float]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.free_share = free_share  # the pool's free share of a model now, 0..1
        self.reserve = reserve  # the live config's reserve per class
        self.clock = clock
        self.by_id: dict[str, Client] = {}
        self._by_hash: dict[str, Client] = {}
        self._last_used: dict[str, float] = {}  # not yet stored
        self._active: dict[str, dict[str, float]] = {c: {} for c in CLASSES}  # class → client id → last call
        self._classes: dict[str, int] = {}  # class → how many records of it are not revoked
        self._required = False
        self._free_cache: dict[str, tuple[float, float]] = {}  # model → (when, free share), only when plentiful
        self._seen: dict[str, str] = {}  # token → its hash, for tokens of records (_hash_of_known)

    # -- records -------------------------------------------------------------------------------------------------
    def hash(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()

    def _hash_of_known(self, token: str) -> str:
        """`hash(token)`, remembered for tokens that belong to a record (an HMAC per call was a measurable share of
        the request path; unknown tokens, which anyone can send, are never remembered)."""
        h = self._seen.get(token)
        if h is None:
            h = self.hash(token)
            if h in self._by_hash:
                if len(self._seen) >= SEEN_TOKENS:
                    self._seen.clear()
                self._seen[token] = h
        return h

    @property
    def required(self) -> bool:
        """Whether a token is needed: a token of `access_tokens` is configured, or a client was ever made through
        the admin API (revoking the last one must not open the proxy)."""
        return self._required

    def put(self, client: Client, recount: bool = True) -> None:
        """Add or replace a record (its counters carry over from the record it replaces)."""
        old = self.by_id.get(client.id)
        if old is not None:
            client.usage = old.usage
            if old.last_used_at and (client.last_used_at or 0) < old.last_used_at:
                client.last_used_at = old.last_used_at
            for h in (old.token_hash, old.old_hash):
                if h is not None and self._by_hash.get(h) is old:
                    del self._by_hash[h]
        self.by_id[client.id] = client
        self._by_hash[client.token_hash] = client
        if client.old_hash is not None:
            self._by_hash[client.old_hash] = client
        if recount:
            self._count_classes()

    def _count_classes(self) -> None:
        counts: dict[str, int] = {}
        required = False
        for c in self.by_id.values():
            if c.revoked_at is None:
                counts[c.cls] = counts.get(c.cls, 0) + 1
            required = required or c.source != "config" or c.revoked_at is None
        self._classes, self._required = counts, required

    def replace_all(self, clients: Iterable[Client]) -> None:
        """The stored records (another replica changed them): kept counters, gone records dropped."""
        fresh = {c.id: c for c in clients}
        for cid in [i for i in self.by_id if i not in fresh]:
            gone = self.by_id.pop(cid)
            for h in (gone.token_hash, gone.old_hash):
                if h is not None:
                    self._by_hash.pop(h, None)
        for c in fresh.values():
            self.put(c, recount=False)
        self._count_classes()

    def stop(self, revoked: Iterable[str], retired: Iterable[str]) -> None:
        """Another replica revoked these clients or retired these token hashes: refused from now on (the stored
        rows, read next, say the same)."""
        now = self.clock()
        for cid in revoked:
            c = self.by_id.get(cid)
            if c is not None and c.revoked_at is None:
                c.revoked_at = now
        for h in retired:
            c = self._by_hash.pop(h, None)  # the record's current hash here, until the re-read brings the new one
            if c is not None and c.old_hash == h:
                c.old_hash = c.old_until = None
        self._count_classes()

    def find(self, token: str) -> Client | None:
        """The record `token` belongs to (revoked and expired ones included: the caller says why it refuses)."""
        h = self._hash_of_known(token)
        client = self._by_hash.get(h)
        if client is None:
            return None
        if client.token_hash != h and (client.old_until is None or self.clock() >= client.old_until):
            return None  # the token before a rotation, after its grace period
        return client

    def sync_config(self, tokens: list[str], labels: Mapping[str, str]) -> list[Client]:
        """Records for the tokens of `access_tokens` (new ones added, removed ones revoked); the changed records."""
        changed: list[Client] = []
        now = self.clock()
        wanted = {config_client_id(t): t for t in tokens}
        for cid, token in wanted.items():
            c = self.by_id.get(cid)
            label = labels.get(cid, cid)
            if c is not None and c.source != "config":
                continue  # rotated through the admin API: the config's token no longer opens it
            if c is None or c.token_hash != self.hash(token):  # a revoked one stays revoked
                c = Client(id=cid, label=label, token_hash=self.hash(token), source="config", created_at=now)
                self.put(c)
                changed.append(c)
            elif c.source == "config" and c.label != label:
                c.label = label
                changed.append(c)
        for c in list(self.by_id.values()):
            if c.source == "config" and c.id not in wanted and c.revoked_at is None:
                c.revoked_at = now
                changed.append(c)
        self._count_classes()
        return changed

    # -- the request path ----------------------------------------------------------------------------------------
    def admit(self, client: Client, model: str | None, quota_model: str | None = None) -> None:
        """Count a call of `client` (to `model`, None: no model) or raise ClientRefused saying which rule refused.
        `quota_model`: the quota the call spends (None: none, e.g. reading a model's metadata), whose scarcity the
        client's class is weighed against."""
        now = self.clock()
        if model is not None and client.models is not None and model not in client.models:
            allowed = ", ".join(sorted(client.models)) or "none"
            raise ClientRefused(
                f"client '{client.label}' may not use model '{model}' (allowed: {allowed})", "client_model", 403
            )
        u = client.usage
        u.roll(now)
        limits = client.limits
        if limits:
            self._check_limits(client, u, limits, now)
        if quota_model is not None:
            self._check_priority(client, quota_model, now)
        u.minute.append(now)
        u.calls_day += 1
        u.calls_month += 1
        u.in_flight += 1
        client.last_used_at = now
        self._last_used[client.id] = now
        self._active[client.cls][client.id] = now

    def _check_limits(self, client: Client, u: Usage, limits: dict[str, int], now: float) -> None:
        for name in LIMITS:
            limit = limits.get(name)
            if limit is None or u.used(name) < limit:
                continue
            if name == "rpm":
                wait = u.minute[0] + MINUTE_S - now if u.minute else 1.0
            elif name in ("rpd", "tpd"):
                wait = _next_utc_midnight(now) - now
            elif name == "concurrency":
                wait = 1.0  # a call in flight ends at an unknown time: ask again soon
            else:
                wait = _next_utc_month(now) - now
            raise ClientRefused(
                f"client '{client.label}' reached its {LIMIT_WORDS[name]} ({name} {limit})", "client_limit", 429, wait
            )

    def _check_priority(self, client: Client, model: str, now: float) -> None:
        # A reserve is kept only for classes above that have a client: with none, it would be kept for nobody.
        rank = CLASSES.index(client.cls)
        above = any(self._classes.get(c) for c in CLASSES[:rank])
        reserve = self.reserve().get(client.cls, 0.0) if above else 0.0
        free = self._free(model, now)
        if free >= reserve + FAIR_BAND_MAX or free <= 0.0:
            return  # plenty; or nothing left for anyone, which the pool's own refusal explains better
        if free < reserve:
            # What is left is kept for higher classes. The wait: how long the minute window takes to give back the
            # missing share at an even pace (a day-long shortage shows as the pool's own refusal instead).
            wait = max(1.0, MINUTE_S * (reserve - free))
            raise ClientRefused(
                f"client '{client.label}' ({client.cls}) refused: model '{model}' has {free:.0%} of its quota left "
                f"and {reserve:.0%} is kept for higher-priority clients",
                "priority",
                429,
                wait,
            )
        self._check_fair_share(client, model, free, free - reserve, now)

    def _check_fair_share(self, client: Client, model: str, free: float, left: float, now: float) -> None:
        """Scarce (`left`: the free share above the class's reserve): a client already above an equal share of its
        class's calls of the last minute waits while `left` is below the band, so a burst of one cannot starve the
        others' trickle. The band is FAIR_BAND, or more while the minute window frees nothing for a while: what the
        others' pace needs until the class's oldest call of the window expires (a burst that filled the window
        at once frees it only a minute later; at most FAIR_BAND_MAX)."""
        active = self._active[client.cls]
        cutoff = now - ACTIVE_S
        for cid in [i for i, t in active.items() if t <= cutoff]:
            del active[cid]
        if len(active) < 2 or client.id not in active:
            return
        mine = len(client.usage.minute)
        total = mine
        pace = 0.0  # the others' calls per second
        oldest = client.usage.minute[0] if client.usage.minute else now
        for cid in active:
            other = self.by_id.get(cid)
            if other is None or other is client:
                continue
            other.usage.roll(now)
            minute = other.usage.minute
            total += len(minute)
            if minute:
                pace += len(minute) / max(PACE_MIN_S, now - minute[0])
                oldest = min(oldest, minute[0])
        if mine * len(active) <= total:
            return  # at or below an equal share
        band = FAIR_BAND
        if total and free < 1.0:
            capacity = total / (1.0 - free)  # calls the window holds, as far as this class's calls tell
            gap = oldest + MINUTE_S - now  # until the minute window frees the class's oldest call
            band = min(FAIR_BAND_MAX, max(FAIR_BAND, PACE_MARGIN * pace * gap / capacity))
        if left >= band:
            return
        wait = max(1.0, client.usage.minute[0] + MINUTE_S - now) if client.usage.minute else 1.0
        raise ClientRefused(
            f"client '{client.label}' ({client.cls}) refused: model '{model}' is scarce and this client already "
            f"has more than its fair share of the {client.cls} class ({mine} of {total} calls in the last minute)",
            "priority",
            429,
            min(wait, MINUTE_S),
        )

    def _free(self, model: str, now: float) -> float:
        """The pool's free share of `model` (one pass over its keys). A share well above every reserve is reused
        for FREE_REUSE_S: no decision can change until a fifth of the quota is spent, and the pass is most of what
        admission costs; a lower one is read again for every call."""
        cached = self._free_cache.get(model)
        if cached is not None and now - cached[0] < FREE_REUSE_S:
            return cached[1]
        free = self.free_share(model)
        if free >= max(self.reserve().values(), default=0.0) + FAIR_BAND_MAX + 0.2:
            self._free_cache[model] = (now, free)
        else:
            self._free_cache.pop(model, None)
        return free

    def release(self, client: Client, tokens: int | None, refund: bool = False) -> None:
        """An admitted call ended: one less in flight, its tokens counted (from the answer's usage). `refund`: the
        pool refused it (no key could take it), so it does not count as one of the client's calls either."""
        u = client.usage
        u.in_flight = max(0, u.in_flight - 1)
        if refund:
            u.calls_day = max(0, u.calls_day - 1)
            u.calls_month = max(0, u.calls_month - 1)
            if u.minute:
                u.minute.pop()
        if tokens:
            u.roll(self.clock())
            u.tokens_day += tokens
            u.tokens_month += tokens

    # -- sharing with other replicas -------------------------------------------------------------------------------
    def own_usage(self) -> tuple[str, str, dict[str, ClientUse]]:
        """This process's UTC day and month ("20261207", "202612") and, per client that has any, its own use
        (`ClientUse`)."""
        now = self.clock()
        own: dict[str, ClientUse] = {}
        for c in self.by_id.values():
            u = c.usage
            u.roll(now)
            if u.calls_month or u.tokens_month or u.in_flight:
                own[c.id] = (u.calls_day, u.tokens_day, u.calls_month, u.tokens_month, len(u.minute), u.in_flight)
        return time.strftime("%Y%m%d", time.gmtime(now)), time.strftime("%Y%m", time.gmtime(now)), own

    def set_peers(self, day: str, peers: Mapping[str, ClientUse]) -> None:
        """The other replicas' use of `day` and its month, their last minute and their calls in flight, per client
        (clients not named: none)."""
        now = self.clock()
        if day != time.strftime("%Y%m%d", time.gmtime(now)):
            return  # the day turned meanwhile: the next exchange brings the new one's
        for c in self.by_id.values():
            u = c.usage
            u.roll(now)
            (
                u.peer_calls_day,
                u.peer_tokens_day,
                u.peer_calls_month,
                u.peer_tokens_month,
                u.peer_minute,
                u.peer_in_flight,
            ) = peers.get(c.id, (0, 0, 0, 0, 0, 0))

    # -- storage -------------------------------------------------------------------------------------------------
    def take_last_used(self) -> dict[str, float]:
        used, self._last_used = self._last_used, {}
        return used

    def restore(self, rows: Iterable[tuple[str, int, int, int, int, list[float]]]) -> None:
        """Counters back from stored calls: (client id, calls today, tokens today, calls this month, tokens this
        month, call times of the last minute)."""
        now = self.clock()
        for cid, calls_day, tokens_day, calls_month, tokens_month, recent in rows:
            c = self.by_id.get(cid)
            if c is None:
                continue
            u = c.usage
            u.roll(now)
            u.calls_day, u.tokens_day = int(calls_day), int(tokens_day)
            u.calls_month, u.tokens_month = int(calls_month), int(tokens_month)
            u.minute = deque(sorted(t for t in recent if t > now - MINUTE_S))

    def view(self, client: Client) -> dict[str, Any]:
        """A record as the admin API shows it: never a token or a hash; usage against each limit."""
        now = self.clock()
        client.usage.roll(now)
        return {
            "id": client.id,
            "label": client.label,
            "owner": client.owner,
            "class": client.cls,
            "models": sorted(client.models) if client.models is not None else None,
            "limits": {name: client.limits.get(name) for name in LIMITS},
            "usage": {name: {"used": client.usage.used(name), "limit": client.limits.get(name)} for name in LIMITS},
            # When each per-day and per-month limit is reached at the pace of its period so far (null: not before
            # it resets, or no limit).
            "limit_at": {
                name: _ts(limit_forecast(client.usage.used(name), limit, now, start(now), end(now)))
                if (limit := client.limits.get(name)) is not None
                else None
                for name, (start, end) in FORECAST_PERIODS.items()
            },
            "expires_at": _ts(client.expires_at),
            "created_at": _ts(client.created_at),
            "last_used_at": _ts(client.last_used_at),
            "revoked_at": _ts(client.revoked_at),
            "rotation_grace_until": _ts(client.old_until)
            if client.old_hash and (client.old_until or 0) > now
            else None,
            "source": client.source,
            "fallback": client.fallback,
            "status": "revoked"
            if client.revoked_at is not None
            else ("expired" if not client.active(now) else "active"),
        }


def usage_rows(cur: duckdb.DuckDBPyConnection, now: float) -> list[tuple[str, int, int, int, int, list[float]]]:
    """Each client's calls and tokens today and this month (UTC) and its call times of the last minute, from the
    stored requests (refused calls do not count: they were not admitted)."""
    t = time.gmtime(now)
    month_start = datetime(t.tm_year, t.tm_mon, 1)
    day_start = datetime.fromtimestamp(_utc_day_start(now), UTC).replace(tzinfo=None)
    minute_ago = datetime.fromtimestamp(now - MINUTE_S, UTC).replace(tzinfo=None)
    rows = cur.execute(
        "SELECT client_id, count(*) FILTER (WHERE ts >= ?), coalesce(sum(total_tokens) FILTER (WHERE ts >= ?), 0), "
        "count(*), coalesce(sum(total_tokens), 0), "
        "list(epoch(ts)) FILTER (WHERE ts >= ?) "
        "FROM requests WHERE ts >= ? AND client_id IS NOT NULL AND refusal IS NULL "
        "AND outcome NOT IN ('unauthorized', 'client_error') GROUP BY client_id",
        [day_start, day_start, minute_ago, month_start],
    ).fetchall()
    return [(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), [float(t) for t in r[5] or []]) for r in rows]
