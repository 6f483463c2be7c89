"""Faults with real processes: Redis stopped or paused, upstreams breaking, clients vanishing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.devredis import RedisProcess, free_port
from gateway.store import Store

from .serving import BulkUpstream, JobgateProcess

PKG = "/api/v4/projects/1/packages/generic/a/1/a"


def register(gw: JobgateProcess) -> str:
    gw.admin("project", "set", "1", "--path", "f/app", "--visibility", "private")
    gw.admin("member", "set", "1", "7", "30")
    return gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")


def status(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(directory=tmp_path / "redis").start()
    yield redis
    redis.stop()


def test_redis_stopped_fails_closed_and_recovers(tmp_path: Path, own_redis: RedisProcess) -> None:
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(
            tmp_path, own_redis.url, {"packages": bulk.url}, redis={"url": own_redis.url, "timeout": 0.5}
        ) as gw,
    ):
        token = register(gw)
        auth = {"JOB-TOKEN": token}
        assert status(gw.url + PKG + "?size=10", auth) == 200
        own_redis.stop()
        answers = [status(gw.url + PKG + "?size=10", auth) for _ in range(50)]
        assert set(answers) == {503}, answers  # never 200, never an upstream call
        assert status(f"http://127.0.0.1:{gw.metrics_port}/-/readiness") == 503
        restarted = RedisProcess(own_redis.port, tmp_path / "redis2").start()
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # the restarted Redis is empty: register again
                try:
                    token = register(gw)
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            deadline, recovered_after = time.monotonic() + 15, None
            started = time.monotonic()
            while time.monotonic() < deadline:
                if status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token}) == 200:
                    recovered_after = time.monotonic() - started
                    break
                time.sleep(0.1)
            assert recovered_after is not None, "jobgate did not recover by itself"
            assert status(f"http://127.0.0.1:{gw.metrics_port}/-/readiness") == 200
        finally:
            restarted.stop()
        assert '"status":503' in gw.log() and token not in gw.log()


def test_redis_paused_is_bounded_by_the_timeout(tmp_path: Path, own_redis: RedisProcess) -> None:
    with JobgateProcess(tmp_path, own_redis.url, {"packages": "http://127.0.0.1:1"},
                        redis={"url": own_redis.url, "timeout": 0.5}, cache={"ttl": 0}) as gw:  # fmt: skip
        token = register(gw)
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert status(gw.url + PKG, {"JOB-TOKEN": token}) == 503
            assert time.monotonic() - started < 3
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)


async def test_upstream_breaking_mid_response_breaks_the_client_transfer(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    port = free_port()

    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.close()  # 99,000 bytes short

    server = await asyncio.start_server(half_answer, "127.0.0.1", port)
    gw = JobgateProcess(tmp_path, redis_server.url, {"packages": f"http://127.0.0.1:{port}",
                                                     "artifacts": "http://127.0.0.1:1"})  # fmt: skip
    await asyncio.to_thread(gw.start)
    try:
        token = await asyncio.to_thread(register, gw)
        async with aiohttp.ClientSession() as client:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with client.get(gw.url + PKG, headers={"JOB-TOKEN": token}) as response:
                    assert response.status == 200
                    await response.read()
            async with client.get(gw.url + "/api/v4/job", headers={"JOB-TOKEN": token}) as response:
                assert response.status == 200  # and jobgate keeps serving
            async with client.get(gw.url + "/api/v4/projects/1/jobs/1/artifacts",
                                  headers={"JOB-TOKEN": token}) as response:  # fmt: skip
                assert response.status == 502
    finally:
        server.close()
        await asyncio.to_thread(gw.stop)


def test_vanishing_clients_leave_no_descriptors_behind(tmp_path: Path, redis_server: RedisProcess,
                                                       store: Store) -> None:  # fmt: skip
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}) as gw,
    ):
        token = register(gw)
        assert status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token}) == 200
        baseline_fds, baseline_rss = fds(gw.pid), gw.rss_kib()
        for i in range(60):
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                if i % 2:  # a download abandoned after its first bytes
                    sock.sendall(f"GET {PKG}?size={1 << 30} HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {token}\r\n\r\n"
                                 .encode())  # fmt: skip
                    sock.recv(65536)
                else:  # an upload abandoned half way
                    sock.sendall(f"PUT {PKG} HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {token}\r\n"
                                 f"Content-Length: {1 << 30}\r\n\r\n".encode() + b"\0" * 262144)  # fmt: skip
        deadline = time.monotonic() + 10
        while fds(gw.pid) > baseline_fds + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fds(gw.pid) <= baseline_fds + 2, f"{fds(gw.pid)} descriptors, {baseline_fds} before"
        assert gw.rss_kib() - baseline_rss < 32 * 1024
        assert status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token}) == 200


def test_idle_connections_do_not_starve_others(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}) as gw,
    ):
        token = register(gw)
        idle = []
        try:
            for i in range(1500):
                sock = socket.create_connection(("127.0.0.1", gw.port))
                if i % 3 == 0:
                    sock.sendall(b"GET /api/v4/job HTTP/1.1\r\nHost: x\r\nX-Slow")  # headers never finished
                idle.append(sock)
            assert status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token}) == 200
        finally:
            for sock in idle:
                sock.close()


def test_no_request_allowed_after_finish_returns(tmp_path: Path, redis_server: RedisProcess,
                                                store: Store) -> None:  # fmt: skip
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}, workers=2) as gw,
    ):
        token = register(gw)
        finished_at: list[float] = []
        wrong: list[float] = []
        codes: list[tuple[bool, int]] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                code = status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token})
                after = bool(finished_at) and sent > finished_at[0]
                codes.append((after, code))
                if code == 200 and after:
                    wrong.append(sent)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        gw.admin("job", "finish", "100")
        finished_at.append(time.monotonic())
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert wrong == []
        assert (False, 200) in codes and (True, 404) in codes  # load ran on both sides of the finish


def test_slow_clients_are_cut_off(tmp_path: Path, redis_server: RedisProcess, store: Store) -> None:
    limits = {"idle_timeout": 1, "body_idle_timeout": 1}
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(tmp_path, redis_server.url, {"packages": bulk.url}, limits=limits) as gw,
    ):
        token = register(gw)
        # slowloris: headers trickled, never finished -> the connection is closed
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /api/v4/job HTTP/1.1\r\nHost: x\r\n")
            closed = False
            while time.monotonic() - started < 8:  # idle_timeout is 1 s
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed = True
                    break
                sock.settimeout(0.5)
                try:
                    if sock.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
                except OSError:  # reset by the server: closed as well
                    closed = True
                    break
            assert closed, "a connection with never-finished headers outlived idle_timeout by 7 s"
        # trickled body: the upload stalls -> 408, the upstream request is abandoned
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            head = f"PUT {PKG} HTTP/1.1\r\nHost: x\r\nJOB-TOKEN: {token}\r\nContent-Length: 1000\r\n\r\n"
            sock.sendall(head.encode() + b"x" * 10)
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert status(gw.url + PKG + "?size=10", {"JOB-TOKEN": token}) == 200
        assert '"status":408' in gw.log()


def test_redis_paused_with_a_warm_cache_stops_allowing_within_the_timeout(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    """SIGSTOP of redis-server under traffic, the cache on (the default): cached decisions stop
    allowing once a self-ping has gone unanswered for `redis.timeout` (not after cache.ttl),
    the 503s come at once (no hanging Redis read), and SIGCONT brings 200s back by itself."""
    timeout = 0.5
    with (
        BulkUpstream(tmp_path) as bulk,
        JobgateProcess(
            tmp_path,
            own_redis.url,
            {"packages": bulk.url},
            workers=2,
            redis={"url": own_redis.url, "timeout": timeout},
        ) as gw,  # fmt: skip
    ):
        token = register(gw)
        url, auth = gw.url + PKG + "?size=10", {"JOB-TOKEN": token}
        assert status(url, auth) == 200
        answers: list[tuple[float, float, int]] = []  # sent, took, status
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                sent = time.monotonic()
                code = status(url, auth)
                answers.append((sent, time.monotonic() - sent, code))

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # warm, under traffic
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            time.sleep(2.5)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        resumed = time.monotonic()
        time.sleep(3.0)
        stop.set()
        for thread in threads:
            thread.join()
        during = [(s - paused, took, code) for s, took, code in answers if paused <= s < resumed]
        allowed = [s for s, _, code in during if code == 200]
        assert during and max(allowed, default=0.0) < timeout + 0.1, allowed[-5:]
        late = [(s, took, code) for s, took, code in during if s > timeout + 0.1]
        assert late and {code for _, _, code in late} == {503}, late[:5]
        assert sorted(took for _, took, _ in late)[len(late) // 2] < 0.1, "the 503s hung on Redis"
        assert any(code == 200 for s, _, code in answers if s > resumed + 1.5), "no 200 after SIGCONT"
