"""GitLab 18.4's surface through the gateway and the control plane: a job's artifacts found by
the job, the new families' upstreams, feature visibility, git push opt-in, job descriptions."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.admin import build_admin
from gateway.app import build_gateway
from gateway.config import parse_config
from gateway.devredis import RedisProcess
from gateway.model import TargetRef
from gateway.store import ControlError, Store

from .conftest import RecordingUpstream, World
from .test_admin import ADMIN, cli


async def test_the_store_finds_a_jobs_project_in_the_same_round_trip(store: Store, world: World) -> None:
    await world.project(2, "other/lib")
    await world.job(77, 2, 8)
    calls = 0
    original = store._read_access

    async def counting(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(**kwargs)

    store._read_access = counting  # type: ignore[method-assign]
    state = await store.read_access(world.tokens["100"], TargetRef(job_id=77))
    assert calls == 1
    assert state.target is not None and state.target.id == 2 and state.target.path == "other/lib"
    unknown = await store.read_access(world.tokens["100"], TargetRef(job_id=99))
    assert unknown.target is None and unknown.job is not None


async def test_the_artifacts_of_a_job_are_authorized_on_its_project(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await world.job(77, 1, 7)
    await world.store.finish_job(77)  # a finished job's artifacts
    await world.project(2, "other/secret")
    await world.job(78, 2, 8)
    headers = {"JOB-TOKEN": world.tokens["100"]}
    resp = await gateway.get("/api/v4/jobs/77/artifacts", headers=headers)
    assert resp.status == 200
    assert upstream.last.path_qs == "/api/v4/jobs/77/artifacts"
    assert upstream.last.headers["x-jobgate-target-project-id"] == ["1"]
    for job in (78, 99):  # another private project's job; a job jobgate does not know
        denied = await gateway.get(f"/api/v4/jobs/{job}/artifacts", headers=headers)
        assert denied.status == 404 and len(upstream.requests) == 1


async def test_a_job_started_after_a_miss_is_found_at_once(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    headers = {"JOB-TOKEN": world.tokens["100"]}
    assert (await gateway.get("/api/v4/jobs/79/artifacts", headers=headers)).status == 404
    await world.job(79, 1, 7)  # starting a job announces nothing: the miss was not cached
    assert (await gateway.get("/api/v4/jobs/79/artifacts", headers=headers)).status == 200


async def test_new_families_go_to_their_upstream_or_to_api(
    redis_server: RedisProcess, world: World, aiohttp_client: Any
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    def upstream_named(name: str) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"upstream": name})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return app

    servers = [TestServer(upstream_named("api")), TestServer(upstream_named("issues"))]
    for server in servers:
        await server.start_server()
    config = parse_config({
        "listen": "127.0.0.1:0", "redis": {"url": redis_server.url},
        "upstreams": {"api": {"url": str(servers[0].make_url("")).rstrip("/")},
                      "issues": {"url": str(servers[1].make_url("")).rstrip("/")}},
    }, "t.yaml", env={})  # fmt: skip
    client = await aiohttp_client(build_gateway(config))
    headers = {"JOB-TOKEN": world.tokens["100"]}
    try:
        got = await client.get("/api/v4/projects/1/issues", headers=headers)
        assert (await got.json()) == {"upstream": "issues"}
        for path in ("/api/v4/projects/1/deployments", "/api/v4/projects/1/pipelines",
                     "/api/v4/projects/1/merge_requests", "/api/v4/projects/1/repository/branches",
                     "/api/v4/projects/1/environments"):  # fmt: skip
            got = await client.get(path, headers=headers)
            assert (await got.json()) == {"upstream": "api"}, path
        # a family jobgate always had does not fall back: no upstream, no forward
        assert (await client.get("/api/v4/projects/1/packages/x", headers=headers)).status == 404
    finally:
        for server in servers:
            await server.close()


async def test_feature_visibility_opens_and_closes_public_reads(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await world.project(3, "pub/lib", "public")
    headers = {"JOB-TOKEN": world.tokens["100"]}
    url = "/api/v4/projects/3/packages/generic/a/1/f"
    assert (await gateway.get(url, headers=headers)).status == 200
    await world.store.set_project(3, features={"packages": "private"})
    assert (await gateway.get(url, headers=headers)).status == 404
    assert (await gateway.get("/api/v4/projects/3/releases", headers=headers)).status == 200
    await world.store.set_project(3, features={"packages": "enabled", "releases": "disabled"})
    assert (await gateway.get(url, headers=headers)).status == 200
    assert (await gateway.get("/api/v4/projects/3/releases", headers=headers)).status == 404


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"wiki": "private"}, "unknown project feature 'wiki' (known: builds, container_registry"),
        ({"packages": "hidden"}, "feature packages: level must be one of enabled, private, disabled"),
    ],
)
async def test_feature_names_and_levels_are_validated(
    store: Store, features: dict[str, str], message: str
) -> None:
    await store.set_project(1, "g/p", "private")
    with pytest.raises(ControlError, match=message.replace("(", r"\(")):
        await store.set_project(1, features=features)


async def test_the_admin_api_sets_features_push_and_job_descriptions(
    store: Store, aiohttp_client: Any
) -> None:
    admin = await aiohttp_client(build_admin(store, "admin-secret"))
    body = {"path": "g/app", "visibility": "public", "push_repository": True,
            "features": {"builds": "private", "repository": "disabled"}}  # fmt: skip
    resp = await admin.put("/admin/v1/projects/1", json=body, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    bad = await admin.put("/admin/v1/projects/1", json={"features": {"builds": "secret"}}, headers=ADMIN)
    assert bad.status == 400 and "level must be one of" in (await bad.json())["message"]
    bad = await admin.put("/admin/v1/projects/1", json={"features": ["builds"]}, headers=ADMIN)
    assert bad.status == 400 and "features must be an object" in (await bad.json())["message"]
    job = {"id": 5, "project": 1, "user": 7, "stage": "test", "sha": "abc", "tag": True, "pipeline_iid": 3,
           "pipeline_source": "push", "username": "al", "user_name": "Al", "allow_failure": True}  # fmt: skip
    resp = await admin.post("/admin/v1/jobs", json=job, headers=ADMIN)
    assert resp.status == 201, await resp.text()
    state = await store.read_access((await resp.json())["token"], TargetRef(1))
    assert state.target is not None and state.target.push_repository
    assert state.target.features == (("builds", "private"), ("repository", "disabled"))
    recorded = state.job
    assert recorded is not None and recorded.started_at is not None
    assert (recorded.stage, recorded.sha, recorded.tag, recorded.pipeline_iid) == ("test", "abc", True, 3)
    assert (recorded.pipeline_source, recorded.username, recorded.user_name) == ("push", "al", "Al")
    assert recorded.allow_failure
    bad = await admin.post("/admin/v1/jobs", json={**job, "id": 6, "pipeline_iid": "x"}, headers=ADMIN)
    assert bad.status == 400


async def test_the_cli_sets_features_push_and_job_descriptions(
    redis_server: RedisProcess, store: Store
) -> None:
    result = cli(redis_server, "project", "set", "1", "--path", "g/app", "--visibility", "internal",
                 "--feature", "packages=private", "--feature", "releases=disabled",
                 "--push-repository", "on")  # fmt: skip
    assert result.returncode == 0, result.stderr
    started = cli(redis_server, "job", "start", "--id", "9", "--project", "1", "--user", "7", "--name", "b",
                  "--ref", "v1", "--pipeline", "4", "--stage", "build", "--sha", "f00", "--tag",
                  "--pipeline-iid", "2", "--pipeline-source", "web", "--username", "bo",
                  "--user-name", "Bo B", "--allow-failure")  # fmt: skip
    assert started.returncode == 0, started.stderr
    state = await store.read_access(started.stdout.strip(), TargetRef(1))
    assert state.target is not None and state.target.push_repository
    assert dict(state.target.features) == {"packages": "private", "releases": "disabled"}
    job = state.job
    assert job is not None and (job.stage, job.sha, job.tag, job.pipeline_iid) == ("build", "f00", True, 2)
    assert (job.pipeline_source, job.username, job.user_name) == ("web", "bo", "Bo B")
    assert job.allow_failure
    assert cli(redis_server, "project", "set", "1", "--push-repository", "off").returncode == 0
    state = await store.read_access(started.stdout.strip(), TargetRef(1))
    assert state.target is not None and not state.target.push_repository


@pytest.mark.parametrize(
    ("feature", "message"),
    [("packages", "--feature expects NAME=LEVEL"), ("wiki=enabled", "unknown project feature 'wiki'"),
     ("packages=open", "level must be one of enabled, private, disabled")],
)  # fmt: skip
async def test_cli_feature_errors_are_clear(
    redis_server: RedisProcess, store: Store, feature: str, message: str
) -> None:
    await store.set_project(1, "g/p", "private")
    result = cli(redis_server, "project", "set", "1", "--feature", feature)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
