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


class PypiServer(ServerProcess):
    """pypiserver with an htpasswd user; downloads and listings need that user's password."""

    name = "pypi"
    probe = "/health"
    user, password = "uploader", "pypi-password"

    def command(self) -> list[str]:
        import sys

        from passlib.apache import HtpasswdFile  # pypiserver[passlib], a test dependency

        htpasswd = HtpasswdFile(str(self.root / "htpasswd"), new=True)
        htpasswd.set_password(self.user, self.password)
        htpasswd.save()
        (self.root / "packages").mkdir(exist_ok=True)
        return [sys.executable, "-m", "pypiserver", "run", "--host", "127.0.0.1", "--port", str(self.port),
                "--passwords", str(self.root / "htpasswd"), "--authenticate", "update,download,list",
                str(self.root / "packages")]  # fmt: skip

    def add_wheel(self, name: str, version: str, module_source: bytes) -> Path:
        """Write a minimal pure-Python wheel `name-version` holding `name/__init__.py`."""
        import base64
        import hashlib
        import zipfile

        info = f"{name}-{version}.dist-info"
        files = {
            f"{name}/__init__.py": module_source,
            f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
            f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: jobgate-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        }
        record = [
            f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
            for path, data in files.items()
        ]
        files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
        wheel = self.root / "packages" / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for path, data in files.items():
                archive.writestr(path, data)
        return wheel


NODE_DIR = Path(__file__).parent / "peers_node"


class NpmRegistry(ServerProcess):
    """verdaccio (tests/peers_node, installed by make) with htpasswd auth and no uplinks."""

    name = "npm"
    probe = "/-/ping"

    def __init__(self, root: Path, url_prefix: str = "/") -> None:
        super().__init__(root)
        self.url_prefix = url_prefix

    def command(self) -> list[str]:
        binary = NODE_DIR / "node_modules" / ".bin" / "verdaccio"
        if not binary.exists():
            raise RuntimeError(f"verdaccio not found: npm ci --prefix {NODE_DIR} (make test installs it)")
        config = {
            "storage": str(self.root / "storage"),
            "auth": {"htpasswd": {"file": str(self.root / "htpasswd"), "max_users": 10}},
            "uplinks": {},
            "packages": {"**": {"access": "$authenticated", "publish": "$authenticated"}},
            "url_prefix": self.url_prefix,
            "log": {"type": "stdout", "format": "pretty", "level": "warn"},
            "listen": f"127.0.0.1:{self.port}",
        }
        (self.root / "config.yaml").write_text(json.dumps(config))
        return [require("node", "nodejs"), str(binary), "--config", str(self.root / "config.yaml")]

    def add_user(self, name: str, password: str) -> str:
        """Create a user; the bearer token verdaccio issues for it."""
        request = urllib.request.Request(
            f"{self.url}/-/user/org.couchdb.user:{name}",
            data=json.dumps({"name": name, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.load(response)["token"])

    def publish(self, token: str, name: str, version: str, index_js: str) -> None:
        """`npm publish` a package straight to verdaccio."""
        package = self.root / "src" / name
        package.mkdir(parents=True)
        (package / "package.json").write_text(
            json.dumps({"name": name, "version": version, "main": "index.js"})
        )
        (package / "index.js").write_text(index_js)
        result = npm(self.root, f"{self.url}/", token, "publish", cwd=package)
        assert result.returncode == 0, result.stderr


def npm(
    root: Path, registry: str, token: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real npm client with a private npmrc: `registry` and a bearer `_authToken`."""
    npmrc = root / f"npmrc-{abs(hash((registry, token)))}"
    host_path = registry.split("://", 1)[1]
    npmrc.write_text(f"registry={registry}\n//{host_path}:_authToken={token}\n")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "NPM_CONFIG_USERCONFIG": str(npmrc),
           "NPM_CONFIG_CACHE": str(root / "npm-cache"), "NPM_CONFIG_UPDATE_NOTIFIER": "false"}  # fmt: skip
    return subprocess.run([require("npm", "npm"), *args], cwd=cwd or root, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


class NginxServer(ServerProcess):
    """nginx (nginx-light) with its own pid, logs and temp paths; `server_body` is one server{} body.

    `server_body` may use `{port}` for the port it listens on.
    """

    name = "nginx"
    probe = "/-/nginx-up"

    def __init__(self, root: Path, server_body: str) -> None:
        super().__init__(root)
        self.server_body = server_body

    def command(self) -> list[str]:
        temp = self.root / "tmp"
        temp.mkdir(exist_ok=True)
        paths = "\n".join(
            f"  {kind}_temp_path {temp}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"""daemon off;
worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
{paths}
  server {{
    listen 127.0.0.1:{self.port};
    location = /-/nginx-up {{ return 200 "up"; }}
{self.server_body.replace("{port}", str(self.port))}
  }}
}}
"""
        )
        return [require("nginx", "nginx-light"), "-e", f"{self.root}/error.log", "-c", str(conf)]
