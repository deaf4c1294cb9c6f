"""Memory while a hostile upstream sends a huge non-stream answer (issue 23, class 4).

    python -m bench.upstream_answer [--size-mb 1024] [--cap-mb 64] [--surface gemini|openai]

A socket-level stand-in for Google on 127.0.0.1 answers every call with `--size-mb` MiB (chunked, written from one
reused 1 MiB buffer, so this process stays small); `keyrack serve` runs as its own process in front of it with
`max_answer_mb` = `--cap-mb`. One non-stream call is sent; the proxy's RSS is sampled every 20 ms from
/proc/<pid>/status while it runs, and its peak (`VmHWM`) read after. The report gives the status the client got,
the bytes the upstream managed to write before the proxy stopped reading, and the RSS figures.

Target (issue 23): the proxy's RSS stays under 400 MB, and the client gets a 502.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_TOKEN, CLIENT_TOKEN, HOST, RESULTS, start_proxy, wait_ready, write_json
from proxy_service.demo.scenario import demo_key
from tests.reliability.raw_upstream import RawRequest, RawUpstream, chunk, head, raw_upstream

TARGET_RSS_MB = 400.0
MB = 2**20
_BLOCK = (b'{"candidates": [{"content": {"parts": [{"text": "' + b"x" * MB)[:MB]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def run(size_mb: int = 1024, cap_mb: float = 64.0, surface: str = "gemini") -> dict[str, Any]:
    size = size_mb * MB

    def answer(conn: Any, request: RawRequest, up: RawUpstream) -> None:
        conn.sendall(head())
        left = size
        while left > 0:
            piece = _BLOCK[: min(left, MB)]
            conn.sendall(chunk(piece))
            up.add_sent(len(piece))
            left -= len(piece)
        conn.sendall(b"0\r\n\r\n")

    with tempfile.TemporaryDirectory(prefix="keyrack-bench-answer-") as tmp, raw_upstream(answer) as up:
        proxy = start_proxy(
            Path(tmp), up.url, f"p1:{demo_key('bench-answer')}", env={"KEYRACK_MAX_ANSWER_MB": f"{cap_mb:g}"}
        )
        try:
            wait_ready([proxy])
            pid = proxy.proc.pid
            idle_kb = _status_kb(pid, "VmRSS")
            samples: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    samples.append(_status_kb(pid, "VmRSS"))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.monotonic()
            if surface == "openai":
                resp = httpx.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {CLIENT_TOKEN}"},
                    timeout=600,
                )
            else:
                resp = httpx.post(
                    f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
                    json={"contents": [{"parts": [{"text": "hi"}]}]},
                    headers={"x-goog-api-key": CLIENT_TOKEN},
                    timeout=600,
                )
            elapsed = time.monotonic() - started
            done.set()
            sampler.join(5)
            peak_kb = _status_kb(pid, "VmHWM")
            after_kb = _status_kb(pid, "VmRSS")
            health = httpx.get(f"{proxy.url}/readyz", timeout=30).status_code
            events = httpx.get(
                f"{proxy.url}/admin/api/stats/summary", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
            ).status_code
        finally:
            proxy.stop()
    return {
        "answer_mb": size_mb,
        "cap_mb": cap_mb,
        "surface": surface,
        "status": resp.status_code,
        "message": resp.text[:300],
        "seconds": round(elapsed, 2),
        "upstream_wrote_mb": round(up.sent / MB, 1),
        "rss_idle_mb": round(idle_kb / 1024, 1),
        "rss_peak_sampled_mb": round(max(samples, default=0) / 1024, 1),
        "rss_peak_hwm_mb": round(peak_kb / 1024, 1),
        "rss_after_mb": round(after_kb / 1024, 1),
        "readyz_after": health,
        "admin_after": events,
        "host": HOST,
        "target": {"rss_mb": f"< {TARGET_RSS_MB:g}", "met": peak_kb / 1024 < TARGET_RSS_MB and resp.status_code == 502},
    }


def report(f: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"### A {f['answer_mb']} MiB non-stream upstream answer ({f['surface']} surface, cap {f['cap_mb']:g} MiB)",
            "",
            f"- client got {f['status']} after {f['seconds']} s: {f['message'][:160]!r}",
            f"- the upstream wrote {f['upstream_wrote_mb']} MiB before the proxy stopped reading",
            f"- proxy RSS: idle {f['rss_idle_mb']} MB, peak {f['rss_peak_hwm_mb']} MB (VmHWM; sampled every 20 ms: "
            f"{f['rss_peak_sampled_mb']} MB), after {f['rss_after_mb']} MB; /readyz after: {f['readyz_after']}",
            f"- target peak RSS {f['target']['rss_mb']} MB and a 502: {'met' if f['target']['met'] else 'MISSED'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the upstream's answer in MiB (default 1024)")
    ap.add_argument("--cap-mb", type=float, default=64.0, help="the proxy's max_answer_mb (default 64)")
    ap.add_argument("--surface", choices=("gemini", "openai"), default="gemini")
    ap.add_argument("--json", type=Path, default=RESULTS / "upstream_answer.json", help="where to write the figures")
    args = ap.parse_args(argv)
    figures = run(args.size_mb, args.cap_mb, args.surface)
    print(report(figures))
    write_json(args.json, figures)
    return 0 if figures["target"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
