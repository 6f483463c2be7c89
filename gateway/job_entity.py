"""`GET /api/v4/job`: GitLab's Job entity for the job a live token belongs to.

Every field of GitLab's entity (lib/api/entities/ci/job_basic.rb, job.rb) is present;
what the orchestrator did not tell jobgate is `null` (or `[]`). `web_url` fields are built
from the config's `web_url` (GitLab's web base), `null` without it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .decision import Decision
from .model import JobState, ProjectState


def _time(timestamp: float | None) -> str | None:
    """GitLab's timestamp form: ISO 8601, UTC, milliseconds, `Z`."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _or_none(text: str) -> str | None:
    return text or None


def render_job(job: JobState, project: ProjectState, web_url: str | None, now: float) -> dict[str, Any]:
    """The entity as a JSON-ready mapping (a running job: not finished, not erased)."""
    project_url = f"{web_url}/{project.path}" if web_url else None
    started = _time(job.started_at)
    pipeline_url = f"{project_url}/-/pipelines/{job.pipeline_id}" if project_url and job.pipeline_id else None
    user_url = f"{web_url}/{job.username}" if web_url and job.username else None
    commit: dict[str, Any] | None = None
    if job.sha:
        commit = {
            "id": job.sha, "short_id": job.sha[:8], "title": None, "message": None, "created_at": None,
            "parent_ids": None, "author_name": None, "author_email": None, "authored_date": None,
            "committer_name": None, "committer_email": None, "committed_date": None, "trailers": {},
            "extended_trailers": {}, "web_url": f"{project_url}/-/commit/{job.sha}" if project_url else None,
        }  # fmt: skip
    return {
        "id": job.id,
        "status": job.status,
        "stage": _or_none(job.stage),
        "name": job.name,
        "ref": job.ref,
        "tag": job.tag,
        "coverage": None,
        "allow_failure": job.allow_failure,
        "created_at": started,  # jobgate learns of a job when it starts: no queue time
        "started_at": started,
        "finished_at": None,
        "erased_at": None,
        "duration": round(now - job.started_at, 3) if job.started_at is not None else None,
        "queued_duration": None,
        "user": {
            "id": job.user_id,
            "username": _or_none(job.username),
            "name": _or_none(job.user_name),
            "state": "active",
            "locked": False,
            "avatar_url": None,
            "web_url": user_url,
            "created_at": None,
        },
        "commit": commit,
        "pipeline": {
            "id": job.pipeline_id,
            "iid": job.pipeline_iid,
            "project_id": job.project_id,
            "sha": _or_none(job.sha),
            "ref": job.ref,
            "status": "running",
            "source": _or_none(job.pipeline_source),
            "created_at": None,
            "updated_at": None,
            "web_url": pipeline_url,
        },
        "web_url": f"{project_url}/-/jobs/{job.id}" if project_url else None,
        "project": {
            "ci_job_token_scope_enabled": project.outbound_limit,
            # jobgate's additions (not in GitLab's entity), kept for its earlier clients
            "id": project.id,
            "path_with_namespace": project.path,
        },
        "project_id": job.project_id,  # a jobgate addition too
        "archived": False,
        "artifacts_file": None,
        "artifacts": [],
        "artifacts_expire_at": None,
        "tag_list": [],
        "runner": None,
        "runner_manager": None,
    }


def job_entity(decision: Decision, web_url: str | None, now: float) -> web.Response:
    """The answer to `GET /api/v4/job` for an allowed decision."""
    job, project = decision.job, decision.source
    assert job is not None and project is not None
    return web.json_response(render_job(job, project, web_url, now))
