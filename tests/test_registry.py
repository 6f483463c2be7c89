"""The registry token flow: token endpoint, challenges, verification of registry tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.protocols.registry import TokenIssuer, parse_scopes
from gateway.signing import SigningKey

from .conftest import RecordingUpstream, World, basic

KEY = SigningKey.generate()


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_issuer_roundtrip_and_forgeries() -> None:
    issuer = TokenIssuer(KEY, ttl=60)
    token = issuer.mint("d" * 64, [{"type": "repository", "name": "g/app", "actions": ["pull"]}], 1000.0)
    grant = issuer.verify(token, 1010.0)
    assert grant is not None and grant.key == "d" * 64 and grant.access == {"g/app": {"pull"}}
    assert issuer.verify(token, 1061.0) is None  # expired
    assert TokenIssuer(SigningKey.generate()).verify(token, 1010.0) is None  # another key
    header, payload, signature = token.split(".")
    assert issuer.verify(f"{header}.{payload}x.{signature}", 1010.0) is None
    assert issuer.verify("not-a-jwt", 1010.0) is None
    hs256 = _b64({"alg": "HS256", "typ": "JWT", "kid": KEY.kid})
    assert issuer.verify(f"{hs256}.{payload}.{signature}", 1010.0) is None  # no algorithm swap


def test_tokens_are_rs256_with_gitlabs_kid_and_claims() -> None:
    token = TokenIssuer(KEY, ttl=60).mint("d" * 64, [], 1000.0)
    header, payload = (json.loads(base64.urlsafe_b64decode(p + "==")) for p in token.split(".")[:2])
    assert header == {"alg": "RS256", "typ": "JWT", "kid": KEY.kid}
    assert payload["aud"] == "container_registry" and payload["iss"] == "jobgate"
    assert (payload["nbf"], payload["iat"], payload["exp"]) == (995, 1000, 1060)


def test_scope_parsing() -> None:
    assert parse_scopes(["repository:g/app/img:pull,push", "registry:catalog:*", "repository:UP/x:pull"]) == [
        ("g/app/img", ["pull", "push"])
    ]
    assert parse_scopes(["repository:g/app:*"]) == [("g/app", ["pull", "push", "delete"])]


async def test_token_endpoint_grants_only_what_the_job_may_do(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await world.project(2, "other/lib", "public")
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    resp = await gateway.get(
        "/jwt/auth?service=container_registry&scope=repository:group/app/img:pull,push"
        "&scope=repository:other/lib:pull,push&scope=repository:no/such:pull",
        headers=auth,
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    from gateway.app import GATEWAY

    grant = gateway.app[GATEWAY].issuer.verify(body["token"], __import__("time").time())
    assert grant.access == {"group/app/img": {"pull", "push"}, "other/lib": {"pull"}, "no/such": set()}
    assert upstream.requests == []


async def test_token_endpoint_refuses_dead_or_missing_job_tokens(gateway: Any, world: World) -> None:
    assert (await gateway.get("/jwt/auth?service=container_registry")).status == 401
    await world.store.finish_job(100)
    resp = await gateway.get(
        "/jwt/auth?service=container_registry",
        headers={"Authorization": basic("gitlab-ci-token", world.tokens["100"])},
    )
    assert resp.status == 401


async def test_v2_challenges_and_checks_the_grant(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    resp = await gateway.get("/v2/")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{resp.url.host}:{resp.url.port}/jwt/auth",service="container_registry"'
    )
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    pull_only = await (
        await gateway.get("/jwt/auth?scope=repository:group/app/img:pull", headers=auth)
    ).json()
    bearer = {"Authorization": f"Bearer {pull_only['token']}"}
    assert (await gateway.get("/v2/group/app/img/manifests/v1", headers=bearer)).status == 200
    assert "authorization" not in upstream.last.headers  # the registry token is not forwarded
    denied = await gateway.put("/v2/group/app/img/manifests/v1", headers=bearer, data=b"{}")
    assert denied.status == 401  # push was not granted: the client must ask for a wider token
    assert 'scope="repository:group/app/img:push"' in denied.headers["WWW-Authenticate"]
    other = await gateway.get("/v2/group/app/other/manifests/v1", headers=bearer)
    assert other.status == 401
    await world.store.finish_job(100)
    assert (await gateway.get("/v2/group/app/img/manifests/v1", headers=bearer)).status == 401
    assert len(upstream.requests) == 1


async def test_a_forged_registry_token_is_recorded_as_invalid_not_as_no_credential(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    from gateway.app import GATEWAY

    forged = TokenIssuer(SigningKey.generate()).mint("d" * 64, [], __import__("time").time())
    resp = await gateway.get("/v2/group/app/img/manifests/v1", headers={"Authorization": f"Bearer {forged}"})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer realm=")
    metrics = gateway.app[GATEWAY].metrics
    metrics.fold()

    def denied(reason: str) -> float | None:
        labels = {"result": "deny", "reason": reason}
        return metrics.registry.get_sample_value("jobgate_auth_decisions_total", labels)

    assert denied("invalid_registry_token") == 1 and denied("no_credential") is None
    assert upstream.requests == []
