"""The upstream client (gateway/upstream.py), tried as a hostile or broken upstream would.

The upstream here is a raw asyncio socket server: every assertion is on the bytes it
RECEIVED on its sockets (and on how many sockets were opened), or on what `Pool` (or the
gateway, for the end-to-end cases) made of the bytes it sent back.
"""

from __future__ import annotations

import asyncio
import gc
import io
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import upstream as upstream_module
from gateway.app import build_gateway
from gateway.config import UPSTREAM_NAMES, UpstreamConfig, parse_config
from gateway.devredis import RedisProcess
from gateway.upstream import Pool

from .conftest import World

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
READ_TIMEOUT = 0.4


# --- the raw upstream -------------------------------------------------------------------


@dataclass
class Seen:
    """One request as it arrived on the upstream's socket."""

    head: bytes  # request line and headers, up to and with the blank line
    wire_body: bytes  # the body as framed on the wire (chunk sizes included)
    body: bytes  # the body, de-chunked

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        found = []
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.lower() == name.lower():
                found.append(value.strip())
        return found


class Peer:
    """The upstream's side of one TCP connection: what it received, and how it answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = bytearray()
        self.requests: list[Seen] = []
        self.eof = asyncio.Event()  # the gateway's side closed the connection

    async def read_head(self) -> bytes | None:
        """The next request's head, or None when the connection ends first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.received += getattr(exc, "partial", b"")
            self.eof.set()
            return None
        self.received += head
        return head

    async def _exactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.received += data
        return data

    async def _line(self) -> bytes:
        data = await self.reader.readuntil(b"\r\n")
        self.received += data
        return data

    async def read_request(self) -> Seen | None:
        """The next whole request (head and body as its head frames it), or None at EOF."""
        head = await self.read_head()
        if head is None:
            return None
        seen = Seen(head, b"", b"")
        wire, body = bytearray(), bytearray()
        if "chunked" in ",".join(seen.values("Transfer-Encoding")).lower():
            while True:
                size_line = await self._line()
                wire += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    wire += await self._line()  # the last chunk's CRLF (no trailers sent)
                    break
                chunk = await self._exactly(size + 2)
                wire += chunk
                body += chunk[:-2]
        elif lengths := seen.values("Content-Length"):
            wire += await self._exactly(int(lengths[0]))
            body += wire
        seen.wire_body, seen.body = bytes(wire), bytes(body)
        self.requests.append(seen)
        return seen

    async def read_to_eof(self) -> None:
        """Everything until the gateway closes the connection."""
        while data := await self.reader.read(65536):
            self.received += data
        self.eof.set()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def hang_up(self) -> None:
        """Close the connection (a FIN; unread bytes make it a reset)."""
        self.writer.close()


Serve = Callable[[Peer], Awaitable[None]]


class RawUpstream:
    """A socket server; `serve` runs once per accepted connection, `peers` in accept order."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.peers: list[Peer] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Seen]:
        return [seen for peer in self.peers for seen in peer.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.serve(peer)
            await peer.writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler ends quietly: asyncio 3.11 logs a cancelled one's exception()
        finally:
            writer.close()
            self.tasks.discard(task)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def answering(*answers: bytes | Callable[[Seen], bytes]) -> Serve:
    """Read requests one after another on each connection and answer them in turn (the last
    answer repeats); the connection stays open until the gateway closes it."""

    async def serve(peer: Peer) -> None:
        index = 0
        while (seen := await peer.read_request()) is not None:
            answer = answers[min(index, len(answers) - 1)]
            peer.send(answer(seen) if callable(answer) else answer)
            index += 1

    return serve


def per_connection(*serves: Serve) -> Serve:
    """The first connection is served by the first of `serves`, the next by the next; the
    last serves every later one."""
    accepted = 0

    async def serve(peer: Peer) -> None:
        nonlocal accepted
        accepted += 1
        await serves[min(accepted, len(serves)) - 1](peer)

    return serve


def ok(body: bytes, *headers: str) -> bytes:
    """A 200 with `body` and its Content-Length."""
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Serve], Awaitable[RawUpstream]]]:
    """Start raw upstreams; all are stopped after the test."""
    started: list[RawUpstream] = []

    async def start(serve: Serve) -> RawUpstream:
        server = await RawUpstream(serve).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., Pool]]:
    """A Pool on an upstream URL with small timeouts; closed after the test."""
    made: list[Pool] = []

    def make(url: str, **settings: Any) -> Pool:
        settings = {"connect_timeout": 1.0, "read_timeout": READ_TIMEOUT, **settings}
        pool = Pool(UpstreamConfig(name="api", url=url, **settings))
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


def head_for(pool: Pool, **extra: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict(Host=pool.authority)
    headers.update(extra)
    return headers


async def fetch(
    pool: Pool, method: str = "GET", target: str = "/", body: Any = None, **headers: str
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    """One exchange through the pool, its body read whole and the connection released."""
    answer = await pool.request(method, target, head_for(pool, **headers), body)
    try:
        data = await answer.content.read()
    finally:
        pool.release(answer)
    return answer.status, answer.headers, data


async def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    """A streamed body, `pause` seconds before each part."""
    for part in parts:
        if pause:
            await asyncio.sleep(pause)
        yield part


@dataclass
class LoopErrors:
    """What reached the event loop's exception handler ("Task exception was never retrieved")."""

    contexts: list[dict[str, Any]] = field(default_factory=list)

    async def collected(self) -> list[str]:
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
        return [str(c.get("message")) + ": " + repr(c.get("exception")) for c in self.contexts]


