"""Startup checks shared by every `keyrack` command: settings that fail in one line, the data directory, the
database file, the ports; plus the two facts every starter needs once: where a bind address is reached from
(0.0.0.0 → 127.0.0.1) and the Streamlit command line.

Every check raises `StartupError` with the one line the operator reads; `cli.py` turns it into click's
"Error: ..." and exit status 1. Nothing here imports the web stack or the database at module level, so a bad
setting is reported before the heavy imports.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy_service.keys import parse_key_list
from proxy_service.settings import Settings

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class StartupError(Exception):
    """A reason not to start, as the one line the operator reads."""


_CLI_NAMES = {"host": "--host", "port": "--port"}


def env_name(field_name: str) -> str:
    return f"KEYRACK_{field_name.upper()}"


def describe_validation(exc: ValidationError, cli: dict[str, str] | None = None) -> str:
    """One line per bad setting, named as the operator spells it (the env var, or the CLI option)."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else "settings"
        where = env_name(name) + (f" / {cli[name]}" if cli and name in cli else "")
        value = err.get("input")
        hidden = isinstance(value, dict) or name in Settings.secret_fields()  # never echo a secret back
        shown = "" if hidden else f" (got {str(value)[:80]!r})"
        lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{shown}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise StartupError(describe_validation(exc, _CLI_NAMES)) from None


def check_data_dir(path: Path) -> None:
    """The data directory must exist (or be creatable), be a directory, and be writable."""
    name = env_name("data_dir")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StartupError(f"{name}={path}: not a directory (a file is in the way).") from None
    except OSError as exc:
        raise StartupError(f"{name}={path}: cannot create it ({exc.strerror}).") from None
    if not path.is_dir():
        raise StartupError(f"{name}={path}: not a directory.")
    probe = path / f".keyrack-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"{name}={path}: not writable ({exc.strerror}).") from None
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
        raise StartupError(f"{env_name('host')} / --host {host!r}: cannot resolve ({exc.strerror}).") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        what = "is already in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
        raise StartupError(f"port {port} on {host} {what}: set {env_name('port')} or --port to a free port.") from None
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
