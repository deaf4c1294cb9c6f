"""Gemini's project-owned resources through the pool: files (resumable and multipart upload, list, get, delete,
download), cached contents, batches and operations, on /v1beta and /v1.

Every call that names a resource goes to a key of the project that owns it (resources.py keeps the map); a create
records the new resource's owner from the answer. A list asks one key of every project and merges the answers (each
project sees only its own). Uploads stream through: the resumable protocol's upload URL points back at Keyrack
(`?upload_id=` one of Keyrack's own session ids, which maps to the upstream's URL and the key that opened it), and
each chunk is piped to the upstream as it arrives, never held whole. An upload is retried only before bytes are
committed: the `start` goes through the relay (retries on other keys of the chosen project); a chunk is sent once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service.errors import (
    BadRequest,
    KeyrackError,
    NotFound,
    PayloadTooLarge,
    PoolExhausted,
    UpstreamUnreachable,
)
from proxy_service.keys import redact
from proxy_service.relay import Call
from proxy_service.resources import (
    EVENT_KINDS,
    NAME,
    Owner,
    ResourceMap,
    UploadSession,
    answered_name,
    expiry,
    kind_of,
    names_in,
)
from proxy_service.surfaces.common import answer_call, base_call, error_response, forward_headers, read_body
from proxy_service.upstream import send

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

VERSIONS = ("v1beta", "v1")
# The query parameters these routes define (everything else, client credentials included, stays here).
RESOURCE_QUERY = frozenset({"alt", "pageSize", "pageToken", "filter", "updateMask"})
UPLOAD_HEADERS = (
    "x-goog-upload-protocol",
    "x-goog-upload-command",
    "x-goog-upload-header-content-length",
    "x-goog-upload-header-content-type",
    "x-goog-upload-offset",
    "content-length",
)
UPLOAD_ANSWER = ("x-goog-upload-status", "x-goog-upload-size-received", "x-goog-upload-chunk-granularity")
MAX_FILE_BYTES = 2 * 2**30  # Google's limit per file: an upload past it is cut off here, not streamed on
SESSION_TTL_S = 7 * 86400.0  # a resumable upload session lives a week at Google
MAX_SESSIONS = 10_000  # open uploads kept here; past it the oldest is forgotten (its client starts it again)
JSON_ANSWER_CAP = 1 * 2**20  # an upload chunk's answer is a small JSON document
BATCH_METHODS = frozenset({"batchGenerateContent", "asyncBatchEmbedContent"})
LIST_FIELD = {"files": "files", "cachedContents": "cachedContents", "batches": "operations", "operations": "operations"}


def _version(request: Request) -> str:
    parts = request.scope["path"].split("/")
    return parts[2] if parts[1] in ("upload", "download") else parts[1]


def _query(request: Request) -> list[tuple[str, str | int | float | bool | None]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k in RESOURCE_QUERY]


def resource_map(gw: Gateway) -> ResourceMap:
    """The gateway's map: durable in its data dir; in cluster mode also shared with the other replicas (Redis)."""
    resources = ResourceMap(gw.settings.data_dir / "resources.jsonl")
    resources.shared = gw.node.shared_resources()
    return resources


async def pin(gw: Gateway, call: Call, names: list[str]) -> None:
    """Send `call` to the project owning a resource its body names (`names_in`: `cachedContent`, a file's URI or
    name). Named even when unknown: a 403 for it then is the call's (a resource this project cannot see), not the
    key's."""
    if names:
        call.resource = names[0]
        owner = await gw.resources.resolve(names)
        if owner is not None:
            call.project, call.resource = owner.project, owner.name