@pytest.fixture
async def loop_errors() -> AsyncIterator[LoopErrors]:
    loop = asyncio.get_running_loop()
    errors = LoopErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.contexts.append(context))
    yield errors
    loop.set_exception_handler(previous)


# --- the gateway over a raw upstream -----------------------------------------------------------


async def gateway_client(
    aiohttp_client: Any, redis_server: RedisProcess, url: str, url_path: str = "", **settings: Any
) -> TestClient:
    upstream = {"url": url + url_path, "connect_timeout": 1.0, "read_timeout": READ_TIMEOUT, **settings}
    data = {
        "listen": "127.0.0.1:0",
        "redis": {"url": redis_server.url},
        "upstreams": {name: dict(upstream) for name in UPSTREAM_NAMES},
    }
    client: TestClient = await aiohttp_client(build_gateway(parse_config(data, "test.yaml", env={})))
    return client


@pytest.fixture
def raw_gateway(redis_server: RedisProcess, world: World, aiohttp_client: Any, raw_upstream: Any) -> Any:
    """The gateway in front of a raw upstream: `await raw_gateway(serve, **upstream settings)`."""

    async def make(serve: Serve, url_path: str = "", **settings: Any) -> tuple[TestClient, RawUpstream]:
        up = await raw_upstream(serve)
        return await gateway_client(aiohttp_client, redis_server, up.url, url_path, **settings), up

    return make


# --- 1. keep-alive ----------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(ok(b"one"), ok(b"two")))
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == b"one"
    assert (await fetch(pool, target="/b"))[2] == b"two"
    assert len(up.peers) == 1
    assert [seen.request_line for seen in up.peers[0].requests] == ["GET / HTTP/1.1", "GET /b HTTP/1.1"]


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "close-among-tokens", "http-1.0"],
)
async def test_an_answer_that_ends_the_connection_is_not_reused(
    raw_upstream: Any, make_pool: Any, first: bytes
) -> None:
    """The upstream leaves the socket open: only the Pool's own reading can refuse it."""
    up = await raw_upstream(answering(first, ok(b"next")))
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == b"ok"
    assert (await fetch(pool))[2] == b"ok"  # a new connection: its first answer again
    assert len(up.peers) == 2 and [len(p.requests) for p in up.peers] == [1, 1]
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)  # and the first one was closed


SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"


def then_unsolicited(extra: bytes, delay: float) -> Serve:
    """Answer the first request and send `extra` after it (in the same write, or `delay`
    seconds later); answer every later request on the connection with `reused`."""

    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(ok(b"one") + (b"" if delay else extra))
        if delay:
            await asyncio.sleep(delay)
            peer.send(extra)
        while await peer.read_request() is not None:
            peer.send(ok(b"reused"))

    return serve


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["with-the-answer", "while-idle"])
async def test_a_smuggled_second_answer_is_never_used_nor_its_connection(
    raw_upstream: Any, make_pool: Any, delay: float
) -> None:
    up = await raw_upstream(then_unsolicited(SMUGGLED, delay))
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == b"one"
    await asyncio.sleep(delay * 2)
    status, _, body = await fetch(pool, target="/second")
    assert (status, body) == (200, b"one")  # a fresh connection's first answer
    assert [len(p.requests) for p in up.peers] == [1, 1]
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)


PARTIAL = b"HTTP/1.1 203 Smuggled\r\nX-Smuggled: 1\r\n"  # a head cut short


