"""One gateway request, walked once: route -> credential -> authorize -> forward or deny.

`evaluate` reads the request into one immutable value (`CanonicalRequest`: method,
canonical path, query, credential, route match, the body without its token), decides on
it, and answers an allowed request with `Admitted`; `handle` forwards exactly that value.
The protocol adapters (`protocols/`) call `evaluate` for what they judge.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping

from . import responses
from .authorize import INVALID_REGISTRY_TOKEN, NO_CREDENTIAL, Authorizer, FailureLimiter
from .cache import DecisionCache, Outcome
from .config import Config
from .credentials import (
    AUTHORIZATION,
    Credential,
    CredentialError,
    carrier_headers,
    extract_credential,
    filter_query,  # fmt: skip
    read_token_form,
)
from .decision import Reason
from .model import RegistryGrant
from .observe import AccessRecorder, Metrics, RequestLog, mask
from .proxy import Forward, UpstreamError, forward_request
from .relay import Transfer
from .routes import REGISTRY_ACTION_NAMES, PathError, RouteMatch, resolve
from .routes import Protocol as RouteProtocol
from .runtime import Runtime
from .store import Store, StoreUnavailable, credential_key

_NO_QUERY: MultiMapping[str] = MultiDictProxy(MultiDict())


class RegistryTokens(Protocol):
    """Mints and verifies registry tokens (`protocols.registry.TokenIssuer`)."""

    ttl: int

    def mint(self, key: str, access: list[dict[str, object]], now: float) -> str:
        """A registry token for the job token with credential key `key`."""

    def verify(self, token: str, now: float) -> RegistryGrant | None:
        """The grant of a valid token this issuer minted, else None."""


@dataclass
class Gateway:
    """Everything a gateway request reads, behind one app key (one lookup per request)."""

    runtime: Runtime
    authorizer: Authorizer
    metrics: Metrics
    issuer: RegistryTokens
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    recorder: AccessRecorder = field(default_factory=AccessRecorder)

    @property
    def cache(self) -> DecisionCache:
        """The decision cache."""
        return self.authorizer.cache

    @property
    def store(self) -> Store:
        """The Redis store (opened with the app)."""
        assert self.authorizer.store is not None, "the app has not started"
        return self.authorizer.store


@dataclass(frozen=True, slots=True)
class CanonicalRequest:
    """The request as jobgate read it, built once: the decision and the forwarded request are
    both made from this value."""

    method: str
    path: str  # the canonical path (what matched, what the upstream receives)
    raw_query: str  # the query as the client sent it ("" when none)
    query: MultiMapping[str]
    matched: RouteMatch
    credential: Credential | None
    body: Any = None  # the form without its token, when one was read; None streams the body


@dataclass(frozen=True, slots=True)
class Admitted:
    """An allowed request ready to forward: what jobgate read and the outcome that allowed it."""

    request: CanonicalRequest
    outcome: Outcome


def realm(request: web.Request, config: Config) -> str:
    """The registry token endpoint a challenge names."""
    base = config.public_url or f"{request.scheme}://{request.host}"
    return base + "/jwt/auth"


def _bearer(request: web.Request) -> str | None:
    """The token an `Authorization: Bearer` header carries, if any."""
    scheme, _, token = request.headers.get(AUTHORIZATION, "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def registry_grant(request: web.Request, issuer: RegistryTokens) -> RegistryGrant | None:
    """The verified registry token a `/v2/` request carries, if any."""
    token = _bearer(request)
    return None if token is None else issuer.verify(token, time.time())


async def evaluate(
    request: web.Request,
    log: RequestLog,
    gateway: Gateway,
    method: str,
    target: str,
    query: MultiMapping[str],
    read_body: bool = True,
) -> Admitted | web.Response:
    """Normalize, route, authenticate and authorize `method target`; an early answer or `Admitted`.

    `target` is the raw path and query of the request being judged: the request's own for
    the gateway, the original request's in forward-auth mode (`read_body` False there).
    """
    config, metrics = gateway.runtime.config, gateway.metrics
    client = log.remote or ""
    limit = config.failed_auth_per_minute
    if limit and (blocked := gateway.limiter.blocked_for(client)):
        metrics.rate_limited.inc()
        log.reason = Reason.RATE_LIMITED
        return responses.too_many(blocked)
    raw_path, _, raw_query = target.partition("?")
    try:
        matched, path = resolve(method, raw_path, query)
    except PathError as exc:
        return responses.bad_request(str(exc))
    if matched is None:
        return responses.not_found()
    route = matched.route
    log.route = route.name
    is_registry = route.protocol is RouteProtocol.REGISTRY
    try:
        form, body = await read_token_form(request) if route.token_param and read_body else (None, None)
        credential = extract_credential(
            request.headers, query, token_param=route.token_param, form=form,
            bearer=not is_registry, max_length=config.max_token_length,
        )  # fmt: skip
    except CredentialError as exc:
        return responses.bad_request(str(exc))
    log.token = credential.token if credential else None
    grant = registry_grant(request, gateway.issuer) if is_registry and credential is None else None
    locator = credential_key(credential.token) if credential else grant.key if grant else None
    action = route.action
    grants = True
    if grant is not None and action is not None:
        grants = grant.allows(matched.params.get("repo", ""), REGISTRY_ACTION_NAMES.get(action, ""))
    authorizer, scope = gateway.authorizer, config.scope
    try:
        if locator is None:  # a Bearer that did not verify is a dead registry token: re-challenge
            outcome = INVALID_REGISTRY_TOKEN if is_registry and _bearer(request) else NO_CREDENTIAL
        else:
            outcome = (authorizer.warm(action, matched.target, locator, scope, grants)
                       or await authorizer.read(action, matched.target, locator, scope, grants))  # fmt: skip
        decision = outcome.decision
        if limit and decision.reason is Reason.UNKNOWN_TOKEN:
            blocked = await gateway.limiter.fail(gateway.store, client, limit)
            if blocked:
                metrics.rate_limited.inc()
                log.record(decision, outcome.log_fields)
                return responses.too_many(blocked)
    except StoreUnavailable:
        metrics.redis_errors.inc()
        log.reason = Reason.STORE_UNAVAILABLE
        return responses.unavailable()
    log.record(decision, outcome.log_fields)
    if not decision.allowed:
        repository = matched.params.get("repo", "")
        wanted = REGISTRY_ACTION_NAMES.get(action, "") if action else ""
        challenge_scope = f"repository:{repository}:{wanted}" if repository and wanted else None
        return responses.denial(
            decision, route.protocol, config.explain, realm(request, config), challenge_scope
        )
    if decision.reason is not Reason.SAME_PROJECT:  # only cross-project accesses are recorded
        gateway.recorder.note(decision, route.name, gateway.store.record_access)
    canonical = CanonicalRequest(method, path, raw_query, query, matched, credential, body)
    return Admitted(canonical, outcome)


def identity_of(admitted: Admitted) -> Mapping[str, str]:
    """The identity headers an admitted request carries (with the pipeline source on trigger routes)."""
    outcome = admitted.outcome
    return (
        outcome.identity_with_source if admitted.request.matched.route.pipeline_source else outcome.identity
    )


async def handle(request: web.Request, log: RequestLog, gateway: Gateway) -> web.StreamResponse:
    """Route, authenticate, authorize, then proxy or deny one gateway request."""
    raw_path = log.path
    query = request.query if "?" in raw_path else _NO_QUERY  # no parsing for a plain path
    admitted = await evaluate(request, log, gateway, request.method, raw_path, query)
    if not isinstance(admitted, Admitted):  # answered already (a denial, a bad request)
        return admitted
    canonical = admitted.request
    route, credential = canonical.matched.route, canonical.credential
    if route.local == "job":
        return responses.job_entity(admitted.outcome.decision)
    runtime, metrics = gateway.runtime, gateway.metrics
    upstream = runtime.config.upstreams.get(route.upstream)
    if upstream is None:
        return responses.not_found()
    log.upstream = upstream.name
    pass_token = upstream.pass_token and credential is not None
    if pass_token:
        drop_headers: frozenset[str] = frozenset()
    else:  # a registry token (no credential) travels in Authorization
        drop_headers = carrier_headers(credential.sources) if credential else frozenset({"authorization"})
    token = credential.token if credential else None
    forward = Forward(
        upstream=upstream,
        path=upstream.upstream_path(canonical.path) if upstream.path_rewrite else canonical.path,
        query=filter_query(canonical.raw_query, route.strip_query if pass_token else route.secret_query),
        drop_headers=drop_headers,
        identity=identity_of(admitted),
        body=canonical.body,
        body_idle_timeout=runtime.config.body_idle_timeout,
        # a client's own id goes upstream too, with any token in it masked
        request_id=mask(log.request_id, token) if log.id_from_client else log.request_id,
    )
    transfer = Transfer()
    started = time.perf_counter()
    try:
        return await forward_request(runtime.sessions[upstream.name], request, forward, transfer)
    except UpstreamError as exc:
        metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
        return responses.upstream_failure(exc.status)
    except ConnectionResetError:
        metrics.upstream_errors.labels(upstream.name, "broken").inc()
        raise
    finally:
        log.upstream_seconds = time.perf_counter() - started
        log.bytes_in, log.bytes_out = transfer.sent, transfer.received
