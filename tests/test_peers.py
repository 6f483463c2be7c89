"""Each real upstream helper, driven directly by the real client (no gateway in between)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .oci_image import write_oci_layout
from .peers import (
    GitHttpServer,
    NginxServer,
    NpmRegistry,
    PypiServer,
    RegistryServer,
    ServerProcess,
    free_port,
    git,
    git_ok,
    npm,
    pip_download,
    require,
    skopeo,
)


def alive(pid: int) -> bool:
    """Whether a process with this pid still exists (zombies count as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Pids of live processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def cmdline(path: Path) -> str:
    """A /proc/PID/cmdline's text, empty if that process is gone."""
    try:
        return path.read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def assert_stopped(server: ServerProcess, pid: int) -> None:
    """The server and every process of its group are gone, and the helper holds no process."""
    assert server.process is None
    assert not alive(pid)
    assert group_members(pid) == []


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_binary_names_the_install_line() -> None:
    with pytest.raises(RuntimeError, match=r"lighttpd-nope not found: apt-get install -y lighttpd "):
        require("lighttpd-nope", "lighttpd")


def test_missing_binary_fails_start_without_a_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match=r"lighttpd not found: apt-get install -y lighttpd"):
        GitHttpServer(tmp_path).start()
    with pytest.raises(RuntimeError, match=r"nginx not found: apt-get install -y nginx-light"):
        NginxServer(tmp_path, "").start()
    with pytest.raises(RuntimeError, match=r"docker-registry not found: apt-get install -y docker-registry"):
        RegistryServer(tmp_path).start()


def test_missing_verdaccio_names_npm_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.peers.NODE_DIR", tmp_path / "no-node")
    with pytest.raises(RuntimeError, match=r"verdaccio not found: npm ci --prefix"):
        NpmRegistry(tmp_path).start()


class Dies(ServerProcess):
    """A 'server' that prints and exits at once."""

    name = "dies"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "print('bad config on line 3'); raise SystemExit(3)"]


class Mute(ServerProcess):
    """A 'server' that never listens."""

    name = "mute"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; print('still booting', flush=True); time.sleep(60)"]


