"""Real `git clone`/`fetch`/`push` through jobgate in front of git-http-backend."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import GitHttpServer, git, git_ok
from .serving import JobgateProcess

GIT_404 = (
    "remote: The project you were looking for could not be found or you don't have permission to view it."
)


@pytest.fixture
def setup(tmp_path: Path, redis_server: RedisProcess, store: Store) -> Iterator[tuple[JobgateProcess, str]]:
    with GitHttpServer(tmp_path) as server:
        server.create_repo("group/app.git", {"README.md": b"app\n", "src/main.py": b"print('hi')\n"})
        server.create_repo("other/secret.git", {"SECRET": b"s\n"})
        server.create_repo("pub/lib.git", {"LIB": b"lib\n"})
        with JobgateProcess.shipped(tmp_path, redis_server.url, {"git": server.url}) as gw:
            gw.admin("project", "set", "1", "--path", "group/app", "--visibility", "private")
            gw.admin("project", "set", "2", "--path", "other/secret", "--visibility", "private")
            gw.admin("project", "set", "3", "--path", "pub/lib", "--visibility", "public")
            gw.admin("member", "set", "1", "7", "30")
            gw.admin("member", "set", "2", "7", "20")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            yield gw, token


def url(gw: JobgateProcess, token: str, repo: str) -> str:
    return f"http://gitlab-ci-token:{token}@127.0.0.1:{gw.port}/{repo}"


def test_clone_fetch_and_denials_like_gitlab(setup: tuple[JobgateProcess, str], tmp_path: Path) -> None:
    gw, token = setup
    clone = git("clone", "-q", url(gw, token, "group/app.git"), str(tmp_path / "app"), cwd=tmp_path)
    assert clone.returncode == 0, clone.stderr
    assert (tmp_path / "app/README.md").read_text() == "app\n"
    assert (tmp_path / "app/src/main.py").read_text() == "print('hi')\n"
    fetch = git("fetch", "-q", "origin", cwd=tmp_path / "app")
    assert fetch.returncode == 0, fetch.stderr

    public = git("clone", "-q", url(gw, token, "pub/lib.git"), str(tmp_path / "lib"), cwd=tmp_path)
    assert public.returncode == 0, public.stderr

    secret = git("clone", "-q", url(gw, token, "other/secret.git"), str(tmp_path / "s"), cwd=tmp_path)
    missing = git("clone", "-q", url(gw, token, "no/such.git"), str(tmp_path / "m"), cwd=tmp_path)
    assert secret.returncode != 0 and missing.returncode != 0
    assert GIT_404 in secret.stderr
    assert secret.stderr.replace("other/secret", "X") == missing.stderr.replace("no/such", "X")

    (tmp_path / "app/NEW").write_text("new\n")
    assert git("add", "NEW", cwd=tmp_path / "app").returncode == 0
    assert git("commit", "-qm", "new", cwd=tmp_path / "app").returncode == 0
    push = git("push", "-q", "origin", "main", cwd=tmp_path / "app")
    assert push.returncode != 0
    assert GIT_404 in push.stderr

    gw.admin("job", "finish", "100", "--status", "success")
    after = git("clone", "-q", url(gw, token, "group/app.git"), str(tmp_path / "after"), cwd=tmp_path)
    assert after.returncode != 0
    assert GIT_404 in after.stderr
    assert token not in gw.log()


def test_git_is_challenged_for_credentials(setup: tuple[JobgateProcess, str], tmp_path: Path) -> None:
    gw, _ = setup
    anonymous = git(
        "clone", "-q", f"http://127.0.0.1:{gw.port}/group/app.git", str(tmp_path / "a"), cwd=tmp_path
    )
    assert anonymous.returncode != 0
    assert "could not read Username" in anonymous.stderr  # git saw the 401 challenge and asked


def push_a_commit(gw: JobgateProcess, token: str, repo: str, work: Path) -> subprocess.CompletedProcess[str]:
    """Clone `repo` with the token (or start from an empty clone when that is refused), commit, push."""
    if git("clone", "-q", url(gw, token, repo), str(work), cwd=work.parent).returncode != 0:
        git_ok("init", "-q", "-b", "main", str(work))
        git_ok("remote", "add", "origin", url(gw, token, repo), cwd=work)
    (work / "PUSHED").write_text(f"{work.name}\n")
    git_ok("add", "PUSHED", cwd=work)
    git_ok("commit", "-qm", f"push from {work.name}", cwd=work)
    return git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)


def test_git_push_with_a_job_token_by_opt_in(setup: tuple[JobgateProcess, str], tmp_path: Path) -> None:
    gw, token = setup  # job 100 of user 7, a developer of group/app (1) and a reporter of other/secret (2)
    off = push_a_commit(gw, token, "group/app.git", tmp_path / "off")
    assert off.returncode != 0 and GIT_404 in off.stderr  # the default: off

    gw.admin("project", "set", "1", "--push-repository", "on")
    own = push_a_commit(gw, token, "group/app.git", tmp_path / "own")
    assert own.returncode == 0, own.stderr
    check = git("clone", "-q", url(gw, token, "group/app.git"), str(tmp_path / "check"), cwd=tmp_path)
    assert check.returncode == 0 and (tmp_path / "check/PUSHED").read_text() == "own\n"

    # another project, opted in, user 7 a developer there, 1 on its inbound list: own project only
    gw.admin("project", "set", "2", "--push-repository", "on")
    gw.admin("member", "set", "2", "7", "30")
    gw.admin("inbound", "add", "2", "1")
    other = push_a_commit(gw, token, "other/secret.git", tmp_path / "other")
    assert other.returncode != 0 and GIT_404 in other.stderr

    gw.admin("member", "set", "1", "8", "20")  # a reporter's job in the opted-in project
    reporter_token = gw.admin("job", "start", "--id", "101", "--project", "1", "--user", "8")
    reporter = push_a_commit(gw, reporter_token, "group/app.git", tmp_path / "reporter")
    assert reporter.returncode != 0 and GIT_404 in reporter.stderr

    gw.admin("project", "set", "1", "--push-repository", "off")
    again = push_a_commit(gw, token, "group/app.git", tmp_path / "again")
    assert again.returncode != 0 and GIT_404 in again.stderr
    assert token not in gw.log() and reporter_token not in gw.log()
