"""The registry token flow: token endpoint, challenges, verification of registry tokens."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from gateway.app import GATEWAY
from gateway.protocols.registry import MAX_SCOPES, TokenIssuer, parse_scopes
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
    grant = gateway.app[GATEWAY].issuer.verify(body["token"], time.time())
    # no/such names no project: nothing granted, so it is left out of `access`, as GitLab does
    assert grant.access == {"group/app/img": {"pull", "push"}, "other/lib": {"pull"}}
    assert upstream.requests == []


async def test_token_endpoint_refuses_dead_or_missing_job_tokens(
    gateway: Any, make_gateway: Any, world: World
) -> None:
    closed = await make_gateway(registry={"anonymous_pull": False})
    assert (await closed.get("/jwt/auth?service=container_registry")).status == 401
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
        await gateway.get(
            "/jwt/auth?service=container_registry&scope=repository:group/app/img:pull", headers=auth
        )
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


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def granted(gateway: Any, token: str) -> dict[str, set[str]]:
    grant = gateway.app[GATEWAY].issuer.verify(token, time.time())
    assert grant is not None
    return {name: set(actions) for name, actions in grant.access.items()}


def test_scope_values_split_on_spaces_and_stay_capped() -> None:
    assert parse_scopes(["repository:g/app/a:pull repository:g/app/b:push,pull", "repository:g/c:pull"]) == [
        ("g/app/a", ["pull"]), ("g/app/b", ["push", "pull"]), ("g/c", ["pull"]),
    ]  # fmt: skip
    many = " ".join(f"repository:g/app/i{n}:pull" for n in range(MAX_SCOPES + 10))
    assert len(parse_scopes([many])) == MAX_SCOPES


async def test_token_endpoint_splits_scope_values_on_spaces(gateway: Any, world: World) -> None:
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    resp = await gateway.get(
        "/jwt/auth", headers=auth, params={"service": "container_registry",
        "scope": "repository:group/app/img:pull repository:group/app/other:push"},
    )  # fmt: skip
    assert resp.status == 200
    access = granted(gateway, (await resp.json())["token"])
    assert access == {"group/app/img": {"pull"}, "group/app/other": {"push"}}


@pytest.mark.parametrize("query", ["", "?service=other_service", "?service=container_registry2"])
async def test_unknown_service_is_not_found(gateway: Any, world: World, query: str) -> None:
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    resp = await gateway.get("/jwt/auth" + query, headers=auth)
    assert resp.status == 404


async def test_a_scope_with_every_action_denied_is_dropped(gateway: Any, world: World) -> None:
    await world.project(2, "other/private", "private")
    await world.store.set_member(2, 7, 30)  # a developer there, but push is own-project only
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    resp = await gateway.get(
        "/jwt/auth?service=container_registry&scope=repository:other/private/img:push,delete"
        "&scope=repository:group/app/img:pull",
        headers=auth,
    )
    access = claims((await resp.json())["token"])["access"]
    assert [entry["name"] for entry in access] == ["group/app/img"]


async def test_claims_in_gitlabs_shape(gateway: Any, world: World) -> None:
    auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    resp = await gateway.get(
        "/jwt/auth?service=container_registry&scope=repository:group/app/img:pull,push", headers=auth
    )
    got = claims((await resp.json())["token"])
    assert got["aud"] == "container_registry" and got["auth_type"] == "build"
    assert len(got["jti"]) >= 16 and got["nbf"] == got["iat"] - 5 and got["exp"] == got["iat"] + 300
    assert got["access"] == [{
        "type": "repository", "name": "group/app/img", "actions": ["pull", "push"],
        "meta": {"project_path": "group/app", "project_id": 1},
    }]  # fmt: skip


async def test_no_credentials_get_a_pull_only_token_for_public_images(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
    await world.project(2, "open/lib", "public")
    await world.project(3, "inner/lib", "internal")
    resp = await gateway.get(
        "/jwt/auth?service=container_registry&scope=repository:open/lib/img:pull,push"
        "&scope=repository:group/app/img:pull&scope=repository:inner/lib/img:pull"
    )
    assert resp.status == 200
    token = (await resp.json())["token"]
    assert granted(gateway, token) == {"open/lib/img": {"pull"}}
    got = claims(token)
    assert "sub" not in got and "auth_type" not in got
    assert got["access"][0]["meta"] == {"project_path": "open/lib", "project_id": 2}

    bearer = {"Authorization": f"Bearer {token}"}
    assert (await gateway.get("/v2/open/lib/img/manifests/v1", headers=bearer)).status == 200
    assert "authorization" not in upstream.last.headers
    assert (await gateway.put("/v2/open/lib/img/manifests/v1", headers=bearer, data=b"{}")).status == 401
    assert (await gateway.get("/v2/group/app/img/manifests/v1", headers=bearer)).status == 401
    await world.store.set_project(2, visibility="private")  # decided again on live state
    assert (await gateway.get("/v2/open/lib/img/manifests/v1", headers=bearer)).status == 401
    assert len(upstream.requests) == 1


async def test_anonymous_pull_off_refuses_without_credentials(make_gateway: Any, world: World) -> None:
    await world.project(2, "open/lib", "public")
    closed = await make_gateway(registry={"anonymous_pull": False})
    resp = await closed.get("/jwt/auth?service=container_registry&scope=repository:open/lib/img:pull")
    assert resp.status == 401


async def test_a_forged_registry_token_is_recorded_as_invalid_not_as_no_credential(
    gateway: Any, upstream: RecordingUpstream, world: World
) -> None:
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
