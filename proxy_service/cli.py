"""The `keyrack` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from proxy_service.demo.rhythm import DEFAULT_RATE
from proxy_service.envfile import env_setting
from proxy_service.startup import (
    SettingOption,
    StartupError,
    load_settings,
    streamlit_argv,
    unknown_setting_lines,
    url_host,
)

T = TypeVar("T")


def _checked(fn: Callable[..., T], *args: object) -> T:
    """Run a starter; a `StartupError` becomes click's one-line "Error: ..." and exit status 1."""
    try:
        return fn(*args)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _warn_unknown_settings() -> None:
    """A misspelt setting is ignored by the settings: say so, with the nearest known name (stderr)."""
    for line in unknown_setting_lines():
        click.secho(f"warning: {line}", err=True, fg="yellow")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keyrack", prog_name="keyrack", message="%(prog)s %(version)s")
def main() -> None:
    """Keyrack: a gateway that spreads Gemini API traffic over a pool of keys."""


@main.command()
@click.option(
    "--host", cls=SettingOption, setting="host", default=None, help="Bind address (default KEYRACK_HOST or 127.0.0.1)."
)
@click.option(
    "--port", cls=SettingOption, setting="port", type=int, default=None, help="Port (default KEYRACK_PORT or 8080)."
)
@click.option("--launched", is_flag=True, hidden=True, help="Started by `keyrack run`, which has warned already.")
def serve(host: str | None, port: int | None, launched: bool) -> None:
    """Run the proxy (data plane + admin API). SIGTERM/SIGINT: finish in-flight calls, flush events, exit 0."""
    from proxy_service.server import serve_proxy  # the web stack only for this command

    _checked(serve_proxy, host, port, not launched)


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
    from proxy_service.demo.fake_upstream import run

    run(host, port, scenario)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard bind address.")
@click.option("--port", type=int, default=8501, show_default=True, help="Dashboard port.")
@click.option(
    "--admin-url", default=None, help="Proxy admin URL (default KEYRACK_ADMIN_URL, else the proxy's host:port)."
)
def dashboard(host: str, port: int, admin_url: str | None) -> None:
    """Run the Streamlit dashboard; it reaches the proxy only through the admin API."""
    _warn_unknown_settings()
    settings = _checked(load_settings)  # a bad setting is one clear line, not a traceback
    env = dict(os.environ)
    if admin_url:
        env["KEYRACK_ADMIN_URL"] = admin_url
    elif not env_setting("KEYRACK_ADMIN_URL"):
        env["KEYRACK_ADMIN_URL"] = f"http://{url_host(settings.host)}:{settings.port}"
    if settings.admin_token and not env.get("KEYRACK_ADMIN_TOKEN"):
        env["KEYRACK_ADMIN_TOKEN"] = settings.admin_token
    from dashboard.hosts import PublicHostsError, parse_public_hosts, streamlit_flags

    try:
        public = parse_public_hosts(env_setting("KEYRACK_DASHBOARD_PUBLIC_HOSTS") or "")
    except PublicHostsError as exc:
        raise click.ClickException(str(exc)) from None
    server = Path(__file__).resolve().parent.parent / "dashboard" / "server.py"  # app.py behind the Host guard
    argv = streamlit_argv(server, host, port) + streamlit_flags(public)
    os.execvpe(sys.executable, argv, env)


