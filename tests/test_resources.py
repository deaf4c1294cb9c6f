"""The resource → project map: what a body names, durability across a restart (and through a disk that fails for a
while), expiry with the resource, and the pool's choice pinned to the owning project."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy_service.errors import PoolExhausted
from proxy_service.keys import KeySpec
from proxy_service.pool import Pool
from proxy_service.quota import QuotaViolation
from proxy_service.resources import FILE_TTL_S, Owner, ResourceMap, expiry, names_in
from tests.conftest import fake_key


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"contents": [{"parts": [{"text": "hi"}]}]}', []),
        (b'{"contents": [], "cachedContent": "cachedContents/abc-1"}', ["cachedContents/abc-1"]),
        (b'{"cached_content":"cachedContents/x9"}', ["cachedContents/x9"]),
        (
            b'{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/f1",'
            b'"mimeType":"text/plain"}}]}]}',
            ["files/f1"],
        ),
        (b'{"batch": {"inputConfig": {"fileName": "files/in-2"}}}', ["files/in-2"]),
        (b'{"contents": [{"parts": [{"text": "see files/zzz in the text"}]}]}', []),  # prose, not a reference
        (b'{"cachedContent": "cachedContents/../../admin"}', []),  # not a resource id
    ],
)
def test_names_in(body: bytes, names: list[str]) -> None:
    assert names_in(body) == names


def test_the_map_survives_a_restart_and_forgets_deleted_and_expired(tmp_path: Path) -> None:
    path = tmp_path / "resources.jsonl"
    now = time.time()
    m = ResourceMap(path)
    m.record(Owner("files/a", "p1", "k1", now + FILE_TTL_S, 10))
    m.record(Owner("files/b", "p2", "k2", now + FILE_TTL_S, 20))
    m.record(Owner("cachedContents/c", "p1", "k1", now + 0.05))
    m.record(Owner("batches/d", "p3", "k3", now + 3600))
    m.forget("batches/d")
    with path.open("a") as f:
        f.write("{not json\n")  # a torn last line (a crash mid-append) costs that line only
    time.sleep(0.1)
    again = ResourceMap(path)
    assert again.owner("files/a") == Owner("files/a", "p1", "k1", m.owners["files/a"].expires_at, 10)
    assert again.owner("files/b") is not None
    assert again.owner("cachedContents/c") is None  # expired with its cache
    assert again.owner("batches/d") is None  # deleted
    assert again.stored_bytes() == {"p1": 10, "p2": 20}
    # Loading compacted the file: one line per live resource.
    assert sorted(json.loads(line)["name"] for line in path.read_text().splitlines()) == ["files/a", "files/b"]


def test_expiry_follows_the_resource() -> None:
    now = 1_000_000.0
    assert expiry("files/x", {}, now) == now + FILE_TTL_S
    assert expiry("cachedContents/x", {"expireTime": "1970-01-12T13:46:40Z"}, now) == 1_000_000.0
    assert expiry("cachedContents/x", {}, now) > now
    assert expiry("batches/x", {}, now) > now + FILE_TTL_S


def _pool() -> Pool:
    pool = Pool("round_robin")
    pool.add([KeySpec(fake_key(f"{p}-{i}"), p, None) for p in ("p1", "p2") for i in range(2)])
    return pool


def test_choose_pinned_to_a_project_stays_there_whatever_the_strategy() -> None:
    pool = _pool()
    assert {pool.choose("m", scope="p2").project for _ in range(8)} == {"p2"}
    assert {pool.choose("m").project for _ in range(8)} == {"p1", "p2"}


def test_a_pinned_project_cooling_answers_429_with_its_wait() -> None:
    pool = _pool()
    key = next(k for k in pool.keys.values() if k.project == "p2")
    pool.rate_limited(key, "m", QuotaViolation("minute", None, 30.0, None, "m"))
    with pytest.raises(PoolExhausted) as err:
        pool.choose("m", scope="p2")
    assert err.value.status_code == 429
    assert "project p2" in err.value.message
    assert 25 <= err.value.retry_after <= 31
    assert pool.choose("m").project == "p1"  # unpinned calls go elsewhere


def test_a_pinned_project_without_usable_keys_answers_503() -> None:
    pool = _pool()
    for key in pool.keys.values():
        if key.project == "p1":
            pool.disable(key)
    with pytest.raises(PoolExhausted) as err:
        pool.choose("m", scope="p1")
    assert err.value.status_code == 503
    assert "project p1" in err.value.message and "no usable key" in err.value.message


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_failing_append_is_reported_kept_in_memory_and_written_once_the_disk_takes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "resources.jsonl"
    now = time.time()
    m = ResourceMap(path)
    m.record(Owner("files/a", "p1", "k1", now + FILE_TTL_S, 10))
    assert m.fault is None
    # The file cannot be written (a directory in its place: as a full or read-only disk, even for root).
    path.unlink()
    path.mkdir()

    async def during_the_fault() -> None:  # on an event loop, as the proxy records: the appends go to the thread
        m.record(Owner("files/b", "p2", "k2", now + FILE_TTL_S, 20))
        m.record(Owner("batches/c", "p3", "k3", now + 3600))
        m.forget("files/a")
        await m.flush()

    with caplog.at_level(logging.WARNING, logger="keyrack.resources"):
        asyncio.run(during_the_fault())
        wait_for(lambda: m.fault is not None, "the fault")
        assert m.fault is not None and "resource map not saved" in m.fault and "resources.jsonl" in m.fault
        assert sum("cannot write" in r.getMessage() for r in caplog.records) == 1  # once, not once per append
        # Nothing answered is lost: the map still pins from memory.
        assert m.owner("files/b") is not None and m.owner("batches/c") is not None and m.owner("files/a") is None
        failed = m.failed_writes
        wait_for(lambda: m.failed_writes >= failed + 2, "two retries")  # retried every RETRY_S, still failing
        assert m.fault is not None
        path.rmdir()  # the disk takes writes again
        wait_for(lambda: m.fault is None, "the recovery")
        assert any("written again" in r.getMessage() for r in caplog.records)
    again = ResourceMap(path)
    assert sorted(again.owners) == ["batches/c", "files/b"]
    assert again.owners["files/b"] == m.owners["files/b"]
