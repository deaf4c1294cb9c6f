"""The fake upstream's project-owned resources: files, cached contents and batches, with Google's rules.

Every resource belongs to the project of the key that created it; any other project's key gets 403
PERMISSION_DENIED for it, as does a name that does not exist (Google does not tell the two apart). Files follow the
resumable protocol (`X-Goog-Upload-Command: start`, then `upload` chunks at the right offset, the last one with
`finalize`) or a multipart/related body, and expire after 48 h; cached contents expire at their TTL; a batch goes
PENDING → RUNNING → SUCCEEDED on the clock (`batch_s` after its creation) and keeps its results inline or in a
generated file, as Google does. Uploaded bytes beyond `KEEP_BYTES` are counted, not kept (a 1 GB upload through
the fake must not cost 1 GB of memory); batch input files are small and kept whole.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.demo.fake_wire import Fail, bad, prompt, response_id, tokens


class Fake(Protocol):
    """What the resources ask of the fake upstream that mounts them (fake_upstream._Fake): its request reading,
    model check and answers, so a batch is answered exactly as the same calls would be one by one."""

    async def read_body(self, request: Request, allowed: frozenset[str] | None) -> dict[str, Any]: ...

    def resolve_model(self, model: str, version: str, method: str, need: str) -> str: ...

    def answer_for(self, model: str, texts: list[str], media: int, cfg: Any) -> Any: ...

    def native_chunk(
        self, ans: Any, text: str, first: bool, last: bool, chars: int | None, rid: str, model: str
    ) -> dict[str, Any]: ...

    def embed_one(self, req: dict[str, Any], model: str, where: str) -> tuple[str, int]: ...


FILE_TTL_S = 48 * 3600
KEEP_BYTES = 16 * 2**20
BATCH_S = 0.3  # PENDING for the first third of it, RUNNING until it has passed, then SUCCEEDED
PUBLIC_BASE = "https://generativelanguage.googleapis.com"
_JSON = {"content-type": "application/json; charset=UTF-8"}
_FILE_REF = re.compile(r"files/[a-z0-9-]+")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _now_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_id() -> str:
    return secrets.token_hex(6)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response((json.dumps(doc, indent=2) + "\n").encode(), status, headers={**_JSON, **(headers or {})})


@dataclass
class FakeFile:
    name: str
    project: str
    mime_type: str
    display_name: str | None
    created: float
    size: int = 0
    data: bytearray = field(default_factory=bytearray)
    source: str = "UPLOADED"
    sha: Any = field(default_factory=hashlib.sha256)

    def doc(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size),
            "createTime": _now_iso(self.created),
            "updateTime": _now_iso(self.created),
            "expirationTime": _now_iso(self.created + FILE_TTL_S),
            "sha256Hash": self.sha.hexdigest(),
            "uri": f"{PUBLIC_BASE}/{version}/{self.name}",
            "state": "ACTIVE",
            "source": self.source,
        }
        if self.display_name:
            out["displayName"] = self.display_name
        if self.source == "GENERATED":
            out["downloadUri"] = f"{PUBLIC_BASE}/download/{version}/{self.name}:download?alt=media"
        return out


@dataclass
class Session:
    file: FakeFile
    declared: int | None
    received: int = 0


@dataclass
class FakeCache:
    name: str
    project: str
    model: str
    display_name: str | None
    created: float
    expires: float
    tokens: int

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "model": self.model,
            "createTime": _now_iso(self.created),
            "updateTime": _now_iso(self.created),
            "expireTime": _now_iso(self.expires),
            "usageMetadata": {"totalTokenCount": self.tokens},
        }
        if self.display_name:
            out["displayName"] = self.display_name
        return out


@dataclass
class FakeBatch:
    name: str
    project: str
    model: str
    kind: str  # "generate" | "embed"
    display_name: str | None
    created: float
    requests: list[dict[str, Any]]  # {"key"?, "metadata"?, "request"}
    from_file: bool
    cancelled: bool = False
    output: dict[str, Any] | None = None


class FakeResources:
    """The resource state of one fake upstream (`fake_upstream._Fake.resources`)."""

    def __init__(self, fake: Fake, clock: Callable[[], float] | None = None) -> None:
        self.fake = fake
        self.clock = clock or time.time
        self.files: dict[str, FakeFile] = {}
        self.sessions: dict[str, Session] = {}
        self.caches: dict[str, FakeCache] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.uploaded_bytes = 0

    # -- ownership --------------------------------------------------------------------------------------------------
    @staticmethod
    def denied(name: str) -> Exception:
        return Fail(
            403,
            "PERMISSION_DENIED",
            f"You do not have permission to access the {name.split('/')[0][:-1].capitalize()} {name.split('/')[-1]} "
            "or it may not exist.",
        )

    def _file(self, project: str, name: str) -> FakeFile:
        f = self.files.get(name)
        if f is None or f.project != project or self.clock() >= f.created + FILE_TTL_S:
            raise self.denied(name)
        return f

    def _cache(self, project: str, name: str) -> FakeCache:
        c = self.caches.get(name)
        if c is None or c.project != project or self.clock() >= c.expires:
            raise self.denied(name)
        return c

    def _batch(self, project: str, name: str) -> FakeBatch:
        b = self.batches.get(name)
        if b is None or b.project != project:
            raise self.denied(name)
        return b

    def check_refs(self, project: str, body: dict[str, Any]) -> None:
        """A generate call may name only its own project's cache and files (Google answers 403 otherwise)."""
        cached = body.get("cachedContent", body.get("cached_content"))
        if isinstance(cached, str):
            self._cache(project, cached)
        for name in _FILE_REF.findall(json.dumps(body.get("contents", []))):
            self._file(project, name)

    # -- files ------------------------------------------------------------------------------------------------------
    async def upload(self, request: Request, project: str, version: str) -> Response:
        h = request.headers
        upload_id = request.query_params.get("upload_id")
        if upload_id is not None:
            return await self._chunk(request, project, version, upload_id)
        protocol = h.get("x-goog-upload-protocol", "")
        if protocol == "multipart":
            return await self._multipart(request, project, version)
        if protocol != "resumable" or h.get("x-goog-upload-command") != "start":
            raise bad("Upload requests must use X-Goog-Upload-Protocol resumable (command start) or multipart.")
        meta = (await self.fake.read_body(request, None)).get("file") or {}
        declared = h.get("x-goog-upload-header-content-length")
        f = self._new_file(project, meta, h.get("x-goog-upload-header-content-type"))
        sid = _new_id() + _new_id()
        self.sessions[sid] = Session(f, int(declared) if declared and declared.isdigit() else None)
        url = f"{request.base_url}upload/{version}/files?upload_id={sid}&upload_protocol=resumable"
        headers = {
            "x-goog-upload-url": url,
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": str(8 * 2**20),
        }
        return Response(b"", 200, headers=headers)

    def _new_file(self, project: str, meta: dict[str, Any], mime: str | None) -> FakeFile:
        name = meta.get("name") or f"files/{_new_id()}"
        name = name if name.startswith("files/") else f"files/{name}"
        return FakeFile(
            name=name,
            project=project,
            mime_type=meta.get("mimeType") or mime or "application/octet-stream",
            display_name=meta.get("displayName"),
            created=self.clock(),
        )

    def _take(self, f: FakeFile, chunk: bytes) -> None:
        f.size += len(chunk)
        f.sha.update(chunk)
        self.uploaded_bytes += len(chunk)
        if len(f.data) < KEEP_BYTES:
            f.data += chunk[: KEEP_BYTES - len(f.data)]

    async def _chunk(self, request: Request, project: str, version: str, sid: str) -> Response:
        s = self.sessions.get(sid)
        if s is None or s.file.project != project:
            raise Fail(404, "NOT_FOUND", "Upload session not found.")
        command = {c.strip() for c in request.headers.get("x-goog-upload-command", "").split(",")}
        offset = request.headers.get("x-goog-upload-offset", "")
        if not command <= {"upload", "finalize", "query"} or not command:
            raise bad(f"Unknown X-Goog-Upload-Command {sorted(command)}.")
        if "upload" in command:
            if not offset.isdigit() or int(offset) != s.received:
                raise bad(f"Invalid X-Goog-Upload-Offset {offset[:20]!r}: {s.received} bytes were received so far.")
            async for chunk in request.stream():
                self._take(s.file, chunk)
                s.received += len(chunk)
        if "finalize" not in command:
            return Response(
                b"", 200, headers={"x-goog-upload-status": "active", "x-goog-upload-size-received": str(s.received)}
            )
        if s.declared is not None and s.received != s.declared:
            raise bad(f"Upload finalized with {s.received} bytes, {s.declared} were declared.")
        del self.sessions[sid]
        self.files[s.file.name] = s.file
        return _json({"file": s.file.doc(version)}, headers={"x-goog-upload-status": "final"})

    async def _multipart(self, request: Request, project: str, version: str) -> Response:
        ctype = request.headers.get("content-type", "")
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/related") or m is None:
            raise bad("A multipart upload needs Content-Type multipart/related with a boundary.")
        raw = await request.body()
        parts = [p for p in raw.split(b"--" + m.group(1).encode()) if p.strip() not in (b"", b"--")]
        if len(parts) != 2:
            raise bad("A multipart upload has exactly two parts: the metadata, then the media.")
        meta_part, media_part = (p.split(b"\r\n\r\n", 1) for p in parts)
        meta = json.loads(meta_part[1]).get("file") or {}
        media_headers = media_part[0].decode("latin-1").lower()
        mime = re.search(r"content-type:\s*([^\r\n]+)", media_headers)
        f = self._new_file(project, meta, mime.group(1).strip() if mime else None)
        self._take(f, media_part[1].removesuffix(b"\r\n"))
        self.files[f.name] = f
        return _json({"file": f.doc(version)})

    async def list_files(self, request: Request, project: str, version: str) -> Response:
        now = self.clock()
        mine = [f.doc(version) for f in self.files.values() if f.project == project and now < f.created + FILE_TTL_S]
        return _json({"files": mine} if mine else {})

    async def file(self, request: Request, project: str, version: str, name: str, method: str) -> Response:
        fid, _, verb = name.partition(":")
        f = self._file(project, f"files/{fid}")
        if verb == "download":
            if f.source != "GENERATED":
                raise bad("Only generated files can be downloaded.")
            return Response(bytes(f.data), headers={"content-type": f.mime_type})
        if verb:
            raise bad(f"Unknown method {verb!r} on files.")
        if request.method == "DELETE":
            del self.files[f.name]
            return _json({})
        return _json(f.doc(version))

    # -- cached contents -------------------------------------------------------------------------------------------
    def _expiry(self, body: dict[str, Any], now: float) -> float:
        ttl = body.get("ttl")
        if isinstance(ttl, str):
            m = _DURATION.match(ttl)
            if m is None:
                raise bad(f"Invalid value at 'cached_content.ttl': {ttl[:40]!r}.")
            return now + float(m.group(1))
        expire = body.get("expireTime")
        if isinstance(expire, str):
            return datetime.fromisoformat(expire.replace("Z", "+00:00")).timestamp()
        return now + 3600.0

    async def caches_root(self, request: Request, project: str, version: str) -> Response:
        now = self.clock()
        if request.method == "GET":
            mine = [c.doc() for c in self.caches.values() if c.project == project and now < c.expires]
            return _json({"cachedContents": mine} if mine else {})
        body = await self.fake.read_body(request, None)
        model = body.get("model")
        if not isinstance(model, str) or not model.startswith("models/"):
            raise bad("* CreateCachedContentRequest.cached_content.model: model is required (models/...).")
        for name in _FILE_REF.findall(json.dumps(body.get("contents", []))):
            self._file(project, name)
        texts, media = prompt(body.get("contents", []), body.get("systemInstruction"))
        c = FakeCache(
            name=f"cachedContents/{_new_id()}",
            project=project,
            model=model,
            display_name=body.get("displayName"),
            created=now,
            expires=self._expiry(body, now),
            tokens=tokens(len("\n".join(texts))) + media,
        )
        self.caches[c.name] = c
        return _json(c.doc())

    async def cache(self, request: Request, project: str, version: str, cid: str) -> Response:
        c = self._cache(project, f"cachedContents/{cid}")
        if request.method == "DELETE":
            del self.caches[c.name]
            return _json({})
        if request.method == "PATCH":
            c.expires = self._expiry(await self.fake.read_body(request, None), self.clock())
        return _json(c.doc())

    # -- batches ----------------------------------------------------------------------------------------------------
    async def create_batch(self, request: Request, project: str, version: str, model: str, method: str) -> Response:
        kind = "embed" if method == "asyncBatchEmbedContent" else "generate"
        model = self.fake.resolve_model(
            model, version, method, "embedContent" if kind == "embed" else "generateContent"
        )
        batch = (await self.fake.read_body(request, None)).get("batch")
        if not isinstance(batch, dict):
            raise bad("* The request needs a batch.")
        source = batch.get("inputConfig") or {}
        requests: list[dict[str, Any]]
        if isinstance(source.get("fileName"), str):
            f = self._file(project, source["fileName"])
            lines = bytes(f.data).decode("utf-8", "replace").splitlines()
            requests = [json.loads(line) for line in lines if line.strip()]
            from_file = True
        else:
            requests = (source.get("requests") or {}).get("requests") or []
            from_file = False
        if not requests:
            raise bad("* The batch has no requests.")
        b = FakeBatch(
            name=f"batches/{_new_id()}",
            project=project,
            model=f"models/{model}",
            kind=kind,
            display_name=batch.get("displayName"),
            created=self.clock(),
            requests=requests,
            from_file=from_file,
        )
        self.batches[b.name] = b
        return _json(self._batch_doc(b))

    def _state(self, b: FakeBatch) -> str:
        age = self.clock() - b.created
        if b.cancelled:
            return "BATCH_STATE_CANCELLED"
        if age < BATCH_S / 3:
            return "BATCH_STATE_PENDING"
        if age < BATCH_S:
            return "BATCH_STATE_RUNNING"
        return "BATCH_STATE_SUCCEEDED"

    def _results(self, b: FakeBatch) -> dict[str, Any]:
        answers = []
        for item in b.requests:
            req = item.get("request") or {}
            if b.kind == "embed":
                vector, _ = self.fake.embed_one(req, b.model.removeprefix("models/"), "")
                answer: dict[str, Any] = {"embedding": {"values": json.loads(vector)}}
            else:
                texts, media = prompt(req.get("contents", []))
                ans = self.fake.answer_for(b.model.removeprefix("models/"), texts, media, req.get("generationConfig"))
                answer = self.fake.native_chunk(
                    ans, "".join(ans.pieces), True, True, None, response_id(), b.model.removeprefix("models/")
                )
            extra: dict[str, Any] = {k: item[k] for k in ("key", "metadata") if k in item}
            answers.append({"response": answer, **extra})
        if b.from_file:
            out = FakeFile(
                name=f"files/batch-{b.name.split('/')[-1]}",
                project=b.project,
                mime_type="application/jsonl",
                display_name=None,
                created=self.clock(),
                source="GENERATED",
            )
            self._take(out, "".join(json.dumps(a) + "\n" for a in answers).encode())
            self.files[out.name] = out
            return {"responsesFile": out.name}
        if b.kind == "embed":
            return {"inlinedEmbedContentResponses": {"inlinedResponses": answers}}
        return {"inlinedResponses": {"inlinedResponses": answers}}

    def _batch_doc(self, b: FakeBatch) -> dict[str, Any]:
        state = self._state(b)
        kind = "EmbedContentBatch" if b.kind == "embed" else "GenerateContentBatch"
        n = len(b.requests)
        done = state == "BATCH_STATE_SUCCEEDED"
        meta: dict[str, Any] = {
            "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}",
            "name": b.name,
            "model": b.model,
            "state": state,
            "createTime": _now_iso(b.created),
            "updateTime": _now_iso(self.clock()),
            "batchStats": {
                "requestCount": str(n),
                "successfulRequestCount": str(n if done else 0),
                "pendingRequestCount": str(0 if done else n),
            },
        }
        if b.display_name:
            meta["displayName"] = b.display_name
        doc: dict[str, Any] = {"name": b.name, "metadata": meta}
        if done:
            if b.output is None:
                b.output = self._results(b)
            meta["output"] = b.output
            meta["endTime"] = _now_iso(b.created + BATCH_S)
            doc["done"] = True
            doc["response"] = {"@type": meta["@type"].replace("Batch", "BatchOutput"), **b.output}
        return doc

    async def list_batches(self, request: Request, project: str, version: str) -> Response:
        mine = [self._batch_doc(b) for b in self.batches.values() if b.project == project]
        return _json({"operations": mine} if mine else {})

    async def batch(self, request: Request, project: str, version: str, name: str) -> Response:
        bid, _, verb = name.partition(":")
        b = self._batch(project, f"batches/{bid}")
        if verb == "cancel" and request.method == "POST":
            b.cancelled = self._state(b) != "BATCH_STATE_SUCCEEDED"
            return _json({})
        if verb:
            raise bad(f"Unknown method {verb!r} on batches.")
        if request.method == "DELETE":
            del self.batches[b.name]
            return _json({})
        return _json(self._batch_doc(b))
