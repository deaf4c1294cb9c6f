"""docker-compose.cluster.yml without a Docker engine: validated and resolved by Debian's `docker-compose config`
(installed by `make test` through the Makefile's `compose` target), then its wiring checked on the resolved form."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from proxy_service.cluster.config import from_settings
from proxy_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = ("KEYRACK_REDIS_URL", "KEYRACK_LAKE_CATALOG", "KEYRACK_LAKE_DATA")


def resolved(tmp_path: Path) -> dict[str, Any]:
    compose = shutil.which("docker-compose")
    assert compose, "Debian's docker-compose is required (make test installs it: apt-get install docker-compose)"
    for name in ("docker-compose.cluster.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "deploy").mkdir()
    shutil.copy(REPO / "deploy" / "nginx-cluster.conf", tmp_path / "deploy" / "nginx-cluster.conf")
    shutil.copy(REPO / ".env.example", tmp_path / ".env")  # what a user does first
    res = subprocess.run(
        [compose, "-f", "docker-compose.cluster.yml", "config"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return dict(yaml.safe_load(res.stdout))


def _mount(volume: str | dict[str, str]) -> tuple[str, str]:
    """(target, source) of a resolved volume entry ("source:target[:mode]" in docker-compose 1.x, a dict later)."""
    if isinstance(volume, dict):
        return volume["target"], volume["source"]
    source, target = volume.split(":")[:2]
    return target, source


def test_cluster_compose_file_is_valid_and_wired(tmp_path: Path) -> None:
    config = resolved(tmp_path)
    services = config["services"]
    replicas = sorted(name for name in services if name.startswith("proxy-"))
    assert len(replicas) >= 2
    assert {"postgres", "redis", "lb", "dashboard"} <= set(services)
    ids = set()
    for name in replicas:
        svc = services[name]
        env = svc["environment"]
        assert all(env.get(k) for k in CLUSTER_ENV), f"{name} lacks a cluster setting"
        # The three settings parse as a cluster (what `keyrack serve` checks at startup).
        cfg = from_settings(
            Settings(
                _env_file=None,
                redis_url=env["KEYRACK_REDIS_URL"],  # type: ignore[call-arg]
                lake_catalog=env["KEYRACK_LAKE_CATALOG"],
                lake_data=env["KEYRACK_LAKE_DATA"],
                replica_id=env["KEYRACK_REPLICA_ID"],
            )
        )
        assert cfg is not None
        ids.add(cfg.replica_id)
        mounts = dict(_mount(v) for v in svc["volumes"])
        assert mounts["/lake"] == "lake" and env["KEYRACK_LAKE_DATA"] == "/lake"  # one shared lake volume
        assert mounts["/data"] == f"{name}-data"  # replica-local spill files
        assert svc["command"][:2] == ["keyrack", "serve"]
        assert "/readyz" in svc["healthcheck"]["test"][3]
        assert {"postgres", "redis"} <= set(svc["depends_on"])
    assert len(ids) == len(replicas), "replica ids must differ"
    assert "lake" in config["volumes"]
    nginx = (REPO / "deploy" / "nginx-cluster.conf").read_text()
    assert sorted(re.findall(r"server (proxy-\d+):8080", nginx)) == replicas  # the balancer knows every replica
    assert services["dashboard"]["environment"]["KEYRACK_ADMIN_URL"] == "http://lb:8080"
