"""Startup checks shared by every `keyrack` command: settings that fail in one line, the data directory, the
database file, the ports; plus the two facts every starter needs once: where a bind address is reached from
(0.0.0.0 → 127.0.0.1) and the Streamlit command line.

Every check raises `StartupError` with the one line the operator reads; `cli.py` turns it into click's
"Error: ..." and exit status 1. Nothing here imports the web stack or the database at module level, so a bad
setting is reported before the heavy imports.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from proxy_service.envfile import OTHER_NAMES, PREFIX, given_names
from proxy_service.keys import parse_key_list
from proxy_service.settings import Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class StartupError(Exception):
    """A reason not to start, as the one line the operator reads."""


class SettingOption(click.Option):
    """A command-line option that stands for a setting (`--proxy-port` for KEYRACK_PORT in `keyrack run`): an error
    about the setting names the option of the command actually run."""

    def __init__(self, *args: Any, setting: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting


def cli_names() -> dict[str, str]:
    """Setting → the option that stands for it in the running `keyrack` command (none outside a command)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {p.setting: p.opts[0] for p in ctx.command.params if isinstance(p, SettingOption)}


def env_name(field_name: str) -> str:
    return f"KEYRACK_{field_name.upper()}"


def named(field_name: str) -> str:
    """A setting as the operator spells it: the variable, and the running command's option for it if it has one."""
    option = cli_names().get(field_name)
    return env_name(field_name) + (f" / {option}" if option else "")


def known_names() -> frozenset[str]:
    return frozenset(env_name(name) for name in Settings.model_fields) | OTHER_NAMES


def unknown_settings() -> list[tuple[str, str, str | None]]:
    """(name, where it is set, the nearest known name or None) for each KEYRACK_* name no part of Keyrack reads."""
    known = known_names()
    tails = sorted(name.removeprefix(PREFIX) for name in known)
    out = []
    for name, where in sorted(given_names().items()):
        if name.upper() in known:
            continue
        close = difflib.get_close_matches(name.upper().removeprefix(PREFIX), tails, n=1, cutoff=0.6)
        out.append((name, where, PREFIX + close[0] if close else None))
    return out


def unknown_setting_lines() -> list[str]:
    """One line per unknown KEYRACK_* name: "unknown setting <name>; did you mean <the nearest known name>? ..."."""
    return [
        f"unknown setting {name}"
        + (f"; did you mean {near}?" if near else "")
        + f" (set in {where}; ignored: .env.example lists every setting)"
        for name, where, near in unknown_settings()
    ]


def describe_validation(exc: ValidationError, cli: dict[str, str] | None = None) -> str:
    """One line per bad setting, named as the operator spells it (the env var, and the running command's option)."""
    cli = cli_names() if cli is None else cli
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "settings"
        where = env_name(name) + (f" / {cli[name]}" if name in cli else "")
        value = err.get("input")
        hidden = isinstance(value, dict) or name in Settings.secret_fields()  # never echo a secret back
        shown = "" if hidden else f" (got {str(value)[:80]!r})"
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise StartupError(describe_validation(exc)) from None


def check_data_dir(path: Path) -> None:
    """The data directory must exist (or be creatable), be a directory, and be writable."""
    name = f"{named('data_dir')} {path}" if cli_names().get("data_dir") else f"{env_name('data_dir')}={path}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StartupError(f"{name}: not a directory (a file is in the way).") from None
    except OSError as exc:
        raise StartupError(f"{name}: cannot create it ({exc.strerror}).") from None
    if not path.is_dir():
        raise StartupError(f"{name}: not a directory.")
    probe = path / f".keyrack-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"{name}: not writable ({exc.strerror}).") from None
    db = path / "keyrack.duckdb"
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise StartupError(f"{db}: the database file is not readable and writable by this user.")


def check_cluster(settings: Settings) -> None:
    """Cluster settings: all three or none (one line naming the variables); passwords never echoed."""
    from proxy_service.cluster.config import ClusterConfigError, from_settings

    try:
        from_settings(settings)
    except ClusterConfigError as exc:
        raise StartupError(str(exc)) from None


