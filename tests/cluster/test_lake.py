"""The lake on its own (no server): the writer's commits, and an analyst's read-only ATTACH exactly as docs/cluster.md
shows it, reading live rows while a writer appends."""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from proxy_service.analytics import preagg
from proxy_service.analytics.rollup import Rollup, fold_batch
from proxy_service.cluster.config import ClusterConfig, pg_conninfo
from proxy_service.cluster.lake import LakeError, LakeStore, load_extensions
from proxy_service.cluster.writer import LakeWriter
from proxy_service.events import RequestEvent
from tests.cluster.conftest import Replica

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DOC = REPO / "docs" / "cluster.md"


def event(i: int) -> RequestEvent:
    now = datetime.now(UTC).replace(tzinfo=None)
    return RequestEvent(
        ts=now,
        request_id=uuid.uuid4().hex,
        client_id="t",
        surface="gemini",
        operation="generateContent",
        model="gemini-2.5-flash",
        stream=False,
        status=200,
        latency_ms=float(10 + i),
        resource_kind="file" if i % 10 == 0 else None,
        resource_id=f"files/f{i}" if i % 10 == 0 else None,
    )


def test_writer_commits_events_with_their_rollup_and_an_analyst_reads_them_read_only(
    tmp_path: Path, lake_catalog: str
) -> None:
    cfg = ClusterConfig("redis://unused", lake_catalog, str(tmp_path / "lake"), "w1", commit_interval_s=0.2)
    store = LakeStore(cfg, contextlib.nullcontext)
    writer = LakeWriter(store, "w1", tmp_path / "spill", 0.2)
    writer.before_commit.append(lambda cur, t: fold_batch(cur, t["requests"].drop_columns(["replica"])))
    writer.submit(Rollup().install).result()
    writer.start()
    for i in range(500):
        writer.record(event(i))
    writer.flush()

    # docs/cluster.md's analyst command, with this test's database name.
    attach = re.search(r"^ATTACH 'ducklake:postgres:[^\n]*READ_ONLY\);$", CLUSTER_DOC.read_text(), re.M)
    assert attach is not None, "docs/cluster.md shows the analyst's ATTACH"
    dbname = lake_catalog.rsplit("/", 1)[1]
    sql = attach.group(0).replace("dbname=keyrack ", f"dbname={dbname} ")
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    load_extensions(con)
    con.execute(sql)
    con.execute("USE lake")
    assert con.execute("SELECT replica, count(*) FROM requests GROUP BY ALL").fetchall() == [("w1", 500)]
    for i in range(300):  # live: a new commit is visible to the open reader
        writer.record(event(i))
    writer.flush()
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (800,)
    # The store derives the latency buckets in the lake too (Explore's raw percentiles group by them).
    assert con.execute(
        "SELECT count(latency_lb), count(*) FILTER (WHERE latency_lb = ceil(ln(latency_ms) / ln(1.04))) FROM requests"
    ).fetchone() == (800, 800)
    assert con.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone() == (800,)
    # Each call's resource, in the raw rows and in the pre-aggregates' resource dimension.
    assert con.execute("SELECT count(resource_id) FROM requests WHERE resource_kind = 'file'").fetchone() == (80,)
    files = "SELECT sum(calls) FROM preagg WHERE grain = '1h' AND a = 'resource' AND av = 'file'"
    assert con.execute(files).fetchone() == (80,)
    with pytest.raises(duckdb.Error, match=r"read-only|READ_ONLY"):
        con.execute("DELETE FROM requests")
    con.close()
    writer.stop()
    index = store.cursor().execute(
        "SELECT count(*) FROM postgres_query('pg', 'SELECT 1 FROM pg_indexes WHERE indexname = "
        "''ducklake_file_column_stats_table_column''')"
    )
    assert index.fetchone() == (1,), "the catalog's file statistics are indexed for the per-scan lookups"
    # A lake from before a derived column: the next replica to start adds it (old rows keep NULL: readers compute).
    # So are the columns added later (the resource's kind and id, the spend).
    for col in ("ttfb_lb", "resource_kind", "resource_id", "cost_usd"):
        store.cursor().execute(f"ALTER TABLE lake.main.requests DROP COLUMN {col}")
    store.close()
    again = LakeStore(cfg, contextlib.nullcontext)
    columns = again.cursor().execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = 'lake' AND table_name = 'requests'"
    )
    wanted = {
        "latency_lb",
        "ttfb_lb",
        "resource_kind",
        "resource_id",
        "cost_usd",
        "list_cost_usd",
        "tier",
        "served_model",
    }
    assert wanted <= {r[0] for r in columns.fetchall()}
    again.close()
    assert "password" not in pg_conninfo(lake_catalog)


