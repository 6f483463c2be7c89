"""Revocation through a frozen gateway and a Sentinel failover, with the cache on (the default).

Real processes: redis-server master and replicas, redis-sentinel, two `jobgate serve
--workers 2`. The property checked is the one the spec binds: no request sent after a
`job finish` returned is allowed, on any gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess, free_port
from gateway.store import Store, connect

from .serving import BulkUpstream, JobgateProcess

PKG = "/api/v4/projects/1/packages/generic/a/1/a?size=10"
TIMEOUT = 0.5  # redis.timeout: the lease and the self-ping deadline


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         body: dict[str, object] | None = None, timeout: float = 10) -> tuple[int, bytes]:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError:
        return 0, b""  # no answer at all (counted, never as an allow)


class Admin:
    """The admin HTTP API of one gateway."""

    def __init__(self, gw: JobgateProcess) -> None:
        self.base = f"http://127.0.0.1:{gw.admin_port}/admin/v1"
        self.auth = {"Authorization": "Bearer e2e-admin-token"}

    def __call__(self, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
        return call(self.base + path, method, self.auth, body)

    def until_done(self, method: str, path: str, body: dict[str, object] | None = None,
                   limit: float = 30) -> tuple[int, bytes]:  # fmt: skip
        """Retry while Redis is failing over (503 or no answer); the first other answer."""
        deadline = time.monotonic() + limit
        while True:
            code, data = self(method, path, body)
            if code not in (0, 503) or time.monotonic() > deadline:
                return code, data
            time.sleep(0.05)


def setup_world(admin: Admin, jobs: range) -> dict[int, str]:
    assert admin.until_done("PUT", "/projects/1", {"path": "f/app", "visibility": "private"})[0] == 200
    assert admin.until_done("PUT", "/projects/1/members/7", {"access_level": 30})[0] == 200
    tokens = {}
    for job in jobs:
        code, data = admin.until_done("POST", "/jobs", {"id": job, "project": 1, "user": 7})
        assert code == 201, data
        tokens[job] = json.loads(data)["token"]
    return tokens


class Traffic:
    """Threads sending each running (or just finished) job's token to every gateway."""

    def __init__(self, urls: list[str], tokens: dict[int, str], threads: int = 4) -> None:
        self.urls, self.tokens = urls, tokens
        self.finished: dict[int, float] = {}  # job -> when its finish returned (monotonic)
        self.answers: list[tuple[float, int, int]] = []  # sent, job, status
        self.wrong: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        jobs, n = sorted(self.tokens), index
        while not self._stop.is_set():
            n += 1
            job = jobs[n % len(jobs)]
            done = self.finished.get(job)
            if done is not None and time.monotonic() - done > 2:
                continue  # long finished: keep the load on jobs around their finish
            url = self.urls[n % len(self.urls)]
            sent = time.monotonic()
            code, _ = call(url + PKG, headers={"JOB-TOKEN": self.tokens[job]}, timeout=5)
            self.answers.append((sent, job, code))
            finished = self.finished.get(job)
            if code == 200 and finished is not None and sent > finished:
                self.wrong.append((sent - finished, job, url))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def finish(admin: Admin, traffic: Traffic, job: int) -> float:
    """Finish `job` through the admin API (retrying through a failover); how long it took."""
    started = time.monotonic()
    code, data = admin.until_done("POST", f"/jobs/{job}/finish", {"status": "success"})
    assert code == 200, (code, data)
    traffic.finished[job] = time.monotonic()
    return traffic.finished[job] - started


