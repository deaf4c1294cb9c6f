"""Files, cached contents and batches through Keyrack with the real google-genai SDK, on a pool of three projects
rotated round-robin: every resource is used through keys of the project that created it (the fake answers 403 to
any other project's key), so each call below would fail on two keys in three without the resource map."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types

from proxy_service.app import create_app
from proxy_service.settings import Settings
from tests.conftest import CLIENT_TOKEN, P1_A, P1_B, P2_A, P3_A, POOL_KEYS, SCENARIO, Proxy, Upstream
from tests.servers import serve

FLASH = "gemini-2.5-flash"
DEADLINE_S = 60.0  # generous: the machine is shared
PROJECT_OF = {k: p for p, keys in SCENARIO["projects"].items() for k in keys}


def sdk(url: str, version: str = "v1") -> genai.Client:
    return genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=url, api_version=version))


@pytest.fixture
def pair(start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]) -> tuple[Upstream, Proxy]:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin")
    return upstream, proxy


def key_projects(upstream: Upstream) -> Counter[str]:
    return Counter({PROJECT_OF[k]: n for k, n in upstream.stats()["by_key"].items()})


def wait_done(client: genai.Client, name: str) -> types.BatchJob:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = client.batches.get(name=name)
        if job.state is not None and job.state.name in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
            return job
        assert time.monotonic() < deadline, f"batch {name} still {job.state}"
        time.sleep(0.05)


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_uploaded_file_used_in_ten_calls(pair: tuple[Upstream, Proxy], version: str) -> None:
    upstream, proxy = pair
    client = sdk(proxy.url, version)
    data = b"keyrack file body\n" * 1000
    f = client.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain", "display_name": "notes"})
    assert f.name and f.name.startswith("files/") and f.size_bytes == len(data)
    owner = proxy.gateway.resources.owner(f.name)
    assert owner is not None
    for _ in range(10):
        r = client.models.generate_content(model=FLASH, contents=[f, "Summarise the file."])
        assert r.text
    # Round robin spread the plain calls, the file's calls all went to its project.
    assert client.files.get(name=f.name).size_bytes == len(data)
    assert f.name in [x.name for x in client.files.list()]
    plain = [client.models.generate_content(model=FLASH, contents="hello").text for _ in range(6)]
    assert all(plain)
    assert len(key_projects(upstream)) == 3
    client.files.delete(name=f.name)
    assert proxy.gateway.resources.owner(f.name) is None
    with pytest.raises(errors.ClientError) as err:
        client.files.get(name=f.name)
    assert err.value.code == 403


def test_uploads_go_to_the_project_storing_least(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    projects = []
    for n in range(3):
        f = client.files.upload(file=io.BytesIO(b"x" * (1000 + n)), config={"mime_type": "text/plain"})
        owner = proxy.gateway.resources.owner(f.name or "")
        assert owner is not None
        projects.append(owner.project)
    assert sorted(projects) == ["p1", "p2", "p3"]


def test_cache_created_patched_and_used_in_ten_calls(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    cache = client.caches.create(
        model=FLASH,
        config=types.CreateCachedContentConfig(contents=["A long shared context. " * 50], ttl="300s"),
    )
    assert cache.name and cache.name.startswith("cachedContents/")
    for _ in range(10):
        r = client.models.generate_content(
            model=FLASH, contents="Question?", config=types.GenerateContentConfig(cached_content=cache.name)
        )
        assert r.text
    before = client.caches.get(name=cache.name).expire_time
    updated = client.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="7200s"))
    assert before is not None and updated.expire_time is not None and updated.expire_time > before
    assert cache.name in [c.name for c in client.caches.list()]
    client.caches.delete(name=cache.name)
    assert proxy.gateway.resources.owner(cache.name) is None


def test_inline_batch_runs_to_completion(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    job = client.batches.create(
        model=FLASH,
        src=[{"contents": [{"parts": [{"text": f"question {i}"}], "role": "user"}]} for i in range(3)],
    )
    assert job.name and job.name.startswith("batches/")
    done = wait_done(client, job.name)
    assert done.state is not None and done.state.name == "JOB_STATE_SUCCEEDED"
    assert done.dest is not None and done.dest.inlined_responses is not None
    answers = [r.response.text for r in done.dest.inlined_responses if r.response is not None]
    assert len(answers) == 3 and all(answers)
    assert job.name in [b.name for b in client.batches.list()]
    client.batches.delete(name=job.name)
    assert proxy.gateway.resources.owner(job.name) is None


def test_batch_from_an_uploaded_file_and_its_result_file(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    lines = [json.dumps({"key": f"r{i}", "request": {"contents": [{"parts": [{"text": f"q{i}"}]}]}}) for i in range(4)]
    src = client.files.upload(file=io.BytesIO("\n".join(lines).encode()), config={"mime_type": "application/jsonl"})
    assert src.name
    job = client.batches.create(model=FLASH, src=src.name)
    assert job.name
    assert proxy.gateway.resources.owner(job.name).project == proxy.gateway.resources.owner(src.name).project
    done = wait_done(client, job.name)
    assert done.dest is not None and done.dest.file_name
    result_owner = proxy.gateway.resources.owner(done.dest.file_name)  # made upstream by the batch's project
    assert result_owner is not None and result_owner.project == proxy.gateway.resources.owner(job.name).project
    result = client.files.download(file=done.dest.file_name)
    rows = [json.loads(line) for line in result.decode().splitlines()]
    assert sorted(r["key"] for r in rows) == ["r0", "r1", "r2", "r3"]
    assert all(r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in rows)


def test_no_usable_key_in_the_owning_project_is_a_clear_error(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    client = sdk(proxy.url)
    cache = client.caches.create(model=FLASH, config=types.CreateCachedContentConfig(contents=["ctx"], ttl="300s"))
    assert cache.name
    owner = proxy.gateway.resources.owner(cache.name)
    assert owner is not None
    for key in list(proxy.gateway.pool.keys.values()):
        if key.scope == owner.project:
            proxy.gateway.pool.disable(key)
    before = sum(upstream.stats()["by_key"].values())
    r = httpx.post(
        f"{proxy.url}/v1beta/models/{FLASH}:generateContent",
        headers={"x-goog-api-key": CLIENT_TOKEN},
        json={"contents": [{"parts": [{"text": "q"}]}], "cachedContent": cache.name},
        timeout=30,
    )
    assert r.status_code == 503, r.text
    assert f"project {owner.project}" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    assert sum(upstream.stats()["by_key"].values()) == before  # no other project's key was tried


def test_resource_map_survives_a_restart(start_upstream: Callable[..., Upstream], tmp_path: Path) -> None:
    upstream = start_upstream(SCENARIO)
    settings = {
        "data_dir": tmp_path / "proxy",
        "upstream_url": upstream.url,
        "access_tokens": [CLIENT_TOKEN],
        "api_keys": POOL_KEYS,
        "recheck_interval_s": 3600,
        "strategy": "round_robin",
    }
    app = create_app(Settings(_env_file=None, **settings))  # type: ignore[arg-type]
    with serve(app, lifespan="on") as url:
        first = sdk(url)
        f = first.files.upload(file=io.BytesIO(b"keep me"), config={"mime_type": "text/plain"})
        assert f.name
        owner = app.state.gateway.resources.owner(f.name)
        assert owner is not None
    again = create_app(Settings(_env_file=None, **settings))  # type: ignore[arg-type]
    assert again.state.gateway.resources.owner(f.name) == owner
    with serve(again, lifespan="on") as url:
        client = sdk(url)
        for _ in range(6):
            assert client.models.generate_content(model=FLASH, contents=[f, "q"]).text


def test_secrets_never_in_upload_answers(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    start = httpx.post(
        f"{proxy.url}/upload/v1beta/files",
        headers={
            "x-goog-api-key": CLIENT_TOKEN,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": "5",
            "content-type": "application/json",
        },
        json={"file": {"display_name": "five"}},
        timeout=30,
    )
    assert start.status_code == 200, start.text
    url = start.headers["x-goog-upload-url"]
    assert url.startswith(proxy.url)
    bad = httpx.post(
        url,
        headers={
            "x-goog-api-key": CLIENT_TOKEN,
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": "3",
        },
        content=b"hello",
        timeout=30,
    )
    assert bad.status_code == 400
    text = bad.text + json.dumps(dict(bad.headers)) + start.text + json.dumps(dict(start.headers))
    for secret in (P1_A, P1_B, P2_A, P3_A):
        assert secret not in text
    bogus = httpx.post(
        f"{proxy.url}/upload/v1beta/files?upload_id=nope",
        headers={
            "x-goog-api-key": CLIENT_TOKEN,
            "x-goog-upload-command": "upload, finalize",
            "x-goog-upload-offset": "0",
        },
        content=b"x",
        timeout=30,
    )
    assert bogus.status_code == 404


def test_a_multipart_upload_is_piped_and_kept_with_its_project(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    boundary = "keyrack-boundary-1"
    media = b"multipart media bytes\n" * 50
    body = (
        (
            f'--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{"file": {{"displayName": "mp"}}}}\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        ).encode()
        + media
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = httpx.post(
        f"{proxy.url}/upload/v1beta/files",
        headers={
            "x-goog-api-key": CLIENT_TOKEN,
            "x-goog-upload-protocol": "multipart",
            "content-type": f"multipart/related; boundary={boundary}",
        },
        content=body,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    f = r.json()["file"]
    assert f["sizeBytes"] == str(len(media)) and f["mimeType"] == "text/plain"
    owner = proxy.gateway.resources.owner(f["name"])
    assert owner is not None and owner.size_bytes == len(media)
    client = sdk(proxy.url)
    for _ in range(4):
        assert client.models.generate_content(
            model=FLASH, contents=[types.Part.from_uri(file_uri=f["uri"], mime_type="text/plain"), "q"]
        ).text


def test_an_embeddings_batch_runs_to_completion(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    with pytest.warns(Warning):  # the SDK marks create_embeddings experimental
        job = client.batches.create_embeddings(
            model="gemini-embedding-001", src={"inlined_requests": {"contents": ["first text", "second text"]}}
        )
    assert job.name and proxy.gateway.resources.owner(job.name) is not None
    done = wait_done(client, job.name)
    assert done.dest is not None and done.dest.inlined_embed_content_responses
    vectors = [r.response.embedding.values for r in done.dest.inlined_embed_content_responses if r.response]
    assert len(vectors) == 2 and all(vectors)


def test_an_upload_skips_a_project_that_cannot_take_it_now(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    for key in list(proxy.gateway.pool.keys.values()):
        if key.project == "p1":  # the emptiest project by name order: the first choice otherwise
            proxy.gateway.pool.disable(key)
    client = sdk(proxy.url)
    f = client.files.upload(file=io.BytesIO(b"elsewhere"), config={"mime_type": "text/plain"})
    owner = proxy.gateway.resources.owner(f.name or "")
    assert owner is not None and owner.project == "p2"
    for key in list(proxy.gateway.pool.keys.values()):
        proxy.gateway.pool.disable(key)
    with pytest.raises(errors.APIError) as err:
        client.files.upload(file=io.BytesIO(b"nowhere"), config={"mime_type": "text/plain"})
    assert err.value.code == 429


def test_open_upload_sessions_are_bounded(pair: tuple[Upstream, Proxy], monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy_service.surfaces import resources as surface

    _, proxy = pair
    monkeypatch.setattr(surface, "MAX_SESSIONS", 2)
    urls = []
    for _ in range(3):
        start = httpx.post(
            f"{proxy.url}/upload/v1beta/files",
            headers={
                "x-goog-api-key": CLIENT_TOKEN,
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": "1",
            },
            json={"file": {}},
            timeout=30,
        )
        assert start.status_code == 200, start.text
        urls.append(start.headers["x-goog-upload-url"])
    assert len(proxy.gateway.upload_sessions) == 2
    chunk = {"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"}
    assert httpx.post(urls[0], headers=chunk, content=b"a", timeout=30).status_code == 404  # the oldest, forgotten
    assert httpx.post(urls[2], headers=chunk, content=b"a", timeout=30).status_code == 200


def test_events_carry_the_resource_kind_and_id(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    data = b"resource events\n" * 500
    f = client.files.upload(file=io.BytesIO(data), config={"mime_type": "text/plain"})
    assert f.name
    assert client.models.generate_content(model=FLASH, contents=[f, "q"]).text
    cache = client.caches.create(
        model=FLASH, config=types.CreateCachedContentConfig(contents=[f, "context"], ttl="300s")
    )
    assert cache.name
    client.caches.get(name=cache.name)
    job = client.batches.create(model=FLASH, src=[{"contents": [{"parts": [{"text": "q"}], "role": "user"}]}])
    assert job.name
    assert client.models.generate_content(model=FLASH, contents="plain").text
    rows = proxy.rows(
        "SELECT operation, resource_kind, resource_id, request_bytes, project FROM requests "
        "WHERE status = 200 ORDER BY ts"
    )
    by_op: dict[str, list[tuple[str | None, str | None, int]]] = {}
    for op, kind, rid, sent, _ in rows:
        by_op.setdefault(op, []).append((kind, rid, sent))
    # The upload's start names no file yet; its final chunk names the file made and counts the bytes moved.
    assert by_op["files.upload.resumable"] == [("file", None, by_op["files.upload.resumable"][0][2])]
    assert by_op["files.upload"] == [("file", f.name, len(data))]
    # A generate call naming a file carries it; a cache's create names the cache it made (not the file it holds).
    assert ("file", f.name) in [(k, r) for k, r, _ in by_op["generateContent"]]
    assert (None, None) in [(k, r) for k, r, _ in by_op["generateContent"]]
    assert [(k, r) for k, r, _ in by_op["cachedContents.create"]] == [("cachedContent", cache.name)]
    assert [(k, r) for k, r, _ in by_op["cachedContents.get"]] == [("cachedContent", cache.name)]
    assert [(k, r) for k, r, _ in by_op["batchGenerateContent"]] == [("batch", job.name)]


def test_a_resource_map_that_cannot_be_saved_shows_in_readyz_and_loses_nothing(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    client = sdk(proxy.url)
    path = proxy.data_dir / "resources.jsonl"
    assert httpx.get(f"{proxy.url}/readyz").json()["resources"] == "ok"
    path.unlink(missing_ok=True)
    path.mkdir()  # the side file cannot be written (as on a full or read-only disk)
    f = client.files.upload(file=io.BytesIO(b"made during the fault"), config={"mime_type": "text/plain"})
    assert f.name
    deadline = time.monotonic() + DEADLINE_S
    while (ready := httpx.get(f"{proxy.url}/readyz")).status_code == 200:
        assert time.monotonic() < deadline, "readyz never reported the resource map"
        time.sleep(0.05)
    body = ready.json()
    assert ready.status_code == 503 and body["resources"].startswith("resource map not saved")
    assert body["reason"] == body["resources"] and body["storage"] == "ok"
    for _ in range(4):  # the file is still pinned to its project, from memory
        assert client.models.generate_content(model=FLASH, contents=[f, "q"]).text
    path.rmdir()
    while httpx.get(f"{proxy.url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readyz never recovered"
        time.sleep(0.05)
    saved = [json.loads(line)["name"] for line in path.read_text().splitlines()]
    assert f.name in saved
