"""The fake upstream plays Google's rules for project-owned resources (the oracle the resource tests rely on): a
resource is visible only to its project, the resumable protocol checks offsets, caches expire at their TTL, files
after 48 h, and a batch goes PENDING → RUNNING → SUCCEEDED. The fake's clock is stepped, never slept on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from proxy_service.demo.fake_resources import BATCH_S, FILE_TTL_S
from proxy_service.demo.fake_upstream import create_app
from tests.conftest import P1_A, P1_B, P2_A, SCENARIO
from tests.servers import serve

FLASH = "gemini-2.5-flash"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[tuple[httpx.Client, Clock]]:
    clock = Clock()
    with serve(create_app(SCENARIO, clock)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http, clock


def upload(http: httpx.Client, key: str, data: bytes) -> dict:
    start = http.post(
        "/upload/v1beta/files",
        headers={
            "x-goog-api-key": key,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(len(data)),
        },
        json={"file": {"displayName": "d"}},
    )
    assert start.status_code == 200 and start.headers["x-goog-upload-status"] == "active"
    url = start.headers["x-goog-upload-url"]
    wrong = http.post(
        url,
        headers={"x-goog-api-key": key, "x-goog-upload-command": "upload", "x-goog-upload-offset": "7"},
        content=b"x",
    )
    assert wrong.status_code == 400  # not where the upload stands
    done = http.post(
        url,
        headers={"x-goog-api-key": key, "x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"},
        content=data,
    )
    assert done.status_code == 200 and done.headers["x-goog-upload-status"] == "final", done.text
    file: dict = done.json()["file"]
    return file


def test_a_file_is_visible_only_to_its_project_and_expires(fake: tuple[httpx.Client, Clock]) -> None:
    http, clock = fake
    f = upload(http, P1_A, b"hello")
    assert f["sizeBytes"] == "5" and f["state"] == "ACTIVE"
    assert http.get(f"/v1beta/{f['name']}", headers={"x-goog-api-key": P1_B}).status_code == 200  # same project
    other = http.get(f"/v1beta/{f['name']}", headers={"x-goog-api-key": P2_A})
    assert other.status_code == 403 and other.json()["error"]["status"] == "PERMISSION_DENIED"
    body = {"contents": [{"parts": [{"fileData": {"fileUri": f["uri"], "mimeType": "text/plain"}}, {"text": "q"}]}]}
    gen = f"/v1beta/models/{FLASH}:generateContent"
    assert http.post(gen, headers={"x-goog-api-key": P2_A}, json=body).status_code == 403
    assert http.post(gen, headers={"x-goog-api-key": P1_A}, json=body).status_code == 200
    assert [x["name"] for x in http.get("/v1beta/files", headers={"x-goog-api-key": P1_A}).json()["files"]] == [
        f["name"]
    ]
    assert http.get("/v1beta/files", headers={"x-goog-api-key": P2_A}).json() == {}
    clock.now += FILE_TTL_S + 1
    assert http.get(f"/v1beta/{f['name']}", headers={"x-goog-api-key": P1_A}).status_code == 403


def test_a_cache_expires_at_its_ttl_and_a_patch_moves_it(fake: tuple[httpx.Client, Clock]) -> None:
    http, clock = fake
    h = {"x-goog-api-key": P1_A}
    c = http.post(
        "/v1beta/cachedContents", headers=h, json={"model": f"models/{FLASH}", "contents": [], "ttl": "60s"}
    ).json()
    gen = {"contents": [{"parts": [{"text": "q"}]}], "cachedContent": c["name"]}
    assert http.post(f"/v1beta/models/{FLASH}:generateContent", headers=h, json=gen).status_code == 200
    other = {"x-goog-api-key": P2_A}
    assert http.post(f"/v1beta/models/{FLASH}:generateContent", headers=other, json=gen).status_code == 403
    clock.now += 50
    assert http.patch(f"/v1beta/{c['name']}", headers=h, json={"ttl": "600s"}).status_code == 200
    clock.now += 100  # past the first TTL, inside the patched one
    assert http.get(f"/v1beta/{c['name']}", headers=h).status_code == 200
    clock.now += 600
    assert http.get(f"/v1beta/{c['name']}", headers=h).status_code == 403


def test_a_batch_moves_through_its_states_and_keeps_its_results(fake: tuple[httpx.Client, Clock]) -> None:
    http, clock = fake
    h = {"x-goog-api-key": P1_A}
    reqs = [{"request": {"contents": [{"parts": [{"text": f"q{i}"}]}]}, "metadata": {"i": i}} for i in range(2)]
    created = http.post(
        f"/v1beta/models/{FLASH}:batchGenerateContent",
        headers=h,
        json={"batch": {"displayName": "b", "inputConfig": {"requests": {"requests": reqs}}}},
    ).json()
    name = created["name"]
    assert created["metadata"]["state"] == "BATCH_STATE_PENDING" and not created.get("done")
    clock.now += BATCH_S / 2
    assert http.get(f"/v1beta/{name}", headers=h).json()["metadata"]["state"] == "BATCH_STATE_RUNNING"
    clock.now += BATCH_S
    done = http.get(f"/v1beta/{name}", headers=h).json()
    assert done["done"] is True and done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    answers = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert [a["metadata"]["i"] for a in answers] == [0, 1]
    assert all(a["response"]["candidates"][0]["content"]["parts"][0]["text"] for a in answers)
    assert http.get(f"/v1beta/{name}", headers={"x-goog-api-key": P2_A}).status_code == 403
    assert http.delete(f"/v1beta/{name}", headers=h).status_code == 200
    assert http.get(f"/v1beta/{name}", headers=h).status_code == 403
