"""Upstream key text: what a Gemini key looks like, extraction from pasted text, stable ids, masking, the
project-name rule, and redaction of secrets. The one place for each: other modules use `KEY_PATTERN` /
`looks_like_key()` / `mask()` / `valid_project()` / `redact()` from here.

A key's id is a short hash of its secret, so the same key always gets the same id and ids can appear in
events, logs and URLs while the secret never does. `redact` is the one place that knows what a secret looks like:
every boundary where outside text enters Keyrack (upstream error bodies and messages, log lines) goes through it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# A real Gemini (Google API) key: "AIza" + 35 characters of [0-9A-Za-z_-] (39 in all).
KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
# In pasted text a key is not the start of a longer token (redaction still hides a key glued to other characters).
_KEY_IN_TEXT = re.compile(KEY_PATTERN.pattern + r"(?![0-9A-Za-z_\-])")
# An explicit line may carry any key-like token (test keys, other providers' formats): no spaces, 8..200 chars.
_EXPLICIT_RE = re.compile(r"^[0-9A-Za-z_\-\.]{8,200}$")
# A Google Cloud project as Keyrack names it (a label, not checked against Google): 1-64 of these characters.
PROJECT_PATTERN = re.compile(r"^[0-9A-Za-z_\-\.]{1,64}$")
PROJECT_RULE = "1-64 letters, digits, '_', '-' or '.'"


def looks_like_key(text: str) -> bool:
    """Whether `text` is exactly one Gemini-shaped key."""
    return KEY_PATTERN.fullmatch(text) is not None


def valid_project(name: str) -> bool:
    return PROJECT_PATTERN.match(name) is not None


def key_id(secret: str) -> str:
    """Stable short id of a secret: 12 hex chars of its SHA-256 (never reversible to the key)."""
    return "k_" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def mask(secret: str) -> str:
    """A form safe to show anywhere: first 4 and last 4 characters."""
    if len(secret) <= 10:
        return secret[:2] + "…" + secret[-2:] if len(secret) > 4 else "…"
    return f"{secret[:4]}…{secret[-4:]}"


_MIN_SECRET_LEN = 6  # shorter "secrets" would redact ordinary words
_secret_sources: list[Callable[[], Iterable[str]]] = []


def add_secret_source(source: Callable[[], Iterable[str]]) -> None:
    """Register a callable returning secrets to redact (read at each `redact`: pool keys, client and admin tokens)."""
    _secret_sources.append(source)


def remove_secret_source(source: Callable[[], Iterable[str]]) -> None:
    if source in _secret_sources:
        _secret_sources.remove(source)


def redact(text: str) -> str:
    """`text` with every Gemini-shaped key and every registered secret replaced by its masked form."""
    if "AIza" in text:
        text = KEY_PATTERN.sub(lambda m: mask(m.group(0)), text)
    for source in list(_secret_sources):
        try:
            secrets = list(source())
        except Exception:  # a source reading live state must never break the caller (a log line, an error path)
            continue
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET_LEN and secret in text:
                text = text.replace(secret, mask(secret))
    return text


@dataclass(frozen=True)
class KeySpec:
    """One upstream key as configured: the secret and the Google Cloud project it belongs to (if known)."""

    secret: str
    project: str | None = None
    label: str | None = None


def parse_key_list(text: str) -> list[KeySpec]:
    """Parse KEYRACK_API_KEYS: keys separated by commas, spaces or newlines, each optionally `project:key`."""
    specs: list[KeySpec] = []
    seen: set[str] = set()
    for token in re.split(r"[\s,;]+", text.strip()):
        if not token:
            continue
        project, sep, secret = token.rpartition(":")
        spec = KeySpec(secret=secret, project=project or None) if sep else KeySpec(secret=token)
        if spec.secret and spec.secret not in seen:
            seen.add(spec.secret)
            specs.append(spec)
    return specs


@dataclass
class Extraction:
    keys: list[KeySpec]
    rejected: int  # non-empty lines that held nothing key-like


def extract_keys(text: str, project: str | None = None) -> Extraction:
    """Find keys in pasted text (a file, a table, a log...).

    Gemini-shaped keys are found anywhere in a line; a line without one is accepted as an explicit key when
    it is a single key-like token (optionally `project:key`), otherwise it is counted as rejected.
    Duplicates inside the text are dropped here; duplicates of existing keys are the pool's business.
    """
    found: list[KeySpec] = []
    seen: set[str] = set()
    rejected = 0

    def add(secret: str, proj: str | None) -> None:
        if secret not in seen:
            seen.add(secret)
            found.append(KeySpec(secret=secret, project=proj or project))

    for raw in text.splitlines():
        line = raw.strip().strip("\"',")
        if not line or line.startswith("#"):
            continue
        matches = _KEY_IN_TEXT.findall(line)
        if matches:
            prefix, sep, rest = line.partition(":")
            line_project = prefix if sep and valid_project(prefix) and rest.strip() in matches else None
            for m in matches:
                add(m, line_project)
            continue
        prefix, sep, rest = line.rpartition(":")
        if sep and valid_project(prefix) and _EXPLICIT_RE.match(rest):
            add(rest, prefix)
        elif _EXPLICIT_RE.match(line):
            add(line, None)
        else:
            rejected += 1
    return Extraction(keys=found, rejected=rejected)
