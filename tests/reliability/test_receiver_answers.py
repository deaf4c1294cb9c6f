"""Issue 23, class 4 (the receiver half): every answer read from a notification receiver is bounded in size and in
time, so a receiver answering 1 GB leaves the proxy small and the delivery is recorded as failed, saying why.

The proxy runs as its own process (`keyrack serve`), so its memory is measured alone: VmHWM from /proc is the peak
resident size over the process's whole life. The receiver is a real HTTP server streaming a 1 GB answer.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, SCENARIO
from tests.reliability import receivers
from tests.reliability.harness import fake_upstream, start_proxy

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
GB = 1 << 30
RSS_LIMIT_MB = 400


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_receiver_answering_1gb_leaves_the_proxy_small_and_fails_precisely(tmp_path: Path) -> None:
    with fake_upstream(tmp_path, SCENARIO) as (_up, up_url), receivers.huge(GB) as huge:
        proc, url = start_proxy(
            tmp_path,
            upstream_url=up_url,
            admin_token=ADMIN_TOKEN,
            access_tokens=CLIENT_TOKEN,
            api_keys=POOL_KEYS,
            alert_interval_s=1,
        )
        try:
            port = huge.url.rsplit(":", 1)[1]
            with httpx.Client(base_url=url + "/admin/api", headers=AUTH, timeout=120) as http:
                for name, channel_url in [
                    ("webhook", f"webhook+{huge.url}/hook"),
                    ("apprise-json", f"json://127.0.0.1:{port}/hook"),
                ]:
                    r = http.post("/alerts/channels", json={"name": name, "url": channel_url})
                    assert r.status_code == 201, r.text
                    cid = r.json()["id"]
                    sent_before = huge.sent
                    r = http.post(f"/alerts/channels/{cid}/test")
                    assert r.status_code == 200, r.text
                    answer = r.json()
                    assert answer["ok"] is False, (name, answer)
                    assert "larger than" in answer["message"] and "MiB" in answer["message"], (name, answer)
                    # Reading stopped near the cap, not after the whole gigabyte.
                    assert huge.sent - sent_before < GB // 4, (name, huge.sent - sent_before)
                    failed = http.get("/alerts/history", params={"kind": "failed"}).json()["items"]
                    assert any(h["channel_id"] == cid and "larger than" in h["message"] for h in failed), failed
                peak = _peak_mb(proc.pid)
                assert peak < RSS_LIMIT_MB, f"proxy peak RSS {peak:.0f} MB"
                assert httpx.get(url + "/readyz", timeout=10).status_code == 200
        finally:
            proc.stop()
