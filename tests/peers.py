"""Real upstream servers for end-to-end tests, each on a free loopback port.

Every helper is a context manager that starts the real server, waits until it answers
and stops it (no process left behind). A missing binary fails with the install line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from gateway.devredis import free_port


def require(binary: str, package: str) -> str:
    """The path of `binary`, or an error naming the Debian package to install."""
    path = shutil.which(binary) or (binary if Path(binary).is_file() else None)
    if path is None:
        raise RuntimeError(f"{binary} not found: apt-get install -y {package} (make test installs it)")
    return path


class ServerProcess:
    """A server subprocess with its files under `root`, ready when `probe` answers."""

    name = "server"
    probe = "/"

    def __init__(self, root: Path) -> None:
        self.root = root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError  # pragma: no cover - each server names its command

    def start(self, timeout: float = 20.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                urllib.request.urlopen(self.url + self.probe, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # it answers, even if with an error status
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run git with no user config, failing loudly."""
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd or "/tmp"), "GIT_TERMINAL_PROMPT": "0",
           "PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}  # fmt: skip
    return subprocess.run([require("git", "git"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


class GitHttpServer(ServerProcess):
    """lighttpd running git-http-backend over GIT_PROJECT_ROOT (pushes allowed by the backend)."""

    name = "git"

    def command(self) -> list[str]:
        backend = require("/usr/lib/git-core/git-http-backend", "git")
        repos = self.root / "repos"
        repos.mkdir(exist_ok=True)
        conf = self.root / "lighttpd.conf"
        conf.write_text(
            f"""
server.modules = ("mod_alias", "mod_cgi", "mod_setenv")
server.document-root = "{repos}"
server.bind = "127.0.0.1"
server.port = {self.port}
server.pid-file = "{self.root}/lighttpd.pid"
server.errorlog = "{self.root}/error.log"
server.max-request-size = 0
alias.url = ("/" => "{backend}/")
cgi.assign = ("" => "")
setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1",
                          "REMOTE_USER" => "ci")
"""
        )
        return [require("lighttpd", "lighttpd"), "-D", "-f", str(conf)]

    def create_repo(self, path: str, files: dict[str, bytes]) -> Path:
        """A bare repository at `path` (e.g. group/app.git) with one commit of `files` on main."""
        bare = self.root / "repos" / path
        bare.parent.mkdir(parents=True, exist_ok=True)
        assert git("init", "-q", "--bare", "-b", "main", str(bare)).returncode == 0
        work = self.root / "work" / path
        work.mkdir(parents=True)
        assert git("init", "-q", "-b", "main", cwd=work).returncode == 0
        for name, content in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(content)
        for step in (("add", "-A"), ("commit", "-qm", "initial"), ("push", "-q", f"file://{bare}", "main")):
            result = git(*step, cwd=work)
            assert result.returncode == 0, result.stderr
        return bare


class RegistryServer(ServerProcess):
    """Debian's docker-registry (CNCF distribution), filesystem storage, no auth of its own."""

    name = "registry"
    probe = "/v2/"

    def command(self) -> list[str]:
        conf = self.root / "config.yml"
        conf.write_text(
            json.dumps(
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.root / "data")},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": f"127.0.0.1:{self.port}"},
                }
            )
        )  # JSON is YAML
        return [require("docker-registry", "docker-registry"), "serve", str(conf)]


def skopeo(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """skopeo with a private policy and auth file, so no machine config is used."""
    policy = root / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    auth = root / "auth.json"
    if not auth.exists():
        auth.write_text("{}")
    return subprocess.run(
        [require("skopeo", "skopeo"), "--policy", str(policy), *args],
        env={"PATH": "/usr/bin:/bin", "REGISTRY_AUTH_FILE": str(auth), "HOME": str(root)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
