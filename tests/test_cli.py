"""The `keyrack` command as a user runs it: the demo from one command, `keyrack run` choosing between the demo and
the real upstream, and `keyrack serve` refusing bad startup configuration with one clear line and a non-zero exit.
Everything runs as real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
from prometheus_client.parser import text_string_to_metric_families

from proxy_service.demo import tokens
from proxy_service.demo.scenario import demo_pool
from proxy_service.keys import key_id
from proxy_service.settings import Settings
from proxy_service.startup import real_keys_configured
from proxy_service.store import Store
from tests.conftest import P1_A, P2_A, SCENARIO, Upstream
from tests.reliability.harness import KEYRACK, clean_env, free_port, query, start, start_proxy, wait_http

# -- helpers ----------------------------------------------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def parent_of(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def requests_total(proxy_url: str) -> float:
    text = httpx.get(f"{proxy_url}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "keyrack_requests"
        for s in fam.samples
        if s.name == "keyrack_requests_total"
    )


def serve_fails(tmp_path: Path, *args: str, **settings: str) -> str:
    """Run `keyrack serve` expecting a refusal; return its output (stdout + stderr)."""
    res = subprocess.run(
        [*KEYRACK, "serve", *args], env=clean_env(**settings), cwd=tmp_path, capture_output=True, timeout=30
    )
    out = (res.stdout + res.stderr).decode()
    assert res.returncode != 0, f"serve should have refused to start:\n{out}"
    assert "Traceback" not in out, out
    error_lines = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, out
    return error_lines[0]


# -- the demo ---------------------------------------------------------------------------------------------------------


def test_demo_starts_and_stops_cleanly(tmp_path: Path) -> None:
    proxy_port, dash_port, up_port = free_port(), free_port(), free_port()
    args = [
        "demo",
        "--proxy-port",
        str(proxy_port),
        "--dashboard-port",
        str(dash_port),
        "--upstream-port",
        str(up_port),
        "--data-dir",
        str(tmp_path / "data"),
        "--rate",
        "0.05",  # a small history (the first start writes it); the first burst of traffic comes within 20 s
    ]
    env = clean_env(KEYRACK_RECHEK_INTERVAL_S="60")  # a misspelt setting: warned at the start and in the banner
    launcher = start(args, env, tmp_path / "launcher.out", cwd=tmp_path)
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_http(f"{proxy_url}/readyz", launcher)
        deadline = time.monotonic() + 90  # the generated traffic lands within seconds (a loaded machine: more)
        while requests_total(proxy_url) < 5:
            assert time.monotonic() < deadline, "no demo traffic reached the proxy"
            time.sleep(0.3)
        banner = launcher.wait_for(r"Admin token +(\S+)\n +Client token +(\S+)")
        admin_token, client_token = banner.group(1), banner.group(2)
        assert f"Proxy         {proxy_url}" in launcher.log()
        typo = "unknown setting KEYRACK_RECHEK_INTERVAL_S; did you mean KEYRACK_RECHECK_INTERVAL_S?"
        assert launcher.log().count(typo) == 2, "once at the start, once in the banner (not again from the proxy)"
        assert f"warning: {typo}" in launcher.log() and f"Warning: {typo}" in launcher.log()
        assert "google-genai" in launcher.log() and "curl -s" in launcher.log()
        children = descendants(launcher.pid)  # the services and their own helpers (the proxy's forecast worker)
        expected = 3 if "Dashboard     http" in launcher.log() else 2
        direct = [pid for pid in children if parent_of(pid) == launcher.pid]
        assert len(direct) == expected, "fake upstream, proxy and (when dashboard/app.py exists) the dashboard"
        # The client token printed for the user works.
        ok = httpx.post(
            f"{proxy_url}/v1beta/models/gemini-2.5-flash:countTokens",
            json={"contents": [{"parts": [{"text": "hello"}]}]},
            headers={"x-goog-api-key": client_token},
        )
        assert ok.status_code == 200, ok.text
    finally:
        code = launcher.stop(signal.SIGINT, timeout=30)
    out = launcher.log()
    assert code == 0, out[-3000:]
    assert "event=shutdown" in out and "unwritten=0" in out
    leftovers = [pid for pid in children if alive(pid)]
    assert not leftovers, f"orphan processes after Ctrl-C: {leftovers}"

    db = tmp_path / "data" / "demo" / "keyrack.duckdb"
    flushed = int(re.search(r"flushed_requests=(\d+)", out).group(1))  # type: ignore[union-attr]
    rows, backfilled = query(
        db,
        "SELECT count(*) FILTER (request_id NOT LIKE 'demo-%'), count(*) FILTER (request_id LIKE 'demo-%') FROM requests",
    )[0]
    assert rows >= 5 and rows == flushed
    # The demo's past: written before the proxy started, with the live demo's clients and keys.
    assert backfilled > 10_000 and "demo history:" in out
    live_clients = {
        r[0] for r in query(db, "SELECT DISTINCT client_id FROM requests WHERE request_id NOT LIKE 'demo-%'")
    }
    past_clients = {r[0] for r in query(db, "SELECT DISTINCT client_id FROM requests WHERE request_id LIKE 'demo-%'")}
    assert live_clients - {None} <= past_clients
    keys = {r[0] for r in query(db, "SELECT key_id FROM keys WHERE project <> 'legacy'")}  # all but the revoked
    assert {r[0] for r in query(db, "SELECT DISTINCT key_id FROM attempts WHERE request_id LIKE 'demo-%'")} == keys
    # The admin token went to the terminal only, never to a log file.
    for log in (tmp_path / "data" / "demo" / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert admin_token not in text and client_token not in text, log.name
    # The tokens are kept for the next run (0600), and the first snapshot was written at start.
    kept = tmp_path / "data" / "demo" / "tokens.json"
    assert tokens.load(kept.parent) == (admin_token, client_token) and kept.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data" / "demo" / "exports" / "requests.parquet").exists()
    # `keyrack snapshot` finds the demo's data (only the demo ran here) and `--version` answers.
    res = subprocess.run(
        [*KEYRACK, "snapshot"],
        env=clean_env(KEYRACK_DATA_DIR=str(tmp_path / "data")),
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0 and b"demo" in res.stdout and b"(via file)" in res.stdout, res.stdout + res.stderr
    version = subprocess.run([*KEYRACK, "--version"], capture_output=True, timeout=30)
    assert re.fullmatch(rb"keyrack \d+\.\d+\.\d+\s*", version.stdout), version.stdout


def test_demo_tokens_are_kept_private_and_reused(tmp_path: Path) -> None:
    first = tokens.demo_tokens(tmp_path)
    assert first == tokens.demo_tokens(tmp_path) == tokens.load(tmp_path)
    assert (tmp_path / tokens.TOKENS_FILE).stat().st_mode & 0o777 == 0o600
    (tmp_path / tokens.TOKENS_FILE).write_text("{not json")
    assert tokens.load(tmp_path) is None and tokens.demo_tokens(tmp_path) != first  # a damaged file: new tokens


def test_run_chooses_the_demo_only_without_keys(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert real_keys_configured(settings)[0] is False  # no database yet
    Store(settings.db_path).close()
    assert real_keys_configured(settings)[0] is False  # a database without keys
    con = duckdb.connect(str(settings.db_path))
    con.execute("INSERT INTO keys (key_id, secret, status) VALUES (?, 'AIza-test-secret', 'active')", [key_id("x")])
    con.close()
    real, reason = real_keys_configured(settings)
    assert real and "1 key(s)" in reason
    with_env = Settings(_env_file=None, data_dir=tmp_path / "other", api_keys=f"p1:{P1_A}")  # type: ignore[call-arg]
    assert real_keys_configured(with_env) == (True, "Keys come from KEYRACK_API_KEYS.")


def test_run_with_keys_serves_the_configured_upstream_and_children_die_with_it(
    tmp_path: Path, start_upstream: Callable[..., Upstream]
) -> None:
    """Real mode: no fake upstream, no traffic. Then SIGKILL of the launcher itself (no cleanup possible) still
    leaves nothing behind: the children get SIGTERM when their parent dies, so the proxy flushes and exits."""
    upstream = start_upstream(SCENARIO)
    proxy_port = free_port()
    env = clean_env(api_keys=f"p1:{P1_A},p2:{P2_A}", upstream_url=upstream.url, admin_token="admin-token-for-run")
    launcher = start(
        ["run", "--no-dashboard", "--proxy-port", str(proxy_port), "--data-dir", str(tmp_path / "d")],
        env,
        tmp_path / "run.out",
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{proxy_port}/readyz", launcher)
        launcher.wait_for("Stop: Ctrl-C")
        children = descendants(launcher.pid)  # the proxy and its own workers (SQL)
        launched = {p for p in children if parent_of(p) == launcher.pid}
        assert len(launched) == 1, "the proxy only: no fake upstream, no dashboard"
        time.sleep(1.0)  # an absence cannot be polled for: give demo traffic a second to show up
        assert upstream.stats()["requests"] == 0, "no demo traffic against a real upstream"
        resp = httpx.post(
            f"http://127.0.0.1:{proxy_port}/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
        assert resp.status_code == 200  # no access tokens: open on localhost
    finally:
        launcher.proc.kill()
        launcher.proc.wait()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in children):
        assert time.monotonic() < deadline, "children outlived a killed launcher"
        time.sleep(0.1)
    out = launcher.log()
    assert "DEMO" not in out and f"running against {upstream.url}" in out
    assert "admin-token-for-run" in out  # shown to the operator in the terminal…
    proxy_log = (tmp_path / "d" / "logs" / "proxy.log").read_text()
    assert "admin-token-for-run" not in proxy_log  # …never logged
    # The proxy got SIGTERM, not SIGKILL: it flushed and closed the database cleanly.
    assert "event=shutdown" in proxy_log and "flushed_requests=1 " in proxy_log
    assert not (tmp_path / "d" / "keyrack.duckdb.wal").exists()
    assert query(tmp_path / "d" / "keyrack.duckdb", "SELECT count(*) FROM requests")[0][0] == 1


def test_demo_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run(
            [*KEYRACK, "demo", "--no-dashboard", "--proxy-port", str(port), "--data-dir", str(tmp_path)],
            env=clean_env(),
            cwd=tmp_path,
            capture_output=True,
            timeout=30,
        )
        from_env = subprocess.run(  # the port came from KEYRACK_PORT: the line names both ways to change it
            [*KEYRACK, "demo", "--no-dashboard", "--data-dir", str(tmp_path)],
            env=clean_env(port=str(port)),
            cwd=tmp_path,
            capture_output=True,
            timeout=30,
        )
    assert res.returncode == 1
    assert f"port {port} for the proxy (--proxy-port) is already in use" in res.stderr.decode()
    assert f"port {port} for the proxy (KEYRACK_PORT / --proxy-port) is already in use" in from_env.stderr.decode()


def test_demo_pool_has_projects_invalid_keys_and_tight_limits() -> None:
    api_keys, scenario = demo_pool()
    keys = api_keys.split(",")
    assert len(scenario["projects"]) == 5 and all(len(k) == 2 for k in scenario["projects"].values())
    assert len(scenario["invalid_keys"]) == 2 and len(keys) == 12
    assert all(2 <= lim["rpm"] <= 4 for lim in scenario["limits"].values())
    assert all(re.fullmatch(r"AIza[0-9A-Za-z_\-]{35}", k.split(":")[1]) for k in keys)


# -- `keyrack serve`: startup, readiness, shutdown ---------------------------------------------------------------------


def test_serve_logs_startup_serves_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    admin, client = "admin-token-serve-1", "client-token-serve-1"
    proc, url = start_proxy(
        tmp_path,
        api_keys="p1:AIzaSyA1234567890abcdefghijklmnopqrstuv",
        admin_token=admin,
        access_tokens=client,
        upstream_url="http://127.0.0.1:9",
    )
    try:
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        resp = httpx.post(
            f"{url}/v1beta/models/gemini-2.5-flash:generateContent", json={}, headers={"x-goog-api-key": client}
        )
        assert resp.status_code == 502 and resp.headers["x-keyrack-request-id"]  # nothing listens upstream
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.kill()
    log = proc.log()
    startup = re.search(r"event=startup .*", log).group(0)  # type: ignore[union-attr]
    assert (
        "keys=1 keys_active=1" in startup and "access_tokens=1" in startup and "upstream=http://127.0.0.1:9" in startup
    )
    assert re.search(r"event=shutdown .*flushed_requests=1 .*unwritten=0", log)
    assert all(re.match(r"ts=\S+ level=[A-Z]+ logger=\S+ ", line) for line in log.splitlines() if line), log
    for secret in (admin, client, "AIzaSyA1234567890abcdefghijklmnopqrstuv"):
        assert secret not in log


def test_serve_refuses_invalid_settings_naming_each_variable(tmp_path: Path) -> None:
    line = serve_fails(
        tmp_path,
        upstream_url="ftp://example.com",
        port="99999",
        strategy="fastest",
        max_body_mb="-1",
        duckdb_block_size="1000",
        duckdb_row_group_size="3000",
    )
    assert line.startswith("Error: invalid configuration: ")
    for expected in (
        "KEYRACK_UPSTREAM_URL: must be an http(s) URL such as https://generativelanguage.googleapis.com",
        "KEYRACK_PORT / --port: Input should be less than or equal to 65535",
        "KEYRACK_STRATEGY: Input should be 'quota_aware', 'round_robin' or 'least_used'",
        "KEYRACK_MAX_BODY_MB: Input should be greater than 0",
        "KEYRACK_DUCKDB_BLOCK_SIZE: must be one of 16384, 32768, 65536, 131072, 262144 (bytes)",
        "KEYRACK_DUCKDB_ROW_GROUP_SIZE: must be a multiple of 2048 (rows)",
    ):
        assert expected in line


def _fails(tmp_path: Path, args: list[str], env: dict[str, str]) -> str:
    res = subprocess.run([*KEYRACK, *args], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    out = (res.stdout + res.stderr).decode()
    assert res.returncode == 1 and "Traceback" not in out, out
    return out


def test_errors_name_the_option_of_the_command_run(tmp_path: Path) -> None:
    bad_port = clean_env(port="abc")
    run = _fails(tmp_path, ["run", "--no-dashboard", "--data-dir", str(tmp_path / "d")], bad_port)
    assert "KEYRACK_PORT / --proxy-port: Input should be a valid integer" in run and "--port:" not in run
    assert "KEYRACK_PORT / --port: Input should be a valid integer" in _fails(tmp_path, ["serve"], bad_port)
    dashboard = _fails(tmp_path, ["dashboard", "--port", "0"], bad_port)  # its --port is the dashboard's own
    assert "KEYRACK_PORT: Input should be a valid integer" in dashboard and "--port" not in dashboard
    (tmp_path / "file").write_text("")
    demo = _fails(tmp_path, ["demo", "--no-dashboard", "--data-dir", str(tmp_path / "file" / "d")], clean_env())
    assert "KEYRACK_DATA_DIR / --data-dir " in demo and "not a directory" in demo


def test_every_option_that_stands_for_a_setting_is_named_in_its_errors() -> None:
    """An option whose default is a setting (its help says "default KEYRACK_X") is a SettingOption for that setting,
    so the setting's errors name it; and no SettingOption stands for a setting that does not exist."""
    import click

    from proxy_service.cli import main
    from proxy_service.startup import SettingOption

    pairs = set()
    for name, command in main.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            said = re.findall(r"default (KEYRACK_[A-Z_]+)", getattr(param, "help", None) or "")
            settings = [s for s in said if s.removeprefix("KEYRACK_").lower() in Settings.model_fields]
            if isinstance(param, SettingOption):
                assert param.setting in Settings.model_fields, (name, param.opts)
                assert settings == [f"KEYRACK_{param.setting.upper()}"], (name, param.opts, said)
                pairs.add((name, param.setting, param.opts[0]))
            elif isinstance(param, click.Option):
                assert not settings, f"`keyrack {name} {param.opts[0]}` stands for {settings}: make it a SettingOption"
    assert {("serve", "port", "--port"), ("run", "port", "--proxy-port"), ("demo", "data_dir", "--data-dir")} <= pairs


