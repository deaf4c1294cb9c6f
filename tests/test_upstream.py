"""Building upstream requests: the fast path builds what httpx's own build_request would."""

from __future__ import annotations

import httpx

from proxy_service.upstream import upstream_request


def test_upstream_request_matches_what_build_request_sends() -> None:
    client = httpx.AsyncClient(base_url="http://upstream.test:8090", timeout=httpx.Timeout(300, connect=10))
    query: list[tuple[str, str | int | float | bool | None]] = [("alt", "sse")]
    headers = {"content-type": "application/json", "x-goog-api-key": "secret"}
    for _ in range(2):  # second time from the URL cache
        req = upstream_request(client, "POST", "/v1beta/models/m:streamGenerateContent", query, headers, b"{}")
        ref = client.build_request(
            "POST", "/v1beta/models/m:streamGenerateContent", params=query, headers=headers, content=b"{}"
        )
        assert req.url == ref.url and req.content == ref.content == b"{}"
        for name in ("host", "content-length", "content-type", "x-goog-api-key"):
            assert req.headers[name] == ref.headers[name]
        assert req.extensions["timeout"] == ref.extensions["timeout"]
    get = upstream_request(client, "GET", "/v1beta/models", [("pageSize", "1")], {"x-goog-api-key": "k"}, None)
    assert str(get.url) == "http://upstream.test:8090/v1beta/models?pageSize=1"
    assert "content-length" not in get.headers and get.content == b""
    assert headers == {"content-type": "application/json", "x-goog-api-key": "secret"}  # the caller's dict untouched
