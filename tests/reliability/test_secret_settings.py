"""Secret settings on their way in and out (issue 23, LOW list): a credential in the outbound-proxy URL — a
`?token=`, a user with no password (the user is the token), a signature — is masked wherever the URL is shown (the
config API, log lines, errors), and a masked form sent back keeps the real value; a comma-string `access_tokens`
holding the masked form of an existing token keeps the real token instead of storing the mask (which locked that
client out), and a mask that matches no token is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from proxy_service.keys import mask
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, Proxy, Upstream

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}

PROXY_URLS = {
    "query_token": ("http://127.0.0.1:9/?token=tok-SECRET-111", ["tok-SECRET-111"]),
    "access_token_and_sig": (
        "http://127.0.0.1:9/p?access_token=tok-SECRET-222&sig=sig-SECRET-333&region=eu",
        ["tok-SECRET-222", "sig-SECRET-333"],
    ),
    "user_only": ("http://tok-SECRET-444@127.0.0.1:9", ["tok-SECRET-444"]),
    "user_empty_password": ("http://tok-SECRET-555:@127.0.0.1:9", ["tok-SECRET-555"]),
    "user_and_password": ("http://proxyuser:pw-SECRET-666@127.0.0.1:9", ["pw-SECRET-666"]),
}


@pytest.mark.parametrize("case", list(PROXY_URLS))
def test_a_credential_in_the_outbound_proxy_url_is_masked_everywhere(
    case: str, proxy: Proxy, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    url, secrets = PROXY_URLS[case]
    with caplog.at_level("DEBUG", logger="keyrack"):
        r = httpx.patch(f"{proxy.url}/admin/api/config", json={"outbound_proxy": url}, headers=ADMIN)
        assert r.status_code == 200, r.text
        shown = httpx.get(f"{proxy.url}/admin/api/config", headers=ADMIN).json()
        assert proxy.gateway.config.outbound_proxy == url  # the real value is in use
        # A call through the (unreachable) proxy: its failure is recorded and answered.
        call = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=60)
        # A form round trip: the masked form sent back keeps the real URL.
        masked = shown["values"]["outbound_proxy"]
        r2 = httpx.patch(f"{proxy.url}/admin/api/config", json={"outbound_proxy": masked}, headers=ADMIN)
        assert r2.status_code == 200 and proxy.gateway.config.outbound_proxy == url
    stored = proxy.rows("SELECT message, upstream_body FROM error_logs") + proxy.rows(
        "SELECT error_message FROM requests"
    )
    for text in (r.text, json.dumps(shown), call.text, r2.text, json.dumps(stored, default=str), caplog.text):
        for secret in secrets:
            assert secret not in text, (case, secret, text[:400])
    assert "127.0.0.1:9" in masked  # what is not a credential stays readable


@pytest.mark.parametrize(
    "form",
    ["{mask}", "{mask},new-token-777", " new-token-777 , {mask} ", "{mask}\nnew-token-777"],
    ids=["mask_only", "mask_first", "spaces", "newline"],
)
def test_a_comma_string_with_a_masked_token_keeps_the_real_token(
    form: str, start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url)
    value = form.format(mask=mask(CLIENT_TOKEN))
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"access_tokens": value}, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert CLIENT_TOKEN in proxy.gateway.config.access_tokens
    assert not any("…" in t for t in proxy.gateway.config.access_tokens)
    resp = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=60)
    assert resp.status_code == 200, resp.text[:300]
    saved = proxy.rows("SELECT value FROM settings WHERE name = 'access_tokens'")
    assert all(CLIENT_TOKEN in json.loads(v) and "…" not in v for (v,) in saved)  # saved only when it changed
    if "new-token-777" in value:
        assert "new-token-777" in proxy.gateway.config.access_tokens


@pytest.mark.parametrize("value", ["abcd…wxyz", ["abcd…wxyz", CLIENT_TOKEN]], ids=["string", "list"])
def test_a_mask_of_no_current_token_is_refused(
    value: object, start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url)
    r = httpx.patch(f"{proxy.url}/admin/api/config", json={"access_tokens": value}, headers=ADMIN)
    assert r.status_code == 422 and "access_tokens" in r.text and "matches none" in r.text, r.text
    assert proxy.gateway.config.access_tokens == [CLIENT_TOKEN]
