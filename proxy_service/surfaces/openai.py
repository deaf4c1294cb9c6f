"""The OpenAI-compatible surface, forwarded to the upstream's own OpenAI-compatible endpoint (/v1beta/openai/).

Served at /v1/... (what `OpenAI(base_url=".../v1")` calls) and at /v1beta/openai/... (Google's base URL shape).
`GET /v1/models` exists on both surfaces: a request that authenticates only with `Authorization: Bearer` (the
openai SDK) gets the OpenAI list, one with `x-goog-api-key` or `?key=` (google-genai, curl) the native list.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service import routing
from proxy_service.errors import BadRequest
from proxy_service.relay import Call
from proxy_service.surfaces import gemini
from proxy_service.surfaces.common import answer_call, forward_headers, read_body

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

UPSTREAM = "/v1beta/openai"


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}.") from None
    except RecursionError:  # tens of thousands of nested [ or {: the client's fault, not Keyrack's
        raise BadRequest("Request body is not valid JSON: nested too deeply.") from None
    if not isinstance(doc, dict):
        raise BadRequest("Request body must be a JSON object.")
    return doc


def _model_of(doc: dict[str, Any]) -> str:
    model = doc.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("Missing required parameter 'model' (e.g. \"gemini-2.5-flash\").", field="model")
    return gemini._model(model.removeprefix("models/"))


async def post_endpoint(request: Request, gw: Gateway, resource: str) -> Response:
    operation = "chat.completions" if resource == "chat/completions" else resource

    async def run(call: Call) -> Response:
        call.body = await read_body(request, gw.config.max_body_mb)
        doc = _json_object(call.body)
        if isinstance(doc.get("model"), str):  # recorded even when refused (`untrusted` keeps only a model id)
            call.model = doc["model"].removeprefix("models/")
        call.model = _model_of(doc)
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be true or false.", field="stream")
        call.stream = stream and resource == "chat/completions"
        call.path = f"{UPSTREAM}/{resource}"
        call.headers = forward_headers(request)
        return await gw.relay.handle(call)

    return await answer_call(request, gw, "openai", operation, None, run)


async def models(request: Request, gw: Gateway) -> Response:
    model_id: str | None = request.path_params.get("rest")

    async def run(call: Call) -> Response:
        if model_id is not None:
            call.model = gemini._model(model_id.removeprefix("models/"))
        call.path = f"{UPSTREAM}/models" + (f"/{model_id}" if model_id else "")
        call.headers = forward_headers(request)
        if model_id is None:
            return routing.listed(await gw.relay.handle(call), gw.config.aliases, openai=True)
        return await gw.relay.handle(call)

    return await answer_call(request, gw, "openai", "models", None, run)


def _bearer_only(request: Request) -> bool:
    return (
        "x-goog-api-key" not in request.headers
        and "key" not in request.query_params
        and request.headers.get("authorization", "")[:7].lower() == "bearer "
    )


def owns(request: Request) -> bool:
    """Whether a path no route matched belongs to this surface (its 404/405 then in OpenAI's shape): anything under
    /v1beta/openai, and under /v1 what is not the native models resource (or is, asked for with a Bearer token
    only, as the openai SDK does)."""
    path = request.url.path
    if path == UPSTREAM or path.startswith(UPSTREAM + "/"):
        return True
    if not path.startswith("/v1/"):
        return False
    return not (path == "/v1/models" or path.startswith("/v1/models/")) or _bearer_only(request)


async def v1_models(request: Request, gw: Gateway) -> Response:
    if _bearer_only(request):
        return await models(request, gw)
    if "rest" in request.path_params:
        return await gemini.model_resource(request, gw)
    return await gemini.list_models(request, gw)


def routes(gw: Gateway) -> list[Route]:
    def bind(fn, *args):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            return await fn(request, gw, *args)

        return endpoint

    out = []
    for prefix in ("/v1", UPSTREAM):
        out.append(Route(f"{prefix}/chat/completions", bind(post_endpoint, "chat/completions"), methods=["POST"]))
        out.append(Route(f"{prefix}/embeddings", bind(post_endpoint, "embeddings"), methods=["POST"]))
    out.append(Route(f"{UPSTREAM}/models", bind(models), methods=["GET"]))
    out.append(Route(f"{UPSTREAM}/models/{{rest:path}}", bind(models), methods=["GET"]))
    # Shared with the native surface; must come before gemini.routes().
    out.append(Route("/v1/models", bind(v1_models), methods=["GET"]))
    out.append(Route("/v1/models/{rest:path}", bind(v1_models), methods=["GET"]))
    return out
