"""Streaming forward to an upstream: header hygiene, identity headers, bodies both ways."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from .config import IPNetwork, UpstreamConfig
from .identity import IDENTITY_PREFIX
from .relay import Transfer, relay_body, relayable
from .upstream import STREAM_BUFFER, Answer, Pool

#: RFC 9110 §7.6.1 connection-specific headers, never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_ID = istr("X-Request-Id")  # an istr: multidict takes it without case-folding it again


class UpstreamError(Exception):
    """The upstream could not be reached (502) or timed out (504) before answering."""

    def __init__(self, status: int, kind: str) -> None:
        super().__init__(kind)
        self.status = status
        self.kind = kind


@dataclass(slots=True)
class Forward:
    """What to send upstream: where, which request headers to drop, what identity to add."""

    upstream: UpstreamConfig
    path: str
    body_idle_timeout: float = 60.0
    query: str = ""
    drop_headers: frozenset[str] = frozenset()
    identity: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # a replacement body (form with the token removed); None streams
    request_id: str = ""  # sent upstream and echoed to the client as X-Request-Id
    trusted_peer: bool = False  # the peer is a trusted proxy: its forwarding headers are kept


#: Forwarding headers a client may not set (kept only from a trusted proxy).
FORWARDING = frozenset({"forwarded", "x-real-ip"})
FORWARDING_PREFIX = "x-forwarded-"
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)


def valid_host(host: str | None) -> bool:
    """True when a Host value is a plain host name or IP address with an optional port."""
    return bool(host) and _HOST.fullmatch(host or "") is not None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def peer_trusted(peer: str | None, trusted: Collection[IPNetwork]) -> bool:
    """True when the connection's peer is one of `trusted_proxies`."""
    if not trusted or not peer:
        return False
    address = _address(peer)
    return address is not None and any(address in network for network in trusted)


def client_address(
    peer: str | None, headers: Mapping[str, str], trusted: Collection[IPNetwork]
) -> str | None:
    """The client's address: the peer's, or behind trusted proxies the rightmost
    X-Forwarded-For entry that is not one of them (as nginx `real_ip_recursive`)."""
    if not peer_trusted(peer, trusted):
        return peer
    values = headers.getall("X-Forwarded-For", []) if hasattr(headers, "getall") else []
    entries = [e.strip() for value in values for e in value.split(",") if e.strip()]
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return peer  # a malformed entry: nothing left of it can be believed
        if not any(address in network for network in trusted):
            return str(address)
    return str(_address(entries[0])) if entries else peer


def _forwarded_node(address: str) -> str:
    return f'"[{address}]"' if ":" in address else address


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    """The header names a Connection header lists (hop-by-hop too, RFC 9110 §7.6.1)."""
    if "Connection" not in headers:
        return frozenset()
    values = headers.getall("Connection", []) if hasattr(headers, "getall") else [headers["Connection"]]
    return frozenset(t.strip().lower() for value in values for t in value.split(","))


#: Request headers never copied upstream: hop-by-hop, Host (the upstream's own), Expect
#: (jobgate answers it), and the forwarding headers jobgate rebuilds (see `upstream_headers`).
_NOT_COPIED = HOP_BY_HOP | {
    "host",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
}
_REBUILT_BYTES = frozenset({"content-length"})
_REBUILT_FORM = frozenset({"content-length", "content-type"})  # a form's type is the rebuilt body's


