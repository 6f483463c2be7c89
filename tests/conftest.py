"""Shared fixtures: a real redis-server per session, a recording upstream, the gateway app."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_gateway
from gateway.config import UPSTREAM_NAMES, parse_config
from gateway.devredis import RedisProcess
from gateway.store import Store, connect


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG_STATE_HOME for the session: the default registry signing key (and every `jobgate
    serve` the tests start) lives in a temporary state directory, not the machine's."""
    previous = os.environ.get("XDG_STATE_HOME")
    directory = tmp_path_factory.mktemp("state")
    os.environ["XDG_STATE_HOME"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = previous


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One real redis-server on a free port for the whole test session."""
    with RedisProcess() as server:
        yield server


@pytest.fixture
async def store(redis_server: RedisProcess) -> AsyncIterator[Store]:
    """A Store over an emptied database."""
    s = Store(connect(redis_server.url, 2.0))
    await s.client.flushdb()
    yield s
    await s.close()


@dataclass
class Recorded:
    """One request as the upstream received it."""

    method: str
    path_qs: str
    headers: dict[str, list[str]]
    body: bytes


@dataclass
class RecordingUpstream:
    """An aiohttp upstream that records what jobgate forwards and answers 200."""

    requests: list[Recorded] = field(default_factory=list)
    server: TestServer | None = None
    respond: Any = None  # optional async (request, body) -> response, replacing the JSON echo

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def last(self) -> Recorded:
        assert self.requests, "the upstream saw no request"
        return self.requests[-1]


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    """The recording upstream, started on a free port."""
    recorder = RecordingUpstream()

    async def record(request: web.Request) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = await request.read()
        recorder.requests.append(Recorded(request.method, request.raw_path, headers, body))
        if recorder.respond is not None:
            return await recorder.respond(request, body)
        return web.json_response({"upstream": "ok", "path": request.raw_path, "size": len(body)})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", record)
    recorder.server = TestServer(app)
    await recorder.server.start_server()
    yield recorder
    await recorder.server.close()


def gateway_config(redis_url: str, upstream_url: str, **extra: Any) -> Any:
    """A config with every upstream pointing at `upstream_url`."""
    data = {
        "listen": "127.0.0.1:0",
        "redis": {"url": redis_url},
        "upstreams": {name: {"url": upstream_url} for name in UPSTREAM_NAMES},
        **extra,
    }
    return parse_config(data, "test.yaml", env={})


@pytest.fixture
def make_gateway(redis_server: RedisProcess, upstream: RecordingUpstream, aiohttp_client: Any) -> Any:
    """Build a test client for the gateway; keyword arguments are config keys."""

    async def make(**extra: Any) -> TestClient:
        return await aiohttp_client(build_gateway(gateway_config(redis_server.url, upstream.url, **extra)))

    return make


@pytest.fixture
async def gateway(make_gateway: Any, store: Store) -> TestClient:
    """The gateway with the default config (store fixture empties Redis first)."""
    return await make_gateway()


def basic(user: str, password: str) -> str:
    """An Authorization header value for basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class World:
    """A small GitLab: projects, a user and running jobs, written through the control plane."""

    store: Store
    tokens: dict[str, str] = field(default_factory=dict)

    async def project(self, pid: int, path: str, visibility: str = "private", **kw: Any) -> int:
        await self.store.set_project(pid, path, visibility, **kw)
        return pid

    async def job(self, job_id: int, project: int, user: int, **kw: Any) -> str:
        token = await self.store.start_job(job_id, project, user, **kw)
        self.tokens[str(job_id)] = token
        return token


@pytest.fixture
async def world(store: Store) -> World:
    """Project 1 `group/app` (private, user 7 developer) with a running job 100 of user 7."""
    w = World(store)
    await w.project(1, "group/app")
    await store.set_member(1, 7, 30)
    await w.job(100, 1, 7, pipeline_id=55, name="build", ref="main")
    return w


async def raw_request(
    client: TestClient, request_line: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalization); the status and body."""
    import asyncio

    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    lines = [request_line, f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest
