"""`GET /api/v4/job`: GitLab's Job entity (GITLAB.md §2), and GitLab's 401 for a dead token."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from gateway.store import Store

from .conftest import RecordingUpstream, World

#: The fields GitLab's spec asserts (spec/requests/api/ci/jobs_spec.rb) and the rest of the entity.
ASSERTED = {"id", "status", "stage", "name", "ref", "tag", "coverage", "allow_failure", "created_at",
            "started_at", "artifacts_expire_at", "artifacts_file", "artifacts", "web_url", "archived",
            "finished_at", "erased_at", "pipeline"}  # fmt: skip
ENTITY = ASSERTED | {"duration", "queued_duration", "tag_list", "user", "commit", "runner", "project"}
PIPELINE = {"id", "project_id", "ref", "sha", "status", "iid", "source", "created_at", "updated_at",
            "web_url"}  # fmt: skip
USER = {"id", "username", "name", "state", "locked", "avatar_url", "web_url", "created_at"}
COMMIT = {"id", "short_id", "title", "message", "author_name", "author_email", "authored_date",
          "committer_name", "committer_email", "committed_date", "created_at", "web_url"}  # fmt: skip
SHA = "0123456789abcdef0123456789abcdef01234567"


async def test_every_field_of_gitlabs_entity(
    make_gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    gateway = await make_gateway(web_url="https://gitlab.example.com")
    started = time.time()
    token = await world.job(
        101, 1, 7, pipeline_id=55, name="deploy", ref="v1.2", stage="release", sha=SHA, tag=True,
        pipeline_iid=12, pipeline_source="push", username="alice", user_name="Alice A", allow_failure=True,
    )  # fmt: skip
    resp = await gateway.get("/api/v4/job", headers={"JOB-TOKEN": token})
    assert resp.status == 200
    job = await resp.json()
    assert set(job) >= ENTITY and set(job["pipeline"]) >= PIPELINE
    assert set(job["user"]) >= USER and set(job["commit"]) >= COMMIT
    assert "failure_reason" not in job  # GitLab shows it for failed jobs only
    assert (job["id"], job["status"], job["stage"]) == (101, "running", "release")
    assert (job["name"], job["ref"]) == ("deploy", "v1.2")
    assert job["tag"] is True and job["allow_failure"] is True and job["archived"] is False
    assert job["coverage"] is None and job["finished_at"] is None and job["erased_at"] is None
    assert job["artifacts"] == [] and job["tag_list"] == [] and job["artifacts_file"] is None
    at = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00")).timestamp()
    assert job["started_at"].endswith("Z") and abs(at - started) < 3
    assert job["created_at"] == job["started_at"]
    assert job["duration"] is not None and 0 <= job["duration"] < 5
    assert job["pipeline"] == {
        "id": 55, "iid": 12, "project_id": 1, "sha": SHA, "ref": "v1.2", "status": "running",
        "source": "push", "created_at": None, "updated_at": None,
        "web_url": "https://gitlab.example.com/group/app/-/pipelines/55",
    }  # fmt: skip
    assert job["user"]["username"] == "alice" and job["user"]["name"] == "Alice A"
    assert job["user"]["web_url"] == "https://gitlab.example.com/alice"
    assert job["commit"]["id"] == SHA and job["commit"]["short_id"] == SHA[:8]
    assert job["web_url"] == "https://gitlab.example.com/group/app/-/jobs/101"
    assert job["project"]["ci_job_token_scope_enabled"] is False
    assert upstream.requests == []


async def test_unknown_fields_are_null_and_no_web_url_without_the_key(gateway: Any, world: World) -> None:
    job = await (await gateway.get("/api/v4/job", headers={"JOB-TOKEN": world.tokens["100"]})).json()
    assert job["stage"] is None and job["commit"] is None and job["tag"] is False
    assert job["web_url"] is None and job["pipeline"]["web_url"] is None and job["user"]["web_url"] is None
    assert job["user"]["username"] is None and job["pipeline"]["iid"] is None and job["runner"] is None


async def test_a_job_recorded_before_the_entity_fields_keeps_validating(gateway: Any, store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    token = await store.start_job(100, 1, 7, ref="main")
    key = f"{store.prefix}job:100"
    await store.client.hdel(key, "t")  # the layout of jobs started before this change
    assert set(await store.client.hkeys(key)) == {b"p", b"u", b"s", b"e", b"x", b"r", b"d"}
    resp = await gateway.get("/api/v4/job", headers={"JOB-TOKEN": token})
    assert resp.status == 200
    job = await resp.json()
    assert job["started_at"] is None and job["duration"] is None and job["ref"] == "main"


@pytest.mark.parametrize("case", ["finished", "canceling", "erased", "no_token", "unknown_token", "trigger"])
async def test_a_dead_or_missing_token_gets_gitlabs_401(
    make_gateway: Any, world: World, upstream: RecordingUpstream, case: str
) -> None:
    gateway = await make_gateway(explain=True)  # GitLab's 401 here, whatever the mode
    headers = {"JOB-TOKEN": world.tokens["100"]}
    if case == "finished":
        await world.store.finish_job(100, "success")
    elif case == "canceling":
        await world.store.finish_job(100, "canceling")
    elif case == "erased":
        await world.store.erase_job(100)
    elif case == "no_token":
        headers = {}
    elif case == "unknown_token":
        headers = {"JOB-TOKEN": "glcbt-100_not-the-secret"}
    else:
        headers = {"JOB-TOKEN": await world.store.create_trigger(1, 7)}
    resp = await gateway.get("/api/v4/job", headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"message": "401 Unauthorized"}
    # other routes keep the uniform 404
    other = await gateway.get("/api/v4/projects/1/packages/generic/a/1/f", headers=headers)
    assert other.status in (403, 404) and upstream.requests == []
