"""Large response bodies from the upstream's socket to the client's without copying them.

Through aiohttp's client a body arrives as fresh `bytes`: uvloop copies every read out of
its buffer and the response parser copies the body out of that again. Once the headers of
a large body are through, `relay_body` takes the upstream connection over with a
`BufferedProtocol`: the socket reads into one buffer that goes to the client's transport
as it is (1 GiB at ~0.75x nginx's sendfile, like nginx `proxy_pass`, against ~0.5x through
aiohttp: docs/performance.md). aiohttp's parser never sees that body, so the upstream
connection is closed afterwards rather than reused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web

from .upstream import Answer

RELAY_MIN = 1 << 20  # bodies at least this long are relayed
RELAY_BUFFER = 512 * 1024  # one socket read (256 KiB: ~0.7x, 512 KiB: ~0.8x direct; 1 MiB: no better)
CLIENT_HIGH = 4 * RELAY_BUFFER  # bytes queued for the client before the upstream is paused
_NO_BODY = frozenset({204, 304})


@dataclass(slots=True)
class Transfer:
    """Byte counts of one proxied exchange, for metrics and the access log."""

    sent: int = 0
    received: int = 0
    client_stalled: bool = False  # the request body stopped arriving (slow client)


def relayable(request: web.Request, upstream: Answer) -> bool:
    """True for a large, plain, length-delimited body between two plain TCP connections."""
    length, transport, client = upstream.content_length, upstream.protocol.transport, request.transport
    return (
        length is not None and length >= RELAY_MIN
        and request.method != "HEAD" and upstream.status >= 200 and upstream.status not in _NO_BODY
        and "Transfer-Encoding" not in upstream.headers
        and transport is not None and client is not None
        and transport.get_extra_info("sslcontext") is None
        and client.get_extra_info("sslcontext") is None
        and upstream.content.exception() is None
    )  # fmt: skip


class _Relay(asyncio.BufferedProtocol):
    """The upstream socket's protocol for the rest of one body: each read goes straight to
    the client's transport; the coroutine in `relay_body` is woken only to wait for a slow
    client, at the end, or when either side breaks."""

    def __init__(self, client: asyncio.Transport, upstream: asyncio.Transport, remaining: int,
                 transfer: Transfer) -> None:  # fmt: skip
        self.client, self.upstream, self.remaining, self.transfer = client, upstream, remaining, transfer
        self.view = memoryview(bytearray(RELAY_BUFFER))
        self.failure: str | None = None
        self.paused = False  # upstream reads stopped until the client drains
        self.progress = time.monotonic()
        self.wakeup: asyncio.Future[None] | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view if self.remaining >= len(self.view) else self.view[: self.remaining]

    def buffer_updated(self, nbytes: int) -> None:
        if self.client.is_closing():
            self.upstream.pause_reading()
            self._end("the client went away")
            return
        self.client.write(self.view[:nbytes])
        self.remaining -= nbytes
        self.transfer.received += nbytes
        self.progress = time.monotonic()
        if queued := self.client.get_write_buffer_size():
            self.view = memoryview(bytearray(RELAY_BUFFER))  # the transport may still hold the old one
            if queued > CLIENT_HIGH:
                self.paused = True
        if self.paused or self.remaining <= 0:
            self.upstream.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        if self.remaining > 0:
            self._end("the upstream closed early")
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.remaining > 0:
            self._end("the upstream connection broke")

    def _end(self, failure: str) -> None:
        self.failure = self.failure or failure
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)


async def relay_body(request: web.Request, response: web.StreamResponse, upstream: Answer,
                     transfer: Transfer, idle: float) -> None:  # fmt: skip
    """Send the rest of `upstream`'s body to the client (see `relayable`), counting it in `transfer`.

    Raises ConnectionResetError when either side breaks or the upstream is idle for `idle`
    seconds: too late for a status, the client's transfer must not look complete.
    """
    transport, client = upstream.protocol.transport, request.transport
    assert transport is not None and client is not None
    head = upstream.content.read_nowait()  # what arrived with the headers
    await response.write(head)
    transfer.received += len(head)
    relay = _Relay(client, transport, upstream.content_length - len(head), transfer)  # type: ignore[operator]
    loop = asyncio.get_running_loop()
    try:
        if relay.remaining > 0:
            client.set_write_buffer_limits(high=CLIENT_HIGH)
            transport.set_protocol(relay)
            transport.resume_reading()
        while relay.remaining > 0 and relay.failure is None:
            if relay.paused:
                await request.writer.drain()  # until the client has read most of the queue
                relay.paused = False
                transport.resume_reading()
                continue
            relay.wakeup = loop.create_future()
            try:
                async with asyncio.timeout(idle):
                    await relay.wakeup
            except TimeoutError:
                if time.monotonic() - relay.progress >= idle:
                    relay.failure = "the upstream went idle"
    finally:
        transport.close()  # its parser never saw this body: the connection cannot be reused
    if relay.failure is not None:
        raise ConnectionResetError(f"upstream broke mid-response: {relay.failure}")
