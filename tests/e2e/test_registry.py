"""Real skopeo pushes and pulls through jobgate in front of Debian's docker-registry.

Every jobgate here runs the shipped config's settings and the default flags (a worker per
core, no `registry` key: the signing key is created in the state directory by `serve`).
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.devredis import RedisProcess
from gateway.store import Store

from ..oci_image import write_oci_layout
from ..peers import RegistryServer, skopeo
from .serving import JobgateProcess, registry_token_auth


@pytest.fixture
def setup(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> Iterator[tuple[JobgateProcess, RegistryServer, dict[str, str]]]:
    # a layer over a MiB: its blob is relayed socket to socket (gateway/relay.py); skopeo checks its digest
    big = random.Random(7).randbytes(3 << 20)
    write_oci_layout(tmp_path / "image", "v1", {"hello.txt": b"hello from the image\n", "big.bin": big})
    with (
        RegistryServer(tmp_path) as registry,
        JobgateProcess.shipped(tmp_path, redis_server.url, {"container_registry": registry.url}) as gw,
    ):
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


def test_twenty_pushes_and_pulls_through_the_shipped_config(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    # Before RS256 with one key file, each worker signed with its own random secret: a registry
    # token minted by one worker was refused by the other, and 6 of 6 pushes failed.
    files = {"hello.txt": b"hello\n", "data.bin": random.randbytes(64 << 10)}
    write_oci_layout(tmp_path / "image", "v1", files)
    with (
        RegistryServer(tmp_path) as registry,
        JobgateProcess.shipped(tmp_path, redis_server.url, {"container_registry": registry.url}) as gw,
    ):
        assert "registry" not in gw.config and gw.workers is None
        gw.admin("project", "set", "21", "--path", "ship/app", "--visibility", "private")
        gw.admin("member", "set", "21", "7", "30")
        token = gw.admin("job", "start", "--id", "2100", "--project", "21", "--user", "7")
        started = time.monotonic()
        for round_ in range(20):
            repo = f"ship/app/image{round_}"
            pushed = push(tmp_path, gw, token, repo)
            assert pushed.returncode == 0, (round_, pushed.stderr)
            pulled = pull(tmp_path, gw, token, repo, f"pulled{round_}")
            assert pulled.returncode == 0, (round_, pulled.stderr)
        print(f"20 pushes and pulls in {time.monotonic() - started:.1f} s")
        log = gw.log()
    assert token not in log
    assert '"reason":"invalid_registry_token"' not in log  # every worker accepts every worker's tokens
    assert len({line.split('"pid":')[1].split(",")[0] for line in log.splitlines()
                if '"route":"registry_' in line}) == 2  # both workers served the registry  # fmt: skip


def test_a_registry_verifying_tokens_itself_accepts_jobgates(
    tmp_path: Path, redis_server: RedisProcess, store: Store
) -> None:
    """docker-registry in token mode checks the RS256 signature against `jobgate admin registry
    certificate` by the token's `kid` (libtrust's key id), then its issuer, audience and access."""
    write_oci_layout(tmp_path / "image", "v1", {"hello.txt": b"hello from the image\n"})
    gw = JobgateProcess.shipped(tmp_path, redis_server.url, {"container_registry": "http://127.0.0.1:1"})
    auth = registry_token_auth(gw, tmp_path)
    with gw, RegistryServer(tmp_path, token_auth=auth) as registry:
        gw.admin("project", "set", "31", "--path", "direct/app", "--visibility", "private")
        gw.admin("member", "set", "31", "7", "30")
        token = gw.admin("job", "start", "--id", "3100", "--project", "31", "--user", "7")
        target = f"docker://127.0.0.1:{registry.port}/direct/app/image:v1"
        pushed = skopeo(tmp_path, "copy", "--dest-tls-verify=false", "--dest-creds",
                        f"gitlab-ci-token:{token}", f"oci:{tmp_path}/image:v1", target)  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        pulled = skopeo(tmp_path, "copy", "--src-tls-verify=false", "--src-creds",
                        f"gitlab-ci-token:{token}", target, f"oci:{tmp_path}/pulled:v1")  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        elsewhere = f"docker://127.0.0.1:{registry.port}/else/where:v1"
        other = skopeo(tmp_path, "copy", "--dest-tls-verify=false", "--dest-creds",
                       f"gitlab-ci-token:{token}", f"oci:{tmp_path}/image:v1", elsewhere)  # fmt: skip
        assert other.returncode != 0  # the token grants nothing outside the job's reach
