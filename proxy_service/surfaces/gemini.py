"""The native Gemini surface: the same paths as Google under /v1beta and /v1."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service import routing
from proxy_service.errors import BadRequest, MethodNotAllowed, NotFound
from proxy_service.relay import Call
from proxy_service.resources import names_in
from proxy_service.settings import is_model_name
from proxy_service.surfaces import resources
from proxy_service.surfaces.common import answer_call, forward_headers, forward_query, read_body

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

METHODS = {
    "generateContent": False,
    "streamGenerateContent": True,
    "countTokens": False,
    "embedContent": False,
    "batchEmbedContents": False,
}


def _model(name: str) -> str:
    # Model ids as Google spells them (tunedModels are out of scope); nothing that could climb the path.
    if not is_model_name(name):
        raise BadRequest(f"Invalid model name {name[:80]!r}: expected an id such as gemini-2.5-flash.")
    return name


async def list_models(request: Request, gw: Gateway) -> Response:
    version = request.url.path.split("/")[1]

    async def run(call: Call) -> Response:
        call.path = f"/{version}/models"
        call.query = forward_query(request)
        call.headers = forward_headers(request)
        resp = await gw.relay.handle(call)
        first_page = "pageToken" not in request.query_params
        return routing.listed(resp, gw.config.aliases, openai=False) if first_page else resp

    return await answer_call(request, gw, "gemini", "listModels", None, run)


async def model_resource(request: Request, gw: Gateway) -> Response:
    version = request.scope["path"].split("/")[1]  # not request.url: building the URL object costs CPU on every call
    rest: str = request.path_params["rest"]
    name, _, method = rest.partition(":")
    if request.method == "GET":
        operation, model = "getModel", name
    else:
        operation, model = method, name

    async def run(call: Call) -> Response:
        _model(model)
        if request.method == "GET":
            if method:
                raise MethodNotAllowed(f"GET is not allowed on models/{rest}; use POST.")
        elif method in resources.BATCH_METHODS:
            return await resources.create_batch(request, gw, version, model, method, call)
        elif method not in METHODS:
            raise NotFound(
                f"Unknown method {method!r} on models/{model}. Supported: "
                f"{', '.join([*METHODS, *sorted(resources.BATCH_METHODS)])}."
                if method
                else f"POST models/{model} needs a method, e.g. models/{model}:generateContent."
            )
        else:
            call.body = await read_body(request, gw.config.max_body_mb)
            try:
                json.loads(call.body)
            except ValueError as exc:
                raise BadRequest(f"Invalid JSON payload received. {exc}.") from None
            except RecursionError:  # tens of thousands of nested [ or {: the client's fault, not Keyrack's
                raise BadRequest("Invalid JSON payload received: nested too deeply.") from None
            names = names_in(call.body)  # two substring scans; a regex only when a marker is there
            if names:
                await resources.pin(gw, call, names)
            call.stream = METHODS[method]
        call.path = f"/{version}/models/{rest}"
        call.query = forward_query(request)
        call.headers = forward_headers(request)
        return await gw.relay.handle(call)

    return await answer_call(request, gw, "gemini", operation or "getModel", model, run)


def routes(gw: Gateway, versions: tuple[str, ...] = ("v1beta", "v1")) -> list[Route]:
    def bind(fn):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            return await fn(request, gw)

        return endpoint

    out = []
    for version in versions:
        out.append(Route(f"/{version}/models", bind(list_models), methods=["GET"]))
        out.append(Route(f"/{version}/models/{{rest:path}}", bind(model_resource), methods=["GET", "POST"]))
    return out