def test_start_failure_shows_the_log_tail(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*bad config on line 3"):
        Dies(tmp_path).start()


def test_start_timeout_shows_the_log_tail_and_kills(tmp_path: Path) -> None:
    server = Mute(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)did not answer .* in 1 s.*still booting"):
        server.start(timeout=1)
    assert server.process is None
    assert not any("still booting" in cmdline(p) for p in Path("/proc").glob("[0-9]*/cmdline"))


def test_git_clone_and_push_over_http(tmp_path: Path) -> None:
    files = {"README.md": b"hello\n", "src/deep/main.py": b"print('hi')\n", "bin.dat": bytes(range(256))}
    with GitHttpServer(tmp_path) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        bare = server.create_repo("group/sub/project.git", files)
        assert (bare / "HEAD").read_text().strip() == "ref: refs/heads/main"
        clone = tmp_path / "clone"
        git_ok("clone", "-q", f"{server.url}/group/sub/project.git", str(clone), cwd=tmp_path)
        assert git_ok("ls-files", cwd=clone).split() == sorted(files)
        for name, content in files.items():
            assert (clone / name).read_bytes() == content

        # A push straight to the backend is accepted: a denial through the gateway is the gateway's.
        (clone / "new.txt").write_bytes(os.urandom(2 << 20))  # past the 1 MB where naive CGI breaks
        git_ok("add", "new.txt", cwd=clone)
        git_ok("commit", "-qm", "second", cwd=clone)
        git_ok("push", "-q", "origin", "main", cwd=clone)
        pushed = git_ok("rev-parse", "HEAD", cwd=clone).strip()
        assert git_ok("--git-dir", str(bare), "rev-parse", "main").strip() == pushed

        missing = git("ls-remote", f"{server.url}/group/nope.git", cwd=tmp_path)
        assert missing.returncode != 0
        pid = server.process.pid if server.process else 0
    assert_stopped(server, pid)


def test_registry_push_and_pull_with_skopeo(tmp_path: Path) -> None:
    files = {"hello.txt": b"hello from an image\n", "etc/app.conf": b"x=1\n"}
    digest = write_oci_layout(tmp_path / "image", "v1", files)
    assert digest.startswith("sha256:")
    with RegistryServer(tmp_path) as registry:
        ref = f"docker://127.0.0.1:{registry.port}/group/project/image:v1"
        pushed = skopeo(tmp_path / "skopeo", "copy", "--dest-tls-verify=false",
                        f"oci:{tmp_path}/image:v1", ref)  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        inspected = skopeo(tmp_path / "skopeo", "inspect", "--raw", "--tls-verify=false", ref)
        assert inspected.returncode == 0, inspected.stderr
        assert json.loads(inspected.stdout)["layers"][0]["mediaType"].endswith("tar+gzip")
        digest_seen = skopeo(tmp_path / "skopeo", "inspect", "--tls-verify=false",
                             "--format", "{{.Digest}}", ref)  # fmt: skip
        assert digest_seen.stdout.strip() == digest
        pulled = skopeo(tmp_path / "skopeo", "copy", "--src-tls-verify=false", ref, f"oci:{tmp_path}/out:v1")
        assert pulled.returncode == 0, pulled.stderr
        index = json.loads((tmp_path / "out" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == digest
        manifest = json.loads((tmp_path / "out" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
        layer = tmp_path / "out" / "blobs" / "sha256" / manifest["layers"][0]["digest"].split(":")[1]
        with tarfile.open(layer) as tar:
            assert {m.name: tar.extractfile(m).read() for m in tar if m.isfile()} == files  # type: ignore[union-attr]
        with urllib.request.urlopen(f"{registry.url}/v2/_catalog", timeout=5) as response:
            assert json.load(response)["repositories"] == ["group/project/image"]
        pid = registry.process.pid if registry.process else 0
    assert_stopped(registry, pid)


def test_pypi_download_needs_credentials(tmp_path: Path) -> None:
    with PypiServer(tmp_path) as pypi:
        wheel = pypi.add_package("jgpeer", "1.2.3")
        ok = pip_download(pypi.index_url, "jgpeer==1.2.3", tmp_path / "out")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert (tmp_path / "out" / wheel.name).read_bytes() == wheel.read_bytes()

        anonymous = pip_download(f"{pypi.url}/simple/", "jgpeer==1.2.3", tmp_path / "anon")
        assert anonymous.returncode != 0
        assert not (tmp_path / "anon" / wheel.name).exists()
        wrong = pip_download(f"http://{pypi.user}:wrong@127.0.0.1:{pypi.port}/simple/", "jgpeer==1.2.3",
                             tmp_path / "wrong")  # fmt: skip
        assert wrong.returncode != 0
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{pypi.url}/simple/jgpeer/", timeout=5)
        assert denied.value.code == 401
        denied.value.close()

        # The wheel installs and imports: it is a valid wheel, not just a file pip fetched.
        target = tmp_path / "site"
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "--isolated", "install", "--no-deps", "--no-index", "--target",
             str(target), str(tmp_path / "out" / wheel.name)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        assert (target / "jgpeer" / "__init__.py").read_text() == "VERSION = '1.2.3'\n"
        pid = pypi.process.pid if pypi.process else 0
    assert_stopped(pypi, pid)


def test_npm_publish_view_install_with_bearer_token(tmp_path: Path) -> None:
    with NpmRegistry(tmp_path) as registry:
        token = registry.add_user("uploader", "npm-password")
        registry.publish(token, "jgpeer", "1.0.0", "module.exports = 42;\n")
        registry.publish(token, "jgpeer", "1.1.0", "module.exports = 43;\n")

        viewed = npm(tmp_path / "c", registry.url + "/", token, "view", "jgpeer", "versions", "--json")
        assert viewed.returncode == 0, viewed.stderr
        assert json.loads(viewed.stdout) == ["1.0.0", "1.1.0"]

        project = tmp_path / "project"
        project.mkdir()
        (project / "package.json").write_text('{"name": "consumer", "version": "0.0.0", "private": true}')
        installed = npm(tmp_path / "c", registry.url + "/", token, "install", "jgpeer@1.0.0", cwd=project)
        assert installed.returncode == 0, installed.stderr
        assert (project / "node_modules" / "jgpeer" / "index.js").read_text() == "module.exports = 42;\n"

        anonymous = npm(tmp_path / "anon", registry.url + "/", "", "view", "jgpeer", "version")
        assert anonymous.returncode != 0
        bad = npm(tmp_path / "bad", registry.url + "/", "not-a-token", "view", "jgpeer", "version")
        assert bad.returncode != 0

        second = registry.add_user("reader", "reader-password")
        assert second and second != token
        pid = registry.process.pid if registry.process else 0
    assert_stopped(registry, pid)


def test_nginx_serves_a_static_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello from nginx\n")
    body = f'location / {{ root {site}; }}\nlocation = /port {{ return 200 "{{port}}"; }}'
    with NginxServer(tmp_path, body) as nginx:
        with urllib.request.urlopen(f"{nginx.url}/hello.txt", timeout=5) as response:
            assert response.read() == b"hello from nginx\n"
        with urllib.request.urlopen(f"{nginx.url}/port", timeout=5) as response:
            assert response.read() == str(nginx.port).encode()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{nginx.url}/absent", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
        pid = nginx.process.pid if nginx.process else 0
    assert_stopped(nginx, pid)
    assert not (tmp_path / "nginx" / "nginx.pid").exists()


def test_servers_side_by_side_get_distinct_ports(tmp_path: Path) -> None:
    with NginxServer(tmp_path / "a", "") as a, NginxServer(tmp_path / "b", "") as b:
        assert a.port != b.port
        for server in (a, b):
            with urllib.request.urlopen(f"{server.url}/-/nginx-up", timeout=5) as response:
                assert response.read() == b"up"
