"""Forward-auth mode: only the configured proxy describes the original request (issue 15, rule 1).

Traefik and Envoy are not installable here, so their auth requests are reproduced from
their sources as we know them (written from knowledge, not from a copy at hand):

- Traefik `pkg/middlewares/auth/forward.go` (ForwardAuth): the auth request is a GET to
  `address`; `writeHeader` copies *every* client request header (`utils.CopyHeaders`),
  drops hop-by-hop headers, keeps only `authRequestHeaders` when that list is set, then
  sets `X-Forwarded-Method` (the original method), `X-Forwarded-Proto`,
  `X-Forwarded-Host`, `X-Forwarded-Uri` (`req.URL.RequestURI()`) and `X-Forwarded-For`
  itself (a client's own values are overwritten unless `trustForwardHeader`).
- Envoy ext_authz, HTTP service (envoy.extensions.filters.http.ext_authz.v3, "HTTP
  service" docs): the check request has the original method, the original path after
  `path_prefix`, and the headers `Host`, `Method`, `Path`, `Content-Length`,
  `Authorization` plus those matched by `authorization_request.allowed_headers`.

nginx `auth_request` is exercised for real in tests/e2e/test_nginx.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RecordingUpstream, World, basic

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"
OTHER = "/api/v4/projects/2/packages/generic/tool/1.0/tool.bin"
TRIGGER = "/api/v4/projects/1/trigger/pipeline"
HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization"}


def traefik(method: str, uri: str, client: dict[str, str], auth_request_headers: list[str] | None = None
            ) -> tuple[str, str, dict[str, str]]:  # fmt: skip
    """The auth request Traefik's ForwardAuth sends for a client request (forward.go writeHeader)."""
    headers = {k: v for k, v in client.items() if k.lower() not in HOP}
    if auth_request_headers:
        wanted = {h.lower() for h in auth_request_headers}
        headers = {k: v for k, v in headers.items() if k.lower() in wanted}
    for name in ("X-Forwarded-Method", "X-Forwarded-Uri", "X-Forwarded-Proto", "X-Forwarded-Host",
                 "X-Forwarded-For"):  # fmt: skip
        headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
    headers.update({"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Proto": "http",
                    "X-Forwarded-Host": "gitlab.example", "X-Forwarded-For": "203.0.113.9"})  # fmt: skip
    return "GET", "/-/auth", headers


ENVOY_ALLOWED = ("job-token", "content-type")  # the shipped envoy.yaml's allowed_headers


def envoy(method: str, uri: str, client: dict[str, str], allowed: tuple[str, ...] = ENVOY_ALLOWED
          ) -> tuple[str, str, dict[str, str]]:  # fmt: skip
    """The check request Envoy's ext_authz HTTP service sends (path_prefix /-/auth)."""
    keep = {"authorization", "content-length", *allowed}
    return method, "/-/auth" + uri, {k: v for k, v in client.items() if k.lower() in keep}


def nginx(method: str, uri: str, client: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """The auth subrequest of the shipped snippet: the client's headers, X-Original-* set."""
    return "GET", "/-/auth", {**client, "X-Original-Method": method, "X-Original-URI": uri}


KINDS = {"nginx": nginx, "traefik": traefik, "envoy": envoy}


async def ask(make_gateway: Any, kind: str, method: str, uri: str, client: dict[str, str],
              **config: Any) -> Any:  # fmt: skip
    gateway = await make_gateway(forward_auth={"proxy": kind}, **config)
    auth_method, path, headers = KINDS[kind](method, uri, client)
    return await gateway.request(auth_method, path, headers=headers)


@pytest.mark.parametrize("kind", KINDS)
async def test_allowed_answers_200_with_identity(
    make_gateway: Any, upstream: RecordingUpstream, world: World, kind: str
) -> None:
    resp = await ask(make_gateway, kind, "GET", PKG, {"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Jobgate-Job-Id"] == "100"
    assert resp.headers["X-Jobgate-Target-Project-Id"] == "1"
    assert resp.headers["X-Jobgate-Route"] == "packages_read"
    assert upstream.requests == []


@pytest.mark.parametrize(("kind", "status"), [("nginx", 403), ("traefik", 404), ("envoy", 404)])
async def test_denied_answers_the_denial(
    make_gateway: Any, upstream: RecordingUpstream, world: World, kind: str, status: int
) -> None:
    await world.store.finish_job(100)
    resp = await ask(make_gateway, kind, "GET", PKG, {"JOB-TOKEN": world.tokens["100"]})
    assert resp.status == status
    assert await resp.json() == {"message": "404 Not Found"}
    assert upstream.requests == []


async def test_without_forward_auth_config_the_endpoint_is_404(gateway: Any, world: World) -> None:
    for headers in ({"X-Original-URI": PKG}, {"X-Forwarded-Uri": PKG, "X-Forwarded-Method": "GET"}):
        resp = await gateway.get("/-/auth", headers={**headers, "JOB-TOKEN": world.tokens["100"]})
        assert resp.status == 404
    assert (await gateway.get("/-/auth" + PKG, headers={"JOB-TOKEN": world.tokens["100"]})).status == 404


async def test_traefik_copies_a_client_x_original_uri_which_is_refused(
    make_gateway: Any, world: World
) -> None:
    """The issue's attack: behind Traefik (no authRequestHeaders) a client adds its own
    X-Original-URI naming its own project; the real request is about project 2 and a DELETE."""
    await world.project(2, "other/lib")
    client = {"JOB-TOKEN": world.tokens["100"], "X-Original-URI": PKG, "X-Original-Method": "GET"}
    resp = await ask(make_gateway, "traefik", "DELETE", OTHER, client)
    assert resp.status == 400
    assert "forward_auth_ambiguous" in (await resp.json())["message"]
    assert world.tokens["100"] not in await resp.text()


async def test_traefik_with_auth_request_headers_drops_the_client_copy(
    make_gateway: Any, world: World
) -> None:
    """The shipped traefik.yml lists authRequestHeaders: the client's X-Original-URI never arrives."""
    import yaml

    from .test_deploy import DEPLOY

    shipped = yaml.safe_load((DEPLOY / "forward-auth" / "traefik.yml").read_text())
    listed = shipped["http"]["middlewares"]["jobgate"]["forwardAuth"]["authRequestHeaders"]
    assert "X-Original-URI" not in listed and "JOB-TOKEN" in listed
    client = {"JOB-TOKEN": world.tokens["100"], "X-Original-URI": OTHER}
    gateway = await make_gateway(forward_auth={"proxy": "traefik"})
    method, path, headers = traefik("GET", PKG, client, listed)
    resp = await gateway.request(method, path, headers=headers)
    assert resp.status == 200 and resp.headers["X-Jobgate-Target-Project-Id"] == "1"


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("nginx", {"X-Forwarded-Uri": OTHER}),
        ("nginx", {"X-Forwarded-Method": "DELETE"}),
        ("traefik", {"X-Original-Method": "DELETE"}),
        ("envoy", {"x-original-uri": OTHER}),
    ],
)
async def test_another_kinds_description_is_refused(make_gateway: Any, world: World, kind: str,
                                                    extra: dict[str, str]) -> None:  # fmt: skip
    gateway = await make_gateway(forward_auth={"proxy": kind})
    method, path, headers = KINDS[kind]("GET", PKG, {"JOB-TOKEN": world.tokens["100"]})
    resp = await gateway.request(method, path, headers={**headers, **extra})
    assert resp.status == (403 if kind == "nginx" else 400)  # nginx: the snippet maps 403 to the 404
    assert "forward_auth_ambiguous" in (await resp.json())["message"]