def upstream_headers(request: web.Request, forward: Forward, pool: Pool) -> CIMultiDict[str]:
    """The request headers the upstream sees.

    Forwarding headers are jobgate's: the client's Forwarded, X-Forwarded-* and X-Real-IP
    are dropped unless the peer is a trusted proxy (then its chain is extended); the
    upstream's static `headers:` override the computed ones.
    """
    client = request.headers
    drop = _NOT_COPIED | forward.drop_headers | _connection_tokens(client)
    if forward.body is not None:  # a rebuilt body: the pool sets its length (and a form's type)
        drop |= _REBUILT_BYTES if isinstance(forward.body, bytes) else _REBUILT_FORM
    if forward.request_id:
        drop |= {"x-request-id"}
    trusted = forward.trusted_peer
    request_host = request.host
    host = request_host if valid_host(request_host) else None
    remote, scheme = request.remote or "", request.scheme
    pairs = [("Host", request_host if forward.upstream.preserve_host else pool.authority)]
    for name, value in client.items():
        lower = name.lower()
        if lower in drop or lower.startswith(IDENTITY_PREFIX):
            continue
        if not trusted and (lower in FORWARDING or lower.startswith(FORWARDING_PREFIX)):
            continue
        pairs.append((name, value))
    element = f"for={_forwarded_node(remote)};proto={scheme}" + (f';host="{host}"' if host else "")
    proto = scheme
    if trusted:
        chain = ", ".join(client.getall("X-Forwarded-For", ()))
        previous = ", ".join(client.getall("Forwarded", ()))
        pairs.append(("X-Forwarded-For", f"{chain}, {remote}" if chain else remote))
        proto = client.get("X-Forwarded-Proto", proto)
        host = client.get("X-Forwarded-Host", host)
        element = f"{previous}, {element}" if previous else element
    else:
        pairs.append(("X-Forwarded-For", remote))
    pairs.append(("X-Forwarded-Proto", proto))
    if host:
        pairs.append(("X-Forwarded-Host", host))
    pairs.append(("Forwarded", element))
    pairs.extend(forward.identity.items())  # the client's own X-Jobgate-* headers were dropped above
    if forward.request_id:
        pairs.append((REQUEST_ID, forward.request_id))
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    for name, value in forward.upstream.headers.items():
        headers[name] = value
    return headers


def response_headers(upstream: CIMultiDictProxy[str], request_id: str = "") -> list[tuple[str, str]]:
    """The upstream's response headers the client sees, with jobgate's request id if given."""
    drop = HOP_BY_HOP | _connection_tokens(upstream)
    if request_id:
        drop = drop | {"x-request-id"}
    pairs = [(name, value) for name, value in upstream.items() if name.lower() not in drop]
    if request_id:
        pairs.append((REQUEST_ID, request_id))
    return pairs


async def forward_request(
    pool: Pool, request: web.Request, forward: Forward, transfer: Transfer
) -> web.StreamResponse:
    """Stream `request` to the upstream and its answer back; raises UpstreamError before answering."""
    target = forward.path + (f"?{forward.query}" if forward.query else "")
    body: Any = forward.body
    if body is None and request.body_exists:
        body = _counted(request.content, transfer, forward.body_idle_timeout)
    try:
        answer = await pool.request(request.method, target, upstream_headers(request, forward, pool), body)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if transfer.client_stalled:
            raise UpstreamError(408, "client_stalled") from None
        if isinstance(exc, aiohttp.ClientPayloadError):
            raise  # the client's body broke: nothing to answer
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            raise UpstreamError(504, "timeout") from None
        raise UpstreamError(502, "unreachable") from None
    try:
        headers = response_headers(answer.headers, forward.request_id)
        content = answer.content
        if content.is_eof() and content.exception() is None:  # the whole body came with the head
            body_bytes = content.read_nowait()
            transfer.received += len(body_bytes)
            response: web.StreamResponse = web.Response(
                status=answer.status, reason=answer.reason, headers=headers, body=body_bytes or None
            )
            await response.prepare(request)  # head and body in one write
            await response.write_eof()
            return response
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        await response.prepare(request)
        if relayable(request, answer):
            await relay_body(request, response, answer, transfer, forward.upstream.read_timeout)
        else:
            await _stream_body(request, response, answer, transfer)
        await response.write_eof()
        return response
    finally:
        pool.release(answer)


async def _stream_body(
    request: web.Request, response: web.StreamResponse, upstream: Answer, transfer: Transfer
) -> None:
    """The upstream's body through aiohttp's reader (small, chunked or TLS bodies)."""
    if request.transport is not None and (upstream.content_length or STREAM_BUFFER) >= STREAM_BUFFER:
        # a large body: let more of it queue for the client before the writer pauses
        request.transport.set_write_buffer_limits(high=STREAM_BUFFER * 4)
    try:
        async for chunk in upstream.content.iter_any():
            transfer.received += len(chunk)
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Too late for a status: break the client's transfer so it is never a "success".
        raise ConnectionResetError(f"upstream broke mid-response: {type(exc).__name__}") from None


async def _counted(stream: aiohttp.StreamReader, transfer: Transfer, idle: float) -> Any:
    """Yield the request body as it arrives, counting bytes; a stall longer than `idle` ends it."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await stream.readany()
        except TimeoutError:
            transfer.client_stalled = True
            raise
        if not chunk:
            return
        transfer.sent += len(chunk)
        yield chunk
