"""Fine-grained job token policies, explain mode and the authentication log, through the gateway."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from gateway.devredis import RedisProcess

from .conftest import RecordingUpstream, World

# (policy family, read route, write route, read policy, admin policy); role 40 covers every action.
FAMILIES = [
    ("packages", ("GET", "/api/v4/projects/2/packages/generic/a/1/a"),
     ("PUT", "/api/v4/projects/2/packages/generic/a/1/a"), "read_packages", "admin_packages"),
    ("releases", ("GET", "/api/v4/projects/2/releases/v1"), ("POST", "/api/v4/projects/2/releases"),
     "read_releases", "admin_releases"),
    ("terraform_state", ("GET", "/api/v4/projects/2/terraform/state/prod"),
     ("POST", "/api/v4/projects/2/terraform/state/prod/lock"), "read_terraform_state",
     "admin_terraform_state"),
    ("jobs", ("GET", "/api/v4/projects/2/jobs/artifacts/main/download"),
     ("GET", "/api/v4/projects/2/jobs/9/artifacts/out.txt"), "read_jobs", "read_jobs"),
]  # fmt: skip


@pytest.fixture
async def cross(world: World) -> World:
    await world.project(2, "other/lib", "private")
    await world.store.set_member(2, 7, 40)
    return world


@pytest.mark.parametrize(("family", "read", "write", "read_policy", "admin_policy"), FAMILIES,
                         ids=[f[0] for f in FAMILIES])  # fmt: skip
async def test_policy_family_end_to_end(
    gateway: Any, upstream: RecordingUpstream, cross: World, family: str,
    read: tuple[str, str], write: tuple[str, str], read_policy: str, admin_policy: str,
) -> None:  # fmt: skip
    headers = {"JOB-TOKEN": cross.tokens["100"]}
    await cross.store.set_inbound(2, "group", True, ["read_deployments"])  # an unrelated policy only
    assert (await gateway.request(*read, headers=headers)).status == 404
    await cross.store.set_inbound(2, "group", True, [read_policy])
    assert (await gateway.request(*read, headers=headers)).status == 200
    expected = 200 if admin_policy == read_policy else 404
    assert (await gateway.request(*write, headers=headers)).status == expected
    await cross.store.set_inbound(2, "1", True, [admin_policy])  # the project entry is nearer
    assert (await gateway.request(*write, headers=headers)).status == 200
    assert (await gateway.request(*read, headers=headers)).status == 200  # admin implies read


async def test_registry_api_policy_never_opens_another_project(
    gateway: Any, upstream: RecordingUpstream, cross: World
) -> None:
    await cross.store.set_inbound(2, "group", True, ["admin_containers"])
    resp = await gateway.get(
        "/api/v4/projects/2/registry/repositories", headers={"JOB-TOKEN": cross.tokens["100"]}
    )
    assert resp.status == 404  # the registry API stays limited to the job's own project
    own = await gateway.get(
        "/api/v4/projects/1/registry/repositories", headers={"JOB-TOKEN": cross.tokens["100"]}
    )
    assert own.status == 200


async def test_explain_mode_answers_gitlabs_messages(
    make_gateway: Any, upstream: RecordingUpstream, cross: World
) -> None:
    client = await make_gateway(explain=True)
    headers = {"JOB-TOKEN": cross.tokens["100"]}
    resp = await client.get("/api/v4/projects/2/packages/generic/a/1/a", headers=headers)
    assert resp.status == 403
    assert await resp.json() == {
        "message": "Authentication by CI/CD job token not allowed from group/app to other/lib."
    }
    await cross.store.set_inbound(2, "group", True, ["read_releases"])
    resp = await client.get("/api/v4/projects/2/packages/generic/a/1/a", headers=headers)
    assert await resp.json() == {
        "message": "Insufficient permissions to access this resource in project other/lib. "
        "The following token permission is required: read_packages."
    }
    unknown = await client.get("/api/v4/projects/2/packages/x", headers={"JOB-TOKEN": "glcbt-nope"})
    assert unknown.status == 404  # an unknown token learns nothing, even in explain mode
    assert upstream.requests == []


async def test_authentication_log_suggests_inbound_entries(
    gateway: Any, upstream: RecordingUpstream, cross: World, redis_server: RedisProcess
) -> None:
    await cross.store.set_project(2, inbound=False)
    await cross.project(3, "team/tool", "private")
    await cross.store.set_member(3, 8, 30)
    other = await cross.job(300, 3, 8)
    await cross.store.set_member(2, 8, 30)
    for token in (cross.tokens["100"], cross.tokens["100"], other):
        resp = await gateway.get("/api/v4/projects/2/packages/generic/a/1/a", headers={"JOB-TOKEN": token})
        assert resp.status == 200
    await cross.store.set_inbound(2, "group", True)
    for _ in range(50):
        suggestions = await cross.store.suggest_inbound(2)
        if len(suggestions) == 2:
            break
        await asyncio.sleep(0.05)
    assert suggestions == [
        {"source": 3, "routes": {"packages_read": 1}, "path": "team/tool", "covered_by": None},
        {"source": 1, "routes": {"packages_read": 1}, "path": "group/app", "covered_by": "g:group"},
    ]
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "admin", "--redis-url", redis_server.url,
         "inbound", "suggest", "2"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines() == [
        "3\tteam/tool\tpackages_read=1\tnot on the list",
        "1\tgroup/app\tpackages_read=1\tcovered by g:group",
    ]
