"""The docs stay true and readable: docs/ARCHITECTURE.md's module map names every module of proxy_service/ and
nothing that is gone; the README is for users (short, no notes about a machine or a run); every relative link in
the README and docs/ resolves; docs/benchmarks.md is what `make bench` writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def test_the_module_map_matches_the_tree() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Modules (`proxy_service/`)", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([\w/]+\.py)`", cell)}
    package = REPO / "proxy_service"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert documented == modules, f"undocumented: {sorted(modules - documented)}; gone: {sorted(documented - modules)}"


# ------------------------------------------------------------------------------------------------ README and docs/

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# A commit hash: 7-40 hex digits with at least one letter and one digit (so 10000000 and "deadbeef" are not).
COMMIT_HASH = re.compile(r"(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/-])")
TIME_OF_DAY = re.compile(r"(?<![\w:])(?:[01]?\d|2[0-3]):[0-5]\d(?![\w:])")
NOTEBOOK = re.compile(r"load average|this machine|this session|\bquiet machine\b", re.I)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_the_readme_is_for_users() -> None:
    text = README.read_text()
    lines = text.count("\n")
    assert lines <= 250, f"README.md has {lines} lines (at most 250: details belong in docs/)"
    assert not COMMIT_HASH.findall(text), f"commit-hash-like tokens in README.md: {COMMIT_HASH.findall(text)}"
    assert not NOTEBOOK.findall(text), f"notes about a particular machine or run: {NOTEBOOK.findall(text)}"
    assert not TIME_OF_DAY.findall(text), f"times of day in README.md: {TIME_OF_DAY.findall(text)}"
    for page in ("docs/benchmarks.md", "docs/cluster.md", "docs/security.md", "docs/alerts.md", "docs/analytics.md"):
        assert f"]({page}" in text, f"README.md does not link {page}"


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in (README, *DOCS):
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def sample_results() -> dict[str, dict[str, Any]]:
    """The JSON figures three benchmarks leave in bench/results/, in their shape (values made up)."""

    def row(target: str, c: int, rps: float) -> dict[str, Any]:
        return {"target": target, "concurrency": c, "rps": rps, "p50_ms": 1.5, "p95_ms": 3.0, "p99_ms": 9.0}

    proxy = {
        "rows": [row("direct", 1, 2200.0), row("direct", 32, 3900.0), row("proxy", 1, 460.0), row("proxy", 32, 780.0)],
        "added_p50_ms_c1": 1.4,
        "events": {"lost": 0, "responses_received": 14253},
        "minimal_rps_c32": 795.0,
        "keyrack_vs_minimal_c32": 0.98,
    }
    writer = {
        "writer": {"events_per_s": 81686.0, "lost": 0, "events": 500000, "record_us": 1.1},
        "single_insert": {"rows_per_s": 276.0},
        "ratio": 296.0,
        "enqueue_us": 2.6,
    }
    rss = {"VmRSS": 140.0, "RssAnon": 90.0}
    polling = {
        "loads": {"monitor": 30, "trends": 29},
        "failures": [],
        "dwell_s": 5.0,
        "dashboard_rss": {"VmRSS": 190.0},
    }
    memory = {
        "proxy": {"start": {"VmRSS": 102.0, "RssAnon": 40.0}, "after_load": rss, "steady": rss, "polling": polling},
        "alone": {"steady": {"VmRSS": 125.0}},
        "dashboard_attached": True,
        "load_s": 32,
        "soak_s": 300,
    }
    return {"proxy_throughput": proxy, "event_writer": writer, "memory": memory}


def test_make_bench_writes_a_date_free_host_free_benchmarks_page() -> None:
    from bench import run_all

    previous = (REPO / "docs" / "benchmarks.md").read_text()
    page = run_all.benchmarks_doc(sample_results(), 2, previous)
    assert page.startswith(run_all.INTRO) and "`make bench`" in page and "python -m bench.<name>" in page
    assert not COMMIT_HASH.findall(page), COMMIT_HASH.findall(page)
    assert not TIME_OF_DAY.findall(page), TIME_OF_DAY.findall(page)
    assert not NOTEBOOK.findall(page), NOTEBOOK.findall(page)
    sections = dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", page, re.S))
    # Each figure of this run is stated with the command that made it and its baseline from the same run.
    assert "`python -m bench.proxy_throughput`" in sections["proxy_throughput"]
    assert "fake direct 3,900" in sections["proxy_throughput"] and "0.20" in sections["proxy_throughput"]
    assert "`python -m bench.memory --load 32 --soak 300`" in sections["memory"]
    assert "dashboard attached and polling: steady through the 300 s soak" in sections["memory"]
    assert "| **140 MB** | no dashboard 125 MB | 1.12 | ≤ 150 MB |" in sections["memory"]
    assert "single-row INSERT 276/s" in sections["event_writer"] and "296x" in sections["event_writer"]
    # The benchmarks that did not run keep their section, and hand-written notes survive.
    old = dict(re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", previous, re.S))
    assert sections["explore"] == old["explore"] and sections["cluster"] == old["cluster"]
    assert all(note in page for note in re.findall(r"<!-- notes:\w+ -->\n.*?<!-- /notes:\w+ -->", previous, re.S))
    assert run_all.benchmarks_doc({}, 2, page) == page  # a run with no figures changes nothing


def test_the_committed_benchmarks_page_is_in_the_shape_make_bench_keeps() -> None:
    from bench import run_all

    page = (REPO / "docs" / "benchmarks.md").read_text()
    assert run_all.benchmarks_doc({}, None, page) == page
    assert not COMMIT_HASH.findall(page) and not TIME_OF_DAY.findall(page) and not NOTEBOOK.findall(page)


def data_recipes(page: Path) -> list[str]:
    """The shell commands of a page's "Data" section, continuation lines joined."""
    text = page.read_text()
    section = text[text.index("## Data") :]
    section = section[: section.index("\n## ", 5)]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def test_the_data_recipes_work_verbatim_against_a_real_proxy(proxy: Any, tmp_path: Path) -> None:
    """README's and docs/analytics.md's Data recipes, run as written against a proxy that has served calls: the
    DuckDB CLI line (its SQL, through the same DuckDB; the CLI itself is a download), the python -c line, and the
    admin API's curl lines (the proxy's address put in place of :8080)."""
    import json
    import shlex
    import subprocess
    import sys

    import duckdb
    import httpx

    from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN

    for _ in range(3):
        httpx.post(
            f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": CLIENT_TOKEN},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            timeout=30,
        )
    proxy.flush()
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.post(f"{proxy.url}/admin/api/export", headers=auth, timeout=60).status_code == 200
    (tmp_path / "data" / "demo").mkdir(parents=True)
    for where in ("data", "data/demo"):  # real runs' and the demo's snapshot paths both lead to this proxy's
        (tmp_path / where / "exports").symlink_to(proxy.data_dir / "exports")
    env = {"PATH": "/usr/bin:/bin", "KEYRACK_ADMIN_TOKEN": ADMIN_TOKEN}
    ran = set()
    for page in (REPO / "README.md", REPO / "docs" / "analytics.md"):
        for command in data_recipes(page):
            words = shlex.split(command, comments=True)
            if words[:2] == [".venv/bin/pip", "install"]:
                assert words[2] == f"duckdb-cli=={duckdb.__version__}", "the CLI of Keyrack's own DuckDB version"
                ran.add("pip")
                continue
            if words[0] == ".venv/bin/duckdb":
                assert words[1] == "-c"
                con = duckdb.connect()
                con.execute(f"SET file_search_path = '{tmp_path}'")
                assert con.execute(words[2]).fetchall(), command
                ran.add("duckdb")
                continue
            command = command.replace(".venv/bin/python", sys.executable).replace("http://127.0.0.1:8080", proxy.url)
            res = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, timeout=60)
            assert res.returncode == 0, (command, res.stderr)
            out = res.stdout.decode()
            if words[0] == ".venv/bin/python":
                assert "gemini-2.5-flash" in out, out
                ran.add("python")
            elif "/admin/api/query" in command:
                answer = json.loads(out)
                assert [c["name"] for c in answer["columns"]] == ["model", "calls"], out
                assert answer["rows"] == [["gemini-2.5-flash", 3]], out
                ran.add("query")
            elif "/admin/api/explore" in command:
                answer = json.loads(out)
                assert answer["columns"] == ["model", "calls"] and answer["from"].startswith("2026-12-01"), out
                assert answer["to"].startswith("2026-12-08"), out
                ran.add("explore")
            else:
                raise AssertionError(f"a recipe this test does not know: {command}")
    assert ran == {"pip", "duckdb", "python", "query", "explore"}
