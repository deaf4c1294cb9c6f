"""The event lake: a DuckLake whose catalog is PostgreSQL, plus the keys/settings tables in PostgreSQL itself.

`LakeStore` has the embedded `Store`'s interface (`cursor()`, `close()`), so the writer, the rollup, the queries
and the admin API run their SQL unchanged: every cursor starts with `USE lake` and a search path of
`lake.main,pg.keyrack`, so `requests` / `attempts` / `error_logs` / the rollup tables resolve to the lake (Parquet
files under `KEYRACK_LAKE_DATA`, shared by every replica) and `keys` / `settings` to PostgreSQL tables in the schema
`keyrack` beside the catalog's own schema `ducklake` (DuckLake has no primary keys; keys and settings need
upserts). The connection itself is an in-memory DuckDB: nothing replica-local is persistent except the spill files
(and the mirror, cluster/mirror.py, recreated at each start). Readers: `read_cursor()` puts the mirror's rollup first
in that path; `stats_reader()` gives the stats queries a cursor on the mirror alone (see there).

Extensions come from the PyPI wheels (`duckdb-extension-ducklake`, `-postgres`, `-httpfs` for S3) through
`import_extension`; `autoinstall_known_extensions` is off, so nothing is ever downloaded at run time.

An empty catalog is initialised once under a cluster-wide lock (replicas attaching an empty catalog at the same
moment race to create its metadata tables); "already exists" is retried as well, for a lock that expired.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import duckdb

from proxy_service.analytics import preagg
from proxy_service.analytics.rollup import Rollup
from proxy_service.cluster import mirror
from proxy_service.cluster.config import ClusterConfig, mask_url, pg_conninfo
from proxy_service.settings import CONNINFO_PASSWORD
from proxy_service.store import (
    ADDED,
    DERIVED,
    PUBLIC_TABLES,
    SCHEMA,
    StatsSource,
    Store,
    closing,
    hidden_columns,
    keep_invalidated,
    public_select,
)

log = logging.getLogger("keyrack.cluster.lake")

CATALOG = "lake"
STATE_DB = "pg"
STATE_SCHEMA = "keyrack"  # keys and settings: PostgreSQL tables (upserts), beside the catalog's schema
META_SCHEMA = "ducklake"
SAFE = "memory.safe"  # user SQL's views: replica-local (in-memory), bodies fully qualified
SEARCH_PATH = f"{CATALOG}.main,{STATE_DB}.{STATE_SCHEMA}"
READ_PATH = f"{mirror.SCHEMA},{SEARCH_PATH}"  # readers: the rollup tables from the replica's mirror file
LAKE_TABLES = ("requests", "attempts", "error_logs")
STATE_TABLES = tuple(t for t in SCHEMA if t not in LAKE_TABLES)  # keys, settings, alerts: need primary keys
# Which replica recorded a row: only the lake has it (the embedded file has one writer by definition).
EXTRA_COLUMNS = {"requests": "replica VARCHAR", "error_logs": "replica VARCHAR"}
# The writer's own tables (cluster/writer.py): the journal ids committed (exactly-once replay) and the per-key counter
# deltas, committed with the events they count (appends only: replicas never update a shared row).
WRITER_DDL = {
    "journal_commits": "writer VARCHAR, seqs BIGINT[], replica VARCHAR, ts TIMESTAMP",
    "key_counts": "key_id VARCHAR, requests BIGINT, successes BIGINT, total_failures BIGINT, ts TIMESTAMP, replica VARCHAR",
}
JOURNAL_KEEP = timedelta(days=7)  # journal ids older than this are dropped: a journal file that old is replayed as is
# The cluster's shared secret (bus messages, lease and shared state tags: cluster/trust.py), in PostgreSQL: every
# replica reads it, Redis never holds it.
SECRET_DDL = (
    f"CREATE TABLE IF NOT EXISTS {STATE_DB}.{STATE_SCHEMA}.cluster_secret (name VARCHAR PRIMARY KEY, value VARCHAR)"
)
# Pre-created so that the rollup's own `CREATE TABLE IF NOT EXISTS rollup_meta (... PRIMARY KEY)` is a no-op here.
ROLLUP_META_DDL = "CREATE TABLE IF NOT EXISTS lake.main.rollup_meta (name VARCHAR, value VARCHAR)"
LABELS = "memory.main.client_labels"
FILE_STATS_INDEX_NAME = "ducklake_file_column_stats_table_column"
FILE_STATS_INDEX = (  # lock_timeout: CREATE INDEX waits for a SHARE lock; never hang a start on a busy catalog
    f"SET lock_timeout = ''5s''; CREATE INDEX IF NOT EXISTS {FILE_STATS_INDEX_NAME} "
    f"ON {META_SCHEMA}.ducklake_file_column_stats (table_id, column_id)"
)
# The keys with their counters: the stored totals (from before counters went to the lake) plus every replica's deltas.
KEYS_SELECT = (
    "SELECT k.* EXCLUDE (secret) REPLACE ((k.requests + coalesce(c.requests, 0))::BIGINT AS requests, "
    "(k.successes + coalesce(c.successes, 0))::BIGINT AS successes, "
    "(k.total_failures + coalesce(c.total_failures, 0))::BIGINT AS total_failures) "
    f"FROM {STATE_DB}.{STATE_SCHEMA}.keys k LEFT JOIN (SELECT key_id, sum(requests) AS requests, "
    f"sum(successes) AS successes, sum(total_failures) AS total_failures FROM {CATALOG}.main.key_counts "
    "GROUP BY key_id) c USING (key_id)"
)
SAFE_VIEWS = {
    "requests": f"SELECT r.* EXCLUDE ({', '.join(hidden_columns('requests'))}), coalesce(l.label, r.client_id) AS client "
    f"FROM {CATALOG}.main.requests r "
    f"LEFT JOIN {LABELS} l ON l.client_id = r.client_id",
    "attempts": f"SELECT * FROM {CATALOG}.main.attempts",
    "error_logs": f"SELECT * FROM {CATALOG}.main.error_logs",
    "keys": KEYS_SELECT,
}


class LakeError(Exception):
    """The lake cannot be opened; the message is one line, passwords masked."""


def load_extensions(con: duckdb.DuckDBPyConnection, s3: bool = False) -> None:
    """Load the bundled extensions from their wheels (never downloaded)."""
    from duckdb_extensions import import_extension

    for name in ("ducklake", "postgres", *(("httpfs",) if s3 else ())):
        import_extension(name, con=con)


def connect(cfg: ClusterConfig, create: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake and the state schema attached (no locking: for readers and tools)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if cfg.duckdb_memory_limit:
        config["memory_limit"] = cfg.duckdb_memory_limit
    if cfg.duckdb_threads:
        config["threads"] = cfg.duckdb_threads
    con = duckdb.connect(":memory:", config=config)
    load_extensions(con, cfg.lake_data.startswith("s3://"))
    if cfg.lake_data.startswith("s3://"):
        con.execute("CREATE OR REPLACE SECRET lake_s3 (TYPE s3, PROVIDER credential_chain)")
    else:
        Path(cfg.lake_data.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    data = cfg.lake_data.removeprefix("file://")
    if not data.endswith("/"):
        data += "/"
    # ATTACH takes no parameters: the strings are quoted literals (a quote inside is doubled).
    con.execute(f"ATTACH {_lit(cfg.conninfo)} AS {STATE_DB} (TYPE postgres, SCHEMA {_lit(STATE_SCHEMA)})")
    if create:  # the catalog's schema must exist before DuckLake attaches to it
        for schema in (STATE_SCHEMA, META_SCHEMA):
            con.execute(f"CALL postgres_execute('{STATE_DB}', 'CREATE SCHEMA IF NOT EXISTS {schema}')")
    lake = "ducklake:postgres:" + cfg.conninfo
    con.execute(f"ATTACH {_lit(lake)} AS {CATALOG} (DATA_PATH {_lit(data)}, METADATA_SCHEMA {_lit(META_SCHEMA)})")
    # Lake files never change once written: their Parquet footers can be parsed once per process.
    con.execute("SET parquet_metadata_cache = true")
    return con


# Where CREATE DATABASE is sent from when the catalog database is missing: the databases `createdb` connects to.
MAINTENANCE_DBS = ("postgres", "template1")


def catalog_database(cfg: ClusterConfig) -> str:
    return unquote(urlsplit(cfg.lake_catalog).path.strip("/"))


def missing_database(exc: BaseException, cfg: ClusterConfig) -> bool:
    return f'database "{catalog_database(cfg)}" does not exist' in str(exc)


def _pg_reason(exc: BaseException) -> str:
    """PostgreSQL's own words from a DuckDB error (after its last FATAL: / ERROR:), without any password."""
    text = " ".join(str(exc).split())
    for marker in ("FATAL:", "ERROR:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1].strip()
            break
    return CONNINFO_PASSWORD.sub(r"\1***", text)


def create_database(cfg: ClusterConfig) -> bool:
    """CREATE DATABASE for the missing catalog database, through a maintenance database, as the catalog's own role.
    False when another replica created it meanwhile; LakeError (one line saying what to do) when the role may not."""
    name = catalog_database(cfg)
    parts = urlsplit(cfg.lake_catalog)
    ident = '"' + name.replace('"', '""') + '"'
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        load_extensions(con)
        reason = ""
        for db in MAINTENANCE_DBS:
            try:
                con.execute(
                    f"ATTACH {_lit(pg_conninfo(urlunsplit(parts._replace(path='/' + db))))} AS pgmaint (TYPE postgres)"
                )
                break
            except duckdb.Error as exc:
                reason = _pg_reason(exc)
        else:
            raise LakeError(_cannot_create(cfg, name, reason))
        try:
            con.execute(
                f"CALL postgres_execute('pgmaint', {_lit('CREATE DATABASE ' + ident)}, use_transaction => false)"
            )
        except duckdb.Error as exc:
            if "already exists" in str(exc):
                return False
            raise LakeError(_cannot_create(cfg, name, _pg_reason(exc))) from None
    finally:
        con.close()
    log.warning(
        "created the catalog database %s at %s: it did not exist (a new, empty catalog: if one was expected, check "
        "the name in KEYRACK_LAKE_CATALOG)",
        name,
        mask_url(cfg.lake_catalog),
    )
    return True


def _cannot_create(cfg: ClusterConfig, name: str, reason: str) -> str:
    parts = urlsplit(cfg.lake_catalog)
    user = unquote(parts.username or "") or "(the default user)"
    where = f"-h {parts.hostname or 'localhost'} -p {parts.port or 5432}"
    return (
        f"KEYRACK_LAKE_CATALOG={mask_url(cfg.lake_catalog)}: the database {name!r} does not exist and user {user} "
        f"cannot create it ({reason}); create it once as a PostgreSQL admin: "
        f"createdb {where} -U postgres -O {user if parts.username else 'USER'} {name}"
    )


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _has_column(cur: duckdb.DuckDBPyConnection, table: str, column: str, database: str = CATALOG) -> bool:
    found = cur.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE database_name = ? AND table_name = ? AND column_name = ?",
        [database, table, column],
    ).fetchone()
    return bool(found and found[0])


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Create what is missing (each DDL statement is a catalog commit: existing tables are not touched)."""
    cur = con.cursor()
    try:
        have = set(
            cur.execute(
                "SELECT database_name, table_name FROM duckdb_tables() WHERE database_name IN (?, ?)",
                [CATALOG, STATE_DB],
            ).fetchall()
        )
        for table in LAKE_TABLES:
            if (CATALOG, table) not in have:
                extra = f", {EXTRA_COLUMNS[table]}" if table in EXTRA_COLUMNS else ""
                cur.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG}.main.{table} ({SCHEMA[table]}{extra})")
        for table in STATE_TABLES:
            if (STATE_DB, table) not in have:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {STATE_DB}.{STATE_SCHEMA}.{table} ({SCHEMA[table]})")
        # Lakes (and state tables) from before a derived or added column existed.
        later = [(t, c, "SMALLINT") for t, derived in DERIVED.items() for c in derived]
        later += [(t, c, kind) for t, added in ADDED.items() for c, kind in added.items()]
        for table, col, kind in later:
            db, where = (
                (STATE_DB, f"{STATE_DB}.{STATE_SCHEMA}") if table in STATE_TABLES else (CATALOG, f"{CATALOG}.main")
            )
            if not _has_column(cur, table, col, db):
                try:
                    cur.execute(f"ALTER TABLE {where}.{table} ADD COLUMN {col} {kind}")
                except duckdb.Error:
                    if not _has_column(cur, table, col, db):  # else another replica added it first
                        raise
        if (CATALOG, "rollup_meta") not in have:
            cur.execute(ROLLUP_META_DDL)
        for table, columns in WRITER_DDL.items():
            if (CATALOG, table) not in have:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG}.main.{table} ({columns})")
        if (STATE_DB, "cluster_secret") not in have:
            cur.execute(SECRET_DDL)
        # Every scan reads the file statistics of its table's filter columns; without this index PostgreSQL reads
        # the whole stats table each time (duckdb/ducklake#859, #1147), which grows with every commit until the
        # compactor merges files and expires snapshots.
        # Created once: even with IF NOT EXISTS PostgreSQL takes the table's SHARE lock first, which would wait for
        # the other replicas' commits on every start.
        found = cur.execute(
            f"SELECT count(*) FROM postgres_query('{STATE_DB}', 'SELECT 1 FROM pg_indexes WHERE schemaname = "
            f"''{META_SCHEMA}'' AND indexname = ''{FILE_STATS_INDEX_NAME}''')"
        ).fetchone()
        if found == (0,):
            try:
                cur.execute(f"CALL postgres_execute('{STATE_DB}', '{FILE_STATS_INDEX}')")
            except duckdb.Error as exc:  # an optimisation only: the next start tries again
                log.warning("file statistics index not created: %s", str(exc).splitlines()[0])
    finally:
        cur.close()


def cluster_secret(con: duckdb.DuckDBPyConnection) -> bytes:
    """The cluster's secret: created once (the first replica to start), then read by every replica."""
    cur = con.cursor()
    try:
        table = f"{STATE_DB}.{STATE_SCHEMA}.cluster_secret"
        cur.execute(f"INSERT INTO {table} VALUES ('bus', ?) ON CONFLICT DO NOTHING", [secrets.token_hex(32)])
        row = cur.execute(f"SELECT value FROM {table} WHERE name = 'bus'").fetchone()
    finally:
        cur.close()
    assert row is not None
    return bytes.fromhex(str(row[0]))