def test_a_frozen_gateway_holds_a_revocation_for_at_most_its_lease(tmp_path: Path) -> None:
    """SIGSTOP of a caching gateway (a GC pause, a frozen VM): `job finish` returns once its lease
    lapsed (redis.timeout), and when it wakes it allows nothing from its cache."""
    with ExitStack() as stack:
        redis = stack.enter_context(RedisProcess(directory=tmp_path / "redis"))
        bulk = stack.enter_context(BulkUpstream(tmp_path))
        gw = stack.enter_context(JobgateProcess(tmp_path, redis.url, {"packages": bulk.url},
                                                redis={"url": redis.url, "timeout": TIMEOUT}))  # fmt: skip
        admin = Admin(gw)
        tokens = setup_world(admin, range(200, 204))
        for token in tokens.values():
            assert call(gw.url + PKG, headers={"JOB-TOKEN": token})[0] == 200  # warm

        def cli_finish(job: int) -> float:
            """`job finish` as the CLI runs it (its own process, not the frozen one), timed
            from the write to its return, without the interpreter's start-up."""

            async def timed() -> float:
                store = Store(connect(redis.url, 5.0))
                await store.ping()
                started = time.monotonic()
                await store.finish_job(job)
                took = time.monotonic() - started
                await store.close()
                return took

            return asyncio.run(timed())

        fast = cli_finish(200)  # a healthy holder acknowledges at once
        os.kill(gw.pid, signal.SIGSTOP)
        try:
            frozen = cli_finish(201)
            finished_at = time.monotonic()
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        code, _ = call(gw.url + PKG, headers={"JOB-TOKEN": tokens[201]})
        assert code != 200, "a woken gateway allowed a token finished while it was frozen"
        assert fast < 0.25 and TIMEOUT * 0.5 < frozen < TIMEOUT + 0.5, (fast, frozen)
        deadline = time.monotonic() + 10
        while call(gw.url + PKG, headers={"JOB-TOKEN": tokens[202]})[0] != 200:
            assert time.monotonic() < deadline, "the woken gateway never recovered"
            time.sleep(0.05)
        print(
            f"finish with a healthy holder {fast * 1000:.0f} ms, with a frozen one "
            f"{frozen * 1000:.0f} ms, recovered {time.monotonic() - finished_at:.2f} s after"
        )


def sentinel_binary() -> list[str]:
    found = shutil.which("redis-sentinel")
    if found:
        return [found]
    server = shutil.which("redis-server")
    assert server, "redis-server not found: apt-get install -y redis-server redis-sentinel"
    return [server, "--sentinel"]  # what the redis-sentinel package runs


@pytest.fixture
def sentinel_cluster(tmp_path: Path) -> Iterator[tuple[str, RedisProcess, list[RedisProcess], list[int]]]:
    """A master, two replicas and two sentinels (quorum 1) on free ports: (url, master, replicas,
    sentinel ports)."""
    with ExitStack() as stack:
        master = stack.enter_context(RedisProcess(directory=tmp_path / "m"))
        replicas = [
            stack.enter_context(RedisProcess(directory=tmp_path / f"r{i}",
                                             extra=("--replicaof", "127.0.0.1", str(master.port))))
            for i in range(2)
        ]  # fmt: skip
        ports = []
        for i in range(2):
            port = free_port()
            conf = tmp_path / f"sentinel{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                f"sentinel monitor jobgate 127.0.0.1 {master.port} 1\n"
                "sentinel down-after-milliseconds jobgate 500\n"
                "sentinel failover-timeout jobgate 1500\n"  # a split vote retries after twice this
            )
            process = subprocess.Popen([*sentinel_binary(), str(conf)], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)  # fmt: skip
            stack.callback(process.wait)
            stack.callback(process.terminate)
            ports.append(port)
        for replica in replicas:
            deadline = time.monotonic() + 15
            while "master_link_status:up" not in redis_cli(replica.port, "info", "replication"):
                assert time.monotonic() < deadline, "a replica never synced"
                time.sleep(0.05)
        for port in ports:
            deadline = time.monotonic() + 15
            while "slaves=2" not in redis_cli(port, "info", "sentinel"):
                assert time.monotonic() < deadline, "a sentinel never found both replicas"
                time.sleep(0.1)
        url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/jobgate/0"
        yield url, master, replicas, ports


def redis_cli(port: int, *args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5)
    return result.stdout


