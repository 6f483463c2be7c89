"""Real upstream servers for end-to-end tests, each on a free loopback port.

Every helper is a context manager that starts the real server with all its files under
the directory it is given, waits until it answers (or fails with the tail of its logs)
and stops it, its children too. A missing binary fails with the line that installs it.
`make peers` (mk/peers.mk) installs all of them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Self

NODE_DIR = Path(__file__).parent / "peers_node"
GIT_HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(binary: str, package: str) -> str:
    """The path of `binary`, or an error naming the Debian package to install."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path is None and Path(binary).is_absolute() and os.access(binary, os.X_OK):
        path = binary
    if path is None:
        raise RuntimeError(f"{binary} not found: apt-get install -y {package} (make test installs it)")
    return path


def require_module(module: str, requirement: str) -> None:
    """Fail unless `module` imports in this Python, naming the pip requirement to install."""
    if importlib.util.find_spec(module) is None:
        raise RuntimeError(
            f"{module} not found in {sys.executable}: pip install '{requirement}' (make test installs it)"
        )


def _tail(path: Path, size: int = 3000) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")


class ServerProcess:
    """A server subprocess with its files under `root`, ready when `probe` answers over HTTP."""

    name = "server"
    probe = "/"

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL, http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The argv that runs the server in the foreground (writes its config first)."""
        raise NotImplementedError  # pragma: no cover - each server names its command

    def env(self) -> dict[str, str] | None:
        """The server's environment (None: inherit this process's)."""
        return None

    def logs(self) -> list[Path]:
        """Every log file worth showing when the server fails to start."""
        return [self.log_path]

    def answers(self) -> bool:
        """Whether the server answers `probe` (any HTTP status counts)."""
        try:
            urllib.request.urlopen(self.url + self.probe, timeout=1).close()
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until it answers; on failure stop it and raise with its log."""
        command = self.command()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.root, env=self.env(), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"{self.name} exited with status {code} at start:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.url}{self.probe} in {timeout:g} s:\n"
                           f"{self.log_tail()}")  # fmt: skip

    def log_tail(self) -> str:
        """The last lines of each of the server's logs."""
        return "\n".join(f"--- {path.name}\n{_tail(path)}" for path in self.logs() if path.exists())

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after 10 s; idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        group = process.pid  # start_new_session: the server leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)  # the leader if stuck, and children it left behind
        process.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real git with no system or user config and no prompts; the completed process."""
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(cwd or "/tmp"),
           "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "PATH": "/usr/bin:/bin",
           "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}  # fmt: skip
    return subprocess.run([require("git", "git"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def git_ok(*args: str, cwd: Path | None = None) -> str:
    """Run git as `git()` does; its stdout, or an error with its stderr."""
    result = git(*args, cwd=cwd)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


class GitHttpServer(ServerProcess):
    """lighttpd running git-http-backend over GIT_PROJECT_ROOT (pushes allowed by the backend)."""

    name = "git"

    def logs(self) -> list[Path]:
        return [self.log_path, self.root / "error.log"]

    def command(self) -> list[str]:
        lighttpd = require("lighttpd", "lighttpd")
        backend = require(GIT_HTTP_BACKEND, "git")
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
server.upload-dirs = ("{self.root}/tmp")
server.max-request-size = 0
alias.url = ("/" => "{backend}/")
cgi.assign = ("" => "")
setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1",
                          "REMOTE_USER" => "ci")
"""
        )
        (self.root / "tmp").mkdir(exist_ok=True)
        return [lighttpd, "-D", "-f", str(conf)]

    def create_repo(self, path: str, files: dict[str, bytes]) -> Path:
        """A bare repository at `path` (e.g. group/app.git) with one commit of `files` on main."""
        bare = self.root / "repos" / path
        bare.parent.mkdir(parents=True, exist_ok=True)
        git_ok("init", "-q", "--bare", "-b", "main", str(bare))
        work = self.root / "work" / path
        work.parent.mkdir(parents=True, exist_ok=True)
        git_ok("clone", "-q", f"file://{bare}", str(work), cwd=work.parent)
        for name, content in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(content)
        for step in (("symbolic-ref", "HEAD", "refs/heads/main"), ("add", "-A"), ("commit", "-qm", "initial"),
                     ("push", "-q", "origin", "main")):  # fmt: skip
            git_ok(*step, cwd=work)
        return bare