@pytest.mark.parametrize(
    ("extra", "delay"), [(PARTIAL, 0.0), (PARTIAL, 0.05), (b"\r\n", 0.05)],
    ids=["partial-with-the-answer", "partial-while-idle", "crlf-while-idle"],
)  # fmt: skip
async def test_a_partial_unsolicited_head_never_reaches_the_next_answer(
    raw_upstream: Any, make_pool: Any, extra: bytes, delay: float
) -> None:
    """Bytes that are no whole answer yet: whichever connection answers next, its answer is
    read from its own first byte (were the partial head kept, it would be a 203 with
    X-Smuggled, or the real status line would be a malformed header)."""
    up = await raw_upstream(then_unsolicited(extra, delay))
    pool = make_pool(up.url)
    await fetch(pool)
    await asyncio.sleep(delay * 2)
    status, headers, body = await fetch(pool, target="/second")
    assert status == 200 and "X-Smuggled" not in headers
    assert body == (b"reused" if len(up.peers) == 1 else b"one")
    if delay:  # bytes while the connection sat idle: an upstream out of step is not used again
        assert (len(up.peers), body) == (2, b"one")


async def test_unsolicited_bytes_never_reach_the_next_client_through_the_gateway(
    raw_gateway: Any, world: World
) -> None:
    async def serve(peer: Peer) -> None:
        if await peer.read_request() is not None:
            peer.send(ok(b"first") + SMUGGLED)
        while await peer.read_request() is not None:
            peer.send(ok(b"reused"))

    client, up = await raw_gateway(serve)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert await (await client.get(PKG, headers=headers)).read() == b"first"
    second = await client.get(PKG, headers=headers)
    assert second.status == 200 and await second.read() == b"first"
    assert len(up.peers) == 2


# --- 2. stale kept-alive connections ------------------------------------------------------


def close_after(answers: int) -> Serve:
    """Answer `answers` requests on a connection, then read one more and hang up unanswered."""

    async def serve(peer: Peer) -> None:
        for _ in range(answers):
            if await peer.read_request() is None:
                return
            peer.send(ok(b"answer"))
        await peer.read_request()
        peer.hang_up()

    return serve


async def test_a_connection_closed_while_idle_is_not_used(raw_upstream: Any, make_pool: Any) -> None:
    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(OK)  # keep-alive by its headers, and then closed at once
        peer.hang_up()

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == b"ok"
    await asyncio.sleep(0.05)
    assert (await fetch(pool))[2] == b"ok"
    assert [len(p.requests) for p in up.peers] == [1, 1]


@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("HEAD", None), ("PUT", b"payload"), ("DELETE", None)]
)
async def test_a_kept_alive_connection_closed_unanswered_is_retried_once_for_an_idempotent_request(
    raw_upstream: Any, make_pool: Any, method: str, body: bytes | None
) -> None:
    answer = ok(b"answer")[: None if method != "HEAD" else -len(b"answer")]
    up = await raw_upstream(per_connection(close_after(1), answering(answer)))
    pool = make_pool(up.url)
    assert (await fetch(pool))[0] == 200
    status, _, _ = await fetch(pool, method, "/again", body)
    assert status == 200
    assert len(up.peers) == 2
    lost, retried = up.peers[0].requests[1], up.peers[1].requests[0]
    assert lost.request_line == retried.request_line == f"{method} /again HTTP/1.1"
    assert lost.head == retried.head and lost.body == retried.body == (body or b"")