def check_tls(settings: Settings) -> None:
    """TLS settings: both files or neither, and a pair that loads (a certificate and its own private key), so a
    bad pair stops the start with one line instead of failing every handshake later."""
    import ssl

    cert, key = settings.tls_certfile, settings.tls_keyfile
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise StartupError(
            f"TLS needs both {env_name('tls_certfile')} and {env_name('tls_keyfile')} (only one is set)."
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError, its base class
        raise StartupError(f"TLS: {cert} and {key} are not a certificate and its private key ({exc.reason}).") from None
    except OSError as exc:
        raise StartupError(f"TLS: cannot read {exc.filename or cert}: {exc.strerror or exc}.") from None


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the Live API's WebSockets and for TLS, as `keyrack serve` runs them (tests serve the
    app with the same). The WebSocket protocol's own cap on a message sits just above the session's, so an
    oversized message reaches the session, which refuses it with its close code and reason."""
    options: dict[str, Any] = {
        "ws": "websockets-sansio",
        "ws_max_size": int(settings.live_max_frame_mb * 1024 * 1024) + 1024,
    }
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        options.update(ssl_certfile=str(settings.tls_certfile), ssl_keyfile=str(settings.tls_keyfile))
    return options


def database_error(db: Path, exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "lock" in text.lower():
        holder = text[text.find("(PID") :].split(")")[0] + ")" if "(PID" in text else ""
        return (
            f"{db} is in use by another process {holder}: is another Keyrack running on this data directory? "
            f"Stop it, or set {env_name('data_dir')} to another directory."
        ).replace("  ", " ")
    return f"cannot open {db}: {text}"


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a taken port is one clear line instead of a traceback."""
    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise StartupError(f"{named('host')} {host!r}: cannot resolve ({exc.strerror}).") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        what = "is already in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
        option = cli_names().get("port")
        how = f"{env_name('port')} or {option}" if option else env_name("port")
        raise StartupError(f"port {port} on {host} {what}: set {how} to a free port.") from None
    return sock


def port_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` now (a wildcard host is probed on loopback)."""
    host = "127.0.0.1" if host in WILDCARD_HOSTS else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def url_host(host: str) -> str:
    """The host to reach a server bound to `host` at (a wildcard bind is reached on loopback)."""
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def dashboard_app() -> Path | None:
    spec = importlib.util.find_spec("dashboard")
    if spec is None or not spec.origin:
        return None
    app = Path(spec.origin).parent / "app.py"
    return app if app.exists() else None


def streamlit_argv(app: Path, host: str, port: int) -> list[str]:
    """The Streamlit command line for the dashboard (what `keyrack dashboard` execs)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        # Keyrack's pages are declared by st.navigation in app.py; Streamlit's own page list (file names, drawn
        # from a pages/ folder before the script's first run) must never be painted, whatever folders exist.
        "--client.showSidebarNavigation",
        "false",
    ]


def real_keys_configured(settings: Settings) -> tuple[bool, str]:
    """Whether `keyrack run` should talk to the real upstream: keys in KEYRACK_API_KEYS or stored in the DB."""
    import duckdb

    if parse_key_list(settings.api_keys):
        return True, "Keys come from KEYRACK_API_KEYS."
    db = settings.db_path
    if not db.exists():
        return False, f"You have configured no upstream keys (KEYRACK_API_KEYS is empty and {db} does not exist)."
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise StartupError(database_error(db, exc)) from None
    try:
        n = con.execute("SELECT count(*) FROM keys").fetchone()[0]  # type: ignore[index]
    except duckdb.CatalogException:
        n = 0
    finally:
        con.close()
    if n:
        return True, f"{n} key(s) are stored in {db}."
    return False, f"You have configured no upstream keys (KEYRACK_API_KEYS is empty and {db} holds no keys)."
