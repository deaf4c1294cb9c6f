"""An upload streams through Keyrack: the proxy's RSS while 1 GB goes through the Files API's resumable protocol.

`keyrack serve` and the fake upstream run as subprocesses; this process opens a resumable upload through the proxy
(`X-Goog-Upload-Command: start`), then sends the bytes to the upload URL Keyrack answered with, either as one
`upload, finalize` request of `--mb` MB or in the SDK's 8 MB chunks, while a thread samples the proxy's VmRSS every
50 ms. The baseline is the same proxy's RSS after a small warm-up upload in the same run; the figure is the peak
growth over it (target < 64 MB for 1 GB: the bytes are piped, never held).

    python -m bench.upload_memory [--mb 1024] [--chunk-mb 0 (one request) | 8]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import CLIENT_TOKEN, start_fake, start_proxy, wait_ready
from bench.memory import rss
from proxy_service.demo.scenario import demo_key

TARGET_GROWTH_MB = 64.0
POOL_KEYS = ",".join(f"p{i // 2 + 1}:{demo_key(f'bench-upload-{i}')}" for i in range(4))
PIECE = bytes(range(256)) * 4096  # 1 MiB written per generator step


def _body(n_bytes: int) -> Iterator[bytes]:
    left = n_bytes
    while left > 0:
        piece = PIECE[: min(left, len(PIECE))]
        left -= len(piece)
        yield piece


def upload(client: httpx.Client, url: str, n_bytes: int, chunk: int) -> dict[str, Any]:
    """One file of `n_bytes` through the proxy at `url`; `chunk` bytes per request (0: all in one)."""
    start = client.post(
        f"{url}/upload/v1beta/files",
        headers={
            "x-goog-api-key": CLIENT_TOKEN,
            "x-goog-upload-protocol": "resumable",
            "x-goog-upload-command": "start",
            "x-goog-upload-header-content-length": str(n_bytes),
            "x-goog-upload-header-content-type": "application/octet-stream",
        },
        json={"file": {"display_name": "bench"}},
    )
    start.raise_for_status()
    upload_url = start.headers["x-goog-upload-url"]
    step = chunk or n_bytes
    offset = 0
    answer: httpx.Response | None = None
    while offset < n_bytes:
        size = min(step, n_bytes - offset)
        last = offset + size >= n_bytes
        answer = client.post(
            upload_url,
            headers={
                "x-goog-upload-command": "upload, finalize" if last else "upload",
                "x-goog-upload-offset": str(offset),
                "content-length": str(size),
            },
            content=_body(size),
        )
        answer.raise_for_status()
        offset += size
    assert answer is not None and answer.headers.get("x-goog-upload-status") == "final", answer
    doc: dict[str, Any] = answer.json()["file"]
    return doc


def run(mb: int = 1024, chunk_mb: int = 0, workdir: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keyrack-upload-bench-") as tmp:
        root = workdir or Path(tmp)
        fake = start_fake(root)
        proxy = start_proxy(root, fake.url, POOL_KEYS)
        try:
            wait_ready([fake, proxy])
            with httpx.Client(timeout=600) as client:
                upload(client, proxy.url, 4 * 2**20, 0)  # warm-up: routes, client pools, the upload code paths
                time.sleep(0.5)
                baseline = rss(proxy.proc.pid)["VmRSS"]
                peak = [baseline]
                stop = threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        peak[0] = max(peak[0], rss(proxy.proc.pid)["VmRSS"])
                        stop.wait(0.05)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                t0 = time.perf_counter()
                doc = upload(client, proxy.url, mb * 2**20, chunk_mb * 2**20)
                seconds = time.perf_counter() - t0
                stop.set()
                sampler.join()
            assert int(doc["sizeBytes"]) == mb * 2**20, doc
            growth = peak[0] - baseline
            return {
                "mb": mb,
                "chunk_mb": chunk_mb,
                "seconds": round(seconds, 2),
                "mb_per_s": round(mb / seconds, 1),
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak[0],
                "growth_mb": round(growth, 1),
                "growth_per_gb_uploaded": round(growth / (mb / 1024), 1),
                "target_growth_mb": TARGET_GROWTH_MB,
                "ok": growth < TARGET_GROWTH_MB,
            }
        finally:
            proxy.stop()
            fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--chunk-mb", type=int, default=0)
    args = parser.parse_args()
    out = run(args.mb, args.chunk_mb)
    for k, v in out.items():
        print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
