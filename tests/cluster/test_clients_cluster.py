"""Client records across two replicas: a client made through one replica is served by the other, a revocation on
one is refused by the other within a second (the bus), and no token is in clear in PostgreSQL, the lake or either
data dir. Real `keyrack serve` processes on one lake, one catalog and one Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from proxy_service.cluster.config import pg_conninfo
from proxy_service.cluster.lake import _lit, load_extensions
from tests.cluster.conftest import Replica
from tests.conftest import ADMIN_TOKEN, SCENARIO, Upstream

FLASH = "gemini-2.5-flash"
DEADLINE_S = 60.0
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def status(url: str, token: str) -> int:
    r = httpx.post(
        f"{url}/v1beta/models/{FLASH}:generateContent",
        headers={"x-goog-api-key": token},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        timeout=30,
    )
    return r.status_code


def wait_status(url: str, token: str, want: int, deadline_s: float = DEADLINE_S) -> float:
    """Seconds until a call with `token` got `want` (polled every 20 ms)."""
    start = time.monotonic()
    while True:
        got = status(url, token)
        if got == want:
            return time.monotonic() - start
        assert time.monotonic() - start < deadline_s, (got, want)
        time.sleep(0.02)


def test_a_client_made_on_one_replica_is_served_and_revoked_on_the_other(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica], lake_catalog: str, tmp_path: Path
) -> None:
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    made = httpx.post(
        f"{r1.url}/admin/api/clients",
        json={"label": "shared", "class": "batch", "limits": {"rpd": 1000}},
        headers=ADMIN,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    token, cid = made.json()["token"], made.json()["id"]
    wait_status(r2.url, token, 200)  # the other replica read the record (bus message, or its periodic reload)
    listed = httpx.get(f"{r2.url}/admin/api/clients/{cid}", headers=ADMIN, timeout=30).json()
    assert listed["class"] == "batch" and listed["limits"]["rpd"] == 1000

    revoked = httpx.delete(f"{r1.url}/admin/api/clients/{cid}", headers=ADMIN, timeout=30)
    assert revoked.status_code == 200
    assert status(r1.url, token) == 401  # at once where it was revoked
    assert wait_status(r2.url, token, 401, deadline_s=5.0) <= 1.0  # within a second on the other

    # No token in clear at rest: PostgreSQL's tables, the lake's files, the replicas' data dirs.
    con = duckdb_connect(lake_catalog)
    try:
        deadline = time.monotonic() + DEADLINE_S
        sql = "SELECT last_used_at FROM pg.keyrack.clients WHERE id = ?"
        while con.execute(sql, [cid]).fetchone() == (None,):  # last use reaches PostgreSQL in batches
            assert time.monotonic() < deadline
            time.sleep(0.2)
        rows = con.execute("SELECT * FROM pg.keyrack.clients").fetchall()
        assert rows and not any(token in str(v) for row in rows for v in row)
        assert con.execute("SELECT count(*) FROM pg.keyrack.clients WHERE revoked_at IS NOT NULL").fetchone() == (1,)
    finally:
        con.close()
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert token.encode() not in path.read_bytes(), path


def duckdb_connect(catalog: str):  # type: ignore[no-untyped-def]
    import duckdb

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    load_extensions(con)
    con.execute(f"ATTACH {_lit(pg_conninfo(catalog))} AS pg (TYPE postgres, READ_ONLY)")
    return con


def test_a_daily_limit_holds_across_replicas(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    made = httpx.post(
        f"{r1.url}/admin/api/clients", json={"label": "capped", "limits": {"rpd": 4}}, headers=ADMIN, timeout=30
    )
    assert made.status_code == 201, made.text
    token, cid = made.json()["token"], made.json()["id"]
    wait_status(r2.url, token, 200)  # r2 knows the record: that is one call of the four
    assert status(r2.url, token) == 200
    deadline = time.monotonic() + DEADLINE_S
    while httpx.get(f"{r1.url}/admin/api/clients/{cid}", headers=ADMIN, timeout=30).json()["usage"]["rpd"]["used"] < 2:
        assert time.monotonic() < deadline  # r2's calls reach r1 through Redis within the exchange period
        time.sleep(0.1)
    assert [status(r1.url, token) for _ in range(3)] == [200, 200, 429]  # 2 on r2 + 2 here: the limit
    wait_status(r2.url, token, 429, deadline_s=10.0)  # and r2 learns r1's two


def test_a_per_minute_limit_holds_across_replicas(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """Each replica shares its clients' calls of the last minute (and in flight: test_clients.py) every second: two
    calls on r2 count against the client's rpm on r1."""
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    made = httpx.post(
        f"{r1.url}/admin/api/clients",
        json={"label": "paced", "limits": {"rpm": 3}},
        headers=ADMIN,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    token, cid = made.json()["token"], made.json()["id"]
    wait_status(r2.url, token, 200)  # r2 knows the record: one call of the minute
    assert status(r2.url, token) == 200
    deadline = time.monotonic() + DEADLINE_S
    while httpx.get(f"{r1.url}/admin/api/clients/{cid}", headers=ADMIN, timeout=30).json()["usage"]["rpm"]["used"] < 2:
        assert time.monotonic() < deadline  # r2's minute reaches r1 through Redis within the exchange period
        time.sleep(0.1)
    refused = [status(r1.url, token) for _ in range(2)]
    assert refused == [200, 429]  # 2 on r2 + 1 here: the minute's limit


def test_the_paid_daily_cap_is_one_cap_for_the_cluster(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """Every project paid, a cap below one call's cost: once r1 has spent past it, r2 — which spent nothing — refuses
    too, having learnt r1's spend through Redis (and says it is the cap)."""
    from tests.conftest import CLIENT_TOKEN

    up = start_upstream(SCENARIO)
    paid = {"project_tiers": {p: "paid" for p in SCENARIO["projects"]}, "paid_daily_cap_usd": 1e-9}
    r1, r2 = start_replica(up.url, **paid), start_replica(up.url, **paid)
    assert status(r1.url, CLIENT_TOKEN) == 200  # the cap is checked before a call: this one goes past it
    assert status(r1.url, CLIENT_TOKEN) == 429
    deadline = time.monotonic() + DEADLINE_S
    while not peers_spend(r2.url) > 0:  # r2 learns r1's spend through Redis (no call of its own)
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(
        f"{r2.url}/v1beta/models/{FLASH}:generateContent",
        headers={"x-goog-api-key": CLIENT_TOKEN},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        timeout=30,
    )
    assert r.status_code == 429 and "paid_daily_cap_usd" in r.json()["error"]["message"], r.text


def peers_spend(url: str) -> float:
    m = re.search(r'^keyrack_paid_spend_usd\{by="peers"\} (\S+)$', httpx.get(f"{url}/metrics", timeout=30).text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_other_replicas_snapshots_count_while_fresh_and_malformed_ones_are_dropped() -> None:
    """`<prefix>:cu:now` as Redis holds it: this replica's own field, another's fresh and stale ones, values no
    replica wrote (counted as rejected) — only the fresh others count; stale and malformed fields go."""
    from collections import Counter
    from types import SimpleNamespace

    from proxy_service.cluster.node import Cluster

    rejected: Counter[str] = Counter()
    me = SimpleNamespace(replica="r1", trust=SimpleNamespace(reject=lambda reason: rejected.update([reason])))
    now = 1_000_000_000
    hashed = {
        b"r1|c_a": f"9,9,{now}".encode(),  # mine: not a peer's
        b"r2|c_a": f"3,1,{now - 2_000}".encode(),
        b"r3|c_a": f"2,0,{now - 1_000}".encode(),
        b"r4|c_a": f"7,7,{now - 90_000}".encode(),  # a replica gone for 90 s
        b"r5|c_b": b"lots,of,calls",
        b"r6|c_b": f"{10**12},0,{now}".encode(),  # absurd: not counted
    }
    current, stale = Cluster._peers_now(me, hashed, now)  # type: ignore[arg-type]
    assert current == {"c_a": (5, 1)}
    assert sorted(stale) == ["r4|c_a", "r5|c_b"]
    assert rejected == {"client_use_malformed": 1}
