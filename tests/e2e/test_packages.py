"""Real package managers through jobgate: pip against pypiserver, npm against verdaccio."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import NpmRegistry, PypiServer, npm
from .serving import JobgateProcess

PYPI = "/api/v4/projects/1/packages/pypi"


def pip_download(index: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "download", "--no-deps",
         "--no-cache-dir", "--index-url", index, "jgdemo==1.0", "-d", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_pip_installs_through_jobgate_with_the_job_token(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with PypiServer(tmp_path) as pypi:
        pypi.add_wheel("jgdemo", "1.0", b"VALUE = 42\n")
        upstream_auth = base64.b64encode(f"{pypi.user}:{pypi.password}".encode()).decode()
        gw = JobgateProcess.shipped(tmp_path, redis_server.url, {})
        gw.config["upstreams"] = {  # the setting these tests are about
            **gw.config["upstreams"],
            "packages": {
                "url": pypi.url,
                "path_rewrite": {f"^{PYPI}": ""},
                # pypiserver builds its links from X-Forwarded-Host, path prefix included
                "headers": {"Authorization": f"Basic {upstream_auth}",
                            "X-Forwarded-Host": f"127.0.0.1:{gw.port}{PYPI}"},
            }
        }  # fmt: skip
        with gw:
            gw.admin("project", "set", "1", "--path", "py/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "20")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            index = f"http://gitlab-ci-token:{token}@127.0.0.1:{gw.port}{PYPI}/simple/"

            got = pip_download(index, tmp_path / "dl")
            assert got.returncode == 0, got.stderr
            wheel = tmp_path / "dl" / "jgdemo-1.0-py3-none-any.whl"
            assert wheel.read_bytes() == (pypi.root / "packages" / wheel.name).read_bytes()

            anonymous = pip_download(f"http://127.0.0.1:{gw.port}{PYPI}/simple/", tmp_path / "anon")
            assert anonymous.returncode != 0
            gw.admin("job", "finish", "100")
            after = pip_download(index, tmp_path / "after")
            assert after.returncode != 0
            log = gw.log()
            assert token not in log
            assert '"route":"packages_read","status":200,"reason":"same_project"' in log
            assert '"status":404,"reason":"job_not_running"' in log


NPM = "/api/v4/projects/1/packages/npm/"


def test_npm_installs_through_jobgate_with_a_bearer_job_token(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    with NpmRegistry(tmp_path, url_prefix=NPM) as registry:
        upstream_token = registry.add_user("uploader", "npm-password")
        registry.publish(upstream_token, "jgnpm", "1.0.0", "module.exports = 42;\n")
        gw = JobgateProcess.shipped(tmp_path, redis_server.url, {})
        gw.config["upstreams"] = {  # the setting these tests are about
            **gw.config["upstreams"],
            "packages": {
                "url": registry.url,
                "path_rewrite": {f"^{NPM}": "/"},
                "preserve_host": True,  # verdaccio builds tarball URLs from Host + url_prefix
                "headers": {"Authorization": f"Bearer {upstream_token}"},
            },
        }
        with gw:
            gw.admin("project", "set", "1", "--path", "js/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "20")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            via_gateway = f"http://127.0.0.1:{gw.port}{NPM}"
            (tmp_path / "consumer").mkdir()
            installed = npm(tmp_path, via_gateway, token, "install", "--no-audit", "--no-fund", "jgnpm@1.0.0",
                            cwd=tmp_path / "consumer")  # fmt: skip
            assert installed.returncode == 0, installed.stderr
            module = tmp_path / "consumer/node_modules/jgnpm/index.js"
            assert module.read_text() == "module.exports = 42;\n"

            gw.admin("job", "finish", "100")
            (tmp_path / "after").mkdir()
            after = npm(tmp_path, via_gateway, token, "view", "jgnpm", "version", cwd=tmp_path / "after")
            assert after.returncode != 0
            log = gw.log()
            assert token not in log and upstream_token not in log
            assert '"status":404,"reason":"job_not_running"' in log
