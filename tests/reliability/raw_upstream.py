"""A hostile Google stand-in at the socket level, on 127.0.0.1: each test writes the exact bytes of its answer
(a status line no HTTP library would send, a stream cut in the middle of a chunk, a gigabyte from one reused
buffer), which an ASGI app cannot.

`raw_upstream(answer)` serves every connection on its own thread: the request is read (head and Content-Length
body), then `answer(conn, request)` writes what it likes; the connection is closed when it returns. Every
connection still open is closed when the block ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode("latin-1")


@dataclass
class RawUpstream:
    url: str = ""
    requests: list[RawRequest] = field(default_factory=list)
    sent: int = 0  # answer bytes written, over all connections
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_sent(self, n: int) -> None:
        with self.lock:
            self.sent += n


Answer = Callable[[socket.socket, RawRequest, RawUpstream], None]


def _read_request(conn: socket.socket) -> RawRequest | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawRequest(head, body)


@contextlib.contextmanager
def raw_upstream(answer: Answer) -> Iterator[RawUpstream]:
    up = RawUpstream()
    stop = threading.Event()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    up.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request = _read_request(conn)
            if request is not None:
                with up.lock:
                    up.requests.append(request)
                answer(conn, request, up)
        with contextlib.suppress(OSError):
            conn.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(60)
            conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield up
    finally:
        stop.set()
        thread.join(10)
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


def head(status: str = "200 OK", ctype: str = "application/json", extra: dict[str, str] | None = None) -> bytes:
    """A response head; chunked unless `extra` sets a Content-Length."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {ctype}"]
    headers = dict(extra or {})
    if "Content-Length" not in headers:
        headers["Transfer-Encoding"] = "chunked"
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def send_json(conn: socket.socket, status: str, doc: Any) -> None:
    body = json.dumps(doc).encode()
    conn.sendall(head(status, extra={"Content-Length": str(len(body))}) + body)