def _launch_options(fn):  # type: ignore[no-untyped-def]
    options = [
        click.option(
            "--proxy-port",
            cls=SettingOption,
            setting="port",
            type=int,
            default=None,
            help="Proxy port (default KEYRACK_PORT or 8080).",
        ),
        click.option("--dashboard-port", type=int, default=8501, show_default=True, help="Dashboard port."),
        click.option("--upstream-port", type=int, default=8090, show_default=True, help="Demo fake upstream port."),
        click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard."),
        click.option(
            "--data-dir",
            cls=SettingOption,
            setting="data_dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Data directory (default KEYRACK_DATA_DIR or ./data; the demo uses <data dir>/demo).",
        ),
        click.option(
            "--rate",
            type=float,
            default=DEFAULT_RATE,
            show_default=True,
            help="Demo traffic, requests/s on average over a week (its history is written at the same rate).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.command()
@_launch_options
def run(
    proxy_port: int | None,
    dashboard_port: int,
    upstream_port: int,
    no_dashboard: bool,
    data_dir: Path | None,
    rate: float,
) -> None:
    """Run Keyrack: proxy + dashboard against Gemini, or the demo when no upstream keys are configured."""
    from proxy_service.supervisor import launch

    sys.exit(_checked(launch, None, proxy_port, dashboard_port, upstream_port, not no_dashboard, data_dir, rate))


@main.command()
@_launch_options
def demo(
    proxy_port: int | None,
    dashboard_port: int,
    upstream_port: int,
    no_dashboard: bool,
    data_dir: Path | None,
    rate: float,
) -> None:
    """Run the demo: fake Gemini + demo keys + proxy + generated traffic + dashboard."""
    from proxy_service.supervisor import launch

    sys.exit(_checked(launch, True, proxy_port, dashboard_port, upstream_port, not no_dashboard, data_dir, rate))


@main.command("dashboard-link")
@click.option(
    "--data-dir",
    cls=SettingOption,
    setting="data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory of the running `keyrack run` (default KEYRACK_DATA_DIR or ./data; the demo's is found too).",
)
def dashboard_link_command(data_dir: Path | None) -> None:
    """Print a new one-time sign-in link for the dashboard that `keyrack run` / `keyrack demo` started."""
    from proxy_service import dashboard_link

    _warn_unknown_settings()
    root = data_dir or _checked(load_settings).data_dir
    for where in (root, root / "demo"):
        found = dashboard_link.read_link_file(where)
        if found is not None:
            url, key = found
            click.echo(dashboard_link.sign_in_link(url, key))
            click.echo(f"(one-time, valid {dashboard_link.LINK_TTL_S // 60} min)", err=True)
            return
    raise click.ClickException(
        f"no dashboard started by `keyrack run` is running on {root} (no live {dashboard_link.LINK_FILE} there or "
        "in its demo/): start one with `keyrack run`, or sign in with the admin token."
    )


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for the Parquet files (default <data_dir>/exports; only when the proxy is stopped).",
)
@click.option("--url", default=None, help="The running proxy (default http://KEYRACK_HOST:KEYRACK_PORT).")
def snapshot(out: Path | None, url: str | None) -> None:
    """Write Parquet snapshots of requests, attempts, keys (without secrets) and error_logs.

    With the proxy stopped the database file is read directly; while the proxy runs (it then holds the file) the
    export is requested from it through POST /admin/api/export, which needs KEYRACK_ADMIN_TOKEN.
    """
    from proxy_service.analytics.snapshot import SnapshotError, snapshot_offline_or_online

    _warn_unknown_settings()
    settings = _checked(load_settings)
    host = url_host(settings.host)
    db_path, admin_token = settings.db_path, settings.admin_token
    demo_dir = settings.data_dir / "demo"
    if not db_path.exists() and (demo_dir / "keyrack.duckdb").exists():  # only the demo has run here: its data
        from proxy_service.demo import tokens

        db_path = demo_dir / "keyrack.duckdb"
        admin_token = admin_token or (tokens.load(demo_dir) or ("", ""))[0]
        click.echo(f"(the demo's data in {demo_dir})")
    try:
        result = snapshot_offline_or_online(db_path, out, url or f"http://{host}:{settings.port}", admin_token)
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from None
    for table, path in result["files"].items():
        click.echo(f"{table:<11} {result['rows'][table]:>12,} rows  {path}")
    click.echo(f"(via {result['via']})")


if __name__ == "__main__":
    sys.exit(main())
