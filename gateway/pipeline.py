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
from typing import NamedTuple, Protocol

from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping

from . import responses
from .authorize import INVALID_REGISTRY_TOKEN, NO_CREDENTIAL, Authorizer, FailureLimiter
from .boundary import (
    Refused,
    refuse_duplicates,
    refuse_method_override,
    refuse_repository_name,
    refuse_token_elsewhere,
)
from .cache import DecisionCache, Outcome
from .config import Config
from .credentials import (
    AUTHORIZATION,
    QUERY_SOURCES,
    URLENCODED,
    BodyForm,
    Credential,
    CredentialError,
    candidate_tokens,
    carrier_headers,
    extract_credential,
    filter_query,
    parse_query,
    parses_body,
    read_body_form,
)
from .decision import Decision, Reason
from .job_entity import job_entity
from .model import RegistryGrant
from .observe import AccessRecorder, Metrics, RequestLog
from .proxy import Forward, UpstreamError, forward_request, peer_trusted, valid_host
from .relay import Transfer
from .routes import REGISTRY_ACTION_NAMES, PathError, RouteMatch, resolve
from .routes import Protocol as RouteProtocol
from .runtime import Runtime
from .store import Store, StoreUnavailable, credential_key

_NO_QUERY: MultiMapping[str] = MultiDictProxy(MultiDict())
UNREAD_BODY = "forward-auth cannot read a form or JSON body: send the token in a header"


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


class CanonicalRequest(NamedTuple):
    """The request as jobgate read it, built once: the decision and the forwarded request are
    both made from this value (a named tuple: made per request, immutable)."""

    method: str
    path: str  # the canonical path (what matched, what the upstream receives)
    raw_query: str  # the query as the client sent it ("" when none)
    query: MultiMapping[str]  # the query as Rack reads it (`&` and `;`, decoded)
    matched: RouteMatch
    credential: Credential | None
    body: BodyForm | None = None  # the body read as parameters; None streams the body


class Admitted(NamedTuple):
    """An allowed request ready to forward: what jobgate read and the outcome that allowed it."""

    request: CanonicalRequest
    outcome: Outcome


def realm(request: web.Request, config: Config) -> str:
    """The registry token endpoint a challenge names: `public_url`, else the request's own
    Host when it is a plain host[:port], else the listen address (never an unchecked echo)."""
    if config.public_url:
        return config.public_url + "/jwt/auth"
    host = request.host if valid_host(request.host) else str(config.listen)
    return f"{request.scheme}://{host}/jwt/auth"


