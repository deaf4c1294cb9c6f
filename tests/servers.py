"""Run an ASGI app on a real uvicorn server in a background thread, for tests that use real HTTP clients."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

START_TIMEOUT_S = 60.0  # generous: a gateway starts in well under a second on a quiet machine, not at load 20
STOP_TIMEOUT_S = 120.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, for a server started as its own process (which must bind it itself: another
    process may take the port in between, so a caller that can pass a bound socket should, as `serve` does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, port: int = 0, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """Serve `app` on host:port (0 = a free port) and yield its base URL, e.g. "http://127.0.0.1:54321".

    The socket is bound before the server starts, so there is no race for the port. Extra keyword
    arguments go to `uvicorn.Config`. The server is stopped (`should_exit`) when the block ends.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "timeout_graceful_shutdown": 1,
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, **options))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced below instead of dying silently in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn server did not start: {failure[0]!r}" if failure else "uvicorn server did not start"
                )
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        # A generous deadline: at load 20 a gateway's shutdown (writer flush, background jobs) can take longer than
        # a quiet machine suggests, and a server still shutting down when the next test starts one collides with it
        # (its metrics collector is still registered). A server that never stops fails here, not in the next test.
        thread.join(STOP_TIMEOUT_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn server did not stop within {STOP_TIMEOUT_S:g} s")


@contextlib.contextmanager
def serve_gateway(settings: Any, scenario: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A fake upstream playing `scenario` and a gateway made from `settings` pointed at it, both served; yields the
    gateway's URL and its app."""
    from proxy_service.app import create_app
    from proxy_service.demo.fake_upstream import create_app as create_fake

    with serve(create_fake(scenario)) as upstream:
        settings.upstream_url = upstream
        app = create_app(settings)
        with serve(app, lifespan="on") as url:
            yield url, app
