"""The lake writer's durability on its own (issue 23, class 13): a writer process killed at the worst moments, a lake
that is slow or away at stop — every recorded event is committed exactly once, at the latest by the next writer on
the same journal directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.cluster.config import ClusterConfig
from proxy_service.cluster.lake import LakeStore
from proxy_service.cluster.writer import LakeWriter
from tests.cluster.conftest import Replica, database
from tests.cluster.services import throwaway_postgres
from tests.cluster.test_faults import ROOMY, Load
from tests.cluster.test_lake import REPO, _rollup_writers
from tests.cluster.test_replicas import admin, lake_rows, until
from tests.conftest import SCENARIO, Upstream, fake_key

pytestmark = pytest.mark.timeout(240)

# A writer process for the scenarios below; it prints "recorded <n>" and, for `slow`, the times it recorded at.
_WRITER = """
import contextlib, os, pathlib, signal, sys, time
from pathlib import Path
from proxy_service.cluster.config import ClusterConfig
from proxy_service.cluster.lake import LakeStore
from proxy_service.cluster.writer import LakeWriter
from tests.cluster.test_lake import event
catalog, data, spill, n, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = LakeStore(ClusterConfig("redis://unused", catalog, data, "k1"), contextlib.nullcontext)
writer = LakeWriter(store, "k1", spill, commit_interval_s=0.2)
if mode == "crash_after_commit":
    # Killed right after a COMMIT, before its journal files are deleted (the first unlink of a journal file).
    real_unlink = pathlib.Path.unlink
    def unlink(self, *a, **k):
        if self.suffix == ".arrow":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_unlink(self, *a, **k)
    pathlib.Path.unlink = unlink
if mode in ("slow_lake_stop", "slow_lake_kill"):
    writer.before_commit.append(lambda cur, tables: time.sleep(4))  # every commit takes 4 s (a starved host)
writer.start()
if mode == "slow_lake_kill":
    # A steady 200 events/s; the parent kills us and checks that every event older than a journal window is on disk.
    i = 0
    print("start", time.time(), flush=True)
    while True:
        writer.record(event(i))
        i += 1
        if i % 20 == 0:
            print("recorded", i, time.time(), flush=True)
        time.sleep(0.005)
for i in range(n):
    writer.record(event(i))
    if mode == "slow_lake_stop" and i == n // 2:
        time.sleep(0.5)  # the first half is inside a (slow) commit when the rest arrives
print("recorded", n, flush=True)
if mode == "slow_lake_stop":
    writer.stop(timeout=1)  # SIGTERM's path, with a deadline far shorter than one commit
    os._exit(0)  # the process ends as it would after the lifespan: daemon threads die with it
time.sleep(3600)
"""


def _writer(tmp_path: Path, catalog: str, n: int, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", _WRITER, catalog, str(tmp_path / "lake"), str(tmp_path / "spill"), str(n), mode]
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)


def _recover(tmp_path: Path, catalog: str) -> tuple[int, int]:
    """A new writer on the same journal: (rows in the lake, distinct request ids) once it has replayed."""
    cfg = ClusterConfig("redis://unused", catalog, str(tmp_path / "lake"), "k1", commit_interval_s=0.2)
    store = LakeStore(cfg, contextlib.nullcontext)
    writer = LakeWriter(store, "k1", tmp_path / "spill", 0.2)
    writer.start()
    try:
        until(lambda: not writer.pending_spill(), timeout=60)
        cur = store.cursor()
        found = cur.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        cur.close()
        assert found is not None
        return int(found[0]), int(found[1])
    finally:
        writer.stop()
        store.close()


def test_a_writer_killed_between_commit_and_journal_deletion_commits_nothing_twice(
    tmp_path: Path, lake_catalog: str
) -> None:
    proc = _writer(tmp_path, lake_catalog, 400, "crash_after_commit")
    proc.wait(120)
    assert proc.returncode == -signal.SIGKILL, "the writer was to be killed right after its first commit"
    left = list((tmp_path / "spill").glob("*.arrow"))
    assert left, "the committed journal files are still there (killed before deleting them)"
    rows, distinct = _recover(tmp_path, lake_catalog)
    assert rows == distinct, f"{rows - distinct} rows committed twice by the replay"
    assert rows == 400


def test_stop_journals_everything_queued_however_slow_the_lake(tmp_path: Path, lake_catalog: str) -> None:
    """SIGTERM's path with commits that take longer than the stop's deadline: every recorded event is journaled
    before the process ends, and committed by the next start."""
    proc = _writer(tmp_path, lake_catalog, 3000, "slow_lake_stop")
    out, _ = proc.communicate(timeout=120)
    assert "recorded 3000" in out and proc.returncode == 0
    rows, distinct = _recover(tmp_path, lake_catalog)
    assert (rows, distinct) == (3000, 3000), f"{3000 - distinct} recorded events lost, {rows - distinct} duplicated"


def test_sigkill_loses_at_most_a_journal_window_while_a_commit_is_slow(tmp_path: Path, lake_catalog: str) -> None:
    """Commits take 4 s each: the journal still gets every event within its 0.1 s window (it does not wait for the
    commit), so a SIGKILL loses only the last moment's events."""
    proc = _writer(tmp_path, lake_catalog, 0, "slow_lake_kill")
    assert proc.stdout is not None
    marks: list[tuple[int, float]] = []  # (events recorded, wall time)
    started = float("inf")
    for line in proc.stdout:  # run past two slow commits
        if line.startswith("start"):
            started = time.monotonic()
        if line.startswith("recorded"):
            _, n, at = line.split()
            marks.append((int(n), float(at)))
        if time.monotonic() - started > 9:
            break
    proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    proc.wait(30)
    rows, distinct = _recover(tmp_path, lake_catalog)
    assert rows == distinct, "nothing committed twice"
    # Every event recorded more than 1 s before the kill is there (a 0.1 s journal window, generous slack for a
    # loaded machine); a writer that journals only between commits loses up to a whole 4 s commit.
    safe = max((n for n, at in marks if at <= killed_at - 1.0), default=0)
    print(f"SIGKILL with 4 s commits: {marks[-1][0]} recorded, {rows} in the lake after the replay")
    assert safe > 0 and rows >= safe, f"{safe - rows} events recorded over 1 s before the kill are lost"


