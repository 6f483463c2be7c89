"""Large bodies relayed socket to socket (gateway/relay.py): every byte, in order, framed exactly;
a slow client, an upstream that breaks or stalls mid-body, and the connections afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.devredis import RedisProcess
from gateway.relay import RELAY_MIN
from gateway.store import Store

from .serving import JobgateProcess
from .test_faults import PKG, register

SIZE = 6 * RELAY_MIN + 12_345  # relayed, and not a whole number of reads
BODY = random.Random(5).randbytes(SIZE)
DIGEST = hashlib.sha256(BODY).hexdigest()


class Upstream:
    """An HTTP/1.1 upstream whose answer the query picks: `full` (BODY, keep-alive), `short`
    (declares BODY's length, sends a part, closes), `stall` (sends a part, then nothing)."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                mode = head.split(b" ", 2)[1].partition(b"mode=")[2].split(b"&")[0]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
                if mode == b"full":
                    writer.write(BODY)
                    await writer.drain()
                    continue
                writer.write(BODY[: 2 * RELAY_MIN])
                await writer.drain()
                if mode == b"stall":
                    await asyncio.sleep(30)
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.answer, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def relayed(tmp_path: Path, redis_server: RedisProcess, store: Store) -> AsyncIterator[tuple[
        JobgateProcess, str, Upstream]]:  # fmt: skip
    upstream = Upstream()
    async with upstream as url:
        gw = JobgateProcess(tmp_path, redis_server.url, {"packages": url})
        gw.config["upstreams"]["packages"]["read_timeout"] = 1  # the stalling upstream is cut off soon
        await asyncio.to_thread(gw.start)
        try:
            yield gw, await asyncio.to_thread(register, gw), upstream
        finally:
            await asyncio.to_thread(gw.stop)


async def test_every_byte_arrives_in_order_with_curl_and_with_a_slow_reader(relayed: tuple[
        JobgateProcess, str, Upstream], tmp_path: Path) -> None:  # fmt: skip
    gw, token, upstream = relayed
    out = tmp_path / "body"
    curl = ["curl", "-sS", "--fail", "-o", str(out), "-H", f"JOB-TOKEN: {token}", f"{gw.url}{PKG}?mode=full"]
    got = await asyncio.to_thread(subprocess.run, curl, capture_output=True)
    assert got.returncode == 0, got.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == DIGEST
    url, auth = f"{gw.url}{PKG}?mode=full", {"JOB-TOKEN": token}
    async with (  # a reader slower than the relay: it must wait for the client
        aiohttp.ClientSession() as client,
        client.get(url, headers=auth, read_bufsize=16 * 1024) as response,
    ):
        digest, size = hashlib.sha256(), 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if size < SIZE // 2:
                await asyncio.sleep(0.002)
    assert size == SIZE and digest.hexdigest() == DIGEST
    assert upstream.connections == 2  # a relayed connection is closed, never reused


async def test_a_relayed_response_is_framed_exactly_and_the_connection_stays_usable(relayed: tuple[
        JobgateProcess, str, Upstream]) -> None:  # fmt: skip
    gw, token, _ = relayed
    await asyncio.to_thread(two_requests_on_one_connection, gw, token)  # the upstream runs in this loop


def two_requests_on_one_connection(gw: JobgateProcess, token: str) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        for path in (f"{PKG}?mode=full", "/api/v4/job"):  # two requests on one connection
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {token}\r\n\r\n".encode())
            status = stream.readline()
            headers = {}
            while (line := stream.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            assert status.startswith(b"HTTP/1.1 200"), status
            body = stream.read(int(headers["content-length"]))
            if "mode=full" in path:
                assert hashlib.sha256(body).hexdigest() == DIGEST
            else:
                assert b'"id": 100' in body or b'"id":100' in body


@pytest.mark.parametrize("mode", ["short", "stall"])
async def test_an_upstream_breaking_or_stalling_mid_body_breaks_the_client_transfer(relayed: tuple[
        JobgateProcess, str, Upstream], mode: str) -> None:  # fmt: skip
    gw, token, _ = relayed
    async with aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"{gw.url}{PKG}?mode={mode}", headers={"JOB-TOKEN": token},
                                  timeout=aiohttp.ClientTimeout(total=20)) as response:  # fmt: skip
                assert response.status == 200
                await response.read()
        async with client.get(f"{gw.url}{PKG}?mode=full", headers={"JOB-TOKEN": token}) as response:
            assert hashlib.sha256(await response.read()).hexdigest() == DIGEST  # and it keeps serving
    broken = [json.loads(line) for line in gw.log().splitlines() if f"mode={mode}" in line]
    assert [line["status"] for line in broken] == [499]  # logged as the broken transfer it was
