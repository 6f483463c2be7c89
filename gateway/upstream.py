"""The client side of the proxy: pooled HTTP/1.1 connections to one upstream.

aiohttp's `ClientSession` builds a request object, a response object, a connection
wrapper, timer contexts and trace hooks for every request; for a pass-through proxy that
is most of the cost of a small request (docs/performance.md: about 250k of a naive aiohttp
proxy's 635k instructions). `Pool` keeps only what a proxy needs and leaves the wire to
aiohttp's own parts: its `ResponseHandler` protocol and C (llhttp) response parser read
every answer (framing, read timeout, flow control, malformed answers), and its C header
serializer writes every request head, refusing CR or LF in a name or value. What is
jobgate's here is the pool, the request framing (the client's Content-Length kept, else
chunked) and when a connection may be used again.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .config import UpstreamConfig

#: Bytes read from the upstream at a time, and a quarter of what may queue for the client.
#: 64 KiB streamed 1 GiB 12-25 % faster than 256 KiB in interleaved runs (docs/performance.md):
#: chunks stay in cache and `readany` joins less.
STREAM_BUFFER = 64 * 1024
#: An idle connection older than this is closed rather than used (aiohttp's default too;
#: nginx keeps an idle upstream connection 75 s, so the upstream does not close it first).
KEEPALIVE_SECONDS = 15.0
#: Idle connections kept per upstream; more are closed when released.
MAX_IDLE = 256
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})  # RFC 9110 §9.2.2


@dataclass(slots=True)
class Answer:
    """The head of the upstream's answer; its body is read from `content`, then `release`."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content: StreamReader
    protocol: _Connection
    writer: asyncio.Task[None] | None  # the request body still being sent, if any

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None


class _Connection(ResponseHandler):
    """aiohttp's response protocol, told when its connection sits idle in the pool: an
    upstream that sends anything then (a stray answer, half a head, a CRLF) is out of step,
    and the connection is never used again."""

    idle = False

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self.force_close()
        super().data_received(data)


class Pool:
    """Idle keep-alive connections to one upstream, and the way to open more."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        url = URL(upstream.url)
        self.host, self.port = url.raw_host or "", url.port or 80
        self.authority = url.host_port_subcomponent or self.host  # the Host header aiohttp would send
        self.base_path = "" if url.raw_path == "/" else url.raw_path  # an upstream URL's own path
        self.ssl: ssl.SSLContext | None = _ssl_context(upstream) if url.scheme == "https" else None
        self.connect_timeout = upstream.connect_timeout
        self.read_timeout = upstream.read_timeout
        self.idle: list[tuple[float, _Connection]] = []
        self.closed = False

    async def request(self, method: str, target: str, headers: CIMultiDict[str], body: Any = None) -> Answer:
        """Send one request and wait for its answer's head.

        `headers` carry Host and everything else; `body` is None, bytes, an aiohttp
        FormData or an async iterator of chunks (sent as they come: with the client's
        Content-Length when `headers` has one, else chunked). Raises TimeoutError,
        OSError or an aiohttp.ClientError when the upstream cannot be reached or breaks
        before answering.
        """
        if isinstance(body, aiohttp.FormData):
            payload = body()
            headers["Content-Type"] = payload.content_type
            body = await payload.as_bytes()
        chunked = False
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is not None and "Content-Length" not in headers:
            headers["Transfer-Encoding"] = "chunked"
            chunked = True
        elif body is None and method in _BODY_METHODS and "Content-Length" not in headers:
            headers["Content-Length"] = "0"
        head = _serialize_headers(f"{method} {self.base_path}{target} HTTP/1.1", headers)
        protocol, reused = await self._acquire()
        try:
            return await self._exchange(protocol, method, head, body, chunked)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if not reused or method not in _IDEMPOTENT or not (body is None or isinstance(body, bytes)):
                raise
        # the upstream closed a kept-alive connection as the request went out: once more on a
        # new connection, as aiohttp does for an idempotent request
        return await self._exchange(await self._connect(), method, head, body, chunked)

    async def _exchange(
        self, protocol: _Connection, method: str, head: bytes, body: Any, chunked: bool = False
    ) -> Answer:
        protocol.set_response_params(
            skip_payload=method == "HEAD",
            read_until_eof=True,  # an answer with neither length nor chunks ends at EOF (RFC 9112 §6.3)
            read_timeout=self.read_timeout,
            read_bufsize=STREAM_BUFFER,
            auto_decompress=False,
        )
        transport = protocol.transport
        assert transport is not None
        writer: asyncio.Task[None] | None = None
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)
                protocol.start_timeout()
            else:
                writer = asyncio.ensure_future(_send_body(protocol, head, body, chunked))
            while True:  # a 1xx answer is interim: the final one follows on the same connection
                message, payload = await protocol.read()
                if not 100 <= message.code < 200 or message.code == 101:
                    return Answer(message.code, message.reason, message.headers, payload, protocol, writer)
        except HttpProcessingError as exc:
            _settled(writer)
            protocol.close()
            raise aiohttp.ClientConnectionError(f"a malformed answer: {exc.message}") from None
        except BaseException:
            _settled(writer)
            protocol.close()
            raise

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self.idle:
            since, protocol = self.idle.pop()
            protocol.idle = False
            if now - since < KEEPALIVE_SECONDS and protocol.is_connected() and not protocol.should_close:
                return protocol, True
            protocol.close()
        return await self._connect(), False

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, protocol = await loop.create_connection(
                lambda: _Connection(loop), self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl else None,
            )  # fmt: skip
        return protocol

    def release(self, answer: Answer) -> None:
        """Keep the answer's connection for the next request when its exchange is complete."""
        protocol = answer.protocol
        sent = _settled(answer.writer)  # an unsent body leaves the connection mid-request
        if sent and answer.content.is_eof() and protocol.is_connected() and not protocol.should_close \
                and not self.closed and len(self.idle) < MAX_IDLE:  # fmt: skip
            protocol.idle = True
            self.idle.append((time.monotonic(), protocol))
        else:
            protocol.close()

    async def close(self) -> None:
        """Close the idle connections; those in use close when released."""
        self.closed = True
        while self.idle:
            self.idle.pop()[1].close()


async def _send_body(
    protocol: ResponseHandler, head: bytes, body: AsyncIterator[bytes], chunked: bool
) -> None:
    """Write the request head and a streamed body, framed as the head says, then start the
    read timeout (the upstream answers once it has the body)."""
    loop = asyncio.get_running_loop()
    writer = StreamWriter(protocol, loop)
    if chunked:
        writer.enable_chunking()
    assert protocol.transport is not None
    try:
        protocol.transport.write(head)
        async for chunk in body:
            await writer.write(chunk)
        await writer.write_eof()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # the client's body broke or stalled: the waiting read raises it
        protocol.set_exception(exc)
        raise
    protocol.start_timeout()


def _settled(writer: asyncio.Task[None] | None) -> bool:
    """True when the request body (if any) was sent whole; a writer still running is cancelled."""
    if writer is None:
        return True
    if not writer.done():
        writer.cancel()
        return False
    return not writer.cancelled() and writer.exception() is None


def _ssl_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    if not upstream.tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=upstream.ca_file or None)
