"""The calibration baseline for bench/proxy_throughput.py: the smallest useful Starlette proxy on the same stack
(uvicorn + httpx on the aiohttp transport), with no pool, no events and no auth. stack-notes.md measured 735 req/s
for such a proxy at wrk c=32; measuring it in the same run says how much of the gap is the machine's.

    python -m bench._minimal_proxy --port N --upstream URL
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import httpx
import uvicorn
from httpx_aiohttp import AiohttpTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(upstream: str, key: str = "bench-minimal-key-0001") -> Starlette:
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        transport = AiohttpTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200))
        state["client"] = httpx.AsyncClient(transport=transport, base_url=upstream, timeout=300)
        yield
        await state["client"].aclose()

    async def forward(request: Request) -> Response:
        body = await request.body()
        resp = await state["client"].post(
            request.url.path, content=body, headers={"content-type": "application/json", "x-goog-api-key": key}
        )
        return Response(resp.content, resp.status_code, media_type=resp.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("serve", nargs="?")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    args = ap.parse_args()
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
