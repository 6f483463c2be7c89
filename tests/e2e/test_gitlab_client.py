"""python-gitlab, a client no one here wrote, manages a real `jobgate serve` through GitLab's
job token scope REST API; after every change a real job-token request shows it in force."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import gitlab
import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from .serving import JobgateProcess, static_files

FILE = "/api/v4/projects/2/packages/generic/tool/1.0/tool.bin"


@pytest.fixture
def packages(tmp_path: Path) -> Iterator[str]:
    """A static package server holding project 2's generic package."""
    with static_files(tmp_path, {FILE: "project 2's tool\n"}) as url:
        yield url


def admin_put(url: str, body: dict[str, str]) -> None:
    """A write through jobgate's own admin API (the shipped config's admin token)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT", headers={
        "Authorization": "Bearer e2e-scope-admin", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10):
        pass


def status(gw: JobgateProcess, token: str) -> int:
    """A real job-token request through the gateway to project 2's package."""
    request = urllib.request.Request(gw.url + FILE, headers={"JOB-TOKEN": token})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.read() == b"project 2's tool\n"
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_python_gitlab_drives_the_job_token_scope(
    tmp_path: Path, redis_server: RedisProcess, store: Store, packages: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBGATE_ADMIN_TOKEN", "e2e-scope-admin")  # the shipped config reads it
    with JobgateProcess.shipped(tmp_path, redis_server.url, {"packages": packages}) as gw:
        gw.admin("project", "set", "1", "--path", "group/app", "--visibility", "private")
        gw.admin("project", "set", "2", "--path", "team/lib", "--visibility", "private")
        gw.admin("member", "set", "2", "7", "20")
        gw.admin("group", "set", "10", "--path", "group")
        token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
        assert status(gw, token) == 404  # project 2 limits inbound access; project 1 is not listed

        gl = gitlab.Gitlab(f"http://127.0.0.1:{gw.admin_port}", private_token="e2e-scope-admin")
        assert gl.projects.get(2).path_with_namespace == "team/lib"
        scope = gl.projects.get(2, lazy=True).job_token_scope.get()
        assert scope.inbound_enabled is True and scope.outbound_enabled is False

        scope.enabled = False
        scope.save()
        assert status(gw, token) == 200
        scope.refresh()
        assert scope.inbound_enabled is False
        scope.enabled = True
        scope.save()
        assert status(gw, token) == 404

        scope.allowlist.create({"target_project_id": 1})
        assert status(gw, token) == 200
        assert [p.id for p in scope.allowlist.list()] == [1]
        scope.allowlist.delete(1)
        assert status(gw, token) == 404
        assert scope.allowlist.list() == []

        scope.groups_allowlist.create({"target_group_id": 10})
        assert status(gw, token) == 200
        assert [(g.id, g.name) for g in scope.groups_allowlist.list()] == [(10, "group")]
        gw.admin("group", "set", "10", "--path", "moved")  # group/app is no longer in it
        assert status(gw, token) == 404
        gw.admin("project", "set", "1", "--path", "moved/app")  # now it is again
        assert status(gw, token) == 200
        assert [(g.id, g.name) for g in scope.groups_allowlist.list()] == [(10, "moved")]
        scope.groups_allowlist.delete(10)
        assert status(gw, token) == 404
        assert scope.groups_allowlist.list() == []

        admin_api = f"http://127.0.0.1:{gw.admin_port}/admin/v1/projects"
        for pid in range(100, 123):  # 23 entries: two pages of python-gitlab's 20, through Link
            admin_put(f"{admin_api}/{pid}", {"path": f"many/p{pid}", "visibility": "private"})
            admin_put(f"{admin_api}/2/inbound/{pid}", {})
        pages = scope.allowlist.list(iterator=True)
        assert pages.total == 23 and pages.total_pages == 2
        assert [p.id for p in pages] == list(range(100, 123))
        assert len(scope.allowlist.list(get_all=True)) == 23

        with pytest.raises(gitlab.GitlabAuthenticationError):
            gitlab.Gitlab(f"http://127.0.0.1:{gw.admin_port}", private_token="wrong").projects.get(2)