def master_port(sentinel: int) -> int:
    reply = redis_cli(sentinel, "sentinel", "get-master-addr-by-name", "jobgate").split()
    return int(reply[1]) if len(reply) == 2 else 0


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_no_allow_after_a_finish_returned_through_a_sentinel_failover(
    tmp_path: Path, sentinel_cluster: tuple[str, RedisProcess, list[RedisProcess], list[int]], how: str
) -> None:
    """Kill (SIGKILL) or pause (SIGSTOP: its connections stay open, subscriptions on it hear
    nothing and no error) the master under traffic on two gateways with two workers each, a
    replica is promoted; jobs finish before, during and after: zero allows after a finish
    returned."""
    url, master, _, sentinels = sentinel_cluster
    with ExitStack() as stack:
        bulk = stack.enter_context(BulkUpstream(tmp_path))
        gws = []
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            redis = {"url": url, "timeout": TIMEOUT}
            gws.append(stack.enter_context(
                JobgateProcess(directory, url, {"packages": bulk.url}, workers=2, redis=redis)))  # fmt: skip
        admins = [Admin(gw) for gw in gws]
        tokens = setup_world(admins[0], range(300, 340))
        with Traffic([gw.url for gw in gws], tokens) as traffic:
            time.sleep(1.0)
            jobs = iter(sorted(tokens))
            durations: list[tuple[str, float]] = []
            for _ in range(8):  # before the failover
                durations.append(("before", finish(admins[len(durations) % 2], traffic, next(jobs))))
                time.sleep(0.1)
            old = master.port
            assert master.process is not None
            if how == "kill":
                master.process.kill()  # the master dies
            else:
                os.kill(master.process.pid, signal.SIGSTOP)  # it hangs; SIGKILL ends it at teardown
            killed = time.monotonic()
            promoted_after = None
            while promoted_after is None or len(durations) < 24:
                if promoted_after is None and master_port(sentinels[0]) not in (0, old):
                    promoted_after = time.monotonic() - killed
                assert time.monotonic() - killed < 40, "no replica was promoted"
                phase = "after" if promoted_after is not None else "during"
                durations.append((phase, finish(admins[len(durations) % 2], traffic, next(jobs))))
            time.sleep(1.5)
        assert traffic.wrong == [], traffic.wrong[:10]
        failover_503 = [s for s, _, code in traffic.answers if code in (0, 503) and s > killed]
        recovered = [s for s, _, code in traffic.answers if code == 200 and s > killed + promoted_after]
        assert recovered, "no request was allowed after the promotion"
        assert {"before", "after"} <= {phase for phase, _ in durations}
        drains: list[float] = []
        for gw in gws:
            assert gw.process is not None and gw.process.poll() is None
            workers = re.search(r"started 2 workers on \S+ \[(\d+), (\d+)\]", gw.log_path.read_text())
            assert workers, "no worker pids in the log"
            gw.process.send_signal(signal.SIGTERM)  # the drain may take its whole 30 s
            started = time.monotonic()
            assert gw.process.wait(timeout=40) == 0, "SIGTERM did not stop the gateway"
            drains.append(time.monotonic() - started)
            deadline = time.monotonic() + 10
            while any(Path(f"/proc/{pid}").exists() for pid in workers.groups()):
                assert time.monotonic() < deadline, "a worker outlived its gateway after a failover"
                time.sleep(0.1)
        longest = {p: max(d for q, d in durations if q == p) for p, _ in durations}
        print(f"promoted after {promoted_after:.1f} s; 503/no answer after the kill: {len(failover_503)} "
              f"(last {max(failover_503, default=killed) - killed:.1f} s after it); longest finish by phase "
              + ", ".join(f"{p} {d * 1000:.0f} ms" for p, d in longest.items())
              + f"; {len(traffic.answers)} requests; SIGTERM drains "
              + ", ".join(f"{d:.1f} s" for d in drains))  # fmt: skip
