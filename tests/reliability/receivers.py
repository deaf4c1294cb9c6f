"""Notification receivers as real TCP servers on 127.0.0.1, for the delivery tests: a healthy one that records what
it gets, one that drips its answer a byte every two seconds, one that reads the request and never answers, and one
whose answer is as large as asked (streamed from one reused buffer, so the test process itself stays small).

Each runs on its own threads and closes every connection it holds when its block ends.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Receiver:
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    sent: int = 0  # answer bytes written
    lock: threading.Lock = field(default_factory=threading.Lock)

    def json_bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for b in self.bodies if b.strip()]


def _read_request(conn: socket.socket) -> bytes:
    """The request's body (headers read up to the blank line, then Content-Length bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
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
    return body


@contextlib.contextmanager
def _server(handle: Callable[[socket.socket, Receiver, threading.Event], None]) -> Iterator[Receiver]:
    rec = Receiver()
    stop = threading.Event()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    rec.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    open_conns: list[socket.socket] = []

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            handle(conn, rec, stop)
        with contextlib.suppress(OSError):
            conn.close()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(30)
            with rec.lock:
                rec.connections += 1
                open_conns.append(conn)
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield rec
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        with rec.lock:
            for conn in open_conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()


def _healthy(conn: socket.socket, rec: Receiver, _stop: threading.Event) -> None:
    body = _read_request(conn)
    with rec.lock:
        rec.bodies.append(body)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def _drip(conn: socket.socket, rec: Receiver, stop: threading.Event) -> None:
    """A byte every two seconds, from the status line on: each read gets something, the answer never ends."""
    _read_request(conn)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
    for i in range(len(answer)):
        if stop.wait(2.0 if i else 0.0):
            return
        conn.sendall(answer[i : i + 1])
        with rec.lock:
            rec.sent += 1


def _silent(conn: socket.socket, _rec: Receiver, stop: threading.Event) -> None:
    _read_request(conn)
    stop.wait(300)


def _huge(size: int) -> Callable[[socket.socket, Receiver, threading.Event], None]:
    chunk = b"z" * (1 << 20)

    def handle(conn: socket.socket, rec: Receiver, stop: threading.Event) -> None:
        _read_request(conn)
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n".encode())
        left = size
        while left > 0 and not stop.is_set():
            n = min(left, len(chunk))
            conn.sendall(chunk[:n])
            left -= n
            with rec.lock:
                rec.sent += n

    return handle


def healthy() -> contextlib.AbstractContextManager[Receiver]:
    return _server(_healthy)


def drip() -> contextlib.AbstractContextManager[Receiver]:
    return _server(_drip)


def silent() -> contextlib.AbstractContextManager[Receiver]:
    return _server(_silent)


def huge(size: int) -> contextlib.AbstractContextManager[Receiver]:
    return _server(_huge(size))


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