# A writer process that journals but never commits (commit interval 1 h): killed, its events exist only in the
# journal files, and the next writer on the same directory commits them.
_JOURNALING_WRITER = """
import contextlib, sys, time
from pathlib import Path
from typing import Any
from proxy_service.cluster.config import ClusterConfig
from proxy_service.cluster.lake import LakeStore
from proxy_service.cluster.writer import LakeWriter
from tests.cluster.test_lake import event
catalog, data, spill, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = LakeStore(ClusterConfig("redis://unused", catalog, data, "k1"), contextlib.nullcontext)
writer = LakeWriter(store, "k1", spill, commit_interval_s=3600)
writer._commit_at = time.monotonic() + 3600  # not even the first tick commits
writer.start()
for i in range(n):
    writer.record(event(i))
print("recorded", flush=True)
time.sleep(3600)
"""


def test_a_killed_writer_loses_nothing_it_journaled_and_the_next_start_commits_it(
    tmp_path: Path, lake_catalog: str
) -> None:
    import os
    import signal
    import subprocess
    import sys

    import pyarrow.ipc as ipc

    from tests.cluster.test_replicas import until

    spill, data, n = tmp_path / "spill", str(tmp_path / "lake"), 700
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _JOURNALING_WRITER, lake_catalog, data, str(spill), str(n)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:

        def journaled() -> int:
            rows = 0
            for path in spill.glob("*.arrow"):
                with ipc.open_file(str(path)) as f:
                    rows += f.read_all().num_rows
            return rows

        until(lambda: journaled() == n, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    cfg = ClusterConfig("redis://unused", lake_catalog, data, "k1", commit_interval_s=0.2)
    store = LakeStore(cfg, contextlib.nullcontext)
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM requests").fetchone() == (0,), "nothing was committed before the kill"
    writer = LakeWriter(store, "k1", spill, 0.2)
    writer.start()
    writer.record(event(0))
    writer.flush()
    until(lambda: cur.execute("SELECT count(*) FROM requests").fetchone() == (n + 1,))
    assert not list(spill.glob("*.arrow")), "journal files are deleted once committed"
    writer.stop()
    cur.close()
    store.close()


def test_retention_on_one_replica_applies_to_the_lake_every_replica_reads_and_exports(
    tmp_path: Path, lake_catalog: str
) -> None:
    """Retention runs on the leader only (cluster/leader.py); its DELETEs are lake commits, so every replica's reads
    and exports see the trimmed tables and rollup."""
    from datetime import timedelta

    from proxy_service.analytics import snapshot
    from proxy_service.events import AttemptEvent, ErrorEvent

    data = str(tmp_path / "lake")
    stores = [LakeStore(ClusterConfig("redis://unused", lake_catalog, data, r), contextlib.nullcontext) for r in "ab"]
    writer = LakeWriter(stores[0], "a", tmp_path / "spill", 0.2)
    writer.before_commit.append(
        lambda cur, t: fold_batch(cur, t["requests"].drop_columns(["replica"])) if "requests" in t else None
    )
    rollup = Rollup()
    writer.submit(rollup.install).result()
    writer.start()
    now = datetime.now(UTC).replace(tzinfo=None)
    for age_days, n in ((40, 30), (1, 20)):
        for i in range(n):
            ev = event(i)
            ev.ts = now - timedelta(days=age_days, minutes=i)
            writer.record(ev)
            writer.record(
                AttemptEvent(
                    ts=ev.ts,
                    request_id=ev.request_id,
                    attempt=1,
                    key_id="k1",
                    project="p1",
                    model=ev.model,
                    upstream_status=200,
                    outcome="success",
                    latency_ms=5.0,
                )
            )
            writer.record(
                ErrorEvent(
                    id=uuid.uuid4().hex[:16],
                    ts=ev.ts,
                    request_id=ev.request_id,
                    key_id="k1",
                    model=ev.model,
                    status=500,
                    error_type="upstream",
                    message="x",
                )
            )
    writer.flush()
    cutoffs = snapshot.retention_cutoffs({"requests": 30, "attempts": 30, "error_logs": 30}, now)
    deleted = writer.submit(lambda cur: snapshot.apply_retention(cur, cutoffs, rollup)).result()
    assert deleted == {"requests": 30, "attempts": 30, "error_logs": 30}

    cur = stores[1].cursor()  # the other replica
    for table in ("requests", "attempts", "error_logs"):
        assert cur.execute(f"SELECT count(*), min(ts) >= ? FROM {table}", [cutoffs[table]]).fetchone() == (20, True)
    assert set(preagg.total_calls(cur).values()) == {20}
    exported = snapshot.export(cur, tmp_path / "exports", stores[1].export_selects())
    assert {t: exported.rows[t] for t in ("requests", "attempts", "error_logs")} == {
        "requests": 20,
        "attempts": 20,
        "error_logs": 20,
    }
    check = duckdb.connect()
    assert check.execute("SELECT count(*) FROM read_parquet(?)", [exported.files["requests"]]).fetchone() == (20,)
    cur.close()
    writer.stop()
    for store in stores:
        store.close()


def test_compaction_folds_rollup_deltas_flushes_inlined_rows_and_merges_files_without_changing_answers(
    tmp_path: Path, lake_catalog: str
) -> None:
    from zoneinfo import ZoneInfo

    from proxy_service.analytics import queries
    from proxy_service.cluster.lake import compact_lake

    store = LakeStore(
        ClusterConfig("redis://unused", lake_catalog, str(tmp_path / "lake"), "w1"), contextlib.nullcontext
    )
    writer = LakeWriter(store, "w1", tmp_path / "spill", 0.05)
    writer.before_commit.append(
        lambda cur, t: fold_batch(cur, t["requests"].drop_columns(["replica"])) if "requests" in t else None
    )
    rollup = Rollup()
    writer.submit(rollup.install).result()
    writer.start()
    for commit in range(12):  # 12 small commits: inlined rollup deltas, one small Parquet file each for requests
        for i in range(3 if commit % 2 else 40):
            writer.record(event(i))
        writer.flush()
    cur = store.cursor()
    tz, now = ZoneInfo("UTC"), datetime.now(UTC).replace(tzinfo=None)
    before = queries.summary(cur, tz, now)
    dup = "SELECT count(*) FROM (SELECT 1 FROM preagg GROUP BY bucket, grain, a, av, b, bv HAVING count(*) > 1)"
    assert cur.execute(dup).fetchone() != (0,), "several commits left rows for the same rollup key"

    result = writer.submit(lambda c: compact_lake(c, rollup)).result()
    # Inlined rows (the 3-row commits, most rollup deltas) written out; the small files merged
    assert result["buckets"] >= 1 and result["flushed_tables"] >= 1
    assert result["merged_files"] > result["into_files"] >= 1
    assert cur.execute(dup).fetchone() == (0,)
    assert queries.summary(cur, tz, now) == before, "compaction changes no answer"
    assert before["1h"]["calls"] == 6 * 40 + 6 * 3
    cur.close()
    writer.stop()
    store.close()


def _rollup_writers(stores: list[LakeStore], tmp_path: Path) -> tuple[list[Rollup], list[LakeWriter]]:
    """A started writer per store, named a, b, ..., each folding its batches into the rollup at commit."""
    rollups, writers = [], []
    for store, name in zip(stores, "abcdefgh", strict=False):
        w = LakeWriter(store, name, tmp_path / f"spill-{name}", 0.05)
        w.before_commit.append(
            lambda cur, t: fold_batch(cur, t["requests"].drop_columns(["replica"])) if "requests" in t else None
        )
        rollups.append(Rollup())
        w.submit(rollups[-1].install).result()
        w.start()
        writers.append(w)
    return rollups, writers


def test_the_rollup_mirror_follows_two_writers_a_compaction_and_retention_and_answers_like_the_lake(
    tmp_path: Path, lake_catalog: str
) -> None:
    """A third replica's stats read the rollup from its mirror (cluster/mirror.py), kept up by the lake's change
    feed: after writes from two replicas, a compaction (rollup rows folded = deletes + inserts) and a retention run
    (deletes), its tables and its answers equal the lake's."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from proxy_service.analytics import queries, snapshot
    from proxy_service.cluster import mirror
    from proxy_service.cluster.lake import compact_lake

    data = str(tmp_path / "lake")
    stores = [LakeStore(ClusterConfig("redis://unused", lake_catalog, data, r), contextlib.nullcontext) for r in "abc"]
    reader = stores[2]
    assert not reader.mirror.catch_up(), "no rollup tables yet: not usable"
    rows = reader.read_cursor().execute("SELECT count(*) FROM requests").fetchone()
    assert rows == (0,), "an unusable mirror leaves reads on the lake"
    rollups, writers = _rollup_writers(stores[:2], tmp_path)
    assert reader.mirror.catch_up()
    loaded = reader.mirror.reloads
    now = datetime.now(UTC).replace(tzinfo=None)
    for round_ in range(4):  # several commits per writer: rollup deltas for the same buckets from both
        for w, (age_days, n) in zip(writers, ((40, 25), (2, 15)), strict=True):
            for i in range(n):
                ev = event(i)
                ev.ts = now - timedelta(days=age_days if round_ % 2 else 0, minutes=i * 7)
                ev.model = "gemini-2.5-pro" if i % 3 else "gemini-2.5-flash"
                w.record(ev)
            w.flush()
        assert reader.mirror.catch_up()
    writers[0].submit(lambda c: compact_lake(c, rollups[0])).result()
    cutoffs = snapshot.retention_cutoffs({"requests": 30, "attempts": 30, "error_logs": 30}, now)
    deleted = writers[1].submit(lambda cur: snapshot.apply_retention(cur, cutoffs, rollups[1])).result()
    assert deleted["requests"] == 2 * 25

    lake_cur, mirror_cur = reader.cursor(), reader.read_cursor()
    assert reader.mirror.refreshes > 0 and reader.mirror.reloads == loaded, "followed by the feed, not reloaded"
    path = mirror_cur.execute("SELECT current_setting('search_path')").fetchone()
    assert path is not None and path[0].startswith(mirror.SCHEMA), "the reader's rollup tables are the mirror's"
    for table in mirror.TABLES:
        in_lake = sorted(lake_cur.execute(f"SELECT * FROM lake.main.{table}").fetchall())
        assert in_lake, table
        assert sorted(mirror_cur.execute(f"SELECT * FROM {table}").fetchall()) == in_lake, table
        assert sorted(mirror_cur.execute(f"SELECT * FROM {mirror.SCHEMA}.{table}").fetchall()) == in_lake, table
    tz = ZoneInfo("America/New_York")
    start = now - timedelta(days=90)
    for ask in (
        lambda c: queries.summary(c, tz, now),
        lambda c: queries.series(c, "day", "model", tz, *queries.series_range("day", tz, start, now, now)).rows(),
        lambda c: queries.series(c, "hour", "none", tz, *queries.series_range("hour", tz, start, now, now)).rows(),
        lambda c: queries.top(c, "model", start, now, 10),
    ):
        assert ask(mirror_cur) == ask(lake_cur)
    assert queries.summary(mirror_cur, tz, now)["month"]["calls"] > 0
    for c in (lake_cur, mirror_cur):
        c.close()
    for w in writers:
        w.stop()
    for store in stores:
        store.close()


def test_the_lake_connection_has_duckdb_caps_from_settings(lake_catalog: str, tmp_path: Path) -> None:
    """The embedded file is opened with `duckdb_memory_limit` / `duckdb_threads`; the lake connection (which also
    holds the rollup mirror) must be too, or one analytics query could take a replica's memory and cores."""
    from proxy_service.cluster.config import from_settings
    from proxy_service.settings import Settings

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://127.0.0.1:6379/0",
        lake_catalog=lake_catalog,
        lake_data=str(tmp_path / "lake"),
        replica_id="caps",
        duckdb_memory_limit="200MB",
        duckdb_threads=1,
    )
    cfg = from_settings(settings)
    assert cfg is not None
    store = LakeStore(cfg, contextlib.nullcontext)
    try:
        cur = store.cursor()
        limit, threads = cur.execute("SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()
        cur.close()
        assert threads == 1
        assert limit.endswith("MiB") and 180 <= float(limit.split()[0]) <= 200, limit  # DuckDB shows 200MB in MiB
    finally:
        store.close()


def test_the_mirror_holds_the_raw_edges_of_stats_reads_and_follows_late_rows_compaction_and_retention(
    tmp_path: Path, lake_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stats range starts and ends inside 15-minute buckets whose raw rows a replica's mirror holds
    (mirror.edges): read from the lake once, then followed through the change feed. After writes from two replicas
    (late rows into a held bucket among them), a compaction and a retention run, the held rows are the lake's and
    every answer through `stats_reader` (no lake in its search path) equals a plain lake read's; past the limits a
    read goes to the lake, with the same answers."""
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from proxy_service.analytics import queries, snapshot
    from proxy_service.cluster import mirror
    from proxy_service.cluster.lake import compact_lake

    data = str(tmp_path / "lake")
    stores = [LakeStore(ClusterConfig("redis://unused", lake_catalog, data, r), contextlib.nullcontext) for r in "abc"]
    reader = stores[2]
    rollups, writers = _rollup_writers(stores[:2], tmp_path)

    def write(w: LakeWriter, times: list[datetime]) -> None:
        for i, ts in enumerate(times):
            ev = event(i)
            ev.ts, ev.key_id = ts, f"k{i % 3}"
            ev.model = "gemini-2.5-pro" if i % 3 else "gemini-2.5-flash"
            w.record(ev)
        w.flush()

    now = datetime.now(UTC).replace(tzinfo=None)
    old = now - timedelta(days=40)  # retention (30 days) deletes these later
    write(writers[0], [now - timedelta(minutes=4 * i) for i in range(30)])
    write(writers[1], [old + timedelta(minutes=5 * i - 60) for i in range(25)])
    tz = ZoneInfo("Asia/Kolkata")
    lo = old - timedelta(minutes=17)
    asks = [
        lambda c, s: queries.summary(c, tz, now, source=s),
        lambda c, s: queries.top(c, "model", lo, now - timedelta(minutes=3), 10, source=s),
        lambda c, s: queries.top(c, "key", lo, now, 10, source=s),  # raw over 40 days: the lake's rows
        lambda c, s: queries.series(
            c, "hour", "key", tz, *queries.series_range("hour", tz, lo, now, now), source=s
        ).rows(),
        lambda c, s: queries.summary(c, tz, now, use_rollup=False, source=s),
    ]

    def check() -> list[Any]:
        lake_cur = reader.cursor()
        expected = [ask(lake_cur, None) for ask in asks]
        with reader.stats_reader() as (cur, src):
            assert cur.execute("SELECT current_setting('search_path')").fetchone() == (mirror.SCHEMA,)
            assert src.edges is not None, "the mirror is usable"
            assert [ask(cur, src) for ask in asks] == expected
        held = reader.mirror.edge_buckets()
        assert held, "the summary's and the ranges' edge buckets are held"
        in_lake = lake_cur.execute(
            f"SELECT rowid, {queries.RAW_COLUMNS} FROM lake.main.requests "
            "WHERE list_contains(?, time_bucket(INTERVAL 15 MINUTE, ts))",
            [held],
        ).fetchall()
        in_mirror = lake_cur.execute(f"SELECT * FROM {mirror.EDGES}").fetchall()
        assert sorted(in_mirror, key=lambda r: r[0]) == sorted(in_lake, key=lambda r: r[0])
        lake_cur.close()
        return expected

    assert reader.mirror.catch_up()
    first = check()
    assert first[1][0]["calls"] > 0 and reader.mirror.edge_fetches > 0
    fetched = reader.mirror.edge_fetches
    edge = queries.floor_time(lo, mirror.EDGE_GRAIN)
    assert edge in reader.mirror.edge_buckets()
    # Late rows into the held old bucket (some before the range's start, some after), new rows at the current one
    write(writers[1], [edge + timedelta(minutes=i) for i in range(15)])
    write(writers[0], [now - timedelta(seconds=i) for i in range(10)])
    late = check()
    assert late != first
    writers[0].submit(lambda c: compact_lake(c, rollups[0])).result()  # files merged, rollup rows folded
    assert check() == late
    cutoffs = snapshot.retention_cutoffs({"requests": 30, "attempts": 30, "error_logs": 30}, now)
    deleted = writers[1].submit(lambda cur: snapshot.apply_retention(cur, cutoffs, rollups[1])).result()
    assert deleted["requests"] == 25 + 15
    assert check() != late
    assert reader.mirror.edge_fetches == fetched, "held buckets followed through the feed, never fetched again"

    # Limits: two buckets at most. The summary needs more (it reads the lake); ranges evict each other.
    monkeypatch.setattr(mirror, "EDGE_BUCKETS", 2)
    for start in (now - timedelta(hours=5, minutes=7), now - timedelta(hours=9, minutes=2)):
        asks[1] = lambda c, s, start=start: queries.top(c, "model", start, now - timedelta(minutes=3), 10, source=s)
        check()
        assert len(reader.mirror.edge_buckets()) <= 2
        assert queries.floor_time(start, mirror.EDGE_GRAIN) in reader.mirror.edge_buckets()
    for w in writers:
        w.stop()
    for store in stores:
        store.close()


def test_a_missing_catalog_database_is_created_when_the_role_may_and_named_in_one_line_when_it_may_not(
    tmp_path: Path,
) -> None:
    from urllib.parse import urlsplit

    from tests.cluster.conftest import PG_URL, pg_admin

    suffix = secrets.token_hex(4)
    name, denied, role = f"keyrack_test_new_{suffix}", f"keyrack_test_denied_{suffix}", f"keyrack_test_role_{suffix}"
    admin = pg_admin()

    def run(sql: str) -> None:
        admin.execute(f"CALL postgres_execute('pgadmin', '{sql}', use_transaction => false)")

    def exists(db: str) -> bool:
        found = f"SELECT 1 FROM pg_database WHERE datname = ''{db}''"
        return admin.execute(f"SELECT count(*) FROM postgres_query('pgadmin', '{found}')").fetchone() == (1,)

    try:
        assert not exists(name)
        cfg = ClusterConfig("redis://unused", f"{PG_URL}/{name}", str(tmp_path / "lake"), "w1")
        for _ in range(2):  # created on the first open; the second finds it
            store = LakeStore(cfg, contextlib.nullcontext)
            assert store.cursor().execute("SELECT count(*) FROM keys").fetchone() == (0,)
            store.close()
        assert exists(name)

        run(f"CREATE ROLE {role} LOGIN NOCREATEDB")
        parts = urlsplit(PG_URL)
        as_role = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}", path=f"/{denied}").geturl()
        with pytest.raises(LakeError) as refused:
            LakeStore(ClusterConfig("redis://unused", as_role, str(tmp_path / "lake2"), "w1"), contextlib.nullcontext)
        line = str(refused.value)
        assert "\n" not in line and f"the database {denied!r} does not exist and user {role} cannot create it" in line
        assert "permission denied to create database" in line and f"-O {role} {denied}" in line, line
        assert not exists(denied)
    finally:
        run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        run(f"DROP DATABASE IF EXISTS {denied} WITH (FORCE)")
        run(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def test_a_replica_started_on_a_missing_catalog_database_creates_it_and_serves(
    start_replica: Callable[..., Replica],
) -> None:
    """The plain-process walkthrough of docs/cluster.md: no `createdb` first, the first replica creates it."""
    from tests.cluster.conftest import PG_URL, pg_admin

    name = f"keyrack_test_walk_{secrets.token_hex(4)}"
    try:
        replica = start_replica("http://127.0.0.1:9", lake_catalog=f"{PG_URL}/{name}")
        ready = httpx.get(f"{replica.url}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["cluster"]["replica"] == "r1", ready.text
        assert re.search(rf"level=WARNING .*created the catalog database {name} ", replica.proc.log())
    finally:
        admin = pg_admin()
        admin.execute(
            f"CALL postgres_execute('pgadmin', 'DROP DATABASE IF EXISTS {name} WITH (FORCE)', use_transaction => false)"
        )
        admin.close()
