"""The DuckDB file: schema, the one owning connection, and per-thread cursors.

The proxy process is the file's only owner (DuckDB allows one read-write process and then no other process at
all). Writes happen on the event writer's thread; every other thread reads through its own `cursor()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from proxy_service.analytics.histogram import lb_sql
from proxy_service.settings import DUCKDB_BLOCK_SIZE, DUCKDB_ROW_GROUP_SIZE
from proxy_service.spill import invalidated

# Column order matters only for readability; inserts go BY NAME.
SCHEMA: dict[str, str] = {
    "requests": """
        ts TIMESTAMP NOT NULL, request_id VARCHAR NOT NULL, client_id VARCHAR, surface VARCHAR, operation VARCHAR,
        model VARCHAR, stream BOOLEAN, status SMALLINT, outcome VARCHAR, attempts SMALLINT, key_id VARCHAR,
        project VARCHAR, latency_ms DOUBLE, ttfb_ms DOUBLE, prompt_tokens INTEGER, output_tokens INTEGER,
        thinking_tokens INTEGER, cached_tokens INTEGER, total_tokens INTEGER, request_bytes BIGINT,
        response_bytes BIGINT, error_status VARCHAR, error_message VARCHAR, latency_lb SMALLINT, ttfb_lb SMALLINT,
        resource_kind VARCHAR, resource_id VARCHAR, client_label VARCHAR, refusal VARCHAR, served_model VARCHAR,
        tier VARCHAR, cost_usd DOUBLE, list_cost_usd DOUBLE""",
    "attempts": """
        ts TIMESTAMP NOT NULL, request_id VARCHAR NOT NULL, attempt SMALLINT, key_id VARCHAR, project VARCHAR,
        model VARCHAR, upstream_status SMALLINT, error_status VARCHAR, quota_id VARCHAR, retry_delay_s DOUBLE,
        latency_ms DOUBLE, outcome VARCHAR""",
    "error_logs": """
        id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, request_id VARCHAR, key_id VARCHAR, model VARCHAR,
        status SMALLINT, error_type VARCHAR, message VARCHAR, upstream_body VARCHAR, stack_trace VARCHAR,
        request_body VARCHAR""",
    "keys": """
        key_id VARCHAR PRIMARY KEY, secret VARCHAR NOT NULL, label VARCHAR, project VARCHAR, status VARCHAR,
        created_at TIMESTAMP, last_used_at TIMESTAMP, consecutive_failures INTEGER, total_failures BIGINT,
        requests BIGINT, successes BIGINT, last_error VARCHAR, last_checked_at TIMESTAMP, disabled_reason VARCHAR""",
    "settings": "name VARCHAR PRIMARY KEY, value VARCHAR, updated_at TIMESTAMP",
    # Client records (proxy_service/clients.py): tokens only as keyed hashes, under the install's own key.
    "clients": "id VARCHAR PRIMARY KEY, label VARCHAR, owner VARCHAR, class VARCHAR, models VARCHAR, "
    "limits VARCHAR, expires_at TIMESTAMP, created_at TIMESTAMP, last_used_at TIMESTAMP, revoked_at TIMESTAMP, "
    "source VARCHAR, token_hash VARCHAR NOT NULL, old_hash VARCHAR, old_until TIMESTAMP, fallback BOOLEAN",
    "client_secret": "name VARCHAR PRIMARY KEY, value VARCHAR",
    # Alerting (proxy_service/alerts): rules as JSON bodies, channels (url and secret are secrets), silences, and
    # the history of every state change and delivery attempt.
    "alert_rules": "id VARCHAR PRIMARY KEY, body VARCHAR NOT NULL, updated_at TIMESTAMP",
    "alert_channels": "id VARCHAR PRIMARY KEY, name VARCHAR, url VARCHAR NOT NULL, secret VARCHAR, created_at DOUBLE",
    "alert_silences": "id VARCHAR PRIMARY KEY, rule_id VARCHAR, labels VARCHAR, until DOUBLE, comment VARCHAR, "
    "created_at DOUBLE",
    "alert_events": "id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL, kind VARCHAR, rule_id VARCHAR, rule VARCHAR, "
    "severity VARCHAR, state VARCHAR, labels VARCHAR, value DOUBLE, threshold DOUBLE, channel_id VARCHAR, "
    "attempt SMALLINT, message VARCHAR",
    "alert_meta": "name VARCHAR PRIMARY KEY, value VARCHAR",
}
# Columns added to a table after its first release: files (and lakes) from before get them, NULL in the old rows.
ADDED: dict[str, dict[str, str]] = {  # table → column → its type
    "requests": {
        "resource_kind": "VARCHAR",
        "resource_id": "VARCHAR",
        "client_label": "VARCHAR",
        "refusal": "VARCHAR",
        "served_model": "VARCHAR",
        "tier": "VARCHAR",
        "cost_usd": "DOUBLE",
        "list_cost_usd": "DOUBLE",
    },
    "clients": {"fallback": "BOOLEAN"},
}
# Columns the store derives from others as rows are appended (writers never send them): the histogram bucket of
# each latency, so that percentiles over raw rows (Explore's pairs) group by it instead of computing a logarithm per
# row (cheaper on large files: bench/explore.py measures Explore's shapes). Internal: hidden from user SQL and exports like secrets are. Rows from before a
# migration get them when it adds the columns; readers still compute the bucket where it is NULL (the lake's old rows).
DERIVED: dict[str, dict[str, tuple[str, str]]] = {  # table → column → (its source column, its SQL)
    "requests": {
        col[:-3] + "_lb": (col, f"CASE WHEN {col} IS NOT NULL THEN {lb_sql(col)} END")
        for col in ("latency_ms", "ttfb_ms")
    }
}
# What may leave the store without an explicit reveal (user SQL, Parquet exports): these tables, the keys without
# their secret. One rule for the safe views and the export.
SECRET_COLUMNS: dict[str, tuple[str, ...]] = {"keys": ("secret",)}
PUBLIC_TABLES = ("requests", "attempts", "error_logs", "keys")
WAL_AUTOCHECKPOINT = "4MiB"


def derived_of(table: str, names: list[str]) -> dict[str, str]:
    """The columns `table` derives whose source is among `names` (a batch's columns) → their SQL."""
    return {col: expr for col, (source, expr) in DERIVED.get(table, {}).items() if source in names}


def hidden_columns(table: str) -> tuple[str, ...]:
    """The columns of `table` user SQL and exports do not see: secrets and derived ones."""
    return (*SECRET_COLUMNS.get(table, ()), *DERIVED.get(table, {}))


def public_select(table: str) -> str:
    """`SELECT` of `table` without its secret (and derived) columns."""
    hidden = hidden_columns(table)
    return f"SELECT * EXCLUDE ({', '.join(hidden)}) FROM main.{table}" if hidden else f"SELECT * FROM main.{table}"


def private_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700, and tighten it to 0700 if it exists and is ours: the data dir
    holds the upstream keys."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours (a mounted volume): the files inside are still 0600
        st = path.stat()
        # Never a shared directory (sticky or world-writable, e.g. a database file put straight into /tmp by a
        # root process): closing it would break every other user of it. The files inside are still 0600.
        shared = st.st_mode & (stat.S_ISVTX | stat.S_IWOTH)
        if st.st_uid == os.getuid() and not shared:
            path.chmod(0o700)


def private_file(path: Path) -> None:
    """Mode 0600 for a file Keyrack made (DuckDB creates its files with the process umask, which `keyrack serve`
    sets to 077; this covers a library caller with a looser umask)."""
    with contextlib.suppress(OSError):
        path.chmod(0o600)


# DuckDB aborts the whole process (std::terminate) when some objects of an invalidated database are destroyed: seen
# in CI, a read cursor closed after its query failed with "database has been invalidated". Such cursors and
# connections are kept here, never destroyed, until the process ends; `keyrack serve` then ends without destroying
# them (server.py), once everything is flushed.
_INVALIDATED: list[object] = []


def keep_invalidated(obj: object) -> None:
    """Keep a cursor or connection of an invalidated database alive for the process's life (see _INVALIDATED)."""
    _INVALIDATED.append(obj)


def any_invalidated() -> bool:
    return bool(_INVALIDATED)


def close_kept() -> None:
    """Close what `keep_invalidated` kept: for a test that raised the invalidation itself (the database is fine, and
    an instance kept open holds its PostgreSQL connections)."""
    while _INVALIDATED:
        obj = _INVALIDATED.pop()
        with contextlib.suppress(duckdb.Error):
            obj.close()  # type: ignore[attr-defined]


@contextlib.contextmanager
def closing(cur: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """`cur`, closed on the way out, unless what its statement raised says its database was invalidated: then it
    is kept (closing it can abort the process)."""
    try:
        yield cur
    except BaseException as exc:
        if invalidated(exc):
            keep_invalidated(cur)
        else:
            cur.close()
        raise
    cur.close()


def utcnow() -> datetime:
    """Now, as every stored time is: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class StorageFault(RuntimeError):
    """The data disk cannot be used now (read-only, full, failing): the admin API answers 503 with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"storage: {reason}")
        self.reason = reason


Ranges = Sequence[tuple[datetime, datetime]]


@dataclass(frozen=True)
class StatsSource:
    """Where a stats read (`queries.aggregate`) takes raw `requests` rows from: `raw`, the table as the reader's
    cursor names it; `edges`, optionally, a context manager that yields a table holding every requests row of the
    given time ranges (`queries.RAW_COLUMNS`), or None when it cannot (then `raw` is read)."""

    raw: str = "requests"
    edges: Callable[[Ranges], contextlib.AbstractContextManager[str | None]] | None = None


# trim_cache: DuckDB's cache of checkpointed table blocks is cut back to this every CACHE_TRIM_S (app.py). With
# 16,384-row groups the cache refills faster between trims (checkpoints write more, smaller row groups), so it is
# kept small (bench/memory.py reports DuckDB's own account beside RSS).
CACHE_KEEP_BYTES = 4 * 2**20


class Store:
    """Owns the DuckDB connection. Thread-safe through `cursor()`: one cursor per thread and use."""

    safe_schema = "safe"  # where user SQL's views live (the cluster's lake store keeps them elsewhere)
    client_labels = "main.client_labels"  # the labels table behind safe.requests.client (replica-local in a cluster)
    memory_limit: str | None = None  # as configured; None (the cluster's lake store): trim_cache leaves DuckDB alone
    generation = 0  # bumped by every reopen(): a long-lived cursor from an older one is stale
    _released: str | None = None  # why the file was let go (a storage fault), until reopen()
    # The cluster's lake store runs it on each new connection (replica-local views and labels); a file keeps them.
    after_reopen: Callable[[duckdb.DuckDBPyConnection], None] | None = None

    def __init__(
        self,
        path: Path | str,
        memory_limit: str | None = None,
        threads: int | None = None,
        block_size: int | None = DUCKDB_BLOCK_SIZE,
        row_group_size: int | None = DUCKDB_ROW_GROUP_SIZE,
        wal_autocheckpoint: str = WAL_AUTOCHECKPOINT,
    ) -> None:
        self.path = Path(path)
        self.memory_limit = memory_limit
        if str(path) != ":memory:":
            private_dir(self.path.parent)
        config: dict[str, str | bool | int | float | list[str]] = {}
        # Checkpoint at every 4 MB of WAL (DuckDB: 16 MB). Rows appended since the last checkpoint live in memory
        # uncompressed, so a smaller interval flattens the sawtooth they make in RSS, and each checkpoint stalls the
        # writer for less (about the same work per MB). bench/memory.py measures the RSS.
        config["wal_autocheckpoint"] = wal_autocheckpoint
        if block_size:
            # For a new file only. Appends between checkpoints live in memory, one block per column segment, and
            # after a checkpoint the next append to a table turns each column's last, partly filled segment back
            # into a whole in-memory block: every column of the appended tables (requests, attempts, the
            # pre-aggregates) × the block size, for the proxy's whole life, so smaller blocks hold less. Smaller still
            # made the file much larger (compression works per block). bench/memory.py runs DuckDB's default as its
            # `--duckdb-baseline`; bench/analytics.py measures the file's size and the queries' speed.
            config["default_block_size"] = str(block_size)
        if memory_limit:  # DuckDB's own caps, so one analytics query cannot take the proxy's memory or cores
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        # Rows per row group. A checkpoint rewrites the row group that appends went into, whole: with DuckDB's
        # default that is a large row group of `requests` every few seconds under load, the largest samples of the
        # memory soak (bench/memory.py --duckdb-baseline). Smaller groups flatten them; the price is slower Explore
        # shapes (bench/explore.py keeps them within its target). DuckDB
        # takes the size only when a file is attached, so the file is attached to an in-memory connection under its
        # usual name and made the default database of every cursor.
        self._catalog: str | None = None
        self._config, self._row_group_size = config, row_group_size
        self._con = self._connect()
        if str(path) != ":memory:":
            private_file(self.path)
        self._lock = threading.Lock()
        self._migrate()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        path, row_group_size = self.path, self._row_group_size
        if row_group_size and str(path) != ":memory:":
            con = duckdb.connect(":memory:", config=self._config)
            self._catalog = self.path.stem.replace('"', "")
            literal = str(path).replace("'", "''")
            try:
                con.execute(f"ATTACH '{literal}' AS \"{self._catalog}\" (ROW_GROUP_SIZE {int(row_group_size)})")
                con.execute(f'USE "{self._catalog}"')
            except BaseException:
                con.close()
                raise
            return con
        return duckdb.connect(str(path), config=self._config)

    def _migrate(self) -> None:
        cur = self.cursor()
        for table, columns in SCHEMA.items():
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
        for table, added in ADDED.items():
            have = {r[0] for r in cur.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}
            for col, sql_type in added.items():
                if col not in have:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {col} {sql_type}")
        for table, derived in DERIVED.items():  # files from before a derived column existed: added and filled once
            have = {r[0] for r in cur.execute(f"SELECT column_name FROM (DESCRIBE {table})").fetchall()}
            for col, (source, expr) in derived.items():
                if col not in have and source in have:  # once, in the upgrade adding it
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {col} SMALLINT")
                    cur.execute(f"UPDATE {table} SET {col} = {expr} WHERE {source} IS NOT NULL")
        cur.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._released is not None:
                raise StorageFault(self._released)
            cur = self._con.cursor()
        if self._catalog is not None:  # a cursor starts in the in-memory database, not the attached file
            cur.execute(f'USE "{self._catalog}"')
        return cur

    def read_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for reads (the cluster's store serves the rollup from a replica-local mirror)."""
        return self.cursor()

    @contextlib.contextmanager
    def stats_reader(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, StatsSource]]:
        """A cursor for the stats queries and where they read raw rows (the cluster's store: its mirror)."""
        cur = self.read_cursor()
        try:
            yield cur, StatsSource()
        finally:
            cur.close()

    def trim_cache(self, cur: duckdb.DuckDBPyConnection, keep: int = CACHE_KEEP_BYTES) -> int:
        """Evict DuckDB's cached blocks of checkpointed table data (`BASE_TABLE`) beyond `keep` bytes; returns how
        many bytes went. DuckDB keeps every block a checkpoint writes or a query reads until `memory_limit` forces
        it out: under sustained traffic that cache grew steadily towards the limit and was most of the proxy's
        growth. DuckDB has no setting for the cache alone, so the limit is lowered just below what is in use
        minus the excess (DuckDB then evicts unpinned blocks, the oldest first) and set back at once. An evicted block
        is read again from the file (the OS's page cache) when a query needs it. Runs on the writer thread, so no
        append allocates meanwhile; a query on another cursor has `keep` bytes of cache it may evict in that moment."""
        if not self.memory_limit or not re.fullmatch(
            r"(?i)\d+(\.\d+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", self.memory_limit
        ):
            return 0
        rows = dict(cur.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall())
        cached = int(rows.get("BASE_TABLE", 0))
        if cached <= keep:
            return 0
        target = int(sum(rows.values())) - (cached - keep)
        try:
            # SET takes no parameters: an int, and the limit as settings.py validated it (digits and a unit).
            cur.execute(f"SET memory_limit = '{target}B'")
        except duckdb.Error:  # could not evict that much (pinned blocks): nothing changed
            pass
        finally:
            cur.execute(f"SET memory_limit = '{self.memory_limit}'")
        after = cur.execute("SELECT memory_usage_bytes FROM duckdb_memory() WHERE tag = 'BASE_TABLE'").fetchone()
        return max(0, cached - int(after[0] if after else 0))

    def memory(self) -> dict[str, int]:
        """DuckDB's own account of the memory it holds, in bytes by tag (`duckdb_memory()`: table data not yet
        checkpointed, cached blocks, hash tables...), tags holding nothing left out. What the process holds beyond
        it is Python, the libraries' mapped pages and the allocators' slack (bench/memory.py shows both)."""
        cur = self.cursor()
        try:
            rows = cur.execute(
                "SELECT tag, memory_usage_bytes FROM duckdb_memory() WHERE memory_usage_bytes > 0"
            ).fetchall()
        finally:
            cur.close()
        return {str(tag): int(n) for tag, n in rows}

    def release(self, reason: str) -> None:
        """Let the file go after a storage fault (DuckDB invalidated it, or its file system went read-only): every
        connection and cursor of it closes, so an operator can remount the disk, and `cursor()` raises StorageFault
        until `reopen()`."""
        with self._lock:
            self._released = reason
            with contextlib.suppress(duckdb.Error):
                self._con.close()

    def reopen(self) -> None:
        """Open the file again (after `release()`, or to drop an invalidated database); raises what DuckDB raises
        while the disk still fails. The settings are the ones it was first opened with; cursors come from the new
        connection from now on."""
        if str(self.path) != ":memory:" and not self.path.exists():
            # The disk is not (yet) mounted back: never start an empty database in the directory under it.
            raise StorageFault(f"{self.path} is missing (the data disk is not mounted?)")
        with self._lock:
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            con = self._connect()
            try:
                tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            except BaseException:
                con.close()
                raise
            if "requests" not in tables:
                # A new, empty file: the path led elsewhere for a moment (the disk unmounted under it). Never used,
                # never migrated; the next try finds the real file once the disk is mounted again. (A stray empty file
                # may be left in the directory under the mount point.)
                con.close()
                raise StorageFault(f"{self.path} opened as an empty database (the data disk is not mounted?)")
            self._con = con
            self._released = None
            self.generation += 1

    @property
    def released(self) -> str | None:
        return self._released

    def close(self) -> None:
        with self._lock:
            self._con.close()
