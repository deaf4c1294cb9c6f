"""The mode's seam: the gateway asks its node (embedded here; the cluster's in tests/cluster/), no product module
branches on the mode, nothing outside the app reaches into the gateway's private members, and shutdown cancels one
list of background tasks (the gateway's jobs, the node's loops, the alert evaluator)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from proxy_service.app import Gateway
from proxy_service.node import EmbeddedNode
from proxy_service.settings import Settings
from tests.conftest import POOL_KEYS

REPO = Path(__file__).resolve().parents[1]
NODE_IMPLEMENTATIONS = {"proxy_service/node.py", "proxy_service/cluster/node.py"}


def _trees() -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text()) for p in sorted((REPO / "proxy_service").rglob("*.py"))}


def _named_cluster(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "cluster") or (
        isinstance(node, ast.Attribute) and node.attr == "cluster"
    )


def test_no_module_branches_on_the_mode() -> None:
    found = [
        f"{path}:{node.lineno}"
        for path, tree in _trees().items()
        if path not in NODE_IMPLEMENTATIONS
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(isinstance(op, ast.Is | ast.IsNot) for op in node.ops)
        and _named_cluster(node.left)
    ]
    assert not found, found


def test_the_check_sees_a_branch_on_the_mode() -> None:
    tree = ast.parse("if self.gw.cluster is not None:\n    pass\n")
    assert any(isinstance(n, ast.Compare) and _named_cluster(n.left) for n in ast.walk(tree))


def test_nothing_outside_the_app_touches_a_private_gateway_member() -> None:
    """The cluster gets callbacks (node.Hooks); routes and engines use the declared gateway.Gateway."""
    found = [
        f"{path}:{node.lineno} {node.value.id}.{node.attr}"  # type: ignore[attr-defined]
        for path, tree in _trees().items()
        if path != "proxy_service/app.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("gw", "gateway")
        and node.attr.startswith("_")
    ]
    assert not found, found


def test_shutdown_cancels_one_list_of_background_tasks(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, api_keys=POOL_KEYS)  # type: ignore[call-arg]

    async def scenario() -> None:
        gw = Gateway(settings)
        assert isinstance(gw.node, EmbeddedNode) and gw.store is gw.node.store and gw.writer is gw.node.writer
        assert gw.leads() and gw.sandbox is not None
        async with gw.lifespan(None):  # type: ignore[arg-type]
            running = set(gw.jobs.names)
            assert {"alert-evaluator", "persist-keys", "recheck", "rollup-compact", "forecast-rate"} <= running
            tasks = [t for t in asyncio.all_tasks() if t.get_name() in running]
        assert gw.jobs.names == []
        assert tasks and all(t.done() for t in tasks)

    asyncio.run(scenario())