def key_counts(cur: duckdb.DuckDBPyConnection, ids: list[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """Every replica's committed per-key counter deltas, summed: key id → (requests, successes, failures)."""
    where = "" if ids is None else "WHERE list_contains(?, key_id)"
    rows = cur.execute(
        f"SELECT key_id, sum(requests), sum(successes), sum(total_failures) FROM {CATALOG}.main.key_counts "
        f"{where} GROUP BY key_id",
        [] if ids is None else [ids],
    ).fetchall()
    return {k: (int(r or 0), int(s or 0), int(f or 0)) for k, r, s, f in rows}


def _fold_key_counts(cur: duckdb.DuckDBPyConnection) -> int:
    """One row per key instead of one per key and commit (readers sum either way)."""
    found = cur.execute(f"SELECT count(*), count(DISTINCT key_id) FROM {CATALOG}.main.key_counts").fetchone()
    if not found or found[0] <= found[1]:
        return 0
    cur.execute("BEGIN TRANSACTION")
    try:
        cur.execute(
            "CREATE OR REPLACE TEMP TABLE _key_counts AS SELECT key_id, sum(requests)::BIGINT, "
            "sum(successes)::BIGINT, sum(total_failures)::BIGINT, max(ts), NULL::VARCHAR "
            f"FROM {CATALOG}.main.key_counts GROUP BY key_id"
        )
        cur.execute(f"DELETE FROM {CATALOG}.main.key_counts")
        cur.execute(f"INSERT INTO {CATALOG}.main.key_counts SELECT * FROM _key_counts")
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            cur.execute("ROLLBACK")
        raise
    finally:
        cur.execute("DROP TABLE IF EXISTS _key_counts")
    return int(found[0]) - int(found[1])


def prune_journal_ids(cur: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Drop the journal ids older than JOURNAL_KEEP (the leader, now and then: a delete makes every concurrent
    commit into the table fail once, retried)."""
    cutoff = now - JOURNAL_KEEP
    found = cur.execute(f"SELECT count(*) FROM {CATALOG}.main.journal_commits WHERE ts < ?", [cutoff]).fetchone()
    if not found or not found[0]:
        return 0
    cur.execute(f"DELETE FROM {CATALOG}.main.journal_commits WHERE ts < ?", [cutoff])
    return int(found[0])


def _is_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already exists" in text or "duplicate key" in text or "conflict" in text


SNAPSHOT_KEEP = "1 hour"  # time travel kept; older snapshots are expired and their files deleted


def compact_lake(cur: duckdb.DuckDBPyConnection, rollup: Rollup, prune_journal: bool = False) -> dict[str, int]:
    """The leader's lake maintenance (writer thread): fold the rollup rows that several commits left for one key (and
    the per-key counter deltas), drop old journal ids (`prune_journal`), write inlined rows out to Parquet, merge small adjacent files, expire snapshots older than SNAPSHOT_KEEP and
    delete their files. Readers' cost per scan grows with inlined rows and files until this runs."""
    rows = cur.execute(
        f"SELECT DISTINCT bucket FROM (SELECT bucket FROM {preagg.COUNTERS} GROUP BY bucket, grain, a, av, b, bv "
        "HAVING count(*) > 1) ORDER BY 1 LIMIT 2000"
    ).fetchall()
    with rollup._lock:
        rollup._touched.update(b for (b,) in rows)
    folded = rollup.compact(cur)
    key_rows = _fold_key_counts(cur)
    pruned = prune_journal_ids(cur, datetime.now(UTC).replace(tzinfo=None)) if prune_journal else 0
    # Small commits (< 10 rows: most rollup deltas) are inlined into PostgreSQL, and every scan reads all of a
    # table's inlined rows (no filter pushdown): write them out, then merge the small files.
    flushed = cur.execute("SELECT count(*) FROM ducklake_flush_inlined_data(?)", [CATALOG]).fetchone()
    merged = cur.execute(
        "SELECT coalesce(sum(files_processed), 0), coalesce(sum(files_created), 0) "
        "FROM ducklake_merge_adjacent_files(?)",
        [CATALOG],
    ).fetchone()
    keep = f"now() - INTERVAL '{SNAPSHOT_KEEP}'"
    cur.execute(f"CALL ducklake_expire_snapshots('{CATALOG}', older_than => {keep})")
    cur.execute(f"CALL ducklake_cleanup_old_files('{CATALOG}', older_than => {keep})")
    return {
        "buckets": folded,
        "key_count_rows": key_rows,
        "journal_ids_pruned": pruned,
        "flushed_tables": int(flushed[0]) if flushed else 0,
        "merged_files": int(merged[0]) if merged else 0,
        "into_files": int(merged[1]) if merged else 0,
    }


class LakeStore(Store):
    """The cluster's store: the interface of `proxy_service.store.Store` (its constructor is not used)."""

    safe_schema = SAFE
    client_labels = LABELS

    def __init__(  # deliberately not Store.__init__: no DuckDB file
        self,
        cfg: ClusterConfig,
        init_lock: Callable[[], contextlib.AbstractContextManager[Any]],
        mirror_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.path = Path(cfg.lake_data)
        self._lock = threading.Lock()
        self._con = self._open(init_lock)
        if mirror_path is None:  # tools and tests: a private directory, removed at close
            self._mirror_dir: str | None = tempfile.mkdtemp(prefix="keyrack-mirror-")
            mirror_path = Path(self._mirror_dir) / "rollup.duckdb"
        else:
            self._mirror_dir = None
        self.mirror = mirror.Mirror(self._plain_cursor, CATALOG, mirror_path, META_SCHEMA)
        # Replica-local objects of the in-memory database (the safe views, the client labels) made again by
        # reopen() on a new connection: the gateway sets it once its storage is set up.
        self.after_reopen = None

    def reopen(self) -> None:
        """A new in-memory DuckDB with the lake and the state schema attached again. DuckDB invalidates a whole
        instance after an internal error, and an extension raises one when the catalog's PostgreSQL dies in the
        middle of a query: nothing works on the old instance again. Raises (and changes nothing) while PostgreSQL
        does not answer; cursors come from the new connection from then on (`generation`)."""
        con = connect(self.cfg)
        try:
            if self.after_reopen is not None:
                cur = con.cursor()
                try:
                    cur.execute(f"USE {CATALOG}")
                    cur.execute(f"SET search_path = '{SEARCH_PATH}'")
                    self.after_reopen(cur)
                finally:
                    cur.close()
        except BaseException:
            con.close()
            raise
        with self._lock:
            old, self._con = self._con, con
            self.generation += 1
        self.mirror.reset(self.generation)  # its file was attached to the old instance: a fresh one on the new
        # Never closed: closing it closes its cursors, and destroying one of an invalidated instance can abort the
        # process (store.py). It keeps its few PostgreSQL connections and its memory: a rare event's price.
        keep_invalidated(old)

    def _open(self, init_lock: Callable[[], contextlib.AbstractContextManager[Any]]) -> duckdb.DuckDBPyConnection:
        last: BaseException | None = None
        created = False
        for attempt in range(5):
            try:
                with init_lock():
                    con = connect(self.cfg, create=True)
                    try:
                        migrate(con)
                        self.secret = cluster_secret(con)
                    except BaseException:
                        con.close()
                        raise
                    return con
            except duckdb.Error as exc:
                last = exc
                if not created and missing_database(exc, self.cfg):  # the first start: Keyrack creates it
                    created = True
                    create_database(self.cfg)
                    continue
                if not _is_race(exc):
                    break
                time.sleep(0.2 * (attempt + 1))  # another replica is creating the same tables
        text = CONNINFO_PASSWORD.sub(r"\1***", str(last).splitlines()[0]) if last else "unknown error"
        raise LakeError(f"cannot open the lake at {mask_url(self.cfg.lake_catalog)}: {text}")

    def cursor(self, search_path: str = SEARCH_PATH) -> duckdb.DuckDBPyConnection:
        with self._lock:
            cur = self._con.cursor()
        cur.execute(f"USE {CATALOG}")
        cur.execute(f"SET search_path = '{search_path}'")  # each statement costs a catalog look-up: set it once
        return cur

    def _plain_cursor(self) -> duckdb.DuckDBPyConnection:
        """No USE / search path (each costs a catalog look-up): for SQL that names its catalogs."""
        with self._lock:
            return self._con.cursor()

    def read_cursor(self) -> duckdb.DuckDBPyConnection:
        """A reader's cursor: the rollup tables resolve to the mirror, brought to the lake's current snapshot first
        (exact); the lake's own tables when the mirror is not usable (not loaded yet — its thread loads it — or failed)."""
        if self.mirror.snapshot is None:
            self.mirror.start()
            return self.cursor()
        return self.cursor(READ_PATH if self.mirror.catch_up() else SEARCH_PATH)

    @contextlib.contextmanager
    def stats_reader(self) -> Iterator[tuple[duckdb.DuckDBPyConnection, StatsSource]]:
        """The stats queries' cursor: with a usable mirror, one whose search path holds the mirror only (every
        statement that can resolve a name in the lake's catalog opens a DuckLake transaction, a few catalog queries,
        even when the name resolves elsewhere), raw edges from the mirror, other raw rows named in the lake."""
        if self.mirror.snapshot is None:
            self.mirror.start()
            usable = False
        else:
            usable = self.mirror.catch_up()
        if usable:
            cur = self._plain_cursor()
            cur.execute(f"USE {mirror.DB}")
            cur.execute(f"SET search_path = '{mirror.SCHEMA}'")
            source = StatsSource(raw=f"{CATALOG}.main.requests", edges=self.mirror.edges)
        else:
            cur, source = self.cursor(), StatsSource()
        with closing(cur):
            yield cur, source

    def install_safe_views(self, cur: duckdb.DuckDBPyConnection) -> None:
        """User SQL's views, replica-local, with fully qualified bodies (a view binds in the reader's path)."""
        cur.execute(f"CREATE TABLE IF NOT EXISTS {LABELS} (client_id VARCHAR PRIMARY KEY, label VARCHAR)")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SAFE}")
        for name, body in SAFE_VIEWS.items():
            cur.execute(f"CREATE OR REPLACE VIEW {SAFE}.{name} AS {body}")

    def export_selects(self) -> dict[str, str]:
        """The snapshot's queries: unqualified, so the search path finds the lake tables and PostgreSQL's keys."""
        selects = {t: public_select(t).replace(f"FROM main.{t}", f"FROM {t}") for t in PUBLIC_TABLES}
        return {**selects, "keys": KEYS_SELECT}

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with closing(self.cursor()) as cur:
            yield cur

    def close(self) -> None:
        self.mirror.stop()
        with self._lock:
            self._con.close()
        if self._mirror_dir is not None:
            shutil.rmtree(self._mirror_dir, ignore_errors=True)
