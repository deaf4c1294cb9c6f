"""Shared fixtures: real servers on 127.0.0.1 — the fake Gemini upstream and the Keyrack proxy — on a real DuckDB
file in a temporary directory; and the rules that let the suite run on several pytest-xdist workers.

Parallel safety (`make test` runs `pytest -n 4 --dist loadgroup`):

- **A file runs on one worker, in order.** Many modules share module- or package-scoped servers and build on
  earlier tests' state, so the unit of work is the file (`FileOrGroupScheduling` below); `--dist loadgroup` is
  needed for xdist to tag grouped tests, and this conftest widens its per-test units to files.
- **Groups** (`GROUPS`, applied as `xdist_group` marks at collection): files, or single tests of a file, that must
  not overlap one another run on one worker, one after the other (a file's tests outside its group stay a unit of
  their own, so light tests do not wait in a group's queue). One group, `heavy`: the real-browser tests (each file drives a Chromium of
  several hundred MB beside a real dashboard) and the tests that load the machine on purpose or measure what load
  disturbs (CPU burners starving replicas, soaks and bench smoke runs with RSS and throughput figures). Two of
  them at once starve each other into their deadlines: a first parallel run that let the CPU burners overlap a
  browser test lost that test to its timeout. A second, `replicas`: the cluster files that start several replica
  processes each; three of them side by side on two cores missed their SIGTERM and test deadlines. So at most
  one heavy file and one multi-replica file run at a time, next to light ones.
- **Heavy files first** (`FIRST`): the longest files are handed out before the rest so that no long file starts
  last and keeps one worker busy alone at the end.
- What needs no rule: every server binds port 0 or a free port; temporary paths come from `tmp_path` /
  `mkdtemp` (never a fixed name in the temp dir: several checkouts and workers share it); cluster tests take their
  own Redis key prefix and PostgreSQL database; the storage-fault tests mount their own tmpfs / loop device under
  their `tmp_path`; no test kills a process by name.
- A progress line (`done/total, failed, elapsed`) is printed every 30 s by the controller, so a long run says
  where it is in words, not only in dots.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.settings import Settings
from tests.servers import serve

ADMIN_TOKEN = "admin-secret-token-123"
CLIENT_TOKEN = "client-token-abc"


def fake_key(name: str) -> str:
    """A deterministic fake key shaped like a real Gemini key ("AIza" + 35 characters), named for readability:
    Keyrack rejects text that cannot be a key, so tests use keys of the real shape."""
    return "AIza" + hashlib.sha256(name.encode()).hexdigest()[:35]


# The standard pool used by most tests: three projects, one invalid key.
P1_A, P1_B, P2_A, P3_A = (fake_key(n) for n in ("key-p1-a", "key-p1-b", "key-p2-a", "key-p3-a"))
BAD_1 = fake_key("key-bad-1")
SCENARIO: dict[str, Any] = {
    "projects": {"p1": [P1_A, P1_B], "p2": [P2_A], "p3": [P3_A]},
    "invalid_keys": [BAD_1],
    "seed": 1,
}
POOL_KEYS = ",".join(f"{p}:{k}" for p, keys in SCENARIO["projects"].items() for k in keys)


@dataclass
class Upstream:
    url: str
    app: Any

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/stats").json()

    def set_scenario(self, scenario: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_fake/scenario", json=scenario).raise_for_status()


@dataclass
class Proxy:
    url: str
    gateway: Gateway
    data_dir: Path

    def flush(self) -> None:
        self.gateway.persist_keys()
        self.gateway.writer.flush()

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Read the proxy's DuckDB after flushing (tests only: the app itself never reads on the request path)."""
        self.flush()
        cur = self.gateway.store.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()


