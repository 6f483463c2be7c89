"""The README's git and skopeo lines, run exactly as written (only `jobgate:8080` changed) through
`jobgate serve` with the shipped config's settings, in front of git-http-backend and
Debian's docker-registry."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..oci_image import write_oci_layout
from ..peers import GitHttpServer, RegistryServer, require
from .serving import JobgateProcess

README = Path(__file__).parent.parent.parent / "README.md"


def readme_client_lines() -> list[str]:
    """The `git` and `skopeo` lines of the README's "Git, the container registry, package
    managers" block, in their order."""
    text = README.read_text()
    block = text[text.index("## Git, the container registry, package managers") :]
    block = block[block.index("```sh\n") + 6 : block.index("```", block.index("```sh\n") + 6)]
    return [line for line in block.splitlines() if line.startswith(("git ", "skopeo "))]


def run_as_written(line: str, port: int, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One README line in bash, with CI_JOB_TOKEN set as a CI job has it. The home directory
    holds skopeo's user policy (Debian ships none) and nothing else of the machine's."""
    policy = cwd / ".config" / "containers" / "policy.json"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {
        "PATH": os.path.dirname(require("skopeo", "skopeo")) + ":/usr/bin:/bin",
        "HOME": str(cwd), "XDG_RUNTIME_DIR": str(cwd), "TMPDIR": str(cwd), "CI_JOB_TOKEN": token,
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
    }  # fmt: skip
    command = line.replace("jobgate:8080", f"127.0.0.1:{port}")
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_the_readmes_git_and_skopeo_lines_as_written(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    lines = readme_client_lines()
    assert [line.split()[0] for line in lines] == ["git", "skopeo", "skopeo"], lines
    assert "--dest-tls-verify=false" in lines[1] and "--src-tls-verify=false" in lines[2]
    work = tmp_path / "job"
    work.mkdir()
    write_oci_layout(work / "img", "v1", {"hello.txt": b"hello from the README's image\n"})
    with (
        GitHttpServer(tmp_path) as git_server,
        RegistryServer(tmp_path) as registry,
    ):
        git_server.create_repo("group/app.git", {"README.md": b"app\n"})
        upstreams = {"git": git_server.url, "container_registry": registry.url}
        with JobgateProcess.shipped(tmp_path, redis_server.url, upstreams) as gw:
            gw.admin("project", "set", "1", "--path", "group/app", "--visibility", "private")
            gw.admin("member", "set", "1", "7", "30")
            token = gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7")
            for line in lines:
                done = run_as_written(line, gw.port, token, work)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                assert token not in done.stdout + done.stderr
            gw.admin("job", "finish", "100")
            refused = run_as_written(lines[2].replace("oci:pulled:v1", "oci:again:v1"), gw.port, token, work)
    assert (work / "app" / "README.md").read_text() == "app\n"  # git clone
    pushed = {p.name for p in (work / "img" / "blobs" / "sha256").iterdir()}
    assert {p.name for p in (work / "pulled" / "blobs" / "sha256").iterdir()} == pushed  # push, then pull
    assert refused.returncode != 0 and re.search(r"unauthorized|denied|401", refused.stderr, re.I)