async def test_a_retry_happens_once_only(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(per_connection(close_after(1), close_after(0)))
    pool = make_pool(up.url)
    await fetch(pool)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(pool)
    assert len(up.peers) == 2 and pool.idle == []


async def test_a_fresh_connection_closed_unanswered_is_not_retried(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(close_after(0))
    pool = make_pool(up.url)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(pool)
    assert len(up.peers) == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_non_idempotent_request_is_not_retried(
    raw_upstream: Any, make_pool: Any, method: str
) -> None:
    up = await raw_upstream(close_after(1))
    pool = make_pool(up.url)
    await fetch(pool)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(pool, method, body=b"once")
    assert len(up.peers) == 1


async def test_a_streamed_body_is_not_retried(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(close_after(1))
    pool = make_pool(up.url)
    await fetch(pool)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(pool, "PUT", body=chunks(b"stream", b"ed"), **{"Content-Length": "8"})
    assert len(up.peers) == 1 and up.peers[0].requests[1].body == b"streamed"


async def test_a_streamed_post_on_a_stale_connection_is_a_502(raw_gateway: Any, world: World) -> None:
    client, up = await raw_gateway(close_after(1))
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert (await client.get(PKG, headers=headers)).status == 200
    answer = await client.put(PKG, data=b"streamed body", headers=headers)
    assert answer.status == 502
    assert len(up.peers) == 1 and up.peers[0].requests[1].body == b"streamed body"


# --- 3. request framing -------------------------------------------------------------------


async def test_a_streamed_body_keeps_the_clients_content_length(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    await fetch(pool, "PUT", "/up", chunks(b"hello", b" ", b"world"), **{"Content-Length": "11"})
    seen = up.requests[0]
    assert seen.values("Content-Length") == ["11"] and seen.values("Transfer-Encoding") == []
    assert seen.wire_body == b"hello world" and bytes(up.peers[0].received).endswith(b"\r\n\r\nhello world")


async def test_a_streamed_body_without_length_goes_chunked(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    parts = (b"a" * 10, b"", b"b" * 70000, b"c")
    await fetch(pool, "POST", "/up", chunks(*parts))
    seen = up.requests[0]
    assert seen.values("Transfer-Encoding") == ["chunked"] and seen.values("Content-Length") == []
    assert seen.body == b"".join(parts) and seen.wire_body.endswith(b"\r\n0\r\n\r\n")
    assert bytes(up.peers[0].received).endswith(b"0\r\n\r\n")  # nothing after the last chunk
    assert (await fetch(pool))[0] == 200 and len(up.peers) == 1  # and the framing left it usable


@pytest.mark.parametrize("given", [None, "999", "0"])
async def test_a_bytes_body_gets_its_own_length(raw_upstream: Any, make_pool: Any, given: str | None) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    extra = {"Content-Length": given} if given else {}
    await fetch(pool, "POST", "/form", b"field=value", **extra)
    seen = up.requests[0]
    assert seen.values("Content-Length") == ["11"] and seen.body == b"field=value"
    assert seen.values("Transfer-Encoding") == []


async def test_a_form_body_is_sent_with_its_type_and_length(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    form = aiohttp.FormData({"name": "v1"})
    await fetch(pool, "POST", "/form", form)
    seen = up.requests[0]
    assert seen.values("Content-Type") == ["application/x-www-form-urlencoded"]
    assert seen.body == b"name=v1" and seen.values("Content-Length") == ["7"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_a_body_method_without_a_body_says_length_zero(
    raw_upstream: Any, make_pool: Any, method: str
) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    await fetch(pool, method, "/empty")
    await fetch(pool)  # the upstream did not wait for a body: the same connection answers
    seen = up.requests[0]
    assert seen.values("Content-Length") == ["0"] and seen.values("Transfer-Encoding") == []
    assert len(up.peers) == 1 and len(up.requests) == 2


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS"])
async def test_a_request_without_a_body_has_no_framing_headers(
    raw_upstream: Any, make_pool: Any, method: str
) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    await fetch(pool, method, "/x")
    seen = up.requests[0]
    assert seen.values("Content-Length") == [] and seen.values("Transfer-Encoding") == []


async def test_the_authority_and_a_base_path(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url + "/base")
    assert pool.authority == f"127.0.0.1:{up.port}"
    await fetch(pool, "GET", "/x/y?q=1&r=%2F")
    seen = up.requests[0]
    assert seen.request_line == "GET /base/x/y?q=1&r=%2F HTTP/1.1"
    assert seen.values("Host") == [f"127.0.0.1:{up.port}"]


@pytest.mark.parametrize("preserve_host", [False, True])
async def test_the_gateway_sends_the_upstreams_host_unless_preserve_host(
    raw_gateway: Any, world: World, preserve_host: bool
) -> None:
    client, up = await raw_gateway(answering(OK), preserve_host=preserve_host, url_path="/prefix")
    answer = await client.get(
        PKG + "?a=1", headers={"JOB-TOKEN": world.tokens["100"], "Host": "public.example"}
    )
    assert answer.status == 200
    seen = up.requests[0]
    assert seen.request_line == f"GET /prefix{PKG}?a=1 HTTP/1.1"
    assert seen.values("Host") == ["public.example" if preserve_host else f"127.0.0.1:{up.port}"]
    assert world.tokens["100"].encode() not in bytes(up.peers[0].received)


async def test_the_gateway_streams_a_client_body_with_its_length_and_chunked_without(
    raw_gateway: Any, world: World
) -> None:
    client, up = await raw_gateway(answering(OK))
    headers = {"JOB-TOKEN": world.tokens["100"]}
    payload = bytes(range(256)) * 1000
    assert (await client.put(PKG, data=payload, headers=headers)).status == 200
    assert (await client.put(PKG, data=chunks(payload[:1000], payload[1000:]), headers=headers)).status == 200
    with_length, chunked = up.requests
    assert with_length.values("Content-Length") == [str(len(payload))] and with_length.wire_body == payload
    assert with_length.values("Transfer-Encoding") == []
    assert chunked.values("Transfer-Encoding") == ["chunked"] and chunked.values("Content-Length") == []
    assert chunked.body == payload


# --- 4. answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True])
async def test_interim_answers_are_skipped(raw_upstream: Any, make_pool: Any, split: bool) -> None:
    parts = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone",
    ]

    async def serve(peer: Peer) -> None:
        await peer.read_request()
        for part in parts if split else [b"".join(parts)]:
            peer.send(part)
            await asyncio.sleep(0.02)
        await answering(ok(b"next"))(peer)

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    status, headers, body = await fetch(pool, "POST", "/x", b"data")
    assert (status, body) == (201, b"done") and "Link" not in headers
    assert (await fetch(pool))[2] == b"next" and len(up.peers) == 1


async def test_a_100_continue_during_a_slow_upload_does_not_start_the_read_timeout(
    raw_upstream: Any, make_pool: Any
) -> None:
    """100 Continue comes as soon as the head is in; the body then takes twice the read timeout."""

    async def serve(peer: Peer) -> None:
        await peer.read_head()
        peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await peer.reader.readexactly(60)
        peer.send(ok(b"got %d" % len(body)))

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    parts = [b"p" * 10] * 6
    status, _, body = await fetch(pool, "PUT", "/slow", chunks(*parts, pause=READ_TIMEOUT / 3), **{
        "Content-Length": "60"})  # fmt: skip
    assert (status, body) == (200, b"got 60")


async def test_head_with_a_length_and_no_body(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", ok(b"after")))
    pool = make_pool(up.url)
    status, headers, body = await asyncio.wait_for(fetch(pool, "HEAD", "/big"), 1)
    assert (status, headers["Content-Length"], body) == (200, "1000", b"")
    assert (await fetch(pool))[2] == b"after" and len(up.peers) == 1


async def test_head_through_the_gateway(raw_gateway: Any, world: World) -> None:
    client, up = await raw_gateway(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", OK))
    token = {"JOB-TOKEN": world.tokens["100"]}
    head = await asyncio.wait_for(client.head(PKG, headers=token), 2)
    assert head.status == 200 and head.headers["Content-Length"] == "1000" and await head.read() == b""
    assert await (await client.get(PKG, headers=token)).read() == b"ok" and len(up.peers) == 1
    assert up.requests[0].request_line.startswith("HEAD ")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n",  # the length of what is not sent
    ],
    ids=["204", "304", "304-with-length"],
)
async def test_answers_without_a_body(raw_upstream: Any, make_pool: Any, answer: bytes) -> None:
    up = await raw_upstream(answering(answer, ok(b"after")))
    pool = make_pool(up.url)
    status, _, body = await asyncio.wait_for(fetch(pool), 1)
    assert status in (204, 304) and body == b""
    assert (await fetch(pool))[2] == b"after" and len(up.peers) == 1


@pytest.mark.parametrize("trailer", [b"", b"X-Checksum: abc\r\n"], ids=["plain", "with-trailer"])
async def test_a_chunked_answer(raw_upstream: Any, make_pool: Any, trailer: bytes) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n"
    up = await raw_upstream(answering(chunked + b"0\r\n" + trailer + b"\r\n", ok(b"after")))
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == b"hello world"
    assert (await fetch(pool))[2] == b"after" and len(up.peers) == 1


@pytest.mark.parametrize("together", [True, False])
async def test_an_answer_without_a_length_is_read_to_eof(
    raw_upstream: Any, make_pool: Any, together: bool
) -> None:
    body = b"x" * 5000 + b"the end"

    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + (body if together else b""))
        if not together:
            await asyncio.sleep(0.05)
            peer.send(body[:100])
            await asyncio.sleep(0.05)
            peer.send(body[100:])
        peer.hang_up()

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    assert (await fetch(pool))[2] == body
    assert pool.idle == []


async def test_the_gateway_relays_an_answer_without_a_length_whole(raw_gateway: Any, world: World) -> None:
    body = b"y" * 3000 + b"the end"

    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\n\r\n" + body)
        peer.hang_up()

    client, _ = await raw_gateway(serve)
    answer = await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    assert answer.status == 200 and await answer.read() == body


MALFORMED = [
    b"HTTP/1.1 abc Bad\r\nContent-Length: 0\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header : x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",  # a bad chunk size
]


@pytest.mark.parametrize("answer", MALFORMED)
async def test_a_malformed_answer_is_a_client_error_and_the_connection_is_dropped(
    raw_upstream: Any, make_pool: Any, answer: bytes
) -> None:
    up = await raw_upstream(per_connection(answering(answer), answering(OK)))
    pool = make_pool(up.url)
    with pytest.raises(aiohttp.ClientError):
        await fetch(pool)
    assert pool.idle == []
    assert (await fetch(pool))[2] == b"ok" and len(up.peers) == 2


@pytest.mark.parametrize("answer", MALFORMED[:4])
async def test_a_malformed_answer_is_a_502(
    raw_gateway: Any, world: World, answer: bytes, loop_errors: LoopErrors
) -> None:
    client, _ = await raw_gateway(answering(answer))
    assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 502
    assert await loop_errors.collected() == []


async def test_a_malformed_answer_after_a_good_one_on_the_same_connection(
    raw_upstream: Any, make_pool: Any
) -> None:
    up = await raw_upstream(answering(OK, b"HTTP/1.1 200 OK\r\nBad Header : x\r\n\r\n", OK))
    pool = make_pool(up.url)
    await fetch(pool)
    with pytest.raises(aiohttp.ClientError):
        await fetch(pool)
    assert len(up.peers) == 1 and pool.idle == []  # not retried: the upstream did answer


@pytest.mark.parametrize("length", [100, 2 << 20], ids=["streamed", "relayed"])
async def test_an_answer_cut_mid_body_breaks_the_clients_transfer(
    raw_gateway: Any, world: World, length: int
) -> None:
    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode() + b"z" * (length // 2))
        await peer.writer.drain()
        await asyncio.sleep(0.05)
        peer.hang_up()

    client, _ = await raw_gateway(serve)
    answer = await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})
    assert answer.status == 200  # too late for another status
    with pytest.raises(aiohttp.ClientPayloadError):
        await answer.read()


async def test_a_relayed_answer_arrives_whole_and_its_connection_is_not_pooled(
    raw_gateway: Any, world: World
) -> None:
    """A body of at least RELAY_MIN leaves aiohttp's parser: its connection cannot be reused."""
    body = bytes(range(256)) * (9 << 10)  # 2.25 MiB

    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(ok(body))
        await answering(ok(b"reused"))(peer)

    client, up = await raw_gateway(per_connection(serve, answering(OK)))
    token = {"JOB-TOKEN": world.tokens["100"]}
    assert await (await client.get(PKG, headers=token)).read() == body
    assert await (await client.get(PKG, headers=token)).read() == b"ok"
    assert len(up.peers) == 2


async def test_an_answer_cut_mid_body_is_a_payload_error_from_the_pool(
    raw_upstream: Any, make_pool: Any
) -> None:
    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        peer.hang_up()

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(pool)
    assert pool.idle == [] and len(up.peers) == 1


# --- 5. timeouts --------------------------------------------------------------------------


async def never_answer(peer: Peer) -> None:
    await peer.read_to_eof()


async def test_an_upstream_that_never_answers_times_out(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(never_answer)
    pool = make_pool(up.url)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await fetch(pool)
    assert READ_TIMEOUT * 0.9 <= time.monotonic() - started < READ_TIMEOUT + 1
    assert pool.idle == []


async def test_an_upstream_that_goes_quiet_mid_body_times_out(raw_upstream: Any, make_pool: Any) -> None:
    async def serve(peer: Peer) -> None:
        await peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.read_to_eof()

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(fetch(pool), READ_TIMEOUT + 1)


async def test_an_upstream_that_never_answers_is_a_504(raw_gateway: Any, world: World) -> None:
    client, _ = await raw_gateway(never_answer)
    assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 504


@pytest.mark.parametrize("reused", [False, True])
async def test_a_slow_upload_is_not_timed_out_by_the_read_timeout(
    raw_upstream: Any, make_pool: Any, reused: bool
) -> None:
    """The body takes twice the read timeout to arrive; the answer comes right after it."""
    up = await raw_upstream(answering(lambda seen: ok(b"got %d" % len(seen.body))))
    pool = make_pool(up.url)
    if reused:
        await fetch(pool)  # the upload goes over a kept-alive connection
    parts = [b"p" * 10] * 6
    status, _, body = await fetch(pool, "PUT", "/slow", chunks(*parts, pause=READ_TIMEOUT / 3))
    assert (status, body) == (200, b"got 60") and len(up.peers) == 1


async def test_the_read_timeout_starts_after_the_streamed_body(raw_upstream: Any, make_pool: Any) -> None:
    sent = 0.0

    async def serve(peer: Peer) -> None:
        nonlocal sent
        await peer.read_request()
        sent = time.monotonic()
        await peer.read_to_eof()

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    with pytest.raises(TimeoutError):
        await fetch(pool, "PUT", "/slow", chunks(b"a", b"b", b"c", pause=READ_TIMEOUT / 2))
    assert time.monotonic() - sent >= READ_TIMEOUT * 0.9


async def test_a_slow_client_upload_through_the_gateway_is_answered(raw_gateway: Any, world: World) -> None:
    client, up = await raw_gateway(answering(lambda seen: ok(seen.body)))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    head = (
        f"PUT {PKG} HTTP/1.1\r\nHost: gw\r\nJOB-TOKEN: {world.tokens['100']}\r\n"
        "Content-Length: 5\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())
    for byte in b"slow!":
        await asyncio.sleep(READ_TIMEOUT / 3)
        writer.write(bytes([byte]))
    data = await asyncio.wait_for(reader.read(), 3)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nslow!")
    assert up.requests[0].body == b"slow!"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_refused_is_an_os_error(make_pool: Any) -> None:
    pool = make_pool(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(OSError):
        await fetch(pool)


async def test_connect_refused_is_a_502(
    redis_server: RedisProcess, world: World, aiohttp_client: Any
) -> None:
    client = await gateway_client(aiohttp_client, redis_server, f"http://127.0.0.1:{closed_port()}")
    assert (await client.get(PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 502


# --- 6. an answer before the whole request body -------------------------------------------


async def test_an_early_answer_is_returned_and_the_connection_is_not_reused(
    raw_upstream: Any, make_pool: Any, loop_errors: LoopErrors
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(30)
        yield b"never"

    up = await raw_upstream(early_answer_then(Peer.read_to_eof))
    pool = make_pool(up.url)
    headers = head_for(pool, **{"Content-Length": "100000"})
    answer = await asyncio.wait_for(pool.request("PUT", "/big", headers, endless()), 1)
    assert answer.status == 413 and await answer.content.read() == b"too big!"
    assert answer.writer is not None and not answer.writer.done()  # the body is still going out
    pool.release(answer)
    assert pool.idle == []
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)  # the half-sent request's connection was closed
    assert answer.writer.cancelled()
    assert (await fetch(pool))[2] == b"ok" and len(up.peers) == 2
    assert await loop_errors.collected() == []


def early_answer_then(after: Callable[[Peer], Awaitable[None]], *headers: str) -> Serve:
    """On the first connection: answer 413 (with `headers`) as soon as the head is in, then
    `after`; later connections answer normally."""

    async def serve(peer: Peer) -> None:
        await peer.read_head()
        lines = ["HTTP/1.1 413 Payload Too Large", "Content-Length: 8", *headers]
        peer.send(("\r\n".join(lines) + "\r\n\r\n").encode() + b"too big!")
        await after(peer)

    return per_connection(serve, answering(OK))


async def hang_up_soon(peer: Peer) -> None:
    await peer.writer.drain()
    await asyncio.sleep(0.05)
    peer.hang_up()


async def test_an_early_answer_then_a_hang_up_leaves_no_unretrieved_error(
    raw_upstream: Any, make_pool: Any, loop_errors: LoopErrors
) -> None:
    """The upstream answers, then closes while the body is still being written to it: the
    body's writer fails, and that failure is collected, not left for the garbage collector."""

    async def flood() -> AsyncIterator[bytes]:
        for _ in range(400):
            yield b"x" * 65536

    up = await raw_upstream(early_answer_then(hang_up_soon))
    pool = make_pool(up.url)
    answer = await pool.request(
        "PUT", "/big", head_for(pool, **{"Content-Length": str(400 * 65536)}), flood()
    )
    assert answer.status == 413 and await answer.content.read() == b"too big!"
    writer = answer.writer
    assert writer is not None
    await asyncio.wait_for(asyncio.wait([writer]), 2)  # the writer meets the closed connection
    assert not writer.cancelled() and answer.protocol.exception() is not None  # it failed (unread)
    pool.release(answer)
    assert pool.idle == []
    del answer, writer
    assert await loop_errors.collected() == []
    assert (await fetch(pool))[2] == b"ok" and len(up.peers) == 2


@pytest.mark.parametrize(
    ("size", "headers"),
    [(256 * 1024, ("Connection: close",)), (64 << 20, ())],
    ids=["connection-close", "body-still-going-out"],
)
async def test_an_early_answer_through_the_gateway(
    raw_gateway: Any, world: World, loop_errors: LoopErrors, size: int, headers: tuple[str, ...]
) -> None:
    """The upstream reads nothing of the body: with Connection: close, or with more body than
    the sockets hold, so the gateway is still sending it when the answer is in."""
    client, up = await raw_gateway(early_answer_then(Peer.read_to_eof, *headers))
    token = {"JOB-TOKEN": world.tokens["100"]}
    answer = await client.put(PKG, data=io.BytesIO(b"q" * size), headers=token)
    assert answer.status == 413 and await answer.read() == b"too big!"
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)  # the half-read request's connection was closed
    assert (await client.get(PKG, headers=token)).status == 200 and len(up.peers) == 2
    if not headers:
        assert len(up.peers[0].received) < size  # the gateway stopped sending the body
    assert await loop_errors.collected() == []


# --- 7. the pool's lifetime ----------------------------------------------------------------


async def test_close_closes_the_idle_connections(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    await fetch(pool)
    assert len(pool.idle) == 1
    await pool.close()
    assert pool.idle == []
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)


async def test_a_connection_released_after_close_is_closed(raw_upstream: Any, make_pool: Any) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    answer = await pool.request("GET", "/", head_for(pool))
    await pool.close()
    assert await answer.content.read() == b"ok"
    pool.release(answer)
    assert pool.idle == [] and not answer.protocol.is_connected()


async def test_an_idle_connection_past_keepalive_is_not_used(
    raw_upstream: Any, make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    await fetch(pool)
    await fetch(pool)
    assert len(up.peers) == 1
    monkeypatch.setattr(upstream_module, "KEEPALIVE_SECONDS", 0.01)
    await asyncio.sleep(0.03)
    await fetch(pool)
    assert [len(p.requests) for p in up.peers] == [2, 1]
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)  # the expired one was closed


async def test_idle_connections_beyond_max_idle_are_closed(
    raw_upstream: Any, make_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream_module, "MAX_IDLE", 1)
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    first, second = [await pool.request("GET", "/", head_for(pool)) for _ in range(2)]
    for answer in (first, second):
        await answer.content.read()
        pool.release(answer)
    assert len(pool.idle) == 1 and len(up.peers) == 2


async def test_concurrent_requests_get_their_own_connections_and_answers(
    raw_upstream: Any, make_pool: Any
) -> None:
    """Two requests in flight at once: neither waits on nor reads the other's connection."""
    both_in = asyncio.Event()

    async def serve(peer: Peer) -> None:
        while (seen := await peer.read_request()) is not None:
            if len(up.requests) == 2:
                both_in.set()
            await both_in.wait()  # neither is answered until both have arrived
            peer.send(ok(seen.request_line.split()[1].encode()))

    up = await raw_upstream(serve)
    pool = make_pool(up.url)
    results = await asyncio.gather(*(fetch(pool, target=f"/{n}") for n in range(2)))
    assert [body for _, _, body in results] == [b"/0", b"/1"]
    assert len(up.peers) == 2 and len(pool.idle) == 2


async def test_an_answer_released_unread_closes_its_connection(raw_upstream: Any, make_pool: Any) -> None:
    """The client went away mid-body: the rest of the body must not answer the next request."""
    up = await raw_upstream(
        per_connection(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), answering(OK))
    )
    pool = make_pool(up.url)
    answer = await pool.request("GET", "/", head_for(pool))
    pool.release(answer)
    assert pool.idle == []
    await asyncio.wait_for(up.peers[0].eof.wait(), 1)
    assert (await fetch(pool))[0] == 200 and len(up.peers) == 2


# --- 8. header injection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "target"),
    [
        ("X-Test", "a\r\nX-Injected: 1", "/"),
        ("X-Test", "a\nX-Injected: 1", "/"),
        ("X-Test", "a\rX-Injected: 1", "/"),
        ("X-Test\r\nX-Injected", "1", "/"),
        ("X-Test", "ok", "/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y"),
    ],
    ids=["crlf-value", "lf-value", "cr-value", "crlf-name", "crlf-target"],
)
async def test_cr_or_lf_in_the_head_is_refused_before_anything_is_sent(
    raw_upstream: Any, make_pool: Any, name: str, value: str, target: str
) -> None:
    up = await raw_upstream(answering(OK))
    pool = make_pool(up.url)
    headers = head_for(pool)
    headers[name] = value
    with pytest.raises(ValueError):
        await pool.request("GET", target, headers)
    await asyncio.sleep(0.02)
    assert up.peers == []  # not even a connection
    assert (await fetch(pool))[0] == 200 and b"X-Injected" not in bytes(up.peers[0].received)