# -- real replicas ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cpu_burners(n: int, seconds: float = 240) -> Iterator[None]:
    """`n` busy loops at the replicas' priority (nice 0), each ending by itself after `seconds` whatever happens to the
    test, killed as soon as the block ends: a starved 2-core host."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen(["nice", "-n", "0", sys.executable, "-c", code]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def start_many(start_replica: Callable[..., Replica], up: Upstream, tmp_path: Path, names: list[str]) -> list[Replica]:
    """Replicas started side by side (each start takes seconds on a loaded machine); `names` are their ids, and a
    replica restarted under its id finds its data dir (its journal)."""
    with ThreadPoolExecutor(len(names)) as pool:
        futures = [
            pool.submit(start_replica, up.url, where=tmp_path / name, replica_id=name, **ROOMY) for name in names
        ]
        return [f.result() for f in futures]


def lake_rows_by_id(replica: Replica) -> dict[str, int]:
    rows = lake_rows(replica, "SELECT request_id, count(*) FROM requests GROUP BY ALL")
    return {r[0]: r[1] for r in rows}


@pytest.mark.timeout(600)  # seven replica starts on a starved 2-core machine; the load itself takes seconds
def test_three_starved_replicas_sigterm_then_sigkill_every_answer_once(
    tmp_path: Path, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """Three replicas at c=16 each on a CPU-starved host: SIGTERM all of them mid-load, restart, then SIGKILL one
    mid-load and restart it. Every call answered before the SIGTERM is in the lake exactly once; of the SIGKILLed
    one's, at most the last journal window is missing; nothing is committed twice."""
    up = start_upstream(SCENARIO)
    names = ["r1", "r2", "r3"]
    replicas = start_many(start_replica, up, tmp_path, names)
    with cpu_burners(3):
        load = Load({n: r.url for n, r in zip(names, replicas, strict=True)}, workers=16).start()
        until(lambda: len(load.answers) >= 400, timeout=120)
        for r in replicas:
            r.proc.proc.send_signal(signal.SIGTERM)
        for r in replicas:
            assert r.proc.proc.wait(120) == 0
        load.stop()
    answered = {n: load.ids(n) for n in names}
    flips = sum(r.proc.log().count("event=redis_unreachable") for r in replicas)
    print(f"starved: degraded mode entered {flips} times with Redis up")
    replicas = start_many(start_replica, up, tmp_path, names)
    for r in replicas:
        until(lambda r=r: not list((r.dir / "data" / "spill").glob("*.arrow")), timeout=60)
    stored = lake_rows_by_id(replicas[0])
    twice = {k: n for k, n in stored.items() if n > 1}
    lost = {n: ids - set(stored) for n, ids in answered.items()}
    print(
        f"SIGTERM x3, starved: {sum(map(len, answered.values()))} answered, "
        f"{sum(map(len, lost.values()))} missing, {len(twice)} twice"
    )
    assert not twice, f"{len(twice)} request ids committed twice"
    assert not any(lost.values()), f"answered calls missing from the lake: { {n: len(v) for n, v in lost.items()} }"

    with cpu_burners(3):
        load = Load({n: r.url for n, r in zip(names, replicas, strict=True)}, workers=16).start()
        until(lambda: len(load.ids("r1")) >= 150, timeout=120)
        replicas[0].proc.proc.kill()
        killed_at = time.monotonic()
        replicas[0].proc.proc.wait(10)
        until(lambda: len([a for a in load.answers if a.at > killed_at]) >= 50, timeout=60)
        load.stop()
    back = start_many(start_replica, up, tmp_path, ["r1"])[0]
    until(lambda: not list((back.dir / "data" / "spill").glob("*.arrow")), timeout=60)
    stored = lake_rows_by_id(back)
    twice = {k: n for k, n in stored.items() if n > 1}
    killed_lost = load.ids("r1") - set(stored)
    # A journal window is 0.1 s; the answers of the last second before the kill stand for it on a starved host (an
    # answer can reach the client a little before its event is queued).
    window = {a.request_id for a in load.answers if a.replica == "r1" and a.at > killed_at - 1.0}
    print(
        f"SIGKILL, starved: {len(load.ids('r1'))} answered by r1, {len(killed_lost)} missing ({len(window)} in its last second)"
    )
    assert not twice, f"{len(twice)} request ids committed twice"
    assert killed_lost <= window, "an answer older than the journal window is missing"
    # The survivors commit their last answers within a commit interval; the deadline is for a loaded machine (each
    # check is a lake query through a starved replica).
    for n in ("r2", "r3"):
        until(lambda n=n: load.ids(n) <= set(lake_rows_by_id(back)), timeout=180)


