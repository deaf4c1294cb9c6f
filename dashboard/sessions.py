"""The dashboard process's side of the sign-in links (proxy_service/dashboard_link.py): a link's code is redeemed
once for a session cookie (HttpOnly, SameSite=Strict, expiring), a cookie signs a script run in, a sign-out revokes
it. State is this process's: the nonces already used and the sessions signed out, each kept only until it would
have expired anyway. The `/sign-in` route runs on the server's event loop and the checks in script threads: one lock.

Links work only where `keyrack run` started the dashboard (the link key and the admin token in its environment);
elsewhere (the Docker image, `keyrack dashboard` on its own) a visitor signs in with the admin token.
"""

from __future__ import annotations

import html
import os
import threading
import time

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from proxy_service import dashboard_link as dl
from proxy_service.envfile import env_setting

MAX_REMEMBERED = 10_000  # used links / revoked sessions; only the key's holder can mint them: full = refuse


class Sessions:
    def __init__(self, key: str) -> None:
        self.key = key
        self.cookie = dl.cookie_name(key)
        self._used: dict[str, int] = {}  # link nonce → its expiry
        self._revoked: dict[str, int] = {}  # session id → its expiry
        self._lock = threading.Lock()

    @staticmethod
    def _prune(entries: dict[str, int], now: float) -> None:
        for nonce in [n for n, expires in entries.items() if expires <= now]:
            del entries[nonce]

    def redeem(self, code: str, now: float | None = None) -> str | None:
        """A new session cookie's value for a valid, unexpired, never-used link code; None otherwise."""
        now = time.time() if now is None else now
        checked = dl.check_code(self.key, code, now)
        if checked is None:
            return None
        nonce, expires = checked
        with self._lock:
            self._prune(self._used, now)
            if nonce in self._used or len(self._used) >= MAX_REMEMBERED:
                return None
            self._used[nonce] = expires
        return dl.mint_session(self.key, now)

    def session(self, cookie: str | None, now: float | None = None) -> tuple[str, int] | None:
        """(session id, expiry) of a valid cookie that was not signed out; None otherwise."""
        checked = dl.check_session(self.key, cookie or "", now)
        with self._lock:
            return None if checked is None or checked[0] in self._revoked else checked

    def revoke(self, session: tuple[str, int]) -> None:
        with self._lock:
            self._prune(self._revoked, time.time())
            if len(self._revoked) < MAX_REMEMBERED:
                self._revoked[session[0]] = session[1]


_current: Sessions | None = None
_current_lock = threading.Lock()


def current() -> Sessions | None:
    """This process's sessions, or None when links are off (no link key or no admin token in the environment)."""
    global _current
    key = os.environ.get(dl.KEY_ENV, "")
    if not key or not (env_setting("KEYRACK_ADMIN_TOKEN") or ""):
        return None
    with _current_lock:
        if _current is None or _current.key != key:
            _current = Sessions(key)
        return _current


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (
        f"<!doctype html><meta charset=utf-8><title>Keyrack</title><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p><p><a href='/'>Open the dashboard</a></p>"
    )
    return HTMLResponse(body, status, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})


async def sign_in_route(request: Request) -> Response:
    """GET /sign-in?code=…: a valid code once → the session cookie and the dashboard; else 403 and no cookie."""
    sessions = current()
    if sessions is None:
        return _page(404, "No sign-in links here", "Sign in with the admin token (KEYRACK_ADMIN_TOKEN).")
    value = sessions.redeem(request.query_params.get("code", ""))
    if value is None:
        return _page(
            403,
            "This sign-in link is not valid",
            "It was used already, has expired, or belongs to another run. Run `keyrack dashboard-link` for a new "
            "one, or sign in with the admin token that `keyrack run` printed.",
        )
    response = RedirectResponse("/", 303, headers={"cache-control": "no-store", "referrer-policy": "no-referrer"})
    response.set_cookie(
        sessions.cookie,
        value,
        max_age=dl.SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
