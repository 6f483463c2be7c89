"""The README's pip example, run as written (only addresses and ports changed): pypiserver started
with the README's command, jobgate with the README's `packages` upstream, pip with its command."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..peers import ServerProcess, require_module, write_wheel
from .serving import JobgateProcess

README = Path(__file__).parent.parent.parent / "README.md"
VENV_BIN = str(Path(sys.executable).parent)  # pip and pypi-server, as `make test` installs them
USER, PASSWORD = "uploader", "pypi-password"


def pip_section() -> tuple[str, str, str]:
    """The README's pypiserver command, `packages` upstream config and pip command."""
    text = README.read_text()
    section = text.split("### pip through jobgate to pypiserver", 1)[1].split("\n#", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    assert [lang for lang, _ in blocks] == ["sh", "yaml", "sh"], blocks
    (server, config, pip) = (body.strip() for _, body in blocks)
    return server, config, pip


class ReadmePypiServer(ServerProcess):
    """pypiserver started by the README's command line (its port changed) in a directory
    holding `htpasswd` and `packages/`."""

    name = "readme-pypi"
    probe = "/health"

    def command(self) -> list[str]:
        require_module("passlib", "pypiserver[passlib]")
        from passlib.apache import HtpasswdFile  # type: ignore[import-untyped]

        htpasswd = HtpasswdFile(str(self.root / "htpasswd"), new=True, default_scheme="apr_md5_crypt")
        htpasswd.set_password(USER, PASSWORD)
        htpasswd.save()
        (self.root / "packages").mkdir(exist_ok=True)
        line, _, _ = pip_section()
        assert line.count("--port 9001") == 1 and line.count("127.0.0.1") == 1
        return ["bash", "-c", line.replace("--port 9001", f"--port {self.port}")]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def run_pip(command: str, token: str, target: Path) -> subprocess.CompletedProcess[str]:
    """The README's pip line in bash with CI_JOB_TOKEN set. The environment keeps the machine's
    pip config out (PIP_CONFIG_FILE) and installs into `target` (PIP_TARGET), not into the venv."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(target.parent), "CI_JOB_TOKEN": token,
           "PIP_CONFIG_FILE": os.devnull, "PIP_TARGET": str(target), "PIP_NO_CACHE_DIR": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}  # fmt: skip
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)


def test_every_pip_line_in_the_readme_is_the_tested_one() -> None:
    lines = [line.strip() for line in README.read_text().splitlines() if line.strip().startswith("pip ")]
    assert lines and set(lines) == {pip_section()[2]}


def test_readme_pip_through_jobgate_to_pypiserver(
    tmp_path: Path, redis_server: RedisProcess, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config_block, pip = pip_section()
    assert pip.count("jobgate:8080") == 1 and config_block.count("jobgate:8080") == 1
    with ReadmePypiServer(tmp_path) as pypi:
        write_wheel(pypi.root / "packages", "pkg", "1.0", b"VALUE = 42\n")
        gw = JobgateProcess(tmp_path, redis_server.url, {}, workers=None)  # `make run`: default workers
        here = f"127.0.0.1:{gw.port}"
        assert config_block.count("127.0.0.1:9001") == 1
        config = yaml.safe_load(config_block.replace("127.0.0.1:9001", f"127.0.0.1:{pypi.port}")
                                .replace("jobgate:8080", here))  # fmt: skip
        gw.config["upstreams"] = config["upstreams"]
        monkeypatch.setenv("PYPI_CREDENTIALS", base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        with gw:
            gw.admin("project", "set", "1", "--path", "py/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "20")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            command = pip.replace("jobgate:8080", here)

            installed = run_pip(command, token, tmp_path / "site")
            assert installed.returncode == 0, installed.stdout + installed.stderr
            assert (tmp_path / "site/pkg/__init__.py").read_text() == "VALUE = 42\n"

            wrong = run_pip(command, "glcbt-100_" + "0" * 40, tmp_path / "wrong")
            assert wrong.returncode != 0 and not (tmp_path / "wrong/pkg").exists()
            gw.admin("job", "finish", "100")
            after = run_pip(command, token, tmp_path / "after")
            assert after.returncode != 0 and not (tmp_path / "after/pkg").exists()

            log = gw.log()
            assert token not in log and PASSWORD not in log
            # the wheel link pypiserver wrote came back through jobgate, under the project's prefix
            wheel = '"path":"/api/v4/projects/1/packages/pypi/packages/pkg-1.0-py3-none-any.whl"'
            assert re.search(wheel + r',"route":"packages_read","status":200,"reason":"same_project"', log)
            assert '"status":404,"reason":"job_not_running"' in log
