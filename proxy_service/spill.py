"""Storage faults and the event spill: what the writer does when the data disk refuses its rows.

`fault_reason(exc)` tells a storage fault (read-only file system, full disk, I/O error, a database DuckDB invalidated
after a failed checkpoint) from a bad row: a fault is spilled and retried, a bad row goes to the dead-letter file.

`Spill` is a bounded FIFO of event batches that could not be stored: in memory up to a row and a byte cap, then as
files in a spill directory on another disk (if configured, up to its own byte cap), and only past both are batches
dropped (counted; the caller logs). Each batch is kept as its JSON text, so the byte cap counts what is held and a
batch moves to disk as it is. Files are named by sequence, written under a temporary name and renamed, and any left
by a previous process are taken up again at start (oldest first).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

log = logging.getLogger("keyrack.events")
_EPOCH = datetime(1970, 1, 1)  # stored times are naive UTC
_MICROSECOND = timedelta(microseconds=1)
SPILL_SUFFIX = ".spill.json"

_ERRNO_REASONS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk full",
    errno.EIO: "I/O error",
}
_TEXT_REASONS = (  # DuckDB carries the OS error as text only
    ("read-only file system", "read-only file system"),
    ("no space left on device", "disk full"),
    ("disk quota exceeded", "disk full"),
    ("input/output error", "I/O error"),
)


def fault_reason(exc: BaseException) -> str | None:
    """A short reason when `exc` says the data disk or the database cannot take writes; None for anything else."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_REASONS:
        return _ERRNO_REASONS[exc.errno]
    if not isinstance(exc, duckdb.Error):
        return None
    text = str(exc).lower()
    for needle, reason in _TEXT_REASONS:
        if needle in text:
            return reason
    if "invalidated" in text:
        return "database invalidated"
    if isinstance(exc, duckdb.IOException | duckdb.FatalException) or "could not write file" in text:
        return "I/O error"
    return None


def invalidated(exc: BaseException) -> bool:
    """DuckDB invalidated the database the failed statement ran on: nothing works on that instance again (DuckDB's
    own words, not any message that happens to hold the word)."""
    return isinstance(exc, duckdb.Error) and "has been invalidated" in str(exc).lower()


def needs_reopen(exc: BaseException) -> bool:
    """The open database cannot be used again: DuckDB invalidated it, or its file system went read-only (which only
    comes back after a remount, and that needs the file released)."""
    return invalidated(exc) or fault_reason(exc) == "read-only file system"