def bearer_token(request: web.Request) -> str | None:
    """The registry token an `Authorization: Bearer` header carries, if any."""
    scheme, _, token = request.headers.get(AUTHORIZATION, "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def refused(log: RequestLog, exc: Refused) -> web.Response:
    """The answer to a request refused at the trust boundary, noted in its log."""
    log.reason = exc.reason
    return responses.refused(exc.reason.value, exc.detail, exc.status)


def git_canonical_path(path: str, repo: str, project_path: str) -> str | None:
    """A git path with its repository span in the registered project's case (`.git` kept), or
    None when the span names a repository other than the project (a longer path)."""
    bare = repo[:-4] if repo.endswith(".git") else repo
    if bare.lower() != project_path.lower() or not path[1:].startswith(repo):
        return None
    return "/" + project_path + repo[len(bare) :] + path[1 + len(repo) :]


async def evaluate(
    request: web.Request,
    log: RequestLog,
    gateway: Gateway,
    method: str,
    target: str,
    read_body: bool = True,
    strippable: bool = True,
    described_by: frozenset[str] = frozenset(),
) -> Admitted | web.Response:
    """Normalize, route, authenticate and authorize `method target`; an early answer or `Admitted`.

    `target` is the raw path and query of the request being judged: the request's own for
    the gateway, the original request's in forward-auth mode (`read_body` False there: a
    body GitLab would parse is refused, jobgate cannot read it). `strippable` False: the
    caller cannot keep a token in the query from the upstream (Traefik, Envoy), so one
    there is refused. `described_by`: the (lower-case) headers in which a proxy describes
    the original request (they hold its URI, query token included).
    """
    try:
        return await _evaluate(request, log, gateway, method, target, read_body, strippable, described_by)
    except Refused as exc:
        return refused(log, exc)


async def _evaluate(
    request: web.Request,
    log: RequestLog,
    gateway: Gateway,
    method: str,
    target: str,
    read_body: bool,
    strippable: bool,
    described_by: frozenset[str],
) -> Admitted | web.Response:
    config, metrics = gateway.runtime.config, gateway.metrics
    client = log.remote or ""
    limit = config.failed_auth_per_minute
    if limit and (blocked := gateway.limiter.blocked_for(client)):
        metrics.rate_limited.inc()
        log.reason = Reason.RATE_LIMITED
        return responses.too_many(blocked)
    raw_path, _, raw_query = target.partition("?")
    pairs = parse_query(raw_query)
    query: MultiMapping[str] = MultiDictProxy(MultiDict(pairs)) if pairs else _NO_QUERY
    headers = request.headers
    log.tokens = candidate_tokens(headers, pairs)  # masked in every record, whatever follows
    try:
        matched, path = resolve(method, raw_path, query)
    except PathError as exc:
        raise Refused(Reason.MALFORMED_PATH, str(exc)) from None
    if matched is None:
        return responses.not_found()
    route = matched.route
    log.route = route.name
    refuse_repository_name(matched)
    is_registry = route.protocol is RouteProtocol.REGISTRY
    body: BodyForm | None = None
    try:
        # an upload streams its body unparsed, except a url-encoded one (small, and every
        # framework behind reads it as parameters)
        if not route.upload or request.content_type == URLENCODED:
            if read_body:
                body = await read_body_form(request, config.max_form_body, config.body_idle_timeout)
            elif parses_body(request.content_type):
                raise Refused(Reason.FORWARD_AUTH_UNSTRIPPABLE, UNREAD_BODY)
        if body is not None:
            log.tokens += tuple(v for values in body.tokens.values() for v in values)
        credential = extract_credential(
            headers, query, form=body.tokens if body else None,
            bearer=not is_registry, max_length=config.max_token_length,
        )  # fmt: skip
    except CredentialError as exc:
        log.tokens += exc.tokens
        raise Refused(Reason(exc.rule), str(exc), exc.status) from None
    log.token = credential.token if credential else None
    params = pairs + list(body.fields) if body else pairs
    refuse_method_override(method, headers, params)
    refuse_duplicates(matched, params)
    if credential is not None:
        refuse_token_elsewhere(credential, headers, pairs, body, not is_registry, described_by)
        if not strippable and credential.sources & QUERY_SOURCES:
            raise Refused(Reason.FORWARD_AUTH_UNSTRIPPABLE,
                          "this proxy cannot remove a token from the query: send it in a header")  # fmt: skip
    bearer = bearer_token(request) if is_registry and credential is None else None
    grant = gateway.issuer.verify(bearer, time.time()) if bearer else None
    locator = credential_key(credential.token) if credential else grant.key if grant else None
    action = route.action
    grants = True
    if grant is not None and action is not None:
        grants = grant.allows(matched.params.get("repo", ""), REGISTRY_ACTION_NAMES.get(action, ""))
    authorizer, scope = gateway.authorizer, config.scope
    try:
        if locator is None:  # none at all, or a registry token that failed verification
            outcome = INVALID_REGISTRY_TOKEN if bearer else NO_CREDENTIAL
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
    if route.protocol is RouteProtocol.GIT and decision.target is not None:
        git_path = git_canonical_path(path, matched.params.get("repo", ""), decision.target.path)
        if git_path is None:  # a longer path than the project: another repository
            denied = Decision(Reason.GIT_PATH_NOT_PROJECT, decision.state, action)
            log.record(denied)
            return responses.denial(denied, route.protocol)
        path = git_path
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
    admitted = await evaluate(request, log, gateway, request.method, log.path)
    if not isinstance(admitted, Admitted):  # answered already (a denial, a bad request)
        return admitted
    canonical = admitted.request
    route, credential = canonical.matched.route, canonical.credential
    runtime, metrics = gateway.runtime, gateway.metrics
    if route.local == "job":
        return job_entity(admitted.outcome.decision, runtime.config.web_url, time.time())
    upstream = runtime.config.upstream_for(route.upstream)
    if upstream is None:
        return responses.not_found()
    log.upstream = upstream.name
    pass_token = upstream.pass_token and credential is not None
    if pass_token:
        drop_headers: frozenset[str] = frozenset()
    else:  # a registry token (no credential) travels in Authorization
        drop_headers = carrier_headers(credential.sources) if credential else frozenset({"authorization"})
    if route.protocol is RouteProtocol.REGISTRY:  # a registry token is jobgate's, never the registry's
        drop_headers |= {"authorization"}
    body = canonical.body
    forward = Forward(
        upstream=upstream,
        path=upstream.upstream_path(canonical.path) if upstream.path_rewrite else canonical.path,
        query=filter_query(canonical.raw_query, route.strip_query if pass_token else route.secret_query)
        if canonical.raw_query
        else "",
        drop_headers=drop_headers,
        identity=identity_of(admitted),
        body=None if body is None else body.raw if pass_token else body.stripped,
        body_idle_timeout=runtime.config.body_idle_timeout,
        request_id=log.request_id,  # a client's own: it does not carry the token (refused else)
        trusted_peer=peer_trusted(request.remote, runtime.config.trusted_proxies),
    )
    transfer = Transfer()
    started = time.perf_counter()
    try:
        return await forward_request(runtime.pools[upstream.name], request, forward, transfer)
    except UpstreamError as exc:
        metrics.upstream_errors.labels(upstream.name, exc.kind).inc()
        return responses.upstream_failure(exc.status)
    except ConnectionResetError:
        metrics.upstream_errors.labels(upstream.name, "broken").inc()
        raise
    finally:
        log.upstream_seconds = time.perf_counter() - started
        log.bytes_in, log.bytes_out = transfer.sent, transfer.received
