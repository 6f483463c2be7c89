"""deploy/git-lighttpd.conf in a real lighttpd (only its port and paths changed), cloned from with git."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import GitHttpServer, git, require
from .serving import JobgateProcess

SHIPPED = Path(__file__).parent.parent.parent / "deploy" / "git-lighttpd.conf"


class ShippedGitServer(GitHttpServer):
    """lighttpd started with the shipped config: port, bind address and repository root changed."""

    name = "shipped-git"

    def command(self) -> list[str]:
        lighttpd = require("lighttpd", "lighttpd")
        repos = self.root / "repos"
        repos.mkdir(exist_ok=True)
        conf = SHIPPED.read_text()
        replacements = [
            (r"^server\.port = \d+$", f"server.port = {self.port}"),
            (r'^server\.bind = "[^"]*"$', 'server.bind = "127.0.0.1"'),
        ]
        for pattern, replacement in replacements:
            conf, count = re.subn(pattern, replacement, conf, flags=re.M)
            assert count == 1, f"{SHIPPED}: no line matching {pattern}"
        assert conf.count('"/srv/git"') == 2
        conf = conf.replace('"/srv/git"', f'"{repos}"')
        (self.root / "lighttpd.conf").write_text(conf)
        return [lighttpd, "-D", "-f", str(self.root / "lighttpd.conf")]


def test_the_shipped_lighttpd_config_serves_git_clones(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with ShippedGitServer(tmp_path) as server:
        server.create_repo("group/app.git", {"README.md": b"app\n"})
        direct = git("clone", "-q", f"{server.url}/group/app.git", str(tmp_path / "direct"), cwd=tmp_path)
        assert direct.returncode == 0, direct.stderr + server.log_tail()
        assert (tmp_path / "direct/README.md").read_text() == "app\n"
        with JobgateProcess(tmp_path, redis_server.url, {"git": server.url}) as gw:
            gw.admin("project", "set", "1", "--path", "group/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "30")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            url = f"http://gitlab-ci-token:{token}@127.0.0.1:{gw.port}/group/app.git"
            cloned = git("clone", "-q", url, str(tmp_path / "via"), cwd=tmp_path)
            assert cloned.returncode == 0, cloned.stderr
            assert (tmp_path / "via/README.md").read_text() == "app\n"