def _answer_doc(resp: Response) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(resp.body))
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _learn(gw: Gateway, resp: Response, doc: dict[str, Any] | None = None) -> None:
    """Record the owner of the resource a successful create answered with."""
    if resp.status_code != 200:
        return
    doc = _answer_doc(resp) if doc is None else doc
    inner = doc.get("file") if isinstance(doc.get("file"), dict) else doc
    assert isinstance(inner, dict)
    name = inner.get("name")
    kid = resp.headers.get("x-keyrack-key-id")
    key = gw.pool.keys.get(kid or "")
    if not isinstance(name, str) or not NAME.match(name) or key is None:
        return
    size = str(inner.get("sizeBytes", "0"))
    now = time.time()
    gw.resources.record(Owner(name, key.scope, key.id, expiry(name, inner, now), int(size) if size.isdigit() else 0))


def _learn_result_file(gw: Gateway, resp: Response) -> None:
    """A finished batch's result file was made upstream by its project: downloads of it go there too."""
    doc = _answer_doc(resp)
    output: Any = (doc.get("metadata") or {}).get("output") if isinstance(doc.get("metadata"), dict) else None
    name = output.get("responsesFile") if isinstance(output, dict) else None
    key = gw.pool.keys.get(resp.headers.get("x-keyrack-key-id") or "")
    if isinstance(name, str) and NAME.match(name) and key is not None and gw.resources.owner(name) is None:
        gw.resources.record(Owner(name, key.scope, key.id, expiry(name, {}, time.time())))


def _scopes(gw: Gateway) -> list[str]:
    """The projects with an active key, in a stable order."""
    return sorted({k.scope for k in list(gw.pool.keys.values()) if k.status == "active"})


def _upload_project(gw: Gateway, call: Call) -> str:
    """The project for a new upload: the one storing the fewest file bytes (Files API storage is per project) among
    those with a key that can take a call now; PoolExhausted when none can."""
    stored = gw.resources.stored_bytes()
    refused: PoolExhausted | None = None
    for scope in sorted(_scopes(gw), key=lambda s: (stored.get(s, 0), s)):
        try:
            gw.pool.choose("*", frozenset(), scope)
        except PoolExhausted as exc:
            refused = refused or exc
            continue
        return scope
    raise refused or PoolExhausted(
        "No usable upstream key: every key is invalid or disabled. Add or re-enable keys", 60
    )


async def _relay(gw: Gateway, request: Request, call: Call, path: str, body: bytes | None) -> Response:
    """Forward `call` with `body` (a JSON document, checked here; None: no body)."""
    call.path = path
    call.query = _query(request)
    call.headers = forward_headers(request)
    if body is not None:
        call.body = body
        if call.body:
            try:
                json.loads(call.body)
            except ValueError as exc:
                raise BadRequest(f"Invalid JSON payload received. {exc}.") from None
    return await gw.relay.handle(call)


# -- collections: create and list --------------------------------------------------------------------------------------
async def collection(request: Request, gw: Gateway) -> Response:
    version = _version(request)
    kind = request.scope["path"].split("/")[2]
    creating = request.method == "POST"
    operation = f"{kind}.{'create' if creating else 'list'}"

    async def run(call: Call) -> Response:
        call.resource_kind = EVENT_KINDS[kind]
        if creating:
            body = await read_body(request, gw.config.max_body_mb)
            await pin(gw, call, names_in(body))
            resp = await _relay(gw, request, call, f"/{version}/{kind}", body)
            _learn(gw, resp)
            return resp
        return await _list(gw, request, call, version, kind)

    return await answer_call(request, gw, "gemini", operation, None, run)


async def _list(gw: Gateway, request: Request, call: Call, version: str, kind: str) -> Response:
    """One page per project, merged: each project sees only its own resources."""
    field = LIST_FIELD[kind]
    merged: list[Any] = []
    last: Response | None = None
    for scope in _scopes(gw):
        sub = Call(**{**call.__dict__, "request_id": secrets.token_hex(16), "started": time.perf_counter()})
        sub.project = scope
        try:
            resp = await _relay(gw, request, sub, f"/{version}/{kind}", None)
        except PoolExhausted:
            continue  # that project cannot answer now; the others still list theirs
        if resp.status_code != 200:
            last = last or resp
            continue
        items = _answer_doc(resp).get(field) or []
        for item in items if isinstance(items, list) else []:
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and NAME.match(name) and gw.resources.owner(name) is None:
                key = gw.pool.keys.get(resp.headers.get("x-keyrack-key-id") or "")
                if key is not None:  # made before Keyrack knew it (or elsewhere): learnt now
                    gw.resources.record(Owner(name, scope, key.id, expiry(name, item, time.time())))
            merged.append(item)
    if not merged and last is not None:
        return last
    body = json.dumps({field: merged} if merged else {}, indent=2).encode()
    return Response(body, 200, media_type="application/json")


