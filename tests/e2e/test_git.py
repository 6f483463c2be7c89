"""Real `git clone`/`fetch`/`push` through jobgate in front of git-http-backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import GitHttpServer, git
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
