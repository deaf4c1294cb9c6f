"""The dashboard's sign-in links and session cookies (Jupyter's model, not an open port).

`keyrack run` makes a random link key for its run, hands it to the dashboard process in its environment
(`KEYRACK_DASHBOARD_LINK_KEY`, never to the proxy) and keeps it in `<data dir>/dashboard-link.json` (0600) for
`keyrack dashboard-link`, which prints a further link while the run lasts. A link carries a code signed with that
key: a random nonce and an expiry, so it cannot be forged, is short-lived, and the dashboard redeems each nonce
once (dashboard/sessions.py). A redeemed code becomes a session cookie signed the same way under another purpose, so
neither can pass for the other. A new run means a new key: every link and cookie of the last run is dead.

The admin token itself is never in a link or a cookie.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

KEY_ENV = "KEYRACK_DASHBOARD_LINK_KEY"
LINK_FILE = "dashboard-link.json"
SIGN_IN_PATH = "/sign-in"
LINK_TTL_S = 15 * 60  # the banner's link is opened right away; `keyrack dashboard-link` makes another
SESSION_TTL_S = 12 * 3600  # a working day: then the link or the token again
_LINK, _SESSION = "link", "session"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def _sig(key: str, purpose: str, nonce: str, expires: int) -> str:
    mac = hmac.new(key.encode(), f"{purpose}|{nonce}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()  # 144 bits: beyond guessing


def _mint(key: str, purpose: str, ttl_s: int, now: float | None) -> str:
    nonce = secrets.token_urlsafe(16)
    expires = int((time.time() if now is None else now) + ttl_s)
    return f"{nonce}.{expires}.{_sig(key, purpose, nonce, expires)}"


def _check(key: str, purpose: str, token: str, now: float | None) -> tuple[str, int] | None:
    """(nonce, expiry) of a token this key signed for `purpose` and that has not expired, else None."""
    parts = token.split(".") if isinstance(token, str) and len(token) <= 200 else []
    if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit() or not key:
        return None
    nonce, expires, sig = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(sig.encode(), _sig(key, purpose, nonce, expires).encode()):
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return nonce, expires


def mint_code(key: str, now: float | None = None, ttl_s: int = LINK_TTL_S) -> str:
    return _mint(key, _LINK, ttl_s, now)


def check_code(key: str, code: str, now: float | None = None) -> tuple[str, int] | None:
    return _check(key, _LINK, code, now)


def mint_session(key: str, now: float | None = None, ttl_s: int = SESSION_TTL_S) -> str:
    return _mint(key, _SESSION, ttl_s, now)


def check_session(key: str, value: str, now: float | None = None) -> tuple[str, int] | None:
    return _check(key, _SESSION, value, now)


def cookie_name(key: str) -> str:
    """One name per key: two dashboards on one host (cookies ignore ports) or two runs never overwrite each other."""
    return "keyrack_session_" + hashlib.sha256(f"cookie|{key}".encode()).hexdigest()[:10]


def sign_in_link(dashboard_url: str, key: str) -> str:
    return f"{dashboard_url.rstrip('/')}{SIGN_IN_PATH}?code={mint_code(key)}"


# -- the run's link file (for `keyrack dashboard-link`) ---------------------------------------------------------------


def write_link_file(data_dir: Path, dashboard_url: str, key: str) -> Path:
    path, tmp = data_dir / LINK_FILE, data_dir / f".{LINK_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"url": dashboard_url, "key": key, "pid": os.getpid()}, out)
    os.chmod(tmp, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
    os.replace(tmp, path)
    return path


def read_link_file(data_dir: Path) -> tuple[str, str] | None:
    """(dashboard URL, key) of the `keyrack run` that wrote the file and still runs, else None."""
    try:
        data = json.loads((data_dir / LINK_FILE).read_text(encoding="utf-8"))
        url, key, pid = data["url"], data["key"], data["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(url, str) and isinstance(key, str) and key and isinstance(pid, int)):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # that run ended without cleaning up (SIGKILL): its key is dead
    except PermissionError:
        pass
    return url, key


def remove_link_file(data_dir: Path) -> None:
    with contextlib.suppress(OSError):
        (data_dir / LINK_FILE).unlink()
