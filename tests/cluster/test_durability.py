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
from pathlib import Path

import pytest

from proxy_service.cluster.config import ClusterConfig
from proxy_service.cluster.lake import LakeStore
from proxy_service.cluster.writer import LakeWriter
from tests.cluster.test_lake import README
from tests.cluster.test_replicas import until

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
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    args = [sys.executable, "-c", _WRITER, catalog, str(tmp_path / "lake"), str(tmp_path / "spill"), str(n), mode]
    return subprocess.Popen(args, env=env, cwd=README.parent, stdout=subprocess.PIPE, text=True)


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
