"""Real skopeo pushes and pulls through jobgate in front of Debian's docker-registry."""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..oci_image import write_oci_layout
from ..peers import RegistryServer, skopeo
from .serving import JobgateProcess


@pytest.fixture
def setup(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> Iterator[tuple[JobgateProcess, RegistryServer, dict[str, str]]]:
    # a layer over a MiB: its blob is relayed socket to socket (gateway/relay.py); skopeo checks its digest
    big = random.Random(7).randbytes(3 << 20)
    write_oci_layout(tmp_path / "image", "v1", {"hello.txt": b"hello from the image\n", "big.bin": big})
    with RegistryServer(tmp_path) as registry, JobgateProcess(
        tmp_path, redis_server.url, {"container_registry": registry.url},
        registry={"token_secret": "e2e-registry-secret"},
    ) as gw:  # fmt: skip
        gw.admin("project", "set", "1", "--path", "group/app", "--visibility", "private")
        gw.admin("project", "set", "2", "--path", "other/private", "--visibility", "private")
        gw.admin("project", "set", "3", "--path", "team/shared", "--visibility", "private")
        gw.admin("member", "set", "1", "7", "30")
        gw.admin("member", "set", "1", "8", "20")
        gw.admin("member", "set", "2", "7", "30")
        gw.admin("member", "set", "3", "7", "30")
        gw.admin("inbound", "add", "3", "group")
        tokens = {
            "dev": gw.admin("job", "start", "--id", "100", "--project", "1", "--user", "7"),
            "reporter": gw.admin("job", "start", "--id", "101", "--project", "1", "--user", "8"),
        }
        for repo in ("other/private/image", "team/shared/image"):  # seeded behind jobgate's back
            seeded = skopeo(tmp_path, "copy", "--dest-tls-verify=false", f"oci:{tmp_path}/image:v1",
                            f"docker://127.0.0.1:{registry.port}/{repo}:v1")  # fmt: skip
            assert seeded.returncode == 0, seeded.stderr
        yield gw, registry, tokens


def push(tmp: Path, gw: JobgateProcess, token: str, repo: str) -> subprocess.CompletedProcess[str]:
    return skopeo(tmp, "copy", "--dest-tls-verify=false", "--dest-creds", f"gitlab-ci-token:{token}",
                  f"oci:{tmp}/image:v1", f"docker://127.0.0.1:{gw.port}/{repo}:v1")  # fmt: skip


def pull(tmp: Path, gw: JobgateProcess, token: str, repo: str, out: str) -> subprocess.CompletedProcess[str]:
    return skopeo(tmp, "copy", "--src-tls-verify=false", "--src-creds", f"gitlab-ci-token:{token}",
                  f"docker://127.0.0.1:{gw.port}/{repo}:v1", f"oci:{tmp}/{out}:v1")  # fmt: skip


def test_push_pull_and_denials(
    setup: tuple[JobgateProcess, RegistryServer, dict[str, str]], tmp_path: Path
) -> None:
    gw, _registry, tokens = setup
    pushed = push(tmp_path, gw, tokens["dev"], "group/app/image")
    assert pushed.returncode == 0, pushed.stderr
    pulled = pull(tmp_path, gw, tokens["dev"], "group/app/image", "pulled")
    assert pulled.returncode == 0, pulled.stderr
    blobs = {p.name for p in (tmp_path / "pulled/blobs/sha256").iterdir()}
    assert blobs == {p.name for p in (tmp_path / "image/blobs/sha256").iterdir()}

    in_scope = pull(tmp_path, gw, tokens["dev"], "team/shared/image", "shared")
    assert in_scope.returncode == 0, in_scope.stderr
    cross_push = push(tmp_path, gw, tokens["dev"], "team/shared/image")
    assert cross_push.returncode != 0  # image push: the job's own project only

    out_of_scope = pull(tmp_path, gw, tokens["dev"], "other/private/image", "o")
    assert out_of_scope.returncode != 0

    reporter_push = push(tmp_path, gw, tokens["reporter"], "group/app/image2")
    assert reporter_push.returncode != 0
    reporter_pull = pull(tmp_path, gw, tokens["reporter"], "group/app/image", "r")
    assert reporter_pull.returncode == 0, reporter_pull.stderr

    gw.admin("job", "finish", "100")
    login = skopeo(tmp_path, "login", "--tls-verify=false", "-u", "gitlab-ci-token", "-p", tokens["dev"],
                   f"127.0.0.1:{gw.port}")  # fmt: skip
    assert login.returncode != 0
    assert pull(tmp_path, gw, tokens["dev"], "group/app/image", "after").returncode != 0
    log = gw.log()
    for token in tokens.values():
        assert token not in log
    for denial in [  # each failure above was jobgate's decision, for the reason it names
        '"route":"registry_manifest_write","status":404,"reason":"own_project_only"',
        '"route":"registry_manifest_read","status":404,"reason":"outside_inbound_scope"',
        '"route":"registry_upload","status":404,"reason":"insufficient_role"',
        '"route":"registry_token","status":401,"reason":"job_not_running"',
    ]:
        assert denial in log


def test_anonymous_pull_of_a_public_image(
    setup: tuple[JobgateProcess, RegistryServer, dict[str, str]], tmp_path: Path
) -> None:
    gw, registry, _tokens = setup
    gw.admin("project", "set", "4", "--path", "open/lib", "--visibility", "public")
    seeded = skopeo(tmp_path, "copy", "--dest-tls-verify=false", f"oci:{tmp_path}/image:v1",
                    f"docker://127.0.0.1:{registry.port}/open/lib/image:v1")  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    gateway = f"docker://127.0.0.1:{gw.port}"
    anonymous = skopeo(tmp_path, "copy", "--src-tls-verify=false", "--src-no-creds",
                       f"{gateway}/open/lib/image:v1", f"oci:{tmp_path}/anon:v1")  # fmt: skip
    assert anonymous.returncode == 0, anonymous.stderr
    private = skopeo(tmp_path, "copy", "--src-tls-verify=false", "--src-no-creds",
                     f"{gateway}/other/private/image:v1", f"oci:{tmp_path}/p:v1")  # fmt: skip
    assert private.returncode != 0
    push = skopeo(tmp_path, "copy", "--dest-tls-verify=false", "--dest-no-creds",
                  f"oci:{tmp_path}/image:v1", f"{gateway}/open/lib/image:v2")  # fmt: skip
    assert push.returncode != 0