class RegistryServer(ServerProcess):
    """Debian's docker-registry (CNCF distribution 2.8), filesystem storage, no auth of its own."""

    name = "registry"
    probe = "/v2/"

    def __init__(self, root: Path, token_auth: dict[str, str] | None = None) -> None:
        super().__init__(root)
        self.token_auth = token_auth  # `auth: {token: ...}`: it verifies registry tokens itself

    def command(self) -> list[str]:
        binary = require("docker-registry", "docker-registry")
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
                    **({"auth": {"token": self.token_auth}} if self.token_auth else {}),
                }
            )
        )  # JSON is YAML
        return [binary, "serve", str(conf)]


def skopeo(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """skopeo with a private policy and auth file under `root`, so no machine config is used."""
    binary = require("skopeo", "skopeo")
    root.mkdir(parents=True, exist_ok=True)
    policy = root / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    auth = root / "auth.json"
    if not auth.exists():
        auth.write_text('{"auths": {}}')
    return subprocess.run(
        [binary, "--policy", str(policy), *args],
        env={"PATH": "/usr/bin:/bin", "REGISTRY_AUTH_FILE": str(auth), "HOME": str(root),
             "XDG_RUNTIME_DIR": str(root), "TMPDIR": str(root)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def write_wheel(directory: Path, name: str, version: str, module_source: bytes) -> Path:
    """Write a minimal valid pure-Python wheel `name-version` holding `name/__init__.py`."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": module_source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: jobgate-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
        f"{len(data)}"
        for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


class PypiServer(ServerProcess):
    """pypiserver with an htpasswd user; uploads, downloads and listings need that user's password."""

    name = "pypi"
    probe = "/health"
    user, password = "uploader", "pypi-password"

    def command(self) -> list[str]:
        require_module("pypiserver", "pypiserver[passlib]")
        require_module("passlib", "pypiserver[passlib]")
        from passlib.apache import HtpasswdFile  # type: ignore[import-untyped]

        htpasswd = HtpasswdFile(str(self.root / "htpasswd"), new=True, default_scheme="apr_md5_crypt")
        htpasswd.set_password(self.user, self.password)
        htpasswd.save()
        (self.root / "packages").mkdir(exist_ok=True)
        return [sys.executable, "-m", "pypiserver", "run", "--host", "127.0.0.1", "--port", str(self.port),
                "--passwords", str(self.root / "htpasswd"), "--authenticate", "update,download,list",
                str(self.root / "packages")]  # fmt: skip

    @property
    def index_url(self) -> str:
        """The simple index URL with the user's credentials in it."""
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}/simple/"

    def add_wheel(self, name: str, version: str, module_source: bytes) -> Path:
        """Serve a minimal pure-Python wheel `name-version` holding `name/__init__.py`."""
        return write_wheel(self.root / "packages", name, version, module_source)

    def add_package(self, name: str, version: str) -> Path:
        """Serve a minimal wheel `name-version` whose module holds VERSION = `version`."""
        return self.add_wheel(name, version, f"VERSION = {version!r}\n".encode())


def pip_download(index_url: str, requirement: str, dest: Path) -> subprocess.CompletedProcess[str]:
    """`pip --isolated download --no-deps` of one requirement from `index_url` only."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(dest.parent),
           "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "download", "--no-deps", "--no-cache-dir",
         "--no-input", "--index-url", index_url, requirement, "-d", str(dest)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


class NpmRegistry(ServerProcess):
    """verdaccio (tests/peers_node, installed by make) with htpasswd auth and no uplinks."""

    name = "npm"
    probe = "/-/ping"

    def __init__(self, root: Path, url_prefix: str = "/") -> None:
        super().__init__(root)
        self.url_prefix = url_prefix

    def command(self) -> list[str]:
        node = require("node", "nodejs")
        binary = NODE_DIR / "node_modules" / "verdaccio" / "bin" / "verdaccio"
        if not binary.exists():
            raise RuntimeError(f"verdaccio not found: npm ci --prefix {NODE_DIR} (make test installs it)")
        config = {
            "storage": str(self.root / "storage"),
            "plugins": str(self.root / "plugins"),
            "auth": {"htpasswd": {"file": str(self.root / "htpasswd"), "max_users": 100}},
            "uplinks": {},
            "packages": {"**": {"access": "$authenticated", "publish": "$authenticated"}},
            "url_prefix": self.url_prefix,
            "log": {"type": "stdout", "format": "pretty", "level": "warn"},
            "listen": f"127.0.0.1:{self.port}",
            "publish": {"allow_offline": True},
        }
        (self.root / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        return [node, str(binary), "--config", str(self.root / "config.yaml")]

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root),
                "NODE_ENV": "production"}  # fmt: skip

    def add_user(self, name: str, password: str) -> str:
        """Create a user (PUT /-/user/org.couchdb.user:NAME); the bearer token verdaccio issues."""
        request = urllib.request.Request(
            f"{self.url}/-/user/org.couchdb.user:{name}",
            data=json.dumps({"name": name, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(json.load(response)["token"])

    def publish(self, token: str, name: str, version: str, index_js: str) -> None:
        """`npm publish` a package `name@version` straight to verdaccio with `token`."""
        package = self.root / "src" / f"{name}-{version}"
        package.mkdir(parents=True)
        (package / "package.json").write_text(
            json.dumps({"name": name, "version": version, "main": "index.js", "license": "MIT"})
        )
        (package / "index.js").write_text(index_js)
        result = npm(self.root, f"{self.url}/", token, "publish", cwd=package)
        if result.returncode != 0:
            raise RuntimeError(f"npm publish {name}@{version} failed: {result.stdout}{result.stderr}")


def npm(
    root: Path, registry: str, token: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The real npm client with a private npmrc under `root`: `registry` and a bearer `_authToken`."""
    binary = require("npm", "npm")
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{registry}\0{token}".encode()).hexdigest()[:16]
    npmrc = root / f"npmrc-{key}"
    host_path = registry.split("://", 1)[1]
    lines = [f"registry={registry}"] + ([f"//{host_path}:_authToken={token}"] if token else [])
    npmrc.write_text("\n".join(lines) + "\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root),
           "NPM_CONFIG_USERCONFIG": str(npmrc), "NPM_CONFIG_GLOBALCONFIG": str(root / "npmrc-global"),
           "NPM_CONFIG_CACHE": str(root / "npm-cache"), "NPM_CONFIG_UPDATE_NOTIFIER": "false",
           "NPM_CONFIG_AUDIT": "false", "NPM_CONFIG_FUND": "false"}  # fmt: skip
    return subprocess.run([binary, *args], cwd=cwd or root, env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip


class NginxServer(ServerProcess):
    """nginx (nginx-light) with its own pid, logs and temp paths; `server_body` is one server{} body.

    `server_body` may use `{port}` for the port it listens on (127.0.0.1, given by the helper).
    """

    name = "nginx"
    probe = "/-/nginx-up"

    def __init__(self, root: Path, server_body: str) -> None:
        super().__init__(root)
        self.server_body = server_body

    def logs(self) -> list[Path]:
        return [self.log_path, self.root / "error.log"]

    def command(self) -> list[str]:
        nginx = require("nginx", "nginx-light")
        temp = self.root / "tmp"
        temp.mkdir(exist_ok=True)
        paths = "\n".join(
            f"  {kind}_temp_path {temp}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # As root, workers would drop to nobody and get 403 on files under a 0700 pytest tmp_path.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"""daemon off;
{user}worker_processes 1;
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
        return [nginx, "-p", str(self.root), "-e", f"{self.root}/error.log", "-c", str(conf)]
