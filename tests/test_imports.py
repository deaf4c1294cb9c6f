"""The module graph stays a tree of layers: no import cycles between Keyrack's modules, also none hidden inside
functions or under `if TYPE_CHECKING:` (a typing-only loop is still a loop a reader has to untangle; modules type
against the declared protocols `core.Core` / `gateway.Gateway` instead of the app), and every module imports on its own in a fresh interpreter (so no module relies on another having
been imported first)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("proxy_service", "dashboard")
# Streamlit scripts: importing them runs the page (they are run by `streamlit run`, never imported).
SCRIPTS = {"dashboard.app"} | {f"dashboard.screens.{p.stem}" for p in (REPO / "dashboard" / "screens").glob("*.py")}


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(name: str) -> str | None:
    """The project module `name` loads, or None outside the project (a name inside a module is its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path) -> set[str]:
    """Project modules that `module` imports, wherever the import statement sits (module level, function, class,
    try, `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}")  # a submodule, or a name that _resolve maps to `base`
            found.add(base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    targets: set[str] = set()
    for name in found:
        resolved = _resolve(name)
        while resolved:  # importing a.b.c runs a/__init__ and a/b/__init__ first
            targets.add(resolved)
            resolved = _resolve(resolved.rpartition(".")[0]) if "." in resolved else None
    targets.discard(module)
    # A package's own __init__ is run before its submodule, not imported by it: no edge submodule → package.
    return {t for t in targets if not module.startswith(t + ".")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_no_import_cycles_anywhere_including_inside_functions() -> None:
    graph = {m: imports_of(m, p) for m, p in MODULES.items()}  # the Streamlit scripts included
    assert graph["proxy_service.app"] >= {"proxy_service.admin.api", "proxy_service.relay"}  # the parser sees edges
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph) or [])


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("import os\n\ndef f():\n    from proxy_service import app\n")
    edges = imports_of("proxy_service.store", a)
    assert edges == {"proxy_service.app"}
    graph = {"proxy_service.store": edges, "proxy_service.app": {"proxy_service.store"}}
    assert find_cycle(graph) == ["proxy_service.app", "proxy_service.store", "proxy_service.app"]


def test_the_cycle_finder_counts_typing_only_imports(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from proxy_service.app import Gateway\n")
    assert imports_of("proxy_service.admin.keys", a) == {"proxy_service.app"}


def test_only_the_app_module_knows_the_concrete_gateway() -> None:
    """Handlers, surfaces, the alert engine and the cluster node type against the declared protocols."""
    importers = sorted(m for m, p in MODULES.items() if "proxy_service.app" in imports_of(m, p))
    assert importers == ["proxy_service.server"], importers


FAKE = (
    "proxy_service.demo.fake_upstream",
    "proxy_service.demo.fake_live",
    "proxy_service.demo.fake_resources",
    "proxy_service.demo.fake_tools",
    "proxy_service.demo.fake_wire",
)


@pytest.mark.parametrize("module", FAKE)
def test_the_fake_upstream_stays_independent_of_the_product(module: str) -> None:
    """It is the test oracle: if it shared quota.py with the proxy, a wrong quota rule would pass every test. Its
    modules (models, resources, wire helpers) import only one another."""
    imported = {m for m in imports_of(module, MODULES[module]) if m.startswith("proxy_service")}
    assert imported <= set(FAKE), sorted(imported - set(FAKE))


def test_the_forecast_worker_process_loads_no_duckdb() -> None:
    """The worker (spawned: it imports the `keyrack` command's module, the engine for its initializer and the demand
    module it runs) never touches the database. Without DuckDB it is ~50 MB smaller, and the proxy's DuckDB
    library pages are mapped by the proxy alone, so heap.library_reclaimer can give them back (the kernel keeps a
    page two processes map)."""
    code = (
        "import sys, proxy_service.cli, proxy_service.forecast.engine, proxy_service.forecast.demand; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('duckdb', '_duckdb', 'pyarrow')))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


IMPORTABLE = sorted(m for m in MODULES if m not in SCRIPTS)
# Imports each module in a child forked from an interpreter that has loaded only third-party libraries (the slow
# part, done once): the child starts with no Keyrack module loaded, exactly as a fresh interpreter would.
FORK_EACH = """
import importlib, json, os, sys, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
failed = {}
for module in json.loads(sys.argv[2]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            assert not [m for m in sys.modules if m.split(".")[0] in ("proxy_service", "dashboard")]
            importlib.import_module(module)
        except BaseException:
            os.write(w, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        failed[module] = err or f"exit status {status}"
print(json.dumps(failed))
"""


def third_party_imports() -> list[str]:
    names: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] not in ("proxy_service", "dashboard", "tests", "__future__"))


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    res = subprocess.run(
        [sys.executable, "-c", FORK_EACH, json.dumps(third_party_imports()), json.dumps(IMPORTABLE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert not failed, "\n\n".join(f"{m}:\n{err}" for m, err in failed.items())


def test_the_fresh_import_check_sees_a_broken_module() -> None:
    res = subprocess.run(
        [sys.executable, "-c", FORK_EACH, "[]", json.dumps(["proxy_service.no_such_module", "proxy_service.keys"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert (
        list(failed) == ["proxy_service.no_such_module"]
        and "ModuleNotFoundError" in failed["proxy_service.no_such_module"]
    )
