"""Real processes for the operations and reliability tests: `keyrack serve` / `keyrack fake-upstream` as
subprocesses (output in a log file), a closed-loop load of the demo's request mix, and a dump of the DuckDB file.

Also used by `bench/reliability.py`, the long soak.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx

from proxy_service.demo.traffic import MIX, Outcome, make_request, send
from tests.servers import free_port as free_port  # re-exported: the cluster and CLI tests take it from here

KEYRACK = [sys.executable, "-m", "proxy_service.cli"]
REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: Any) -> dict[str, str]:
    """The current environment without any KEYRACK_* setting, plus `extra` (KEYRACK_ prefix added when missing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRACK_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a process that dies on a signal (an abort in a C library) says where
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for k, v in extra.items():
        name = k if k.startswith("KEYRACK_") else f"KEYRACK_{k.upper()}"
        env[name] = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return env


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 45.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen (exit {self.proc.poll()}); log:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"process did not exit within {timeout}s of {signal.Signals(sig).name}") from None

    def kill(self) -> None:
        """Make sure the process is gone (a failing test must not leave servers behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def start(args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> Proc:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [*KEYRACK, *args],
            env=env,
            cwd=cwd or log_path.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Proc(proc, log_path)


@contextlib.contextmanager
def fake_upstream(tmp: Path, scenario: dict[str, Any]) -> Iterator[tuple[Proc, str]]:
    path = tmp / "scenario.json"
    path.write_text(json.dumps(scenario))
    port = free_port()
    proc = start(["fake-upstream", "--port", str(port), "--scenario", str(path)], clean_env(), tmp / "upstream.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_fake/stats", proc)
        yield proc, url
    finally:
        try:
            proc.stop(signal.SIGTERM, 10)
        finally:
            proc.kill()


def start_proxy(tmp: Path, **settings: Any) -> tuple[Proc, str]:
    """`keyrack serve --port 0` with `settings` as KEYRACK_* env; returns once /readyz answers 200."""
    proc = start(["serve", "--port", "0"], clean_env(data_dir=str(tmp / "data"), **settings), tmp / "proxy.log", tmp)
    try:
        port = proc.wait_for(r"event=startup .*?port=(\d+)").group(1)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def wait_http(url: str, proc: Proc | None = None, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.proc.returncode}:\n{proc.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout}s")


async def closed_loop(
    base_url: str,
    token: str,
    duration: float,
    workers: int = 12,
    mix: dict[str, float] = MIX,
    seed: int = 1,
    timeout: float = 30.0,
    min_requests: int = 0,
) -> list[Outcome]:
    """`workers` clients, each sending the demo's request mix back to back for `duration` seconds, and on past it
    until `min_requests` answers are in (at most 3 × `duration` in all: a loaded machine slows the run, not the
    checks that need enough requests)."""
    outcomes: list[Outcome] = []
    started = time.monotonic()
    soft, hard = started + duration, started + 3 * duration
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def worker(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while (now := time.monotonic()) < soft or (len(outcomes) < min_requests and now < hard):
                outcomes.append(await send(client, make_request(rng, token, mix=mix), timeout))

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return outcomes


def dump_tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the (closed) DuckDB file as rows, except the keys' secrets."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        # The base tables (the `safe` schema's views read them, sometimes with more columns under the same name).
        tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1"
        for (table,) in con.execute(tables).fetchall():
            cols = [
                c
                for (c,) in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ? "
                    "ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                if not (table == "keys" and c == "secret")
            ]
            columns = ", ".join(f'"{c}"' for c in cols)
            out[table] = con.execute(f'SELECT {columns} FROM "{table}"').fetchall()
        return out
    finally:
        con.close()


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()
