"""One delivery attempt, bounded: a whole-exchange deadline (connect, send, every byte of the answer — a receiver
that drips a byte every two seconds never passes a per-read timeout, so only a deadline on the whole holds) and a
cap on the answer's size, for both kinds of channel.

- The signed webhook goes out on Keyrack's async client: the answer is streamed and dropped, at most `answer_cap`
  bytes of it; the deadline cancels the exchange wherever it is.
- An Apprise send runs in a child process (`apprise_child`) forked from a server that has Apprise loaded (started
  on the first Apprise send, so a proxy without such a channel never has it): the proxy's own memory never holds an
  answer, the child's address space is capped, and at the deadline the child is killed, whatever transport (HTTP,
  SMTP...) it was in. At most `MAX_SENDERS` children run at once; each lane has at most one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.context import ForkServerContext

import httpx

from proxy_service.alerts import apprise_child
from proxy_service.alerts.apprise_child import mib

ANSWER_CAP = 1 << 20  # a receiver acknowledges; it has no reason to say more than this
DEADLINE_S = 20.0
CHILD_MEMORY = 256 << 20  # address space a send may add to the fork server's
MAX_SENDERS = 8

_context: ForkServerContext | None = None


def too_slow(deadline_s: float) -> str:
    return f"no complete answer within {deadline_s:g} s (the whole exchange is capped): stopped"


async def post_webhook(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], deadline_s: float, answer_cap: int
) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(deadline_s):
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                size = 0
                async for chunk in resp.aiter_raw():  # raw: a compressed answer is never inflated
                    size += len(chunk)
                    if size > answer_cap:
                        return False, f"HTTP {resp.status_code}, answer larger than {mib(answer_cap)}: stopped reading"
    except TimeoutError:
        return False, too_slow(deadline_s)
    return 200 <= resp.status_code < 300, f"HTTP {resp.status_code}"


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["proxy_service.alerts.apprise_warm"])
        _context = ctx
    return _context


async def send_apprise(
    url: str, title: str, body: str, kind: str, deadline_s: float, answer_cap: int
) -> tuple[bool, str]:
    ctx = _fork_server()
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=apprise_child.run,
        args=(writer, url, title, body, kind, answer_cap, CHILD_MEMORY),
        name="keyrack-apprise-send",
        daemon=True,
    )
    loop = asyncio.get_running_loop()
    try:
        # Blocking (a few ms; the first one starts the fork server, which loads Apprise): off the loop. The
        # deadline starts once the child runs: it is the receiver's time, not the server's start.
        await asyncio.to_thread(proc.start)
        writer.close()
        answered = asyncio.Event()
        loop.add_reader(reader.fileno(), answered.set)
        try:
            async with asyncio.timeout(deadline_s):
                await answered.wait()
        except TimeoutError:
            return False, too_slow(deadline_s)
        finally:
            loop.remove_reader(reader.fileno())
        try:
            ok, why = reader.recv()
        except (EOFError, OSError):
            await asyncio.to_thread(proc.join, 5)
            return False, f"the sending process ended without a result (exit code {proc.exitcode})"
        return bool(ok), str(why)
    finally:
        writer.close()
        if proc.pid is not None:
            if proc.is_alive():
                proc.kill()
            await asyncio.to_thread(proc.join, 5)
            if proc.exitcode is not None:
                proc.close()
        reader.close()
