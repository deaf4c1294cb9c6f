"""`Trust`: what makes a message or a value in Redis the cluster's own — an HMAC with the cluster secret.

Anyone who can write to Redis can publish on the bus and set any key. The secret lives in PostgreSQL
(`keyrack.cluster_secret`, created by the first replica: `lake.cluster_secret`), which every replica reads and Redis
never holds. So:
- bus messages are sealed (`seal` / `open`): `k1.<mac>.<json>`, the JSON carrying its sender, its time and a nonce.
  A message without a valid MAC, stamped more than `BUS_SKEW_S` away from this replica's clock (replicas' clocks are
  assumed NTP-synchronised to within that), or seen before (its nonce) is ignored and counted;
- values the replicas read back and act upon carry a tag (`signed` / `unsigned`): the leader's lease, the heartbeats
  in `live`, the leader's shared alert states. A value whose tag is wrong is ignored (counted) and, where it would
  block the cluster, replaced (cluster/leader.py).
Counts are in `rejected` (`keyrack_cluster_rejected_total{reason}`); each reason is logged once a minute at most, so
a flood of forgeries cannot flood the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter, OrderedDict
from typing import Any

from proxy_service.logs import event

log = logging.getLogger("keyrack.cluster")
BUS_SKEW_S = 30.0
MESSAGE_MAX = 4 << 20  # bytes: far above a status message for 10,000 keys; larger ones are not even MAC'd
_NONCES = 100_000  # bound on the replay cache (far above the bus's traffic within BUS_SKEW_S)
_VERSION = "k1"


class Trust:
    def __init__(self, secret: bytes, prefix: str) -> None:
        # One key per Redis prefix: a message sealed for one cluster's bus means nothing on another's.
        self._key = hmac.new(secret, b"keyrack cluster\n" + prefix.encode(), hashlib.sha256).digest()
        self._nonces: OrderedDict[str, float] = OrderedDict()
        self._logged: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()

    # -- tags ---------------------------------------------------------------------------------------------------------
    def tag(self, *parts: str) -> str:
        return hmac.new(self._key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()[:32]

    def signed(self, value: str, *context: str) -> str:
        """`value|tag`: the tag covers `context` (what the value is for) and the value."""
        return f"{value}|{self.tag(*context, value)}"

    def unsigned(self, raw: Any, *context: str, reason: str) -> str | None:
        """The value of a `signed` string, or None (counted under `reason`) when it is not the cluster's."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        value, _, tag = text.rpartition("|")
        if value and hmac.compare_digest(tag, self.tag(*context, value)):
            return value
        self.reject(reason)
        return None

    # -- bus messages -------------------------------------------------------------------------------------------------
    def seal(self, message: dict[str, Any]) -> str:
        body = json.dumps({**message, "ts": round(time.time(), 3), "nonce": secrets.token_hex(8)})
        return f"{_VERSION}.{self.tag('bus', body)}.{body}"

    def open(self, raw: Any) -> dict[str, Any] | None:
        """The message, or None (counted) when it is not sealed by a replica, stale, or a replay."""
        if not isinstance(raw, (bytes, str)) or len(raw) > MESSAGE_MAX:
            self.reject("bus_oversized")
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        version, _, rest = text.partition(".")
        mac, _, body = rest.partition(".")
        if version != _VERSION or not body:
            self.reject("bus_unsigned")
            return None
        if not hmac.compare_digest(mac, self.tag("bus", body)):
            self.reject("bus_bad_mac")
            return None
        try:
            data = json.loads(body)
            ts, nonce = float(data["ts"]), str(data["nonce"])
        except (ValueError, TypeError, KeyError):
            self.reject("bus_malformed")
            return None
        now = time.time()
        if not isinstance(data, dict) or abs(now - ts) > BUS_SKEW_S:
            self.reject("bus_stale")
            return None
        while self._nonces and next(iter(self._nonces.values())) < now - BUS_SKEW_S:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            self.reject("bus_replayed")
            return None
        self._nonces[nonce] = ts
        if len(self._nonces) > _NONCES:
            self._nonces.popitem(last=False)
        return data

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._logged.get(reason, -60.0) >= 60.0:
            self._logged[reason] = now
            event(log, "cluster_forgery_ignored", logging.WARNING, reason=reason, total=self.rejected[reason])
