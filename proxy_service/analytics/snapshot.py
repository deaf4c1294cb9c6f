"""Parquet snapshots for outside SQL tools, and retention.

Export: `<data_dir>/exports/{requests,attempts,keys,error_logs}.parquet`, each written as `<name>.tmp.parquet` by
`COPY ... (FORMAT parquet, COMPRESSION zstd)` and then `os.replace`d, so a reader sees the old file or the new one,
never a partial one. The four COPYs run in one read transaction on their own cursor: they see one consistent
snapshot of the database while the writer keeps appending (DuckDB MVCC), and they do not hold up the writer.
The keys file never has the `secret` column.

Retention: rows older than `retention_<table>_days` are deleted through the writer (serialised with the appends).
The requests cutoff is rounded down to the hour (the rollup's coarsest grain) and the rollup is trimmed at the same instant,
so the two stay equal. DuckDB reuses the freed blocks for new rows, so the file stops growing once retention is
reached; a CHECKPOINT after a large delete makes the space reusable at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from proxy_service.analytics.buckets import floor_time
from proxy_service.analytics.preagg import TIERS
from proxy_service.analytics.rollup import Rollup
from proxy_service.store import PUBLIC_TABLES, private_dir, private_file, public_select

log = logging.getLogger("keyrack.snapshot")

EXPORTS: dict[str, str] = {table: public_select(table) for table in PUBLIC_TABLES}
RETAINED = ("requests", "attempts", "error_logs")
_export_lock = threading.Lock()


@dataclass
class Export:
    files: dict[str, str]
    rows: dict[str, int]
    elapsed_ms: float

    def as_json(self) -> dict[str, Any]:
        return {"files": self.files, "rows": self.rows, "elapsed_ms": round(self.elapsed_ms, 1)}


def export(cur: duckdb.DuckDBPyConnection, directory: Path, selects: dict[str, str] | None = None) -> Export:
    """Write the four tables as Parquet files under `directory` (blocking; one export at a time). `selects`: the
    queries per table when they differ from EXPORTS (the cluster's lake store)."""
    private_dir(directory)  # the exports hold what the database holds (keys excepted): 0700 / 0600
    started = time.perf_counter()
    files, rows = {}, {}
    with _export_lock:
        cur.execute("BEGIN TRANSACTION")
        try:
            for table, select in (selects or EXPORTS).items():
                final = directory / f"{table}.parquet"
                tmp = directory / f"{table}.tmp.parquet"
                try:
                    result = cur.execute(f"COPY ({select}) TO ? (FORMAT parquet, COMPRESSION zstd)", [str(tmp)])
                    count = result.fetchone()
                    private_file(tmp)
                    os.replace(tmp, final)
                except BaseException:
                    tmp.unlink(missing_ok=True)  # the previous snapshot stays in place
                    raise
                rows[table] = int(count[0]) if count else 0
                files[table] = str(final.resolve())
        finally:
            cur.execute("COMMIT")
    return Export(files, rows, (time.perf_counter() - started) * 1000)


def retention_cutoffs(days: dict[str, int], now: datetime) -> dict[str, datetime]:
    cutoffs = {table: now - timedelta(days=days[table]) for table in RETAINED}
    cutoffs["requests"] = floor_time(cutoffs["requests"], max(TIERS))
    return cutoffs


def apply_retention(
    cur: duckdb.DuckDBPyConnection, cutoffs: dict[str, datetime], rollup: Rollup | None, checkpoint: bool = True
) -> dict[str, int]:
    """Delete rows older than each table's cutoff (run on the writer thread). Returns rows deleted per table."""
    deleted = {}
    for table in RETAINED:
        row = cur.execute(f"DELETE FROM {table} WHERE ts < ?", [cutoffs[table]]).fetchone()
        deleted[table] = int(row[0]) if row else 0
    if rollup is not None:
        rollup.trim(cur, cutoffs["requests"])
    if checkpoint and any(deleted.values()):
        try:
            cur.execute("CHECKPOINT")
        except duckdb.Error as exc:  # another transaction is open (an export, a long query): DuckDB will do it later
            log.debug("checkpoint after retention skipped: %s", exc)
    if any(deleted.values()):
        log.info("retention deleted %s", ", ".join(f"{t}={n}" for t, n in deleted.items()))
    return deleted


# -- `keyrack snapshot` ----------------------------------------------------------------------------------------------
def snapshot_offline_or_online(db_path: Path, out: Path | None, url: str, admin_token: str) -> dict[str, Any]:
    """Export without the proxy when it is stopped (open the file read-only), else through its admin API.

    DuckDB lets no other process open the file while the proxy holds it (not even read-only), so a lock error
    means "the proxy is running": ask it for `POST /admin/api/export` (its files land in its own data dir).
    """
    if not db_path.exists():
        raise SnapshotError(f"no database at {db_path} (set KEYRACK_DATA_DIR)")
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as exc:  # Connection...: this very process holds it
        if "lock" not in str(exc).lower() and "different configuration" not in str(exc):
            raise SnapshotError(f"cannot open {db_path}: {str(exc).splitlines()[0]}") from None
        return _online(url, admin_token, out)
    try:
        result = export(con.cursor(), out or db_path.parent / "exports")
    finally:
        con.close()
    return {"via": "file", **result.as_json()}


def _online(url: str, admin_token: str, out: Path | None) -> dict[str, Any]:
    import httpx

    if out is not None:
        raise SnapshotError(
            "the proxy is running and holds the database: it writes the snapshot into its own "
            "<data_dir>/exports; drop --out (or stop the proxy)"
        )
    if not admin_token:
        raise SnapshotError(
            "the proxy is running and holds the database: set KEYRACK_ADMIN_TOKEN so that the "
            "snapshot can be requested through its admin API"
        )
    try:
        resp = httpx.post(
            f"{url.rstrip('/')}/admin/api/export", headers={"authorization": f"Bearer {admin_token}"}, timeout=600
        )
    except httpx.HTTPError as exc:
        raise SnapshotError(f"the database is locked by a running proxy, but {url} does not answer ({exc})") from None
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise SnapshotError(f"the proxy at {url} refused the export: {resp.status_code} {message}")
    return {"via": url, **resp.json()}


class SnapshotError(Exception):
    """A snapshot could not be written; the message says why and what to do."""
