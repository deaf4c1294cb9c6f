"""`keyrack serve` with the upstream client on plain httpx (its default transport) instead of the aiohttp one.

Only for bench/proxy_throughput.py's transport comparison: `python -m bench._plain_httpx_proxy serve --port N`.
"""

from __future__ import annotations

import sys

import httpx

from proxy_service import app as app_module
from proxy_service.settings import Config


def build_plain_client(config: Config) -> httpx.AsyncClient:
    timeout = httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=config.upstream_url, timeout=timeout, limits=limits, trust_env=False)


app_module.build_client = build_plain_client  # type: ignore[assignment]

if __name__ == "__main__":
    from proxy_service.cli import main

    sys.exit(main())
