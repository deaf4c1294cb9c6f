"""Upstream key text: what a Gemini key looks like, extraction from pasted text, stable ids, masking, the
project-name rule, and redaction of secrets. The one place for each: other modules use `KEY_PATTERN` /
`looks_like_key()` / `mask()` / `valid_project()` / `redact()` from here.

A key's id is a short hash of its secret, so the same key always gets the same id and ids can appear in
events, logs and URLs while the secret never does. Text that cannot be a Gemini API key is rejected with the
reason (the admin API's add-keys answer, `KEYRACK_API_KEYS` at startup), never stored. `redact` is the one place
that knows what a secret looks like: every boundary where outside text enters Keyrack (upstream error bodies and
messages, log lines) goes through it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

# A Gemini (Google Cloud) API key: "AIza" + 35 characters of [0-9A-Za-z_-], 39 in all. The one definition;
# KEY_PATTERN finds keys inside any text (redaction), KEY_TOKEN matches one key with nothing glued on either side.
KEY_BODY_LEN = 35
KEY_PATTERN = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
KEY_TOKEN = re.compile(r"(?<![0-9A-Za-z_\-])AIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")
KEY_SHAPE = "AIza followed by 35 letters, digits, '_' or '-'"
# A Google Cloud project as Keyrack names it (a label, not checked against Google): 1-64 of these characters.
PROJECT_PATTERN = re.compile(r"^[0-9A-Za-z_\-\.]{1,64}$")
PROJECT_RULE = "1-64 letters, digits, '_', '-' or '.'"
_KEYISH = re.compile(r"[0-9A-Za-z_\-]+")


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


def looks_like_key(text: str) -> bool:
    """Whether `text` is exactly one Gemini-shaped API key."""
    return KEY_PATTERN.fullmatch(text) is not None


def valid_project(name: str) -> bool:
    return PROJECT_PATTERN.match(name) is not None


def why_not_key(token: str) -> str:
    """Why `token` cannot be a Gemini API key (for a token that is not one), without echoing it."""
    if not token.startswith("AIza"):
        return f"not a Gemini API key ({len(token)} characters; a key is {KEY_SHAPE})"
    body = token[4:]
    if not _KEYISH.fullmatch(body or "-"):
        return f"starts like a Gemini API key but holds characters a key cannot have (a key is {KEY_SHAPE})"
    return f"starts like a Gemini API key but has {len(body)} characters after AIza, not {KEY_BODY_LEN}"


@dataclass(frozen=True)
class KeySpec:
    """One upstream key as configured: the secret and the Google Cloud project it belongs to (if known)."""

    secret: str
    project: str | None = None
    label: str | None = None


class KeyListError(ValueError):
    """`KEYRACK_API_KEYS` holds entries that cannot be keys; the message names each (masked) and why."""


def parse_key_list(text: str) -> list[KeySpec]:
    """Parse KEYRACK_API_KEYS: keys separated by commas, semicolons, spaces or newlines, each optionally
    `project:key`. Raises KeyListError naming every entry that is not a Gemini-shaped key or has a bad project."""
    specs: list[KeySpec] = []
    seen: set[str] = set()
    problems: list[str] = []
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    for n, token in enumerate(tokens, 1):
        project, sep, secret = token.rpartition(":")
        where = f"entry {n} of {len(tokens)}"
        if sep and not valid_project(project):
            problems.append(f"{where}: project {mask(project)!r} must be {PROJECT_RULE}")
            continue
        if not secret:
            problems.append(f"{where}: project {project!r} has no key after ':'")
            continue
        if not looks_like_key(secret):
            problems.append(f"{where} ({mask(secret)}): {why_not_key(secret)}")
            continue
        if secret not in seen:
            seen.add(secret)
            specs.append(KeySpec(secret=secret, project=project or None))
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise KeyListError(shown)
    return specs


Reason = Literal["not_a_key", "bad_length", "bad_characters", "duplicate", "duplicate_in_text", "other_project"]


@dataclass(frozen=True)
class Finding:
    """One line of pasted text that was not added as it stands: rejected, or a warning about a key."""

    line: int  # 1-based line number in the pasted text
    code: Reason
    message: str
    text: str | None = None  # the rejected token, masked
    key_id: str | None = None


@dataclass
class Extraction:
    keys: list[KeySpec]
    rejected: list[Finding] = field(default_factory=list)  # lines that held no key, each with why
    repeated: list[Finding] = field(default_factory=list)  # keys pasted more than once (the first one counts)
    lines: dict[str, int] = field(default_factory=dict)  # secret -> line it was first found on


def _reason_code(token: str) -> Reason:
    if not token.startswith("AIza"):
        return "not_a_key"
    return "bad_length" if _KEYISH.fullmatch(token[4:] or "-") else "bad_characters"


def extract_keys(text: str, project: str | None = None) -> Extraction:
    """Find Gemini-shaped keys in pasted text (a file, a table, a log...).

    Keys are found anywhere in a line (`project:key` lines carry their project); a line without one is
    rejected with the reason. Repeats inside the text are reported and dropped here; keys already in the pool
    are the caller's business.
    """
    out = Extraction(keys=[])

    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip().strip("\"',")
        if not line or line.startswith("#"):
            continue
        matches = KEY_TOKEN.findall(line)
        if not matches:
            tokens = [t.rpartition(":")[2] for t in re.split(r"[\s,;\"'=]+", line) if t]
            near = next((t for t in tokens if t.startswith("AIza")), tokens[0] if len(tokens) == 1 else line)
            out.rejected.append(Finding(n, _reason_code(near), why_not_key(near), mask(near)))
            continue
        prefix, sep, rest = line.partition(":")
        line_project = prefix if sep and valid_project(prefix) and rest.strip() in matches else None
        for secret in matches:
            if secret in out.lines:
                first = out.lines[secret]
                out.repeated.append(
                    Finding(n, "duplicate_in_text", f"the same key as line {first}; added once", key_id=key_id(secret))
                )
                continue
            out.lines[secret] = n
            out.keys.append(KeySpec(secret=secret, project=line_project or project))
    return out
