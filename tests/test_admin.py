"""The control plane: admin HTTP API and `jobgate admin` CLI over a real Redis."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from gateway.admin import build_admin
from gateway.devredis import RedisProcess
from gateway.model import TargetRef, TokenKind
from gateway.store import Store, token_digest

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
async def admin(store: Store, aiohttp_client: Any) -> Any:
    return await aiohttp_client(build_admin(store, "admin-secret"))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_admin_api_needs_the_admin_token(admin: Any, headers: dict[str, str]) -> None:
    resp = await admin.put(
        "/admin/v1/projects/1", json={"path": "g/p", "visibility": "private"}, headers=headers
    )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_admin_api_full_cycle(admin: Any, store: Store) -> None:
    resp = await admin.put(
        "/admin/v1/projects/1", json={"path": "g/app", "visibility": "private"}, headers=ADMIN
    )
    assert resp.status == 200 and (await resp.json())["path"] == "g/app"
    await admin.put("/admin/v1/projects/2", json={"path": "g/lib", "visibility": "private"}, headers=ADMIN)
    assert (
        await admin.put("/admin/v1/projects/2/members/7", json={"access_level": 20}, headers=ADMIN)
    ).status == 200
    assert (await admin.put("/admin/v1/projects/1/allowlist/2", headers=ADMIN)).status == 200
    resp = await admin.put(
        "/admin/v1/projects/2/inbound/g", json={"policies": ["read_packages"]}, headers=ADMIN
    )
    assert (await resp.json())["source"] == "g:g"
    resp = await admin.post(
        "/admin/v1/jobs", json={"id": 100, "project": 1, "user": 7, "ref": "main"}, headers=ADMIN
    )
    assert resp.status == 201
    token = (await resp.json())["token"]
    assert token.startswith("glcbt-")
    state = await store.read_access(token, TargetRef(project_id=2))
    assert state.kind is TokenKind.JOB and state.access_level == 20 and state.in_outbound_allowlist
    job = await (await admin.get("/admin/v1/jobs/100", headers=ADMIN)).json()
    assert job["status"] == "running" and token_digest(token) not in str(job)
    resp = await admin.post("/admin/v1/jobs/100/finish", json={"status": "failed"}, headers=ADMIN)
    assert resp.status == 200
    assert (await store.read_access(token, TargetRef())).job.status == "failed"  # type: ignore[union-attr]
    assert (await admin.post("/admin/v1/jobs/100/erase", headers=ADMIN)).status == 200
    resp = await admin.post("/admin/v1/triggers", json={"project": 1, "owner": 7}, headers=ADMIN)
    trigger = (await resp.json())["token"]
    assert trigger.startswith("glptt-")
    assert (
        await admin.post("/admin/v1/triggers/revoke", json={"token": trigger}, headers=ADMIN)
    ).status == 200
    assert (
        await admin.post("/admin/v1/triggers/revoke", json={"token": trigger}, headers=ADMIN)
    ).status == 404
    assert (await admin.delete("/admin/v1/projects/2/inbound/g", headers=ADMIN)).status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("PUT", "/admin/v1/projects/1", "not json", 400, "body must be a JSON object"),
        ("PUT", "/admin/v1/projects/1", [1, 2], 400, "body must be a JSON object"),
        ("PUT", "/admin/v1/projects/x", {}, 400, "id must be an integer"),
        ("PUT", "/admin/v1/projects/1", {"path": 5}, 400, "path must be a string"),
        ("PUT", "/admin/v1/projects/1", {"path": "g/p", "visibility": "secret"}, 400, "visibility"),
        ("PUT", "/admin/v1/projects/1", {"path": "g/p", "visibility": "public", "scope": "yes"}, 400,
         "scope must be"),
        ("POST", "/admin/v1/jobs", {"id": 1, "project": 9, "user": 7}, 400, "project 9 does not exist"),
        ("POST", "/admin/v1/jobs", {"id": True, "project": 9, "user": 7}, 400, "id must be an integer"),
        ("POST", "/admin/v1/jobs", {"id": 1, "project": 9, "user": 7, "timeout": "x"}, 400, "timeout"),
        ("POST", "/admin/v1/jobs/5/finish", {"status": "won"}, 400, "status must be one of"),
        ("PUT", "/admin/v1/projects/1/inbound/g", {"policies": "read_packages"}, 400, "list of policy"),
        ("PUT", "/admin/v1/projects/1", "x" * 70000, 413, "too large"),
    ],
)  # fmt: skip
async def test_admin_api_bad_input_gets_a_clear_4xx(
    admin: Any, method: str, path: str, body: object, status: int, message: str
) -> None:
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    resp = await admin.request(method, path, headers=ADMIN, **kwargs)
    assert resp.status == status
    assert message in (await resp.json())["message"]


def cli(redis: RedisProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "admin", "--redis-url", redis.url, *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_cli_verbs_as_the_spec_lists_them(redis_server: RedisProcess, store: Store) -> None:
    steps = [
        ("project", "set", "1", "--path", "group/app", "--visibility", "private", "--scope", "on"),
        ("project", "set", "2", "--path", "other/lib", "--visibility", "internal", "--inbound", "off"),
        ("project", "set", "2", "--pending-delete", "off"),
        ("member", "set", "2", "7", "30"),
        ("allowlist", "add", "1", "2"),
        ("inbound", "add", "2", "group", "--policies", "read_packages,admin_releases"),
        ("inbound", "add", "2", "1"),
        ("inbound", "remove", "2", "1"),
    ]
    for step in steps:
        result = cli(redis_server, *step)
        assert result.returncode == 0, (step, result.stderr)
    started = cli(redis_server, "job", "start", "--id", "100", "--project", "1", "--user", "7",
                  "--pipeline", "9", "--name", "build", "--ref", "main", "--timeout", "600")  # fmt: skip
    assert started.returncode == 0, started.stderr
    token = started.stdout.strip()
    assert token.startswith("glcbt-") and "\n" not in token
    state = await store.read_access(token, TargetRef(project_id=2))
    assert state.source.outbound_limit and state.in_outbound_allowlist and state.access_level == 30  # type: ignore[union-attr]
    assert state.inbound_entry is not None and state.inbound_entry.source == "g:group"
    assert state.inbound_entry.policies == {"read_packages", "admin_releases"}
    assert cli(redis_server, "job", "finish", "100", "--status", "canceled").returncode == 0
    assert (await store.read_access(token, TargetRef())).job.status == "canceled"  # type: ignore[union-attr]
    assert cli(redis_server, "job", "erase", "100").returncode == 0
    trigger = cli(redis_server, "trigger", "create", "1", "--owner", "7").stdout.strip()
    assert trigger.startswith("glptt-")
    assert cli(redis_server, "trigger", "revoke", trigger).returncode == 0
    assert cli(redis_server, "member", "set", "2", "7", "0").returncode == 0
    assert (await store.read_access(token, TargetRef(project_id=2))).access_level == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("job", "finish", "404"), 1, "job 404 does not exist"),
        (("member", "set", "1", "7", "33"), 1, "access level must be one of"),
        (("inbound", "add", "1", "g", "--policies", "read_all"), 1, "unknown job token policy read_all"),
        (("project", "set", "1", "--visibility", "nope"), 2, "invalid choice"),
        (("job", "start", "--id", "x", "--project", "1", "--user", "1"), 2, "must be an integer"),
    ],
)
async def test_cli_errors_are_clear(
    redis_server: RedisProcess, store: Store, args: tuple[str, ...], code: int, message: str
) -> None:
    await store.set_project(1, "g/p", "private")
    result = cli(redis_server, *args)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_redis_down_is_clear() -> None:
    from gateway.devredis import free_port

    result = subprocess.run(
        [sys.executable, "-m", "gateway", "admin", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
         "job", "finish", "1"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 3
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr


async def test_group_set_by_cli_and_api_and_rename_keeps_entries(
    redis_server: RedisProcess, store: Store, admin: Any
) -> None:
    await store.set_project(2, "x/lib", "private")
    result = cli(redis_server, "group", "set", "10", "--path", "team")
    assert result.returncode == 0, result.stderr
    assert await store.get_group(10) == "team"
    await store.set_inbound(2, "team", True)
    resp = await admin.put("/admin/v1/groups/10", json={"path": "team2"}, headers=ADMIN)
    assert resp.status == 200
    assert await resp.json() == {"id": 10, "path": "team2", "rewritten_entries": [2]}
    assert await store.inbound_entries(2) == {"g:team2": "*"}
    refused = cli(redis_server, "group", "set", "11", "--path", "team2")
    assert refused.returncode == 1 and "already belongs to group 10" in refused.stderr
    resp = await admin.put("/admin/v1/groups/11", json={}, headers=ADMIN)
    assert resp.status == 400 and (await resp.json())["message"] == "path is required"
