"""docker-compose.cluster.yml without a Docker engine: resolved as Compose does (variables from .env.example, YAML
merge keys), validated against the Compose Specification's schema, then its wiring checked on the resolved form.
Built and started for real only where a Docker engine answers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy_service.cluster.config import from_settings
from proxy_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CLUSTER_ENV = ("KEYRACK_REDIS_URL", "KEYRACK_LAKE_CATALOG", "KEYRACK_LAKE_DATA")


def env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file, as Compose reads them for interpolation."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[:1] not in "# ")
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${NAME}, ${NAME:-default} (unset or empty), ${NAME-default} (unset), $$ → $."""

    def one(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def resolved(tmp_path: Path) -> dict[str, Any]:
    """The cluster compose file as Compose would resolve it with .env.example as the user's .env: variables
    interpolated, YAML anchors and merge keys applied, then checked against the Compose Specification's schema.
    No Docker package needed (`docker compose config` is also run where an engine answers, below)."""
    from tests.test_deploy import schema_errors

    for name in ("docker-compose.cluster.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "deploy").mkdir()
    shutil.copy(REPO / "deploy" / "nginx-cluster.conf", tmp_path / "deploy" / "nginx-cluster.conf")
    shutil.copy(REPO / ".env.example", tmp_path / ".env")  # what a user does first
    text = interpolate((tmp_path / "docker-compose.cluster.yml").read_text(), env_file(tmp_path / ".env"))
    document = dict(yaml.safe_load(text))
    assert schema_errors(document) == []
    return {k: v for k, v in document.items() if not k.startswith("x-")}


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET}|${SET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|${UNSET}|$$x", env) == "v|v|d||d||$x"


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


def _docker_answers() -> str | None:
    """Why no Docker engine can run the file here (None when `docker info` answers)."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` command"
    res = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    return None if res.returncode == 0 else f"`docker info` failed: {res.stderr.strip().splitlines()[-1:]}"


def test_cluster_compose_builds_and_starts_when_a_docker_engine_answers(tmp_path: Path) -> None:
    """Built and started for real where an engine answers: every replica behind nginx reports ready, and the
    balancer spreads calls over more than one replica. Where none answers (this project's machines have the client
    only), the test says so in the skip reason rather than passing: the file is still checked above."""
    why = _docker_answers()
    if why is not None:
        pytest.skip(f"no Docker engine answers here ({why}); docker-compose.cluster.yml is validated without one")
    from tests.conftest import fake_key

    resolved(tmp_path)  # copies the build context pieces and .env, and validates the file
    shutil.copytree(REPO / "proxy_service", tmp_path / "proxy_service")
    shutil.copytree(REPO / "dashboard", tmp_path / "dashboard")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    port = 18080
    (tmp_path / ".env").write_text(
        f"KEYRACK_API_KEYS=p1:{fake_key('compose-1')},p2:{fake_key('compose-2')}\n"
        "KEYRACK_ACCESS_TOKENS=compose-test-token\nKEYRACK_ADMIN_TOKEN=compose-admin-token\n"
        f"KEYRACK_PORT={port}\nKEYRACK_DASHBOARD_PORT=18501\n"
    )
    docker = str(shutil.which("docker"))
    compose = [docker, "compose", "-p", f"keyrack-test-{port}", "-f", "docker-compose.cluster.yml"]
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--build"], cwd=tmp_path, capture_output=True, text=True, timeout=900
        )
        assert up.returncode == 0, up.stderr[-2000:]
        replicas: set[str] = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(replicas) < 2:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    replicas.add(json.loads(answer.read())["cluster"]["replica"])
            except (OSError, ValueError, KeyError):
                time.sleep(2)
        assert len(replicas) >= 2, f"ready replicas seen through the balancer: {sorted(replicas)}"
    finally:
        subprocess.run([*compose, "down", "-v"], cwd=tmp_path, capture_output=True, timeout=300)
