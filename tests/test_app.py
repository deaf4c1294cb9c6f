"""The Gateway's own jobs: scheduled re-checks of broken keys, live config, key persistence across restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from proxy_service import app as app_module
from proxy_service.app import Gateway, create_app
from proxy_service.keys import key_id
from proxy_service.settings import ConfigError, Settings
from tests.conftest import BAD_1, CLIENT_TOKEN, P2_A, POOL_KEYS, SCENARIO, Proxy, Upstream
from tests.servers import serve

BODY = {"contents": [{"parts": [{"text": "hi"}]}]}


def generate(proxy: Proxy) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/gemini-2.5-flash:generateContent",
        json=BODY,
        headers={"x-goog-api-key": CLIENT_TOKEN},
    )


def calls(settings: Settings, n: int) -> list[int]:
    """Status codes of `n` generateContent calls through a gateway started (and stopped) for them."""
    with serve(create_app(settings), lifespan="on") as url:
        return [
            httpx.post(
                f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
                json=BODY,
                headers={"x-goog-api-key": CLIENT_TOKEN},
            ).status_code
            for _ in range(n)
        ]


def test_invalid_key_comes_back_when_a_scheduled_recheck_passes(
    monkeypatch: pytest.MonkeyPatch, start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    monkeypatch.setattr(app_module, "RECHECK_TICK_S", 0.1)
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin", api_keys=f"{BAD_1},{POOL_KEYS}", recheck_interval_s=1)
    for _ in range(5):
        assert generate(proxy).status_code == 200
    bad = proxy.gateway.pool.keys[key_id(BAD_1)]
    assert bad.status == "invalid"
    deadline = time.time() + 5
    while bad.last_checked_at is None and time.time() < deadline:
        time.sleep(0.05)
    assert bad.status == "invalid" and bad.last_checked_at is not None  # re-checked, still refused upstream

    # The operator fixes the key at Google's side (here: the fake now knows it).
    upstream.set_scenario({**SCENARIO, "projects": {**SCENARIO["projects"], "p9": [BAD_1]}, "invalid_keys": []})
    deadline = time.time() + 5
    while bad.status != "active" and time.time() < deadline:
        time.sleep(0.1)
    assert bad.status == "active" and bad.last_error is None


def test_config_changes_apply_live_and_persist(start_upstream: Callable[..., Upstream], tmp_path) -> None:  # type: ignore[no-untyped-def]
    upstream = start_upstream(SCENARIO)
    settings = Settings(_env_file=None, data_dir=tmp_path, upstream_url="http://127.0.0.1:9", api_keys=POOL_KEYS)  # type: ignore[call-arg]

    async def scenario() -> None:
        gw = Gateway(settings)
        async with gw.lifespan(None):  # type: ignore[arg-type]
            old_client = gw.relay.client
            new = await gw.update_config({"strategy": "round_robin", "upstream_url": upstream.url, "max_retries": 1})
            assert new.strategy == gw.pool.strategy == "round_robin"
            assert gw.relay.client is not old_client and str(gw.relay.client.base_url).startswith(upstream.url)
            with pytest.raises(ConfigError) as exc:
                await gw.update_config({"max_retries": -1, "upstream_url": "ftp://x", "nope": 1})
            assert set(exc.value.errors) == {"nope"}  # unknown names are refused before values are checked
            with pytest.raises(ConfigError) as exc:
                await gw.update_config({"max_retries": -1, "upstream_url": "ftp://x", "display_timezone": "Mars/Base"})
            assert set(exc.value.errors) == {"max_retries", "upstream_url", "display_timezone"}
            assert "http(s) URL" in exc.value.errors["upstream_url"]
            assert gw.config.max_retries == 1  # a rejected patch changes nothing
            gw.writer.flush()

        restarted = Gateway(settings)  # saved config wins over the env seed after a restart
        assert restarted.config.strategy == "round_robin" and restarted.config.upstream_url == upstream.url
        await restarted.reset_config()
        assert restarted.config.strategy == "quota_aware"
        restarted.store.close()

    asyncio.run(scenario())


def test_key_state_survives_a_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(_env_file=None, data_dir=tmp_path, api_keys=POOL_KEYS)  # type: ignore[call-arg]
    gw = Gateway(settings)
    gw.writer.start()
    key = gw.pool.keys[key_id(P2_A)]
    gw.pool.disable(key)
    key.requests = 41
    gw.pool.dirty.add(key.id)
    gw.persist_keys()
    gw.writer.stop()
    gw.store.close()

    again = Gateway(Settings(_env_file=None, data_dir=tmp_path, api_keys=""))  # type: ignore[call-arg]
    same = again.pool.keys[key.id]
    assert (same.status, same.disabled_reason, same.requests, same.project) == ("disabled", "manual", 41, "p2")
    assert len(again.pool.keys) == 4
    again.store.close()


def test_quota_day_counts_survive_a_restart(start_upstream: Callable[..., Upstream], tmp_path: Path) -> None:
    """Embedded: the (project, model) windows live in memory; a restart reads today's attempts back, so a
    configured rpd is not spent a second time (nor the minute's rpm)."""
    upstream = start_upstream(SCENARIO)
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        upstream_url=upstream.url,
        api_keys=f"p2:{P2_A}",  # type: ignore[call-arg]
        access_tokens=[CLIENT_TOKEN],
        model_limits={"gemini-2.5-flash": {"rpd": 5}},
    )

    assert calls(settings, 3) == [200, 200, 200]
    assert calls(settings, 3) == [200, 200, 429]  # 3 before the restart + 2 = the day's 5
    assert upstream.stats()["requests"] == 5
    gw = Gateway(settings)
    usage = gw.pool.tracker.usage("p2", "gemini-2.5-flash", time.time())
    gw.store.close()
    assert usage["rpd_used"] == 5 and usage["rpm_used"] == 5


def test_the_paid_spend_cap_survives_a_restart(start_upstream: Callable[..., Upstream], tmp_path: Path) -> None:
    """Embedded: today's paid spend is read back from the requests at start, so a restart does not reopen the cap."""
    upstream = start_upstream(SCENARIO)
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path,
        upstream_url=upstream.url,
        api_keys=f"p2:{P2_A}",  # type: ignore[call-arg]
        access_tokens=[CLIENT_TOKEN],
        project_tiers={"p2": "paid"},
        paid_daily_cap_usd=1e-9,  # the first paid call reaches it
    )

    assert calls(settings, 2) == [200, 429]
    assert calls(settings, 1) == [429]
    assert upstream.stats()["requests"] == 1
