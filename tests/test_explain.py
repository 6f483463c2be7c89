"""`jobgate explain`: the decision and every rule, for an allowed and three denied requests."""

from __future__ import annotations

import subprocess
import sys

from gateway.devredis import RedisProcess
from gateway.store import Store


def explain(redis: RedisProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "explain", "--redis-url", redis.url, *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_explain_allowed_and_three_denials(redis_server: RedisProcess, store: Store) -> None:
    await store.set_project(1, "group/app", "private", scope=True)
    await store.set_project(2, "other/lib", "private")
    await store.set_project(3, "team/tools", "private", inbound=False)
    await store.set_project(4, "team/data", "private", inbound=False)
    await store.set_member(1, 7, 30)
    await store.set_member(2, 7, 20)
    await store.set_member(3, 7, 20)
    await store.set_member(4, 7, 20)
    await store.set_outbound(1, 3, True)
    await store.set_outbound(1, 2, True)
    token = await store.start_job(100, 1, 7)

    allowed = explain(redis_server, "--job", "100", "GET", "/api/v4/projects/3/packages/generic/a/1/a")
    assert allowed.returncode == 0, allowed.stderr
    assert "PASS  outbound scope: team/tools on group/app's outbound allowlist: True" in allowed.stdout
    assert "PASS  inbound scope: team/tools does not limit inbound access" in allowed.stdout
    assert "PASS  role: user 7: level 20, read_package needs 20" in allowed.stdout
    assert "decision  ALLOW (in_scope)" in allowed.stdout

    outbound = explain(redis_server, "--token", token, "GET", "http://gw/api/v4/projects/4/packages/x")
    assert outbound.returncode == 1
    assert "FAIL  outbound scope: team/data on group/app's outbound allowlist: False" in outbound.stdout
    assert "decision  DENY (outside_scope)" in outbound.stdout
    assert 'client    404 {"message":"404 Not Found"}' in outbound.stdout
    assert ('explain   403 {"message":"Authentication by CI/CD job token not allowed from group/app to '
            'team/data."}') in outbound.stdout  # fmt: skip

    inbound = explain(redis_server, "--job", "100", "GET", "/api/v4/projects/2/releases")
    assert "FAIL  inbound scope: other/lib's inbound allowlist entry for group/app: none" in inbound.stdout
    assert "decision  DENY (outside_inbound_scope)" in inbound.stdout

    await store.set_inbound(2, "group", True, ["read_releases"])
    role = explain(redis_server, "--job", "100", "PUT", "/api/v4/projects/2/packages/generic/a/1/a")
    assert "FAIL  role: user 7: level 20, push_package needs 30" in role.stdout
    assert "decision  DENY (insufficient_role)" in role.stdout

    await store.finish_job(100)
    finished = explain(redis_server, "--job", "100", "GET", "/api/v4/projects/1/packages/x")
    assert "FAIL  job running: job 100 is success" in finished.stdout
    assert token not in finished.stdout + outbound.stdout


async def test_explain_bad_input(redis_server: RedisProcess, store: Store) -> None:
    unknown = explain(redis_server, "--job", "999", "GET", "/api/v4/projects/1/packages/x")
    assert unknown.returncode == 2 and "job 999 does not exist" in unknown.stderr
    unlisted = explain(redis_server, "--job", "999", "GET", "/api/v4/users")
    assert unlisted.returncode == 1 and "route     none (unlisted)" in unlisted.stdout
    tricky = explain(redis_server, "--job", "999", "GET", "/api/v4/projects/1/../2/packages/x")
    assert tricky.returncode == 2 and "400" in tricky.stdout