def wait_rows(proxy: Proxy, sql: str, params: list[Any] | None = None, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    """Rows of `sql` once there are some: a stream is recorded when its relay ends, which can be a moment after
    the client has seen the last byte."""
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows(sql, params)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., Upstream]]:
    with contextlib.ExitStack() as stack:

        def start(scenario: dict[str, Any] | None = None, clock: Callable[[], float] | None = None) -> Upstream:
            app = create_fake(scenario, clock)
            url = stack.enter_context(serve(app))
            return Upstream(url, app)

        yield start


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    with contextlib.ExitStack() as stack:
        count = 0

        def start(upstream_url: str, **settings: Any) -> Proxy:
            nonlocal count
            count += 1
            data_dir = tmp_path / f"proxy{count}"
            options: dict[str, Any] = {
                "data_dir": data_dir,
                "upstream_url": upstream_url,
                "admin_token": ADMIN_TOKEN,
                "access_tokens": [CLIENT_TOKEN],
                "api_keys": POOL_KEYS,
                "recheck_interval_s": 3600,
                **settings,
            }
            app = create_app(Settings(_env_file=None, **options))  # type: ignore[call-arg]
            url = stack.enter_context(serve(app, lifespan="on"))
            return Proxy(url, app.state.gateway, data_dir)

        yield start


@pytest.fixture
def upstream(start_upstream: Callable[..., Upstream]) -> Upstream:
    return start_upstream(SCENARIO)


@pytest.fixture
def proxy(start_proxy: Callable[..., Proxy], upstream: Upstream) -> Proxy:
    return start_proxy(upstream.url)


# -- parallel safety (see the module docstring) ----------------------------------------------------------------------
# A key is a file or one test of a file ("file::test"): a file's other tests are a unit of their own.
GROUPS: dict[str, str] = {
    path: "heavy"
    for path in (
        "tests/dashboard/test_browser.py",
        "tests/dashboard/test_explore_browser.py",
        "tests/dashboard/test_alerts_browser.py",
        "tests/cluster/test_durability.py::test_three_starved_replicas_sigterm_then_sigkill_every_answer_once",
        "tests/cluster/test_bench_cluster.py",
        "tests/reliability/test_soak.py",
        "tests/test_bench_smoke.py",
        "tests/test_alerts_bench.py",
    )
} | {
    path: "replicas"
    for path in (
        "tests/cluster/test_faults.py",
        "tests/cluster/test_replicas.py",
        "tests/cluster/test_leader.py",
        "tests/cluster/test_lake.py",
        "tests/cluster/test_trust.py",
        "tests/cluster/test_durability.py::test_key_counters_equal_the_lake_after_conflicts_and_a_postgres_outage",
    )
}
# The longest work units of a serial run, longest first (units not named keep their collection order after them).
FIRST: list[str] = [
    "heavy",
    "replicas",
    "tests/analytics/test_explore.py",
    "tests/reliability/test_storage_faults.py",
]


def group_of(nodeid: str) -> str | None:
    """The group of a test (its own entry, else its file's), or None."""
    file, _, rest = nodeid.partition("::")
    test = rest.split("[", 1)[0]
    return GROUPS.get(f"{file}::{test}") or GROUPS.get(file)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks to tag node ids with their group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = group_of(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with files, not single tests, as the units of work that are not in a group."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # tagged by xdist with its group (a parameter may hold "@")
                return nodeid.rsplit("@", 1)[1]
            # xdist may tag before our marks are added: the table decides
            return group_of(nodeid) or nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node: Any) -> None:
            if not getattr(self, "_ordered", False):
                rank = {unit: i for i, unit in enumerate(FIRST)}
                units = sorted(self.workqueue.items(), key=lambda kv: rank.get(kv[0], len(rank)))
                self.workqueue.clear()
                self.workqueue.update(units)
                self._ordered = True
            super()._assign_work_unit(node)

    return FileOrGroupScheduling(config, log)


class Progress:
    """Every 30 s a line a human can read: how many tests are done of how many, how many failed, time elapsed."""

    EVERY_S = 30.0

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.total = 0
        self.outcomes: Counter[str] = Counter()
        self.started = self.last = time.monotonic()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.total = max(self.total, len(ids))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.outcome] += 1
        elif report.when == "teardown" and report.failed:
            self.outcomes["failed"] += 1
        now = time.monotonic()
        if now - self.last < self.EVERY_S:
            return
        self.last = now
        done = self.outcomes["passed"] + self.outcomes["failed"] + self.outcomes["skipped"]
        elapsed = int(now - self.started)
        share = f" ({100 * done // self.total}%)" if self.total else ""
        line = (
            f"[progress] {done}/{self.total or '?'} tests{share}, {self.outcomes['failed']} failed, "
            f"{elapsed // 60}m{elapsed % 60:02d}s elapsed"
        )
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), never a worker
        config.pluginmanager.register(Progress(config), "keyrack-progress")