# -- one resource: get, patch, delete, cancel, download ------------------------------------------------------------------
async def resource(request: Request, gw: Gateway) -> Response:
    version = _version(request)
    path = request.scope["path"]
    tail = path.split(f"/{version}/", 1)[1]  # files/abc, files/abc:download, batches/x:cancel, cachedContents/y
    name, _, verb = tail.partition(":")
    kind = kind_of(name)
    verbs = {"files": ("download",), "batches": ("cancel",), "operations": ("cancel",), "cachedContents": ()}
    # The verb is the client's text: recorded only when it is one of the kind's (an event's operation stays bounded).
    op = (verb if verb in verbs[kind] else "unknown") if verb else request.method.lower()
    operation = f"{kind}.{op}"

    async def run(call: Call) -> Response:
        call.resource_kind = EVENT_KINDS[kind]
        if not NAME.match(name):
            raise BadRequest(f"Invalid resource name {name[:80]!r}: expected e.g. {kind}/abc-123.")
        if verb and verb not in verbs[kind]:
            raise NotFound(f"Unknown method {verb!r} on {kind}.")
        if request.method == "POST" and not verb:
            raise NotFound(f"POST {name} needs a method, e.g. {name}:cancel.")
        call.resource = name
        owner = await gw.resources.resolve([name])
        if owner is not None:
            call.project = owner.project
        upstream = f"/{version}/{tail}" if not path.startswith("/download/") else f"/download/{version}/{tail}"
        body = await read_body(request, gw.config.max_body_mb) if request.method == "PATCH" else None
        resp = await _relay(gw, request, call, upstream, body)
        if resp.status_code == 200 and request.method == "GET" and kind in ("batches", "operations"):
            _learn_result_file(gw, resp)
        if resp.status_code == 200 and request.method == "DELETE":
            gw.resources.forget(name)
        elif resp.status_code == 200 and request.method == "PATCH":
            _learn(gw, resp)
        return resp

    return await answer_call(request, gw, "gemini", operation, None, run)


# -- batches: models/{m}:batchGenerateContent | :asyncBatchEmbedContent ------------------------------------------------
async def create_batch(request: Request, gw: Gateway, version: str, model: str, method: str, call: Call) -> Response:
    """Called from the model route (surfaces/gemini.py): a batch goes to the project owning its input file, if any."""
    call.resource_kind = "batch"
    body = await read_body(request, gw.config.max_body_mb)
    await pin(gw, call, names_in(body))
    resp = await _relay(gw, request, call, f"/{version}/models/{model}:{method}", body)
    _learn(gw, resp)
    return resp


# -- uploads --------------------------------------------------------------------------------------------------------------
async def upload(request: Request, gw: Gateway) -> Response:
    version = _version(request)
    upload_id = request.query_params.get("upload_id")
    protocol = request.headers.get("x-goog-upload-protocol", "")
    operation = "files.upload" if upload_id is not None else f"files.upload.{protocol[:20] or 'none'}"

    if upload_id is not None:
        return await _chunk_endpoint(request, gw, upload_id)

    async def run(call: Call) -> Response:
        call.resource_kind = "file"
        if protocol == "multipart":
            return await _multipart(request, gw, call, version)
        if protocol != "resumable" or request.headers.get("x-goog-upload-command", "").strip() != "start":
            raise BadRequest(
                "An upload starts with X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start, or sends "
                "X-Goog-Upload-Protocol: multipart with a multipart/related body."
            )
        return await _start(request, gw, call, version)

    return await answer_call(request, gw, "gemini", operation, None, run)


