"""The real @google/genai JS SDK (tests/js, installed by `make test` from its lockfile) through Keyrack on the fake
upstream, with a pool of three projects rotated round-robin: a file uploaded and used in 10 calls, a cache created
and used in 10 calls, a batch inline and one from an uploaded file run to completion, and a Live session of three
turns over plain ws://. Every resource call must reach its owner's project (the fake answers 403 to any other)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CLIENT_TOKEN, SCENARIO, Proxy, Upstream

JS = Path(__file__).parent / "js"
FLASH = "gemini-2.5-flash"
LIVE_MODEL = "gemini-2.0-flash-live-001"
DEADLINE_S = 240.0  # node's start and the SDK's import are slow on a loaded machine
PROJECT_OF = {k: p for p, keys in SCENARIO["projects"].items() for k in keys}


def node() -> str:
    """node, and the SDK installed from tests/js/package-lock.json: `make test` installs it (`make js`)."""
    exe = shutil.which("node")
    assert exe is not None, "node is needed for the JS SDK test (Node.js 20 or later)"
    assert (JS / "node_modules" / "@google" / "genai").is_dir(), "run `make js` (make test does) to install the SDK"
    return exe


def test_the_js_sdk_uses_files_caches_batches_and_live_through_the_pool(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin")
    env = {
        **os.environ,
        "KEYRACK_URL": proxy.url,
        "KEYRACK_TOKEN": CLIENT_TOKEN,
        "KEYRACK_MODEL": FLASH,
        "KEYRACK_LIVE_MODEL": LIVE_MODEL,
    }
    run = subprocess.run(
        [node(), "sdk_through_keyrack.mjs"], cwd=JS, env=env, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    owner = proxy.gateway.resources.owner

    assert all(out["plain"])
    f = out["file"]
    assert f["name"].startswith("files/") and f["size"] == f["expected"]
    assert len(f["texts"]) == 10 and all(f["texts"])
    assert len(out["cache"]["texts"]) == 10 and all(out["cache"]["texts"])
    assert owner(out["cache"]["name"]) is None  # deleted: forgotten

    inline = out["inlineBatch"]
    assert inline["state"] == "JOB_STATE_SUCCEEDED" and len(inline["answers"]) == 3 and all(inline["answers"])
    batch = out["fileBatch"]
    assert batch["keys"] == ["r0", "r1", "r2", "r3"]
    projects = {owner(n).project for n in (batch["name"], batch["input"], batch["result"])}  # type: ignore[union-attr]
    assert len(projects) == 1  # the batch went to its input file's project, its result file came from there

    live = out["live"]
    assert len(live) == 3 and all(t["answer"] and t["total"] > 0 for t in live)

    # Round robin spread everything else over the three projects.
    used = Counter({PROJECT_OF[k]: n for k, n in upstream.stats()["by_key"].items()})
    assert len(used) == 3, used
    rows = proxy.rows(
        "SELECT resource_kind, count(*) FROM requests WHERE status = 200 AND resource_kind IS NOT NULL GROUP BY ALL"
    )
    kinds = dict(rows)
    assert kinds.get("live") == 1 and kinds.get("cachedContent", 0) >= 12 and kinds.get("batch", 0) >= 2
    assert kinds.get("file", 0) >= 10