def encode(table: str, columns: dict[str, list[Any]]) -> str:
    """A batch as JSON text; datetime columns as epoch microseconds, named in `times`."""
    times = [n for n, vs in columns.items() if any(isinstance(v, datetime) for v in vs)]
    cols = {
        n: [None if v is None else (v - _EPOCH) // _MICROSECOND for v in vs] if n in times else vs
        for n, vs in columns.items()
    }
    return json.dumps({"table": table, "times": times, "columns": cols}, ensure_ascii=False, default=str)


def decode(text: str) -> tuple[str, dict[str, list[Any]]]:
    doc = json.loads(text)
    cols: dict[str, list[Any]] = doc["columns"]
    for n in doc["times"]:
        cols[n] = [None if us is None else _EPOCH + timedelta(microseconds=us) for us in cols[n]]
    return doc["table"], cols


@dataclass
class Batch:
    """One spilled batch: its rows, and its text in memory or its file on the spill disk."""

    table: str
    rows: int
    size: int
    text: str | None = None
    path: Path | None = None

    def load(self) -> tuple[str, dict[str, list[Any]]]:
        if self.text is not None:
            return decode(self.text)
        assert self.path is not None
        return decode(self.path.read_text(encoding="utf-8"))


class Spill:
    """The bounded FIFO of unstored batches (writer thread only; the counters are read from anywhere)."""

    def __init__(
        self,
        memory_rows: int = 100_000,
        memory_bytes: int = 64 * 2**20,
        directory: Path | None = None,
        directory_bytes: int = 1024 * 2**20,
    ) -> None:
        self.memory_rows, self.memory_bytes = memory_rows, memory_bytes
        self.directory, self.directory_bytes = directory, directory_bytes
        self._batches: deque[Batch] = deque()
        self.rows = 0  # rows held, memory and disk
        self.mem_rows = self.mem_bytes = self.disk_bytes = 0
        self.dropped = 0  # rows let go because every place was full (or the spill disk failed too)
        self._seq = 0
        if directory is not None:
            self._adopt(directory)

    def __len__(self) -> int:
        return len(self._batches)

    def _adopt(self, directory: Path) -> None:
        """Take up the files a previous process left (its fault outlasted it): they are written first."""
        with contextlib.suppress(OSError):
            for path in sorted(directory.glob(f"*{SPILL_SUFFIX}")):
                try:
                    table, cols = decode(path.read_text(encoding="utf-8"))
                except (OSError, ValueError, KeyError) as exc:
                    log.error("unreadable spill file %s left in place: %s", path, exc)
                    continue
                rows = len(next(iter(cols.values()), []))
                size = path.stat().st_size
                self._batches.append(Batch(table, rows, size, path=path))
                self.rows += rows
                self.disk_bytes += size
                self._seq = max(self._seq, int(path.name.split(".", 1)[0]) + 1)
            if self._batches:
                log.warning("%d event rows spilled by a previous process are written first", self.rows)

    def push(self, table: str, columns: dict[str, list[Any]]) -> bool:
        """Keep a batch at the tail; False when it had to be dropped (memory and spill disk full, or no disk)."""
        rows = len(next(iter(columns.values()), []))
        text = encode(table, columns)
        size = len(text.encode())
        if self.mem_rows + rows <= self.memory_rows and self.mem_bytes + size <= self.memory_bytes:
            self._batches.append(Batch(table, rows, size, text=text))
            self.mem_rows += rows
            self.mem_bytes += size
            self.rows += rows
            return True
        if self.directory is not None and not self.disk_bytes:
            log.warning("the memory spill is full (%d rows): event batches now go to %s", self.mem_rows, self.directory)
        path = self._to_disk(text, size)
        if path is None:
            self.dropped += rows
            return False
        self._batches.append(Batch(table, rows, size, path=path))
        self.disk_bytes += size
        self.rows += rows
        return True

    def _to_disk(self, text: str, size: int) -> Path | None:
        if self.directory is None or self.disk_bytes + size > self.directory_bytes:
            return None
        path = self.directory / f"{self._seq:012d}{SPILL_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError as exc:
            log.error("the spill directory %s refused a batch: %s", self.directory, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return None
        self._seq += 1
        return path

    def take(self, max_rows: int) -> list[Batch]:
        """The oldest batches, up to `max_rows` rows (at least one), left in place until `done()`."""
        out: list[Batch] = []
        rows = 0
        for batch in self._batches:
            if out and rows + batch.rows > max_rows:
                break
            out.append(batch)
            rows += batch.rows
        return out

    def done(self, batch: Batch) -> None:
        """`batch` is stored (or given up): forget it and delete its file."""
        self._batches.remove(batch)
        self.rows -= batch.rows
        if batch.path is None:
            self.mem_rows -= batch.rows
            self.mem_bytes -= batch.size
        else:
            self.disk_bytes -= batch.size
            with contextlib.suppress(OSError):
                batch.path.unlink()

    def persist(self) -> int:
        """At stop with the store still failing: every batch to the spill disk, renumbered in queue order (the memory
        batches are the oldest), for the next start to take up; returns the rows that had nowhere to go."""
        lost = 0
        kept: deque[Batch] = deque()
        for batch in self._batches:
            path = None
            if batch.text is not None:
                path = self._to_disk(batch.text, batch.size)
            elif batch.path is not None and self.directory is not None:
                path = self.directory / f"{self._seq:012d}{SPILL_SUFFIX}"
                try:
                    os.replace(batch.path, path)
                    self._seq += 1
                except OSError:
                    path = batch.path  # kept under its old name: still taken up, maybe out of order
            if path is None:
                lost += batch.rows
                continue
            kept.append(Batch(batch.table, batch.rows, batch.size, path=path))
        self._batches = kept
        self.dropped += lost
        return lost

    def dead_letter_path(self) -> Path | None:
        """Where dead letters go while the data disk fails (never onto it)."""
        if self.directory is None:
            return None
        with contextlib.suppress(OSError):
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.directory / "dead_letters.jsonl"