def cluster_lake_ok(replica: Replica) -> bool:
    return httpx.get(f"{replica.url}/readyz", timeout=10).json()["cluster"]["lake"] == "ok"


def test_key_counters_equal_the_lake_after_conflicts_and_a_postgres_outage(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """Two replicas hammer one key (every counter write is on the same row) and PostgreSQL stops for a few seconds
    under the load: the key's counters (requests, successes), on the SQL page and on each replica's Keys page, end up
    equal to the lake's attempts and successful calls for it."""
    key = fake_key("counted-key")
    up = start_upstream({"projects": {"p1": [key]}, "seed": 1})
    settings = {**ROOMY, "api_keys": f"p1:{key}", "lake_max_waiting_rows": 50}
    with throwaway_postgres() as pg, database(pg.url) as catalog:
        r1 = start_replica(up.url, lake_catalog=catalog, **settings)
        r2 = start_replica(up.url, lake_catalog=catalog, **settings)
        load = Load({"r1": r1.url, "r2": r2.url}, workers=8).start()
        until(lambda: len(load.answers) >= 200, timeout=60)
        pg.stop()
        down = time.monotonic()
        until(lambda: len([a for a in load.answers if a.at > down]) >= 200, timeout=60)
        pg.start()
        until(lambda: len([a for a in load.answers if a.at > down]) >= 400, timeout=60)
        load.stop()
        assert {a.status for a in load.answers} == {200}
        until(lambda: cluster_lake_ok(r1) and cluster_lake_ok(r2), timeout=60)
        until(lambda: load.ids("r1") | load.ids("r2") <= set(lake_rows_by_id(r1)), timeout=60)

        def lake() -> list[list[Any]]:
            return lake_rows(
                r1,
                "SELECT (SELECT count(*) FROM attempts WHERE key_id = k.key_id), "
                "(SELECT count(*) FROM requests WHERE key_id = k.key_id AND outcome = 'success'), "
                "k.requests, k.successes FROM keys k",
            )

        def pages() -> list[tuple[int, int]]:
            return [
                (item["requests"], item["successes"])
                for r in (r1, r2)
                for item in admin(r, "GET", "/keys?page_size=10")["items"]
            ]

        def settled() -> bool:
            rows = lake()
            return len(rows) == 1 and rows[0][0] == rows[0][2] and rows[0][1] == rows[0][3]

        try:
            until(settled, timeout=60)
        except AssertionError:
            # What differs, for the record: (attempts, successful calls, key requests, key successes) per key.
            raise AssertionError(f"not settled: lake {lake()}, pages {pages()}") from None
        attempts, successes, _, _ = lake()[0]
        print(f"one key, two replicas, PostgreSQL stopped: {successes} successes in the lake, counters {lake()[0][2:]}")
        assert successes == len(load.answers)
        until(lambda: pages() == [(attempts, successes)] * 2, timeout=60)  # each replica re-reads every 10 s


def test_counter_deltas_are_committed_with_the_events_and_the_leader_folds_them(
    tmp_path: Path, lake_catalog: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from proxy_service.analytics.rollup import Rollup
    from proxy_service.cluster.lake import compact_lake, key_counts
    from tests.cluster.test_lake import event

    store = LakeStore(
        ClusterConfig("redis://unused", lake_catalog, str(tmp_path / "lake"), "w1"), contextlib.nullcontext
    )
    writer = LakeWriter(store, "w1", tmp_path / "spill", 0.05)
    rollup = Rollup()
    writer.submit(rollup.install).result()
    writer.start()
    for i in range(5):
        writer.count_keys({"k1": (2, 1, 1), "k2": (1, 1, 0)})
        writer.count_keys({"k1": (1, 0, 0)})
        writer.record(event(i))
        writer.flush()
    cur = store.cursor()
    assert key_counts(cur) == {"k1": (15, 5, 5), "k2": (5, 5, 0)}
    assert cur.execute("SELECT count(*) FROM key_counts").fetchone() == (10,)
    commits = cur.execute("SELECT count(*), sum(len(seqs)) FROM journal_commits").fetchone()
    assert commits is not None and commits[0] >= 5 and commits[1] >= 10  # each commit: its files' ids
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=8)
    cur.execute("INSERT INTO journal_commits VALUES ('old', [1, 2], 'w1', ?)", [old])
    result = writer.submit(lambda c: compact_lake(c, rollup, prune_journal=True)).result()
    assert result["key_count_rows"] == 8 and result["journal_ids_pruned"] == 1
    assert key_counts(cur) == {"k1": (15, 5, 5), "k2": (5, 5, 0)}
    assert cur.execute("SELECT count(*) FROM key_counts").fetchone() == (2,)
    assert cur.execute("SELECT count(*) FROM journal_commits WHERE writer = 'old'").fetchone() == (0,)
    cur.close()
    writer.stop()
    store.close()


def test_an_invalidated_duckdb_is_replaced_and_the_writer_commits_on(tmp_path: Path, lake_catalog: str) -> None:
    """DuckDB invalidates a whole instance after an internal error (seen when the catalog's PostgreSQL died in the
    middle of a mirror reload): every later statement fails with "database has been invalidated". The writer opens a
    new instance (the lake attached again, the replica-local views made again, the mirror loaded afresh) and commits
    what waited, once. (The invalidation is raised by a job here: no SQL invalidates DuckDB on purpose.)"""
    import duckdb

    from proxy_service.store import close_kept
    from tests.cluster.test_lake import event

    cfg = ClusterConfig("redis://unused", lake_catalog, str(tmp_path / "lake"), "k1", commit_interval_s=0.2)
    store = LakeStore(cfg, contextlib.nullcontext, tmp_path / "mirror.duckdb")
    made: list[int] = []

    def local_objects(cur: Any) -> None:
        store.install_safe_views(cur)
        made.append(store.generation)

    store.after_reopen = local_objects
    _, (writer,) = _rollup_writers([store], tmp_path)
    try:
        for i in range(50):
            writer.record(event(i))
        writer.flush()
        assert store.mirror.catch_up()
        loaded = store.mirror.reloads

        def invalidated(cur: Any) -> None:
            raise duckdb.FatalException(
                "FATAL Error: Failed: database has been invalidated because of a previous fatal error."
            )

        with pytest.raises(duckdb.FatalException):
            writer.submit(invalidated).result(30)
        for i in range(50, 120):
            writer.record(event(i))
        until(lambda: store.generation == 1 and not writer.pending_spill() and writer.depth == 0, timeout=60)
        assert made == [0], "the replica-local objects were made on the new connection, before it was used"
        writer.flush()
        assert writer.healthy, writer.last_error
        cur = store.cursor()
        try:
            rows = cur.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
            views = cur.execute(f"SELECT count(*) FROM {store.safe_schema}.requests").fetchone()
        finally:
            cur.close()
        assert rows == (120, 120)
        assert views == (120,)
        # The mirror attaches a fresh file on the new instance and holds the rollup of every row.
        until(lambda: store.mirror.catch_up(), timeout=30)
        assert store.mirror.reloads > loaded, "loaded afresh on the new instance"
        with store.stats_reader() as (reader, _source):
            folded = reader.execute("SELECT sum(calls) FROM preagg WHERE grain = '1h' AND a = ''").fetchone()
        assert folded == (120,)
    finally:
        writer.stop()
        store.close()
        close_kept()  # the first instance, kept open as a really invalidated one would be (its PostgreSQL connections)
