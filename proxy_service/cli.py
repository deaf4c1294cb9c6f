"""The `keyrack` command."""

from __future__ import annotations

import sys

import click

from proxy_service.settings import Settings, is_loopback


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Keyrack: a gateway that spreads Gemini API traffic over a pool of keys."""


@main.command()
@click.option("--host", default=None, help="Bind address (default KEYRACK_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default KEYRACK_PORT or 8080).")
def serve(host: str | None, port: int | None) -> None:
    """Run the proxy (data plane + admin API)."""
    import uvicorn

    from proxy_service.app import create_app
    from proxy_service.logs import setup_logging

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    setup_logging(settings.log_level)
    if not settings.access_tokens and not is_loopback(settings.host):
        raise click.ClickException(
            f"Refusing to bind {settings.host} without KEYRACK_ACCESS_TOKENS: anyone could spend your keys."
        )
    app = create_app(settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="warning", access_log=False, timeout_graceful_shutdown=60
    )


@main.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Scenario JSON: projects, invalid keys, limits, latency, error rates, seed.",
)
def fake_upstream(host: str, port: int, scenario: str | None) -> None:
    """Run the simulated Gemini API."""
    from proxy_service.fake_upstream import run

    run(host, port, scenario)


if __name__ == "__main__":
    sys.exit(main())
