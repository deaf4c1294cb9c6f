"""Resources across three replicas: a file, a cache or a batch created through one replica is used through the
others (the map is shared through Redis), and an upload's chunks may go to another replica than its start. Real
`keyrack serve` processes on one lake and one Redis, the fake upstream answering 403 to any other project's key,
round-robin rotation on."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import httpx
from google import genai
from google.genai import types

from tests.cluster.conftest import Replica
from tests.conftest import CLIENT_TOKEN, SCENARIO, Upstream

FLASH = "gemini-2.5-flash"
DEADLINE_S = 90.0


def sdk(url: str) -> genai.Client:
    return genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=url, api_version="v1"))


def test_a_resource_made_through_one_replica_is_used_through_the_others(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    replicas = [start_replica(up.url, strategy="round_robin") for _ in range(3)]
    clients = [sdk(r.url) for r in replicas]

    f = clients[0].files.upload(file=io.BytesIO(b"shared file\n" * 100), config={"mime_type": "text/plain"})
    assert f.name
    for i in range(10):
        assert clients[1 + i % 2].models.generate_content(model=FLASH, contents=[f, "q"]).text
    assert clients[2].files.get(name=f.name).name == f.name

    cache = clients[1].caches.create(model=FLASH, config=types.CreateCachedContentConfig(contents=["ctx"], ttl="600s"))
    assert cache.name
    for i in range(10):
        config = types.GenerateContentConfig(cached_content=cache.name)
        assert clients[(2 + i) % 3].models.generate_content(model=FLASH, contents="q", config=config).text

    job = clients[2].batches.create(model=FLASH, src=[{"contents": [{"parts": [{"text": "a"}], "role": "user"}]}])
    assert job.name
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = clients[0].batches.get(name=job.name)
        if got.state is not None and got.state.name == "JOB_STATE_SUCCEEDED":
            break
        assert time.monotonic() < deadline, got.state
        time.sleep(0.1)
    assert got.dest is not None and got.dest.inlined_responses and got.dest.inlined_responses[0].response


def test_an_upload_started_on_one_replica_finishes_on_another(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    first, second = (start_replica(up.url, strategy="round_robin") for _ in range(2))
    with httpx.Client(timeout=60) as http:
        start = http.post(
            f"{first.url}/upload/v1/files",
            headers={
                "x-goog-api-key": CLIENT_TOKEN,
                "x-goog-upload-protocol": "resumable",
                "x-goog-upload-command": "start",
                "x-goog-upload-header-content-length": "10",
            },
            json={"file": {"display_name": "ten"}},
        )
        assert start.status_code == 200, start.text
        path = start.headers["x-goog-upload-url"].removeprefix(first.url)
        part = http.post(
            f"{second.url}{path}",
            headers={"x-goog-upload-command": "upload", "x-goog-upload-offset": "0"},
            content=b"01234",
        )
        assert part.status_code == 200 and part.headers["x-goog-upload-status"] == "active", part.text
        last = http.post(
            f"{first.url}{path}",
            headers={"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "5"},
            content=b"56789",
        )
        assert last.status_code == 200 and last.headers["x-goog-upload-status"] == "final", last.text
        name = last.json()["file"]["name"]
    assert (
        sdk(second.url)
        .models.generate_content(
            model=FLASH,
            contents=[
                types.Part.from_uri(
                    file_uri=f"https://generativelanguage.googleapis.com/v1/{name}", mime_type="text/plain"
                ),
                "q",
            ],
        )
        .text
    )
