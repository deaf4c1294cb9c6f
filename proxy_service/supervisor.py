"""`keyrack run` / `keyrack demo`: the process supervisor behind the one command a newcomer types.

`keyrack run` decides by itself:
- upstream keys configured (KEYRACK_API_KEYS, or keys already stored in the database) → the proxy and the dashboard
  against the real Gemini API (KEYRACK_UPSTREAM_URL);
- no keys anywhere → the demo (SPEC §6): the fake upstream with demo keys in several projects (two of them invalid,
  limits tight enough that cooldowns happen), the proxy pointed at it, generated traffic, and the dashboard.

Children are the same `keyrack` subcommands the Docker image runs (`serve`, `dashboard`, `fake-upstream`), each in
its own process group with its output in `<data dir>/logs/`. Ctrl-C or SIGTERM stops the traffic, then the
dashboard, the proxy (SIGTERM: it finishes in-flight calls and flushes every event) and the fake upstream; a child
that does not stop in time is killed with its whole group. On Linux a child also gets SIGTERM if the launcher
itself dies (PR_SET_PDEATHSIG), so nothing is left behind.

The demo keeps its data apart from real data (`<data dir>/demo/`), so fake calls never mix with real statistics
and demo keys never make `keyrack run` believe real keys are configured.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from proxy_service import dashboard_link, heap
from proxy_service.dashboard_link import KEY_ENV as LINK_KEY_ENV
from proxy_service.demo import history
from proxy_service.demo.resource_use import WORKFLOW_CLIENT, Workflows
from proxy_service.demo.rhythm import DEFAULT_RATE
from proxy_service.demo.scenario import DEMO_TIERS, demo_pool
from proxy_service.demo.tokens import demo_tokens, derived_token
from proxy_service.demo.traffic import HABITS, Habit, TrafficGenerator
from proxy_service.keys import parse_key_list
from proxy_service.server import without_pandas
from proxy_service.startup import (
    StartupError,
    check_cluster,
    check_data_dir,
    dashboard_app,
    load_settings,
    port_free,
    real_keys_configured,
    unknown_setting_lines,
    unknown_settings,
    url_host,
)
from proxy_service.surfaces.common import client_id

_PR_SET_PDEATHSIG = 1
KEYS_ENV = "KEYRACK_API_KEYS"
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - exotic libc
    _prctl = None


def _child_setup() -> None:  # runs in the child between fork and exec: nothing but one syscall
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One subprocess in its own process group, writing its output straight to a log file (so it never depends on
    the launcher to log, even if the launcher dies); with `echo`, new lines of that file are shown in the terminal."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, echo: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
            log.flush()
            self._start_offset = log.tell()
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: the terminal's Ctrl-C reaches only the launcher
                preexec_fn=_child_setup,
            )
        self._echo: threading.Thread | None = None
        self.reported = False  # its exit was reported already (not again at shutdown)
        if echo:
            self._echo = threading.Thread(target=self._follow, name=f"echo-{name}", daemon=True)
            self._echo.start()

    @property
    def echoes(self) -> bool:
        return self._echo is not None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _follow(self) -> None:
        """Print the log file's new lines, prefixed with the child's name, until the child has exited."""
        with open(self.log_path, "rb") as f:
            f.seek(self._start_offset)
            partial = b""
            while True:
                running = self.alive()
                chunk = f.read()
                if chunk:
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    for line in lines:
                        print(f"{self.name:>9} │ {line.decode('utf-8', 'replace').rstrip()}", flush=True)
                elif not running:
                    return
                else:
                    time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 12) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._start_offset)
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        return "\n".join(f"    {line}" for line in lines[-n:])

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float, force: Callable[[], bool] = lambda: False) -> int | None:
        """SIGTERM the group, wait up to `timeout` (or until `force()`), then SIGKILL what is left."""
        if self.alive():
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline and not force():
                time.sleep(0.05)
        if self.alive():
            print(f"  {self.name} did not stop in time: killing it", flush=True)
        self.signal(signal.SIGKILL)  # also reaps any grandchildren left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self._echo is not None:
            self._echo.join(2)
        return self.proc.returncode


def dashboard_argv(host: str, port: int, admin_url: str) -> list[str]:
    """`keyrack dashboard`, the same subcommand the Docker image runs."""
    return [
        sys.executable,
        "-m",
        "proxy_service.cli",
        "dashboard",
        "--host",
        host,
        "--port",
        str(port),
        "--admin-url",
        admin_url,
    ]


# -------------------------------------------------------------------------------------------------------- launcher


@dataclass
class Options:
    demo: bool
    proxy_port: int | None = None
    dashboard_port: int = 8501
    upstream_port: int = 8090
    dashboard: bool = True
    data_dir: Path | None = None
    rate: float = DEFAULT_RATE
    reason: str = ""
    warnings: list[str] = field(default_factory=list)  # unknown KEYRACK_* names, for the banner


@dataclass
class Launcher:
    opts: Options
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    forced: threading.Event = field(default_factory=threading.Event)
    traffic: TrafficGenerator | None = None
    link_dir: Path | None = None  # where this run's dashboard-link.json is, removed on the way out
    demo: dict[str, Any] = field(default_factory=dict)  # what the demo runs, for the banner (_demo_facts)

    # -- signals -------------------------------------------------------------------------------------------------
    def _on_signal(self, sig: int, _frame: Any) -> None:
        if self.stopping.is_set():
            self.forced.set()
            return
        self.stopping.set()
        message = f"\n{signal.Signals(sig).name}: stopping Keyrack (Ctrl-C again to stop at once)…\n"
        with contextlib.suppress(OSError, ValueError):  # os.write: print() is not reentrant in a signal handler
            os.write(sys.stdout.fileno(), message.encode())

    def _install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _start(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, echo: bool = False) -> Child:
        child = Child(name, argv, env, log_dir / f"{name}.log", echo=echo)
        self.children.append(child)
        return child

    def _wait_http(self, child: Child, url: str, timeout: float) -> bool:
        """Poll `url` until it answers 200; False on timeout or stop. Raises if the child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping.is_set():
            if not child.alive():
                child.reported = True
                if child.echoes:  # its output, the reason included, is on the terminal already: not twice
                    raise StartupError(
                        f"{child.name} exited with status {child.proc.returncode} while starting (its output is "
                        f"above; full log: {child.log_path})"
                    )
                raise StartupError(
                    f"{child.name} exited with status {child.proc.returncode} while starting:\n{child.tail()}\n"
                    f"  (full log: {child.log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return True
            time.sleep(0.2)
        return False

    def shutdown(self) -> None:
        if self.traffic is not None:
            self.traffic.stop(grace=3.0)
        timeouts = {"dashboard": 10.0, "proxy": 70.0, "upstream": 10.0}
        for child in sorted(self.children, key=lambda c: list(timeouts).index(c.name) if c.name in timeouts else 9):
            code = child.stop(timeouts.get(child.name, 10.0), force=self.forced.is_set)
            if child.name == "proxy" and code not in (0, None) and not child.reported:
                print(f"  proxy exited with status {code}; see {child.log_path}", flush=True)
        self.children.clear()
        if self.link_dir is not None:
            dashboard_link.remove_link_file(self.link_dir)

    # -- the run ---------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self._install_signals()
        try:
            return self._run()
        finally:
            self.shutdown()

    def _run(self) -> int:
        without_pandas()  # Arrow would import it to write the demo history, a slow import for nothing
        opts = self.opts
        base = load_settings()
        check_cluster(base)  # before any child: the proxy would refuse the same way, its line shown twice
        root = (opts.data_dir or base.data_dir).resolve()
        data_dir = root / "demo" if opts.demo else root
        check_data_dir(data_dir)
        log_dir = data_dir / "logs"
        host = "127.0.0.1" if opts.demo else base.host
        proxy_port = opts.proxy_port if opts.proxy_port is not None else base.port
        app = dashboard_app()
        with_dashboard = opts.dashboard and app is not None
        port_from = "--proxy-port" if opts.proxy_port is not None else "KEYRACK_PORT / --proxy-port"
        ports = {f"proxy ({port_from})": proxy_port}
        if with_dashboard:
            ports["dashboard (--dashboard-port)"] = opts.dashboard_port
        if opts.demo:
            ports["fake upstream (--upstream-port)"] = opts.upstream_port
        for what, port in ports.items():
            if not port_free(host, port):
                raise StartupError(f"port {port} for the {what} is already in use: choose another one.")

        if base.tls_certfile is not None or base.tls_keyfile is not None:
            # This launcher reaches its proxy (readiness, the dashboard's admin client) over loopback HTTP.
            raise StartupError(
                "KEYRACK_TLS_CERTFILE / KEYRACK_TLS_KEYFILE are served by `keyrack serve` (and the Docker image); "
                "`keyrack run` talks to its proxy over plain HTTP: unset them here, or run `keyrack serve`."
            )
        kept = demo_tokens(data_dir) if opts.demo else None  # the demo's tokens stay the same across runs
        admin_token = base.admin_token or (kept[0] if kept else "kra_" + secrets.token_urlsafe(18))
        client_token = base.access_tokens[0] if base.access_tokens else None
        env = {k: v for k, v in os.environ.items() if (k != "KEYRACK_API_KEYS" or not opts.demo) and k != LINK_KEY_ENV}
        env.update({"KEYRACK_DATA_DIR": str(data_dir), "KEYRACK_ADMIN_TOKEN": admin_token, "PYTHONUNBUFFERED": "1"})
        demo_clients: dict[str, Habit] = {}
        if opts.demo:
            client_token = client_token or (kept[1] if kept else "krc_demo_" + secrets.token_urlsafe(12))
            # Several clients with different habits, one token each, labelled (the first keeps the banner's token);
            # the others follow from the kept one, so every demo client keeps its id (and label) across runs.
            demo_clients = {client_token: HABITS[0]}
            demo_clients.update({derived_token(client_token, h.name): h for h in HABITS[1:]})
            labels = {client_id(t): h.name for t, h in demo_clients.items()}
            api_keys, scenario = demo_pool()
            scenario_path = data_dir / "fake-upstream.json"
            scenario_path.write_text(json.dumps(scenario, indent=2))
            upstream_url = f"http://127.0.0.1:{opts.upstream_port}"
            env.update(
                {
                    "KEYRACK_API_KEYS": api_keys,
                    "KEYRACK_UPSTREAM_URL": upstream_url,
                    "KEYRACK_ACCESS_TOKENS": ",".join(demo_clients),
                    "KEYRACK_CLIENT_LABELS": json.dumps(labels),
                    "KEYRACK_PROJECT_TIERS": env.get("KEYRACK_PROJECT_TIERS", json.dumps(DEMO_TIERS)),
                    "KEYRACK_HOST": host,
                    "KEYRACK_OUTBOUND_PROXY": "",  # the fake upstream is local
                    "KEYRACK_REQUEST_TIMEOUT_S": env.get("KEYRACK_REQUEST_TIMEOUT_S", "6"),
                }
            )
            self.demo = _demo_facts(api_keys, scenario, len(demo_clients), upstream_url)
            if opts.rate > 0:  # the live demo's past (same clients, keys, mix and rate), written on the first start
                self._write_history(data_dir, opts.rate, labels, api_keys, scenario)
            upstream = self._start(
                "upstream",
                [
                    sys.executable,
                    "-m",
                    "proxy_service.cli",
                    "fake-upstream",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(opts.upstream_port),
                    "--scenario",
                    str(scenario_path),
                ],
                env,
                log_dir,
            )
            if not self._wait_http(upstream, f"{upstream_url}/_fake/stats", 30):
                raise StartupError(f"the fake upstream did not start in 30 s; see {upstream.log_path}")

        # This process has DuckDB loaded (the relay's imports, the key count, the demo history). The kernel keeps a
        # page that two processes map, so the proxy could not give back the library pages this one touched
        # (heap.library_reclaimer): give them back first. The supervisor runs no DuckDB code after this.
        reclaim = heap.library_reclaimer()
        if reclaim is not None:
            reclaim()
        proxy_url = f"http://{url_host(host)}:{proxy_port}"
        serve = [sys.executable, "-m", "proxy_service.cli", "serve", "--launched"]  # this launcher warned already
        proxy = self._start(
            "proxy",
            [*serve, "--host", host, "--port", str(proxy_port)],
            env,
            log_dir,
            echo=True,
        )
        if not self._wait_http(proxy, f"{proxy_url}/readyz", 60):
            if self.stopping.is_set():
                return 0
            raise StartupError(f"the proxy did not become ready in 60 s; see {proxy.log_path}")

        if opts.demo and opts.rate > 0:  # traffic first: the dashboard has data by the time it opens
            # Files, caches and Live sessions come from one of the demo's clients (Explore: client × resource).
            flows_token = next((t for t, h in demo_clients.items() if h.name == WORKFLOW_CLIENT), client_token or "")
            self.traffic = TrafficGenerator(
                proxy_url,
                client_token or "",
                rate=opts.rate,
                clients=demo_clients,
                rhythmic=True,
                workflows=Workflows(proxy_url, flows_token),
            )
            self.traffic.start()

        dashboard_url = sign_in = None
        if with_dashboard:
            dashboard_url = f"http://127.0.0.1:{opts.dashboard_port}"
            # The dashboard signs nobody in by itself: the banner's one-time link does (proxy_service/dashboard_link).
            # Its key goes to the dashboard only, and to a 0600 file for `keyrack dashboard-link` while the run lasts.
            link_key = dashboard_link.new_key()
            self.link_dir = data_dir
            dashboard_link.write_link_file(data_dir, dashboard_url, link_key)
            dash_env = {**env, "KEYRACK_ADMIN_URL": f"http://127.0.0.1:{proxy_port}", LINK_KEY_ENV: link_key}
            dash = self._start(
                "dashboard",
                dashboard_argv("127.0.0.1", opts.dashboard_port, dash_env["KEYRACK_ADMIN_URL"]),
                dash_env,
                log_dir,
            )
            if not self._wait_http(dash, f"{dashboard_url}/_stcore/health", 60) and not self.stopping.is_set():
                print(f"  the dashboard is slow to start; it will be at {dashboard_url} (log: {dash.log_path})")
            sign_in = dashboard_link.sign_in_link(dashboard_url, link_key)  # minted now: its minutes start here

        if self.stopping.is_set():
            return 0
        self._banner(proxy_url, sign_in, admin_token, client_token, data_dir, log_dir, app is None)
        return self._supervise()

    def _write_history(
        self, data_dir: Path, rate: float, labels: dict[str | None, str], api_keys: str, scenario: dict[str, Any]
    ) -> None:
        pool = history.pool_of(api_keys, scenario["invalid_keys"], {name: cid for cid, name in labels.items() if cid})
        started = time.perf_counter()
        calls = history.backfill(data_dir / "keyrack.duckdb", rate, pool)
        if calls:
            print(
                f"  demo history: {calls:,} calls over {history.DAYS} days written in "
                f"{time.perf_counter() - started:.1f} s (first start only; the proxy rolls them up in the background)",
                flush=True,
            )

    def _supervise(self) -> int:
        last_status = time.monotonic()
        while not self.stopping.wait(0.5):
            for child in self.children:
                if not child.alive():
                    print(
                        f"\n{child.name} exited unexpectedly (status {child.proc.returncode}):\n{child.tail()}\n"
                        f"  (full log: {child.log_path}) — stopping everything.",
                        flush=True,
                    )
                    return 1
            if self.traffic is not None and time.monotonic() - last_status >= 30:
                last_status = time.monotonic()
                print(f"demo traffic: {self.traffic.summary()}", flush=True)
        return 0

    def _banner(
        self,
        proxy_url: str,
        sign_in: str | None,
        admin_token: str,
        client_token: str | None,
        data_dir: Path,
        log_dir: Path,
        no_dashboard_app: bool,
    ) -> None:
        opts = self.opts
        token = client_token or "any-token"
        lines = [""]
        if opts.demo:
            d = self.demo
            what = (
                f"Keyrack DEMO is running. {opts.reason} The demo's proxy gets {d['keys']} fake keys of its own (as "
                f"its KEYRACK_API_KEYS) in {d['projects']} projects ({d['revoked']} of the keys revoked, in "
                f"{d['revoked_projects']}), a simulated Gemini API at {d['upstream']} with tight rate limits, and "
                + (
                    f"{d['clients']} demo clients sending about {opts.rate:g} requests/s (more in the afternoon, "
                    "less at night and at weekends)."
                    if opts.rate > 0
                    else "no generated traffic (--rate 0)."
                )
            )
            lines += textwrap.wrap(" ".join(what.split()), 116)
            lines.append("To use your real keys: put KEYRACK_API_KEYS in .env (see .env.example) and `make run` again.")
        else:
            lines.append(f"Keyrack is running against {load_settings().upstream_url}. {opts.reason}")
        for warning in opts.warnings:  # said at the start too, but that line has scrolled away by now
            lines += textwrap.wrap(f"Warning: {warning}", 116, subsequent_indent="  ")
        lines.append("")
        if sign_in:
            lines.append(f"  Dashboard     {sign_in}")
            lines.append(
                f"                (a one-time sign-in link, valid {dashboard_link.LINK_TTL_S // 60} min; another: "
                "`keyrack dashboard-link`; or sign in with the admin token below)"
            )
        elif no_dashboard_app and opts.dashboard:
            lines.append("  Dashboard     not started: dashboard/app.py is not available in this install")
        else:
            lines.append("  Dashboard     not started (--no-dashboard)")
        lines.append(f"  Proxy         {proxy_url}")
        lines.append(f"  Admin token   {admin_token}")
        if client_token:
            lines.append(f"  Client token  {client_token}")
        else:
            lines.append(
                "  Client token  none needed: KEYRACK_ACCESS_TOKENS is empty, the proxy is open to this machine"
            )
        lines.append(f"  Data          {data_dir / 'keyrack.duckdb'}   logs: {log_dir}/")
        lines += [
            "",
            "Try it with curl:",
            f'  curl -s "{proxy_url}/v1beta/models/gemini-2.5-flash:generateContent" \\',
            f'    -H "x-goog-api-key: {token}" -H "content-type: application/json" \\',
            """    -d '{"contents":[{"parts":[{"text":"Hello"}]}]}'""",
            "",
            "or with google-genai (pip install google-genai):",
            "  from google import genai",
            "  from google.genai import types",
            f'  client = genai.Client(api_key="{token}",',
            f'                        http_options=types.HttpOptions(base_url="{proxy_url}"))',
            '  print(client.models.generate_content(model="gemini-2.5-flash", contents="Hello").text)',
            "",
            "Metrics: " + f"{proxy_url}/metrics    Stop: Ctrl-C",
            "",
        ]
        print("\n".join(lines), flush=True)


def _demo_facts(api_keys: str, scenario: dict[str, Any], clients: int, upstream: str) -> dict[str, Any]:
    """What the demo runs, counted from its pool (the banner states it as the proxy's startup line does)."""
    specs = parse_key_list(api_keys)
    invalid = set(scenario["invalid_keys"])
    revoked = sorted({k.project or "" for k in specs if k.secret in invalid})
    return {
        "keys": len(specs),
        "projects": len({k.project for k in specs}),
        "revoked": sum(k.secret in invalid for k in specs),
        "revoked_projects": ", ".join(f"project {p}" for p in revoked),
        "clients": clients,
        "upstream": upstream,
    }


def launch(
    demo: bool | None,
    proxy_port: int | None,
    dashboard_port: int,
    upstream_port: int,
    dashboard: bool,
    data_dir: Path | None,
    rate: float,
) -> int:
    """`keyrack run` (demo=None: decide) and `keyrack demo` (demo=True)."""
    reason = ""
    warnings = unknown_setting_lines()
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    if demo is None:
        settings = load_settings(**({"data_dir": data_dir} if data_dir else {}))
        real, reason = real_keys_configured(settings)
        demo = not real
        meant_keys = [name for name, _where, near in unknown_settings() if near == KEYS_ENV]
        if demo and meant_keys:  # keys were meant: the demo in their place would look like a working gateway
            raise StartupError(
                f"not starting the demo: {KEYS_ENV} is empty but {meant_keys[0]} is set, which is not a setting "
                f"(did you mean {KEYS_ENV}?). Rename it to use your keys, or run `keyrack demo` for the demo."
            )
    opts = Options(
        demo=demo,
        proxy_port=proxy_port,
        dashboard_port=dashboard_port,
        upstream_port=upstream_port,
        dashboard=dashboard,
        data_dir=data_dir,
        rate=rate,
        reason=reason,
        warnings=warnings,
    )
    return Launcher(opts).run()
