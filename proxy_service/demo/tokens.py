"""The demo's admin and client tokens, kept in `<demo data dir>/tokens.json` (mode 0600) and reused on every run:
a dashboard tab, a curl line or an SDK wired to the demo keeps working across restarts, and `keyrack snapshot`
can reach a running demo. Demo tokens guard fake keys on 127.0.0.1 only; real runs never read this file."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

TOKENS_FILE = "tokens.json"


def load(data_dir: Path) -> tuple[str, str] | None:
    """(admin token, client token) kept by an earlier demo run, or None."""
    try:
        data = json.loads((data_dir / TOKENS_FILE).read_text(encoding="utf-8"))
        admin, client = data["admin_token"], data["client_token"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(admin, str) and isinstance(client, str) and admin.strip() and client.strip():
        return admin.strip(), client.strip()
    return None


def demo_tokens(data_dir: Path) -> tuple[str, str]:
    """The kept tokens, or new ones written atomically with mode 0600."""
    kept = load(data_dir)
    if kept is not None:
        return kept
    admin, client = "kra_" + secrets.token_urlsafe(18), "krc_demo_" + secrets.token_urlsafe(12)
    path, tmp = data_dir / TOKENS_FILE, data_dir / f".{TOKENS_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"admin_token": admin, "client_token": client}, out)
    os.chmod(tmp, 0o600)  # a pre-existing temp file keeps its old mode through O_CREAT
    os.replace(tmp, path)
    return admin, client


def derived_token(base: str, name: str) -> str:
    """A further demo client token that follows from a kept one (stable across runs, distinct per name)."""
    return "krc_demo_" + hashlib.sha256(f"{base}/{name}".encode()).hexdigest()[:20]
