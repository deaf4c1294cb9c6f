"""`keyrack serve` on granian instead of uvicorn, for bench/proxy_throughput.py's ASGI-server comparison only:
`python -m bench._granian_proxy serve --port N` (the same settings from the environment; one worker, uvloop,
HTTP/1, access log off: the same shape as the uvicorn server).
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette


def app() -> Starlette:
    """The factory granian's worker calls: the same app `keyrack serve` builds."""
    from proxy_service.app import create_app
    from proxy_service.logs import setup_logging
    from proxy_service.server import without_pandas
    from proxy_service.settings import Settings

    without_pandas()
    settings = Settings()
    setup_logging(settings.log_level)
    return create_app(settings)


def main(argv: list[str]) -> int:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    from proxy_service.settings import Settings

    if len(argv) != 3 or argv[0] != "serve" or argv[1] != "--port":
        print("usage: python -m bench._granian_proxy serve --port N", file=sys.stderr)
        return 2
    settings = Settings()
    Server(
        "bench._granian_proxy:app",
        address=settings.host,
        port=int(argv[2]),
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        factory=True,
        log_level=LogLevels.warning,
        log_access=False,
    ).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
