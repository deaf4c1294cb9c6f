"""The fake upstream's wire helpers, shared by its model routes (fake_upstream.py) and its resources
(fake_resources.py): Google's error envelope, and reading the text out of a request's contents."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from starlette.responses import Response

JSON_HEADERS = {"content-type": "application/json; charset=UTF-8"}


class Fail(Exception):
    """An upstream error answer: Google's error envelope with HTTP status = error.code."""

    def __init__(self, code: int, status: str, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.code = code
        self.body: dict[str, Any] = {"code": code, "message": message, "status": status}
        if details:
            self.body["details"] = details

    def response(self, compat: bool) -> Response:
        body = {"error": self.body}
        text = json.dumps([body] if compat else body, indent=2) + "\n"
        return Response(text.encode(), self.code, headers=JSON_HEADERS)


def bad(message: str, violations: list[str] | None = None) -> Fail:
    details = None
    if violations:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": v} for v in violations],
            }
        ]
    return Fail(400, "INVALID_ARGUMENT", message, details)


def tokens(chars: int) -> int:
    return max(1, (chars + 3) // 4)


def response_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(17)).decode()[:22]


def gather(contents: Any, out: list[str]) -> int:
    """Append every text of Content/Part-like JSON to `out`; return media tokens (258 per inline/file part)."""
    media = 0
    items = contents if isinstance(contents, list) else [contents]
    for c in items:
        if isinstance(c, str):
            out.append(c)
            continue
        if not isinstance(c, dict):
            continue
        parts = c.get("parts", [c])
        for p in parts if isinstance(parts, list) else ():
            if not isinstance(p, dict):
                continue
            if isinstance(p.get("text"), str):
                out.append(p["text"])
            elif any(k in p for k in ("inlineData", "inline_data", "fileData", "file_data", "image_url")):
                media += 258
    return media


def prompt(contents: Any, system: Any = None) -> tuple[list[str], int]:
    texts: list[str] = []
    media = gather(contents, texts) + (gather(system, texts) if system else 0)
    return texts, media