async def test_a_path_after_auth_is_envoys_description_only(make_gateway: Any, world: World) -> None:
    gateway = await make_gateway(forward_auth={"proxy": "traefik"})
    _, _, headers = traefik("GET", PKG, {"JOB-TOKEN": world.tokens["100"]})
    resp = await gateway.get("/-/auth" + OTHER, headers=headers)
    assert resp.status == 400


async def test_the_original_method_is_judged(make_gateway: Any, world: World) -> None:
    await world.store.set_member(1, 7, 20)  # reporter: may read, may not delete
    for kind in KINDS:
        resp = await ask(make_gateway, kind, "DELETE", PKG, {"JOB-TOKEN": world.tokens["100"]})
        assert resp.status in (403, 404), kind


@pytest.mark.parametrize("kind", ["traefik", "envoy"])
async def test_a_query_token_is_refused_where_the_proxy_cannot_strip_it(
    make_gateway: Any, world: World, kind: str
) -> None:
    resp = await ask(make_gateway, kind, "GET", PKG + f"?job_token={world.tokens['100']}", {})
    assert resp.status == 400
    assert "forward_auth_unstrippable_token" in (await resp.json())["message"]
    basic_auth = {"Authorization": basic("gitlab-ci-token", world.tokens["100"])}
    assert (await ask(make_gateway, kind, "GET", PKG, basic_auth)).status == 200


async def test_nginx_is_told_the_uri_to_forward_without_the_token(make_gateway: Any, world: World) -> None:
    token = world.tokens["100"]
    resp = await ask(make_gateway, "nginx", "GET", "/api/v4/projects/%31/packages/generic/tool/1.0/"
                     f"tool.bin?a=1;job_token={token}&b=2", {})  # fmt: skip
    assert resp.status == 200
    assert resp.headers["X-Jobgate-Forward-Uri"] == PKG + "?a=1&b=2"


@pytest.mark.parametrize("kind", KINDS)
async def test_a_body_jobgate_cannot_read_is_refused(make_gateway: Any, world: World, kind: str) -> None:
    client = {"JOB-TOKEN": world.tokens["100"], "Content-Type": "application/x-www-form-urlencoded"}
    resp = await ask(make_gateway, kind, "POST", TRIGGER + "?ref=main", client)
    assert resp.status in (400, 403)
    assert "forward_auth_unstrippable_token" in (await resp.json())["message"]


async def test_a_non_ascii_original_uri_is_a_4xx(make_gateway: Any, world: World) -> None:
    gateway = await make_gateway(forward_auth={"proxy": "traefik"})
    from .conftest import raw_request

    described = {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/v4/projects/\u00e9/x"}
    status, _ = await raw_request(gateway, "GET /-/auth HTTP/1.1", described)
    assert 400 <= status < 500


def test_forward_auth_config_is_checked() -> None:
    from gateway.config import ConfigError, parse_config

    base = {"listen": "127.0.0.1:1", "upstreams": {"api": {"url": "http://a"}}}
    with pytest.raises(ConfigError) as error:
        parse_config({**base, "forward_auth": {"proxy": "haproxy"}, "trusted_proxies": ["10.0.0.0/8", "x"]},
                     "f.yaml", env={})  # fmt: skip
    assert any("f.yaml: forward_auth.proxy: expected one of nginx" in p for p in error.value.problems)
    assert any("f.yaml: trusted_proxies[1]: expected a CIDR" in p for p in error.value.problems)
    config = parse_config({**base, "forward_auth": {"proxy": "envoy"}, "trusted_proxies": ["10.1.2.3"]},
                          "f.yaml", env={})  # fmt: skip
    assert config.forward_auth_proxy == "envoy" and str(config.trusted_proxies[0]) == "10.1.2.3/32"
