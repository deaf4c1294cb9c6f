"""Admin API plumbing (proxy_service/admin/api.py, common.py): the admin-token guard, unknown paths and
methods, an API that is off without a token, malformed bodies."""

from __future__ import annotations

from pathlib import Path

import httpx

from proxy_service.app import create_app
from proxy_service.settings import Settings
from tests.admin.conftest import (
    TOKEN,
    Env,
    assert_no_secret,
    error_of,
)
from tests.servers import serve


def test_auth_is_required_and_constant_time(env: Env) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer"},
    ):
        r = httpx.get(f"{env.url}/admin/api/keys", headers=headers)
        assert r.status_code == 401 and "admin token" in error_of(r)["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{env.url}/admin/api/query", json={"sql": "SELECT 1"}).status_code == 401
    assert env.get("/keys").status_code == 200


def test_unknown_paths_and_methods(env: Env) -> None:
    r = env.get("/nope")
    assert r.status_code == 404 and "unknown admin API path" in error_of(r)["message"]
    r = env.http.put("/admin/api/keys")
    assert r.status_code == 405 and "GET, POST" in error_of(r)["message"]
    assert httpx.get(f"{env.url}/admin/api/nope").status_code == 401  # no probing without the token


def test_admin_api_is_off_without_a_token(tmp_path: Path) -> None:
    app = create_app(Settings(_env_file=None, data_dir=tmp_path, admin_token=""))  # type: ignore[call-arg]
    with serve(app) as url:
        r = httpx.get(f"{url}/admin/api/keys", headers={"authorization": "Bearer anything"})
    assert r.status_code == 503 and "KEYRACK_ADMIN_TOKEN is not set" in error_of(r)["message"]
    app.state.gateway.store.close()


def test_malformed_bodies(env: Env) -> None:
    for body, why in ((b"{not json", "not valid JSON"), (b"[1, 2]", "must be a JSON object"), (b"", "body is empty")):
        r = env.http.post("/admin/api/keys", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and why in error_of(r)["message"]
    r = env.http.patch("/admin/api/config", content=b'{"strategy": ', headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