def _upload_headers(request: Request) -> dict[str, str]:
    headers = forward_headers(request)
    headers.update({h: request.headers[h] for h in UPLOAD_HEADERS if h in request.headers})
    return headers


async def _start(request: Request, gw: Gateway, call: Call, version: str) -> Response:
    scope = call.project = _upload_project(gw, call)
    call.answer_headers = ("x-goog-upload-url", *UPLOAD_ANSWER)
    call.path = f"/upload/{version}/files"
    call.body = await read_body(request, gw.config.max_body_mb)
    call.headers = _upload_headers(request)
    resp = await gw.relay.handle(call)
    upstream_url = resp.headers.get("x-goog-upload-url")
    kid = resp.headers.get("x-keyrack-key-id")
    if resp.status_code != 200 or upstream_url is None or kid is None:
        return resp
    parts = urlsplit(upstream_url)
    base = urlsplit(gw.config.upstream_url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        # Keys go to the configured upstream only: an upload URL elsewhere is refused, never followed.
        raise UpstreamUnreachable(f"Upstream gave an upload URL on another host ({parts.netloc[:80]}): refused.")
    sid = secrets.token_urlsafe(24)
    session = UploadSession(
        parts.path + (f"?{parts.query}" if parts.query else ""), kid, scope, time.time(), call.client_id
    )
    gw.upload_sessions[sid] = session
    _expire_sessions(gw)
    if gw.resources.shared is not None:  # its chunks may reach another replica
        await gw.resources.shared.put_session(sid, asdict(session), SESSION_TTL_S)
    mine = f"{str(request.base_url).rstrip('/')}/upload/{version}/files?upload_id={sid}&upload_protocol=resumable"
    headers = {k: v for k, v in resp.headers.items() if k != "x-goog-upload-url" and k != "content-length"}
    headers["x-goog-upload-url"] = mine
    return Response(bytes(resp.body), 200, headers=headers)


def _expire_sessions(gw: Gateway) -> None:
    now = time.time()
    for sid in [s for s, v in gw.upload_sessions.items() if now - v.opened > SESSION_TTL_S]:
        del gw.upload_sessions[sid]
    while len(gw.upload_sessions) > MAX_SESSIONS:  # oldest first: a dict keeps insertion order
        del gw.upload_sessions[next(iter(gw.upload_sessions))]


async def _piped(request: Request, counter: list[int]) -> AsyncIterator[bytes]:
    """The request body as it arrives, counted and capped (never held whole)."""
    async for chunk in request.stream():
        counter[0] += len(chunk)
        if counter[0] > MAX_FILE_BYTES:
            raise PayloadTooLarge(f"An uploaded file may not exceed {MAX_FILE_BYTES // 2**30} GB.")
        yield chunk


async def _stream_upstream(
    gw: Gateway, call: Call, request: Request, path: str, key_id: str, headers: dict[str, str]
) -> Response:
    """Pipe the request body to the upstream once (no retry: the bytes are committed) and answer as it answers."""
    key = gw.pool.keys.get(key_id)
    if key is None or key.status != "active":
        exc = PoolExhausted(
            f"The key that opened this upload (project {call.project}) is no longer usable; start the upload again",
            0.0,
        )
        exc.status_code = 503
        raise exc
    client = gw.relay.client
    assert client is not None
    counter = [0]
    headers = {**headers, "x-goog-api-key": key.secret}
    req = client.build_request(request.method, path, headers=headers, content=_piped(request, counter))
    t0 = time.perf_counter()
    key.in_flight += 1
    try:
        resp = await send(client, req)
        try:
            body = b""
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > JSON_ANSWER_CAP:
                    raise UpstreamUnreachable("Upstream's answer to an upload chunk is too large: refused.")
        finally:
            await resp.aclose()
    except httpx.HTTPError as exc:
        ev = gw.relay.request_event(call, 502, "upstream_error", 1, key)
        ev.request_bytes, ev.error_message = counter[0], f"upload chunk failed: {type(exc).__name__}"
        gw.relay.record_request(call, ev)
        raise UpstreamUnreachable(f"Upstream unreachable during an upload chunk ({type(exc).__name__}).") from None
    finally:
        key.in_flight -= 1
    status = resp.status_code
    if status == 200 and (name := answered_name(body)) is not None:  # the final chunk answers with the new file
        call.resource = name
    ev = gw.relay.request_event(call, status, "success" if status == 200 else "upstream_error", 1, key)
    ev.request_bytes, ev.response_bytes = counter[0], len(body)
    ev.latency_ms = (time.perf_counter() - t0) * 1000
    gw.relay.record_request(call, ev)
    out = {h: resp.headers[h] for h in (*UPLOAD_ANSWER, "content-type") if h in resp.headers}
    out["x-keyrack-request-id"] = call.request_id
    out["x-keyrack-key-id"] = key.id
    answer = Response(redact(body.decode("utf-8", "replace")).encode() if status != 200 else body, status, headers=out)
    return answer


async def _chunk_endpoint(request: Request, gw: Gateway, upload_id: str) -> Response:
    """A chunk of a resumable upload. Its URL is its credential, as Google's own upload URLs are (the SDKs send no
    key with the chunks): the session id is 32 random bytes that only the client that started the upload got."""
    call = base_call(request, "gemini", "files.upload", None)
    call.resource_kind = "file"
    session = gw.upload_sessions.get(upload_id)
    if session is None and gw.resources.shared is not None:
        found = await gw.resources.shared.session(upload_id)
        try:
            session = UploadSession(**found) if found is not None else None
        except TypeError:
            session = None
    try:
        if session is None:
            raise NotFound("Unknown or expired upload session: start the upload again.")
        call.client_id = session.client_id
        return await _chunk(request, gw, call, upload_id, session)
    except KeyrackError as exc:
        if exc.error_type not in ("exhausted", "upstream_unreachable"):
            ev = gw.relay.request_event(call, exc.status_code, "client_error", 0)
            ev.error_message, ev.error_status = exc.message[:500], exc.error_type
            gw.relay.record_request(call, ev)
        return error_response("gemini", exc, call.request_id)


async def _chunk(request: Request, gw: Gateway, call: Call, upload_id: str, session: UploadSession) -> Response:
    call.project = session.project
    resp = await _stream_upstream(gw, call, request, session.upstream_path, session.key_id, _upload_headers(request))
    final = resp.headers.get("x-goog-upload-status") == "final"
    if final or resp.status_code >= 400:
        gw.upload_sessions.pop(upload_id, None)
        if gw.resources.shared is not None:
            await gw.resources.shared.drop_session(upload_id)
    if final and resp.status_code == 200:
        _learn(gw, resp)
    return resp


async def _multipart(request: Request, gw: Gateway, call: Call, version: str) -> Response:
    scope = call.project = _upload_project(gw, call)
    key = gw.pool.choose("*", frozenset(), scope)
    resp = await _stream_upstream(gw, call, request, f"/upload/{version}/files", key.id, _upload_headers(request))
    if resp.status_code == 200:
        _learn(gw, resp)
    return resp


def routes(gw: Gateway) -> list[Route]:
    def bind(fn):  # type: ignore[no-untyped-def]
        async def endpoint(request: Request) -> Response:
            return await fn(request, gw)

        return endpoint

    out = []
    for v in VERSIONS:
        out.append(Route(f"/upload/{v}/files", bind(upload), methods=["POST"]))
        out.append(Route(f"/download/{v}/files/{{rest}}", bind(resource), methods=["GET"]))
        for kind in ("files", "cachedContents", "batches", "operations"):
            methods = ["GET", "POST"] if kind == "cachedContents" else ["GET"]
            out.append(Route(f"/{v}/{kind}", bind(collection), methods=methods))
            out.append(Route(f"/{v}/{kind}/{{rest}}", bind(resource), methods=["GET", "POST", "PATCH", "DELETE"]))
    return out