def test_a_partial_cluster_configuration_is_one_line_once(tmp_path: Path) -> None:
    env = clean_env(redis_url="redis://127.0.0.1:6379/0")
    args = ["run", "--no-dashboard", "--rate", "0", "--data-dir", str(tmp_path / "d")]
    out = _fails(tmp_path, [*args, "--proxy-port", str(free_port()), "--upstream-port", str(free_port())], env)
    assert out.count("cluster mode needs all of") == 1, out


def test_a_misspelt_setting_is_warned_and_never_starts_the_demo_in_place_of_keys(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KEYRACK_STRATGY=round_robin\n")
    env = clean_env(KEYRACK_API_KEY=f"p1:{P1_A}")
    out = _fails(tmp_path, ["run", "--no-dashboard", "--data-dir", str(tmp_path / "d")], env)
    assert "warning: unknown setting KEYRACK_API_KEY; did you mean KEYRACK_API_KEYS? (set in the environment" in out
    assert "warning: unknown setting KEYRACK_STRATGY; did you mean KEYRACK_STRATEGY? (set in .env" in out
    assert "Error: not starting the demo: KEYRACK_API_KEYS is empty but KEYRACK_API_KEY is set" in out
    assert not (tmp_path / "d" / "demo").exists()
    # `keyrack serve` logs it as a warning line of its own log (here before refusing a data dir it cannot use)
    (tmp_path / "file").write_text("")
    served = _fails(tmp_path, ["serve"], {**env, "KEYRACK_DATA_DIR": str(tmp_path / "file")})
    assert re.search(r"level=WARNING .*unknown setting KEYRACK_API_KEY; did you mean KEYRACK_API_KEYS\?", served)


def test_serve_refuses_public_bind_without_access_tokens(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert "Refusing to bind 0.0.0.0 without KEYRACK_ACCESS_TOKENS" in line


def test_serve_refuses_a_data_dir_it_cannot_use(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert f"KEYRACK_DATA_DIR={blocker}: not a directory" in serve_fails(tmp_path, "--port", "0", data_dir=str(blocker))
    below = blocker / "data"
    assert f"KEYRACK_DATA_DIR={below}: not a directory" in serve_fails(tmp_path, "--port", "0", data_dir=str(below))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "read-only"
        ro.mkdir(mode=0o500)
        assert "not writable" in serve_fails(tmp_path, "--port", "0", data_dir=str(ro))


def test_serve_refuses_a_corrupt_or_locked_database(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "keyrack.duckdb").write_bytes(b"this is not a database" * 100)
    assert f"cannot open {corrupt / 'keyrack.duckdb'}" in serve_fails(tmp_path, "--port", "0", data_dir=str(corrupt))

    locked = tmp_path / "locked"
    locked.mkdir()
    held = subprocess.Popen(
        [
            *KEYRACK[:1],
            "-c",
            f"import duckdb,time; c=duckdb.connect({str(locked / 'keyrack.duckdb')!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == b"held"
        line = serve_fails(tmp_path, "--port", "0", data_dir=str(locked))
        assert "is in use by another process" in line and f"(PID {held.pid})" in line
    finally:
        held.kill()
        held.wait()


def test_serve_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = serve_fails(tmp_path, "--port", str(port))
    assert f"port {port} on 127.0.0.1 is already in use" in line and "KEYRACK_PORT" in line
