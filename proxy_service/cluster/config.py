"""Cluster settings: the three that make a cluster, the replica id, and DSN masking.

`KEYRACK_REDIS_URL`, `KEYRACK_LAKE_CATALOG` and `KEYRACK_LAKE_DATA` all set = cluster mode; none set = the embedded
default (one process, one DuckDB file, the pool in memory); any other combination is a one-line startup error, so
a typo in one name never silently starts a lone replica that double-spends the quota.
"""

from __future__ import annotations

import importlib.util
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from proxy_service.settings import CONNINFO_PASSWORD, mask_url

CLUSTER_SETTINGS = ("redis_url", "lake_catalog", "lake_data")
_ENV = {name: f"KEYRACK_{name.upper()}" for name in (*CLUSTER_SETTINGS, "replica_id", "redis_prefix")}
_REPLICA_RE = re.compile(r"^[0-9A-Za-z_.:\-]{1,64}$")
# No spaces, quotes, braces or glob characters: the prefix starts every Redis key and the pub/sub channel name.
_PREFIX_RE = re.compile(r"^[0-9A-Za-z_.\-]{1,40}$")
DEFAULT_PREFIX = "keyrack"
_CATALOG_SCHEMES = ("postgresql", "postgres")
# What `pip install 'keyrack[cluster]'` adds (module names); the single-process default needs none of them.
CLUSTER_MODULES = ("redis", "duckdb_extensions", "duckdb_extension_ducklake", "duckdb_extension_postgres")
EXTRA_HINT = "pip install 'keyrack[cluster]'"


class ClusterConfigError(ValueError):
    """A cluster setting is missing or malformed, or the cluster extra is not installed; one line naming the
    variable or the extra."""


class ClusterStartError(Exception):
    """Redis or the lake cannot be reached at startup; one line, passwords masked."""


def missing_modules(s3: bool = False) -> list[str]:
    names = (*CLUSTER_MODULES, *(("duckdb_extension_httpfs",) if s3 else ()))
    return [name for name in names if _absent(name)]


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # a broken install counts as absent
        return True


@dataclass(frozen=True)
class ClusterConfig:
    redis_url: str
    lake_catalog: str  # a PostgreSQL URL (postgresql://user:pass@host:port/db)
    lake_data: str  # a directory every replica reaches, or s3://bucket/prefix
    replica_id: str
    commit_interval_s: float = 1.0
    max_waiting_rows: int = 100_000
    redis_prefix: str = DEFAULT_PREFIX  # every Redis key is `<prefix>:...`: two clusters can share one Redis
    # DuckDB's own caps for the lake connection (and the rollup mirror attached to it), as for the embedded file:
    # one analytics query must not take the replica's memory or cores.
    duckdb_memory_limit: str | None = None
    duckdb_threads: int | None = None

    @property
    def conninfo(self) -> str:
        """The catalog as a libpq keyword string (what DuckDB's postgres and ducklake extensions take)."""
        return pg_conninfo(self.lake_catalog)

    def masked(self) -> dict[str, str]:
        return {
            "redis": mask_url(self.redis_url),
            "catalog": mask_url(self.lake_catalog),
            "data": mask_url(self.lake_data),
            "replica": self.replica_id,
            "redis_prefix": self.redis_prefix,
        }


def secrets_of(url: str) -> list[str]:
    """The password in a URL (for the log scrubber)."""
    if "://" not in url:
        m = CONNINFO_PASSWORD.search(url)
        return [m.group(2).strip("'")] if m else []
    parts = urlsplit(url)
    out = [unquote(parts.password)] if parts.password else []
    out += [v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "secret")]
    return out


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pg_conninfo(url: str) -> str:
    """postgresql://user:pw@host:port/db?sslmode=... → "dbname=db host=host port=port user=user password=pw ..."."""
    parts = urlsplit(url)
    fields: dict[str, str] = {}
    if parts.path.strip("/"):
        fields["dbname"] = unquote(parts.path.strip("/"))
    if parts.hostname:
        fields["host"] = parts.hostname
    if parts.port:
        fields["port"] = str(parts.port)
    if parts.username:
        fields["user"] = unquote(parts.username)
    if parts.password:
        fields["password"] = unquote(parts.password)
    for k, v in parse_qsl(parts.query):
        fields[k] = v
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def from_settings(settings: Any) -> ClusterConfig | None:
    """The cluster configuration, or None for the embedded default. Raises ClusterConfigError (one line)."""
    values = {name: str(getattr(settings, name, "") or "").strip() for name in CLUSTER_SETTINGS}
    given = [name for name, v in values.items() if v]
    if not given:
        return None
    if len(given) < len(CLUSTER_SETTINGS):
        missing = [_ENV[n] for n in CLUSTER_SETTINGS if n not in given]
        raise ClusterConfigError(
            f"cluster mode needs all of KEYRACK_REDIS_URL, KEYRACK_LAKE_CATALOG and KEYRACK_LAKE_DATA: "
            f"{', '.join(_ENV[n] for n in given)} set but {', '.join(missing)} missing "
            f"(unset all three for the single-process default)"
        )
    redis_url = values["redis_url"]
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ClusterConfigError(
            f"{_ENV['redis_url']}={mask_url(redis_url)}: must be a redis:// URL such as redis://127.0.0.1:6379/0"
        )
    catalog = values["lake_catalog"]
    parts = urlsplit(catalog)
    if parts.scheme not in _CATALOG_SCHEMES or not parts.path.strip("/"):
        raise ClusterConfigError(
            f"{_ENV['lake_catalog']}={mask_url(catalog)}: must be a PostgreSQL URL with a database name such as "
            "postgresql://postgres@127.0.0.1:5432/keyrack"
        )
    data = values["lake_data"]
    scheme = urlsplit(data).scheme
    if scheme not in ("", "s3", "file") and not re.match(r"^[A-Za-z]:[\\/]", data):
        raise ClusterConfigError(
            f"{_ENV['lake_data']}={mask_url(data)}: must be a directory every replica reaches or an s3:// URL"
        )
    replica = str(getattr(settings, "replica_id", "") or "").strip()
    if not replica:
        replica = f"{socket.gethostname()}:{getattr(settings, 'port', 0)}"
    if not _REPLICA_RE.match(replica):
        raise ClusterConfigError(
            f"{_ENV['replica_id']}={replica[:80]!r}: 1-64 characters of letters, digits, '_', '.', ':' or '-'"
        )
    prefix = str(getattr(settings, "redis_prefix", DEFAULT_PREFIX) or "").strip()
    if not _PREFIX_RE.match(prefix):
        raise ClusterConfigError(
            f"{_ENV['redis_prefix']}={prefix[:80]!r}: 1-40 characters of letters, digits, '_', '.' or '-' "
            f"(each key is '<prefix>:...'; default {DEFAULT_PREFIX!r})"
        )
    missing = missing_modules(s3=scheme == "s3")
    if missing:
        raise ClusterConfigError(
            f"cluster mode needs the cluster extra: {EXTRA_HINT} (not installed: {', '.join(missing)})"
        )
    interval = float(getattr(settings, "lake_commit_interval_s", 1.0))
    waiting = int(getattr(settings, "lake_max_waiting_rows", 100_000))
    return ClusterConfig(
        redis_url,
        catalog,
        data,
        replica,
        interval,
        waiting,
        prefix,
        getattr(settings, "duckdb_memory_limit", None),
        getattr(settings, "duckdb_threads", None),
    )
