"""The lake on its own (no server): the writer's commits, and an analyst's read-only ATTACH exactly as the README
shows it, reading live rows while a writer appends."""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from proxy_service.cluster.config import ClusterConfig, pg_conninfo
from proxy_service.cluster.lake import LakeStore, load_extensions
from proxy_service.cluster.writer import LakeWriter
from proxy_service.events import RequestEvent
from proxy_service.rollup import Rollup, fold_batch

README = Path(__file__).resolve().parents[2] / "README.md"


def event(i: int) -> RequestEvent:
    now = datetime.now(UTC).replace(tzinfo=None)
    return RequestEvent(ts=now, request_id=uuid.uuid4().hex, client_id="t", surface="gemini",
                        operation="generateContent", model="gemini-2.5-flash", stream=False, status=200,
                        latency_ms=float(10 + i))  # fmt: skip


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

    # The README's analyst command, with this test's database name.
    attach = re.search(r"^ATTACH 'ducklake:postgres:[^\n]*READ_ONLY\);$", README.read_text(), re.M)
    assert attach is not None, "README shows the analyst's ATTACH"
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
    assert con.execute("SELECT sum(calls) FROM rollup_requests WHERE dim = 'all'").fetchone() == (800,)
    with pytest.raises(duckdb.Error, match=r"read-only|READ_ONLY"):
        con.execute("DELETE FROM requests")
    con.close()
    writer.stop()
    store.close()
    assert "password" not in pg_conninfo(lake_catalog)
