"""One Apprise send, in a child process of its own (`delivery.send_apprise` starts it and kills it at the deadline).

Apprise's transports read whole answers (`requests` without `stream=True`) and time out per read, so a receiver
answering a gigabyte, or a byte every two seconds, would cost the process that sends unbounded memory and time.
Here that process is a throwaway child: its address space is capped (`resource.RLIMIT_AS`) and every answer read
through `requests` — the HTTP client of Apprise's web transports — is cut at `answer_cap` bytes with a precise
reason, whatever the plugin asked for. Transports that use no HTTP (SMTP, XMPP...) are bounded by the cap and the
parent's deadline alone.

Imports nothing of Keyrack: the child is forked from a server that has Apprise loaded (`apprise_warm`).
"""

from __future__ import annotations

import logging
import resource
from multiprocessing.connection import Connection
from typing import Any

_violation: list[str] = []  # why an answer was refused, for the report (the plugin only logs "connection error")


def _limit_memory(extra_bytes: int) -> None:
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _bound_answers(answer_cap: int) -> None:
    """Make every `requests` exchange read its answer itself, at most `answer_cap` bytes (decoded)."""
    import io

    import requests
    import requests.adapters
    import urllib3

    class AnswerTooLarge(requests.exceptions.RequestException):
        pass

    original = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, stream: bool = False, **kwargs: Any) -> Any:
        resp = original(self, request, stream=True, **kwargs)
        data = bytearray()
        try:
            for chunk in resp.raw.stream(64 * 1024, decode_content=True):
                data += chunk
                if len(data) > answer_cap:
                    why = f"HTTP {resp.status_code}, answer larger than {mib(answer_cap)}: stopped reading"
                    _violation.append(why)
                    resp.close()
                    raise AnswerTooLarge(why)
        except urllib3.exceptions.HTTPError as exc:
            resp.close()
            raise requests.exceptions.ConnectionError(exc) from None
        resp.raw.release_conn()
        # The answer, already read and decoded, becomes the response's body through its public `raw` attribute
        # (a body without an encoding: nothing is decoded twice), not through requests' private content fields.
        resp.raw = urllib3.HTTPResponse(body=io.BytesIO(bytes(data)), preload_content=False, decode_content=False)
        return resp

    requests.adapters.HTTPAdapter.send = send  # type: ignore[method-assign,assignment]


def run(conn: Connection, url: str, title: str, body: str, kind: str, answer_cap: int, memory_cap: int) -> None:
    """Send once; report `(ok, reason)` on `conn`."""
    try:
        _limit_memory(memory_cap)
        _bound_answers(answer_cap)
        import apprise

        types = {"firing": apprise.NotifyType.FAILURE, "resolved": apprise.NotifyType.SUCCESS}
        ap = apprise.Apprise()
        if not ap.add(url):
            conn.send((False, "invalid Apprise URL"))
            return
        with apprise.LogCapture(level=logging.WARNING) as captured:
            ok = ap.notify(body=body, title=title, notify_type=types.get(kind, apprise.NotifyType.INFO))
            lines = captured.getvalue().strip().splitlines()
        if ok:
            conn.send((True, "sent"))
        elif _violation:
            conn.send((False, _violation[-1]))
        else:
            conn.send((False, lines[-1] if lines else "Apprise reported a failure"))
    except MemoryError:
        conn.send((False, f"the send needed more than its memory cap ({mib(memory_cap)})"))
    except Exception as exc:  # whatever happens, the parent gets a reason
        conn.send((False, f"{type(exc).__name__}: {exc}"[:300]))
    finally:
        conn.close()
