"""Token-server mode: Debian's docker-registry verifies jobgate's RS256 registry tokens itself
while skopeo talks to it directly, as GitLab's registry is deployed (docs/protocols.md).

jobgate runs the shipped config and the default flags; the one setting changed is the one
this test is about, a short `registry.token_ttl`.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gateway.devredis import RedisProcess

from ..oci_image import write_oci_layout
from ..peers import RegistryServer, skopeo
from .serving import JobgateProcess, registry_token_auth

LEEWAY = 60  # seconds docker-registry allows past `exp` for clock skew (distribution's token.Leeway)


def registry_token(gw: JobgateProcess, token: str, scope: str) -> tuple[int, str]:
    """A registry token from jobgate's /jwt/auth for `scope` (status, token)."""
    query = urllib.parse.urlencode({"service": "container_registry", "scope": scope})
    request = urllib.request.Request(
        f"{gw.url}/jwt/auth?{query}",
        headers={"Authorization": "Basic " + base64.b64encode(f"gitlab-ci-token:{token}".encode()).decode()},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())["token"]
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def manifest_status(registry: RegistryServer, repo: str, bearer: str) -> int:
    """GET a manifest straight from the registry with a registry token."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/v1",
        headers={
            "Authorization": f"Bearer {bearer}",
            "Accept": "application/vnd.oci.image.manifest.v1+json, "
            "application/vnd.docker.distribution.manifest.v2+json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_server_mode_push_pull_denial_and_expiry(tmp_path: Path, redis_server: RedisProcess) -> None:
    """Push and pull to the job's own project, a push to another project refused by the registry
    itself, and revocation that waits for the token's expiry: finishing the job stops jobgate
    from minting, but a token already minted works until `exp` (plus the registry's leeway)."""
    ttl = 2
    write_oci_layout(tmp_path / "image", "v1", {"hello.txt": b"hello, token server\n"})
    gw = JobgateProcess.shipped(tmp_path, redis_server.url, {"container_registry": "http://127.0.0.1:1"})
    gw.config["registry"] = {"token_ttl": ttl}  # the setting this test is about
    auth = registry_token_auth(gw, tmp_path)
    with gw, RegistryServer(tmp_path, token_auth=auth) as registry:
        gw.admin("project", "set", "41", "--path", "direct/app", "--visibility", "private")
        gw.admin("project", "set", "42", "--path", "direct/other", "--visibility", "private")
        gw.admin("member", "set", "41", "7", "30")
        gw.admin("member", "set", "42", "7", "30")  # a developer there too: pushes stay own-project only
        gw.admin("inbound", "add", "42", "41")
        token = gw.admin("job", "start", "--id", "4100", "--project", "41", "--user", "7")
        direct, creds = f"docker://127.0.0.1:{registry.port}", f"gitlab-ci-token:{token}"
        pushed = skopeo(tmp_path, "copy", "--dest-tls-verify=false", "--dest-creds", creds,
                        f"oci:{tmp_path}/image:v1", f"{direct}/direct/app/image:v1")  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        pulled = skopeo(tmp_path, "copy", "--src-tls-verify=false", "--src-creds", creds,
                        f"{direct}/direct/app/image:v1", f"oci:{tmp_path}/pulled:v1")  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
        assert (tmp_path / "pulled/index.json").exists()
        other = skopeo(tmp_path, "copy", "--dest-tls-verify=false", "--dest-creds", creds,
                       f"oci:{tmp_path}/image:v1", f"{direct}/direct/other/image:v1")  # fmt: skip
        assert other.returncode != 0  # another project: push is refused by the registry itself
        assert "denied" in other.stderr.lower() or "unauthorized" in other.stderr.lower(), other.stderr

        status, bearer = registry_token(gw, token, "repository:direct/app/image:pull")
        assert status == 200
        issued = time.time()
        assert manifest_status(registry, "direct/app/image", bearer) == 200
        gw.admin("job", "finish", "4100")
        assert registry_token(gw, token, "repository:direct/app/image:pull")[0] == 401  # no new token
        assert manifest_status(registry, "direct/app/image", bearer) == 200  # the old one lives on
        time.sleep(max(0.0, issued + ttl + LEEWAY + 2 - time.time()))
        assert manifest_status(registry, "direct/app/image", bearer) == 401  # expired: refused
