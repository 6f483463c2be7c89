"""The authorization path against a real three-master Redis Cluster."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gateway.app import build_gateway
from gateway.devredis import RedisProcess, free_port
from gateway.store import Store, connect

from ..conftest import RecordingUpstream, gateway_config


def cluster_port() -> int:
    while True:  # the cluster bus listens on port + 10000
        port = free_port()
        if port < 55000:
            return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cli = shutil.which("redis-cli")
    assert cli, "redis-cli not found: apt-get install -y redis-tools (make test installs it)"
    root = tmp_path_factory.mktemp("cluster")
    with ExitStack() as stack:
        nodes = []
        for i in range(3):
            node = RedisProcess(cluster_port(), root / f"n{i}", extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", str(root / f"n{i}.conf")))  # fmt: skip
            stack.enter_context(node)
            nodes.append(node)
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", "0",
             "--cluster-yes"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        for _ in range(100):
            info = subprocess.run(
                [cli, "-p", str(nodes[0].port), "cluster", "info"], capture_output=True, text=True
            )
            if "cluster_state:ok" in info.stdout:
                break
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}/0"


async def test_authorization_over_a_cluster(
    cluster: str, upstream: RecordingUpstream, aiohttp_client: Any
) -> None:
    store = Store(connect(cluster, 5.0))
    await store.set_project(1, "group/app", "private")
    await store.set_project(2, "other/lib", "private")
    await store.set_member(1, 7, 30)
    await store.set_member(2, 7, 20)
    await store.set_inbound(2, "group", True)
    token = await store.start_job(100, 1, 7)
    client = await aiohttp_client(build_gateway(gateway_config(cluster, upstream.url)))
    own = "/api/v4/projects/1/packages/generic/a/1/a"
    other = "/api/v4/projects/other%2Flib/packages/generic/b/1/b"
    assert (await client.get(own, headers={"JOB-TOKEN": token})).status == 200
    assert (await client.get(other, headers={"JOB-TOKEN": token})).status == 200
    assert (await client.put(other, headers={"JOB-TOKEN": token})).status == 404  # reporter
    await store.set_inbound(2, "group", False)
    assert (await client.get(other, headers={"JOB-TOKEN": token})).status == 404
    await store.finish_job(100)
    assert (await client.get(own, headers={"JOB-TOKEN": token})).status == 404
    assert len(upstream.requests) == 2
    await store.close()


async def test_authorization_through_sentinel(
    tmp_path: Path, redis_server: RedisProcess, upstream: RecordingUpstream, aiohttp_client: Any
) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor jobgate 127.0.0.1 {redis_server.port} 1\n"
    )
    sentinel = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        url = f"redis+sentinel://127.0.0.1:{port}/jobgate/0"
        store = Store(connect(url, 5.0))
        for _ in range(100):
            if await store.ping():
                break
            await asyncio.sleep(0.1)
        await store.client.flushdb()
        await store.set_project(1, "group/app", "private")
        await store.set_member(1, 7, 30)
        token = await store.start_job(100, 1, 7)
        client = await aiohttp_client(build_gateway(gateway_config(url, upstream.url)))
        own = "/api/v4/projects/1/packages/generic/a/1/a"
        assert (await client.get(own, headers={"JOB-TOKEN": token})).status == 200
        await store.finish_job(100)
        assert (await client.get(own, headers={"JOB-TOKEN": token})).status == 404
        await store.close()
    finally:
        sentinel.terminate()
        sentinel.wait()
