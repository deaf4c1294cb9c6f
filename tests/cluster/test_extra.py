"""The cluster extra: cluster settings without it are one startup line naming the extra; without cluster settings
nothing of it is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy_service.cluster.config import CLUSTER_MODULES
from tests.reliability.harness import KEYRACK, free_port

# A real interpreter in which the cluster extra's modules cannot be imported, as after `pip install keyrack`.
BLOCKER = """
import importlib.abc, importlib.machinery, sys
BLOCKED = set({blocked!r})
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Absent())
"""


def _env(tmp_path: Path, blocked: tuple[str, ...], **settings: str) -> dict[str, str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(blocked)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRACK_")}
    path = os.pathsep.join(p for p in (str(shim), str(Path(__file__).parents[2]), env.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=path, KEYRACK_DATA_DIR=str(tmp_path / "data"), **settings)
    return env


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:  # a serve that starts (the extra found) would run for ever: the timeout is the test failing
        return subprocess.run(
            [*KEYRACK, "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("serve started in cluster mode without the cluster extra") from None


def test_cluster_settings_without_the_extra_name_it_in_one_line(tmp_path: Path) -> None:
    for blocked in (("redis",), CLUSTER_MODULES[1:]):
        env = _env(
            tmp_path,
            blocked,
            KEYRACK_REDIS_URL="redis://127.0.0.1:6379/0",
            KEYRACK_LAKE_CATALOG="postgresql://postgres@127.0.0.1:5432/keyrack",
            KEYRACK_LAKE_DATA=str(tmp_path / "lake"),
        )
        done = _serve(env)
        assert done.returncode != 0
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error:")]
        assert len(lines) == 1, done.stdout + done.stderr
        assert "pip install 'keyrack[cluster]'" in lines[0] and blocked[0] in lines[0], lines[0]
        assert "Traceback" not in done.stderr


def test_the_single_process_default_imports_nothing_of_the_extra(tmp_path: Path) -> None:
    env = _env(tmp_path, CLUSTER_MODULES)
    code = (
        "from proxy_service.settings import Settings; from proxy_service.app import create_app; "
        "import proxy_service.server, proxy_service.cli; "
        f"s = Settings(data_dir={str(tmp_path / 'data')!r}, api_keys='AIzaSy' + 'A' * 33); create_app(s); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
