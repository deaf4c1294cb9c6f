"""Deployment files without a Docker engine: every compose file validated against the Compose Specification's JSON
schema (tests/deploy/compose-spec.json), and by `docker compose config -q` too where a Docker engine answers; the
Dockerfile's and the compose file's commands
checked to be real `keyrack` subcommands with real options, the health checks run against a real proxy, and
.env.example documenting every KEYRACK_* setting."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy_service.settings import Settings
from proxy_service.supervisor import dashboard_argv
from tests.conftest import Proxy

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def compose_lists(key: str) -> list[list[str]]:
    """Every `key: [...]` flow-style list in docker-compose.yml (commands, health checks), parsed as JSON."""
    return [json.loads(m) for m in re.findall(rf"^\s+{key}: (\[.*\])\s*$", COMPOSE.read_text(), re.M)]


def dockerfile_cmd() -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "one exec-form CMD"
    return json.loads(lines[0][4:])


SCHEMA = Path(__file__).resolve().parent / "deploy" / "compose-spec.json"


def compose_files() -> list[Path]:
    return sorted({*REPO.glob("docker-compose*.y*ml"), *REPO.glob("compose*.y*ml")})


def schema_errors(document: object) -> list[str]:
    from jsonschema import Draft7Validator

    validator = Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path) -> None:
    import yaml

    document = yaml.safe_load(path.read_text())
    assert schema_errors(document) == []
    if path == COMPOSE:
        assert list(document["services"]) == ["proxy", "dashboard"] and list(document["volumes"]) == ["keyrack-data"]


def test_the_schema_check_catches_mistakes() -> None:
    import yaml

    good = yaml.safe_load(COMPOSE.read_text())
    assert schema_errors(good) == []
    typo = json.loads(json.dumps(good))
    typo["services"]["proxy"]["enviroment"] = {"A": "1"}
    wrong_type = json.loads(json.dumps(good))
    wrong_type["services"]["dashboard"]["depends_on"] = {"proxy": {"condition": "when_ready"}}
    assert schema_errors(typo) and schema_errors(wrong_type)


def test_compose_config_where_docker_answers(tmp_path: Path) -> None:
    """`docker compose config -q` as well, on machines with a Docker engine (CI here has none: the schema suffices)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return  # no engine: nothing more to check; the schema test above is the check
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / ".env.example", tmp_path / ".env")  # what a user does first
    res = subprocess.run([docker, "compose", "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_compose_wiring() -> None:
    text = COMPOSE.read_text()
    assert "keyrack-data:/data" in text and "KEYRACK_DATA_DIR: /data" in text
    assert "env_file: [.env]" in text
    assert "KEYRACK_ADMIN_URL: http://proxy:8080" in text  # the dashboard reaches the proxy service's admin API
    assert "condition: service_healthy" in text
    checks = compose_lists("test")
    assert len(checks) == 2 and all(c[:3] == ["CMD", "python", "-c"] for c in checks)  # no curl in slim images
    assert "http://127.0.0.1:8080/healthz" in checks[0][3]


@pytest.mark.parametrize("command", [dockerfile_cmd(), *compose_lists("command")], ids=lambda c: " ".join(c[1:3]))
def test_image_commands_are_real_keyrack_subcommands(command: list[str]) -> None:
    assert command[0] == "keyrack"
    # `--help` after the options: click rejects an unknown subcommand or option before printing help.
    res = subprocess.run(
        [sys.executable, "-m", "proxy_service.cli", *command[1:], "--help"], capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    assert command[1] in ("serve", "dashboard")


def test_make_run_starts_the_same_subcommands_as_the_image() -> None:
    image_commands = {c[1] for c in [dockerfile_cmd(), *compose_lists("command")]}
    assert image_commands == {"serve", "dashboard"}
    argv = dashboard_argv("127.0.0.1", 8501, "http://127.0.0.1:8080")
    assert argv[1:4] == ["-m", "proxy_service.cli", "dashboard"]
    launcher = (REPO / "proxy_service" / "supervisor.py").read_text()
    assert '"proxy_service.cli", "serve"' in launcher
    assert "$(BIN)/keyrack run" in (REPO / "Makefile").read_text()


def test_health_check_commands_work_against_a_real_proxy(proxy: Proxy) -> None:
    port = proxy.url.rsplit(":", 1)[1]
    code = compose_lists("test")[0][3]
    ok = subprocess.run([sys.executable, "-c", code.replace(":8080/", f":{port}/")], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-c", code.replace(":8080/", ":9/")], capture_output=True, timeout=30)
    assert down.returncode != 0


def test_env_example_documents_every_setting() -> None:
    text = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?(KEYRACK_[A-Z_]+)=", text, re.M))
    expected = {f"KEYRACK_{name.upper()}" for name in Settings.model_fields} | {"KEYRACK_ADMIN_URL"}
    assert expected <= documented, f"undocumented: {sorted(expected - documented)}"
    assert not [line for line in text.splitlines() if line.startswith("KEYRACK_")], "everything commented by default"
