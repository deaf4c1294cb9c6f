"""`keyrack serve`: the startup checks, then uvicorn on a socket bound beforehand, until SIGTERM/SIGINT."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from proxy_service import heap
from proxy_service.logs import setup_logging
from proxy_service.settings import ConfigError, is_loopback
from proxy_service.startup import (
    StartupError,
    bind_socket,
    check_cluster,
    check_data_dir,
    check_tls,
    database_error,
    load_settings,
    unknown_setting_lines,
    uvicorn_options,
)

log = logging.getLogger("keyrack.startup")


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Makes pandas look absent in the proxy process. The proxy never uses it, but DuckDB's parameter binding and
    pyarrow's array building import it when it is installed (for the dashboard), a large library for nothing
    (bench/memory.py's start-up breakdown shows what the proxy's imports weigh).
    Likewise httpx's command-line client (`httpx._main`): `import httpx` loads it, with rich and pygments, whenever
    those happen to be installed (memray's, in the dev extras): dozens of modules the proxy never runs; httpx
    falls back to a stub `httpx.main` when it is absent."""

    BLOCKED = ("pandas", "httpx._main")

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded in the proxy process)", name=name)
        return None


def without_pandas() -> None:
    """Install `_WithoutPandas` (pandas and httpx's command-line client) before the proxy's imports."""
    if "pandas" not in sys.modules and not any(isinstance(f, _WithoutPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _WithoutPandas())


# DuckDB's allocator (the jemalloc inside its wheel) gives freed pages back to the system 5 s after the free, and even
# then only as MADV_FREE pages, which stay in RSS until the kernel is short of memory. Every fold and checkpoint
# allocates and frees large buffers, so under steady traffic those pages never left: RSS that DuckDB itself no longer
# used. With no decay they go back at once, at some throughput cost (`python -m bench.memory --duckdb-baseline` runs DuckDB's
# defaults beside Keyrack's; bench/proxy_throughput.py measures the throughput). jemalloc reads this once,
# when DuckDB's library loads, so it is set before the first `import duckdb`; an operator's own value wins.
ALLOCATOR_ENV = "DUCKDB_JE_MALLOC_CONF"
ALLOCATOR_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"


def duckdb_allocator_conf() -> None:
    os.environ.setdefault(ALLOCATOR_ENV, ALLOCATOR_CONF)


# pyarrow's allocator. An embedded proxy never loads pyarrow (docs/ARCHITECTURE.md, "Memory"); a cluster replica
# does, for its writer's Arrow journals, and pyarrow's default pool is a mimalloc of its own: it keeps what a batch
# frees for later ones, outside glibc's heaps that `heap.trimmer` gives back every second. The system pool puts
# Arrow's buffers in those heaps. pyarrow reads this when it is first imported; an operator's own value wins.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def arrow_pool_conf() -> None:
    os.environ.setdefault(ARROW_POOL_ENV, "system")


def serve_proxy(host: str | None, port: int | None, warn_unknown: bool = True) -> None:
    """`keyrack serve`: check the configuration, bind, run uvicorn until SIGTERM/SIGINT, exit 0 after a clean stop.
    `warn_unknown`: log a warning per misspelt KEYRACK_* name (`keyrack run` has said it already for its proxy)."""
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = load_settings(**overrides)
    without_pandas()
    duckdb_allocator_conf()
    arrow_pool_conf()
    heap.limit_arenas()  # before uvicorn, DuckDB and the read workers start their threads
    setup_logging(settings.log_level)
    if warn_unknown:
        for line in unknown_setting_lines():
            log.warning("%s", line)
    os.umask(0o077)  # the database, its WAL, exports and dead letters hold keys: files 0600, directories 0700
    if not settings.access_tokens and not is_loopback(settings.host):
        raise StartupError(
            f"Refusing to bind {settings.host} without KEYRACK_ACCESS_TOKENS: anyone could spend your keys."
        )
    check_data_dir(settings.data_dir)
    check_cluster(settings)
    check_tls(settings)
    sock = bind_socket(settings.host, settings.port)

    import duckdb  # the heavy imports only once the configuration is known to be good
    import uvicorn

    from proxy_service.app import create_app

    settings.port = sock.getsockname()[1]  # the real port when 0 was asked for (logged at startup)
    try:
        app = create_app(settings)
    except ConfigError as exc:  # the effective config (saved values included) would open the proxy
        sock.close()
        raise StartupError(f"Refusing to start: {exc}") from None
    except (duckdb.Error, OSError) as exc:
        sock.close()
        raise StartupError(database_error(settings.db_path, exc)) from None
    except Exception as exc:
        from proxy_service.cluster.config import ClusterStartError

        if not isinstance(exc, ClusterStartError):
            raise
        sock.close()
        raise StartupError(str(exc)) from None
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        **uvicorn_options(settings),  # the Live API's WebSockets (surfaces/live.py), TLS when configured
        timeout_graceful_shutdown=60,
        # Longer than clients' and load balancers' idle timeouts (httpx 5 s, typical LBs 60 s), so the client side
        # always closes an idle connection first. With uvicorn's 5 s default a request sent just as the server
        # closes the idle connection gets a reset (seen in the soak: one ReadError in 6,470 calls).
        timeout_keep_alive=75,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with these handlers in place that
    # re-raise is a no-op and a graceful stop ends with exit status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    if not server.started:
        raise StartupError("the proxy did not start (see the log lines above).")
    from proxy_service.store import any_invalidated

    if any_invalidated():
        # Cursors of a DuckDB instance that was invalidated are kept alive (store.py): destroying them as the
        # interpreter ends could abort the process. Everything is flushed by now (the lifespan's shutdown ran).
        logging.shutdown()
        os._exit(0)
