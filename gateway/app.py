"""Assembles the gateway: the middleware chain, app state keys and resource lifetimes.

A request walks: request id -> access log -> metrics -> normalize + route -> credential
-> one Redis read -> decision -> proxy (or a local answer, or a denial).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping, istr

from . import responses
from .cache import DecisionCache, follow_invalidations
from .config import Config
from .credentials import (
    JOB_TOKEN_HEADER,
    TOKEN_PARAM,
    Credential,
    CredentialError,
    Source,
    extract_credential,
)
from .decision import ALLOWING, Decision, Reason, decide
from .observe import Metrics, RequestLog, access_log, mask
from .protocols import registry
from .proxy import REQUEST_ID, Forward, Transfer, UpstreamError, client_session, filter_query, forward_request
from .requestid import next_request_id
from .routes import Action, PathError, Protocol, RouteMatch, repo_ref, resolve
from .store import Store, StoreUnavailable, TargetRef, connect, credential_key


@dataclass
class Runtime:
    """The config in force and the upstream clients built from it; SIGHUP swaps both."""

    config: Config
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)

    def open_sessions(self, previous: Runtime | None = None) -> list[aiohttp.ClientSession]:
        """Build clients for every upstream, keeping unchanged ones; returns those retired."""
        kept = previous.sessions if previous else {}
        old = previous.config.upstreams if previous else {}
        for name, upstream in self.config.upstreams.items():
            same = name in kept and old.get(name) == upstream
            self.sessions[name] = kept[name] if same else client_session(upstream)
        return [s for name, s in kept.items() if self.sessions.get(name) is not s]


class AccessRecorder:
    """Writes the authentication log (cross-project accesses) off the request path.

    Each (target, source, route) is written at most once a minute per process, in a
    background task: the request never waits for it and a failure only skips a count.
    """

    PERIOD = 60.0

    def __init__(self) -> None:
        self._recent: dict[tuple[int, int, str], float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, store: Store, decision: Decision, route: str) -> None:
        """Count an allowed cross-project access (at most once a minute per key, in the background)."""
        state = decision.state
        source, target = (state.source, state.target) if state is not None else (None, None)
        if source is None or target is None or source.id == target.id:
            return
        key, now = (target.id, source.id, route), time.monotonic()
        if self._recent.get(key, 0.0) > now:
            return
        if len(self._recent) > 10_000:
            self._recent = {k: v for k, v in self._recent.items() if v > now}
        self._recent[key] = now + self.PERIOD
        task = asyncio.ensure_future(self._write(store, *key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _write(store: Store, target: int, source: int, route: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await store.record_access(target, source, route)


class FailureLimiter:
    """Brute-force brake: unknown-token attempts per client IP, counted in Redis.

    Counting happens only on the deny path (one INCR), so allowed requests pay nothing;
    the count is shared by every replica, and a client over the limit is answered 429
    locally until the window ends.
    """

    WINDOW = 60

    def __init__(self) -> None:
        self._blocked: dict[str, float] = {}

    def blocked_for(self, client: str) -> int:
        """Seconds this client stays blocked (0: not blocked)."""
        until = self._blocked.get(client)
        if until is None:
            return 0
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[client]
            return 0
        return int(left) + 1

    async def fail(self, store: Store, client: str, limit: int) -> int:
        """Count a failure; seconds to block when the client went over `limit`, else 0."""
        count = await store.count_failure(client, self.WINDOW)
        if count <= limit:
            return 0
        if len(self._blocked) > 100_000:
            self._blocked.clear()
        self._blocked[client] = time.monotonic() + self.WINDOW
        return self.WINDOW


@dataclass
class Gateway:
    """Everything a gateway request reads, behind one app key (one lookup per request)."""

    runtime: Runtime
    cache: DecisionCache
    metrics: Metrics
    issuer: registry.TokenIssuer
    limiter: FailureLimiter = field(default_factory=FailureLimiter)
    recorder: AccessRecorder = field(default_factory=AccessRecorder)
    store: Store = field(init=False)  # opened with the app (`_store_ctx`)


GATEWAY = web.AppKey("gateway", Gateway)

# Header names as `istr`: multidict takes them without case-folding them again.
IDENTITY_JOB = istr("X-Jobgate-Job-Id")
IDENTITY_PROJECT = istr("X-Jobgate-Project-Id")
IDENTITY_TARGET = istr("X-Jobgate-Target-Project-Id")
IDENTITY_USER = istr("X-Jobgate-User-Id")
IDENTITY_PIPELINE_SOURCE = istr("X-Jobgate-Pipeline-Source")

log = logging.getLogger("jobgate")
Handler = Callable[[web.Request, RequestLog, "Gateway"], Awaitable[web.StreamResponse]]


_NO_QUERY: MultiMapping[str] = MultiDictProxy(MultiDict())
# Enum members read on every request, bound once: on an Enum class that read costs ~100 ns.
_REGISTRY, _SAME_PROJECT = Protocol.REGISTRY, Reason.SAME_PROJECT


def observed(
    handler: Handler, gateway: Gateway
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a gateway handler: request id, in-flight gauge, metrics, one access-log line."""
    metrics = gateway.metrics

    async def observe(request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID, "")
        from_client = 0 < len(request_id) <= 128 and request_id.isascii() and request_id.isprintable()
        if not from_client:
            request_id = next_request_id()
        entry = RequestLog(request_id, request.method, request.raw_path, request.remote)
        if from_client:
            entry.id_from_client = True
        metrics.started()
        try:
            response = await handler(request, entry, gateway)
            entry.status = response.status
            if entry.upstream is None and not response.prepared:  # an answer jobgate gives itself
                entry.bytes_out = response.content_length or 0
        except web.HTTPException as exc:
            entry.status = exc.status
            raise
        except Exception as exc:  # a bug must not show a traceback or the token
            if isinstance(exc, ConnectionResetError):
                entry.status = 499
                raise
            log.error("unhandled %s in request %s", type(exc).__name__, request_id)
            entry.status = 500
            return responses.json_error(500, "500 Internal Server Error")
        finally:
            entry.seconds = time.perf_counter() - entry.started
            metrics.finish(entry)  # counted and logged at the next fold
        if not response.prepared:  # a proxied response carries it already (see Forward)
            response.headers[REQUEST_ID] = request_id
        return response

    return observe


async def _trigger_form(request: web.Request) -> tuple[dict[str, list[str]], Any]:
    """The trigger endpoint's form: its `token` values and the body to forward without them."""
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        raw = (await request.read()).decode("latin-1")
        pairs = parse_qsl(raw, keep_blank_values=True)
        tokens = [v for k, v in pairs if k == TOKEN_PARAM]
        return {TOKEN_PARAM: tokens}, filter_query(raw, {TOKEN_PARAM}).encode("latin-1")
    if ctype == "multipart/form-data":
        post = await request.post()
        form = aiohttp.FormData(default_to_multipart=True)
        tokens = []
        for key, value in post.items():
            if key == TOKEN_PARAM and isinstance(value, str):
                tokens.append(value)
            elif isinstance(value, web.FileField):
                form.add_field(key, value.file.read(), filename=value.filename,
                               content_type=value.content_type)
            else:
                form.add_field(key, value)
        return {TOKEN_PARAM: tokens}, form
    if ctype == "application/json":
        raw_json = await request.read()
        try:
            data = json.loads(raw_json)
        except (ValueError, UnicodeDecodeError):
            raise CredentialError("malformed JSON body") from None
        if not isinstance(data, dict) or TOKEN_PARAM not in data:
            return {}, raw_json
        token = data.pop(TOKEN_PARAM)
        if not isinstance(token, str):
            raise CredentialError("token must be a string")
        return {TOKEN_PARAM: [token]}, json.dumps(data).encode()
    return {}, None


def _identity(decision: Decision, pipeline_source: bool) -> Mapping[str, str]:
    """The identity headers of an allowed decision (made once per decision: see `Decision.derived`)."""
    key = "identity+source" if pipeline_source else "identity"
    made: Mapping[str, str] | None = decision.derived.get(key)
    if made is not None:
        return made
    state = decision.state
    assert state is not None and state.source is not None
    job, target = state.job, state.target
    identity: dict[str, str] = {IDENTITY_PROJECT: str(state.source.id)}
    if job is not None:
        identity[IDENTITY_JOB] = str(job.id)
        identity[IDENTITY_USER] = str(job.user_id)
    elif state.trigger_owner_id is not None:
        identity[IDENTITY_USER] = str(state.trigger_owner_id)
    if target is not None:
        identity[IDENTITY_TARGET] = str(target.id)
    if pipeline_source:
        identity[IDENTITY_PIPELINE_SOURCE] = "pipeline" if job else "trigger"
    decision.derived[key] = identity
    return identity


_CREDENTIAL_HEADERS: dict[frozenset[Source], frozenset[str]] = {}


def _credential_headers(credential: Credential | None) -> frozenset[str]:
    """The request headers that carried the token (a registry token: Authorization)."""
    if credential is None:
        return frozenset({"authorization"})
    drop = _CREDENTIAL_HEADERS.get(credential.sources)
    if drop is None:  # one per combination of sources: a handful
        names = set()
        if Source.HEADER in credential.sources:
            names.add(JOB_TOKEN_HEADER.lower())
        if credential.sources & {Source.BASIC, Source.BEARER}:
            names.add("authorization")
        drop = _CREDENTIAL_HEADERS[credential.sources] = frozenset(names)
    return drop


def job_json(decision: Decision) -> web.Response:
    """`GET /api/v4/job`: the job a valid token belongs to."""
    job = decision.job
    assert job is not None and decision.source is not None
    return web.json_response(
        {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "ref": job.ref,
            "project_id": job.project_id,
            "pipeline": {"id": job.pipeline_id, "project_id": job.project_id, "ref": job.ref},
            "project": {"id": decision.source.id, "path_with_namespace": decision.source.path},
            "user": {"id": job.user_id},
        }
    )


def remembered(gateway: Gateway, action: Action | None, target: TargetRef, locator: str) -> Decision | None:
    """The decision a warm cache gives without Redis (made once per action and entry), or None."""
    entry = gateway.cache.entry((locator, target))
    if entry is None:
        return None
    gateway.metrics.cache_lookups["hit"] += 1
    decision = entry.decisions.get(action)
    now = time.time()
    if decision is None or now >= entry.valid_until:
        decision = entry.decisions[action] = decide(action, entry.state, now, gateway.runtime.config.scope)
    return decision


async def authorize(
    gateway: Gateway, action: Action | None, target: TargetRef, locator: str | None
) -> Decision:
    """Decide for the token's `credential_key`: from a warm cache (`remembered`), else from
    one Redis read (`read_and_decide`); StoreUnavailable fails closed."""
    if locator is None:
        return Decision(Reason.NO_CREDENTIAL, action=action)
    remembered_decision = remembered(gateway, action, target, locator)
    return remembered_decision or await read_and_decide(gateway, action, target, locator)


async def read_and_decide(
    gateway: Gateway, action: Action | None, target: TargetRef, locator: str
) -> Decision:
    """Read the state the token's `credential_key` names, cache it, decide (a cache miss)."""
    cache, metrics = gateway.cache, gateway.metrics
    generation = cache.generation
    started = time.perf_counter()
    state = await gateway.store.read_access_key(locator, target)
    metrics.redis_seconds.observe(time.perf_counter() - started)
    entry = cache.put((locator, target), state, generation)
    metrics.cache_lookups["miss" if cache.available else "bypass"] += 1
    decision = decide(action, state, time.time(), gateway.runtime.config.scope)
    if entry is not None:
        entry.decisions[action] = decision
    return decision


def _registry_grant(request: web.Request, issuer: registry.TokenIssuer) -> registry.Grant | None:
    """The verified registry token a `/v2/` request carries, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return issuer.verify(token.strip(), time.time())


def _realm(request: web.Request, config: Config) -> str:
    base = config.public_url or f"{request.scheme}://{request.host}"
    return base + "/jwt/auth"


async def registry_token(request: web.Request, entry: RequestLog, gateway: Gateway) -> web.Response:
    """`GET /jwt/auth`: trade a job token for a registry token granting what the job may do."""
    config, metrics = gateway.runtime.config, gateway.metrics
    entry.route = "registry_token"
    try:
        credential = extract_credential(
            request.headers, request.query, bearer=False, max_length=config.max_token_length
        )
    except CredentialError as exc:
        return responses.bad_request(str(exc))
    if credential is None:
        return registry.unauthorized()
    entry.token = credential.token
    locator, now = credential_key(credential.token), time.time()
    access: list[dict[str, object]] = []
    try:
        decision = await authorize(gateway, None, TargetRef(), locator)
        entry.record(decision)
        if not decision.allowed:
            return registry.unauthorized()
        for name, actions in registry.parse_scopes(request.query.getall("scope", [])):
            target = repo_ref(name.split("/")) or TargetRef()
            granted = [
                wanted for wanted in actions
                if (await authorize(gateway, registry.ACTIONS[wanted], target, locator)).allowed
            ]  # fmt: skip
            access.append({"type": "repository", "name": name, "actions": granted})
    except StoreUnavailable:
        metrics.redis_errors.inc()
        return responses.unavailable()
    issuer = gateway.issuer
    return registry.token_response(issuer.mint(locator, access, now), issuer.ttl, now)


@dataclass(slots=True)
class Verdict:
    """One evaluated request: where it goes, what carried the token, and the decision."""

    matched: RouteMatch
    decision: Decision
    credential: Credential | None
    path: str  # the canonical path the upstream receives
    body: Any = None  # the trigger form without its token, when one was read


async def evaluate(
    request: web.Request, entry: RequestLog, gateway: Gateway, method: str, target: str,
    query: MultiMapping[str], read_body: bool = True,
) -> Verdict | web.Response:
    """Normalize, route, authenticate and authorize `method target`; an early answer or a verdict.

    `target` is the raw path and query of the request being judged: the request's own for
    the gateway, the original request's in forward-auth mode (`read_body` False there).
    """
    config, metrics = gateway.runtime.config, gateway.metrics
    client = entry.remote or ""
    limit = config.failed_auth_per_minute
    if limit and (blocked := gateway.limiter.blocked_for(client)):
        metrics.rate_limited.inc()
        entry.reason = "rate_limited"
        return responses.too_many(blocked)
    try:
        matched, path = resolve(method, target.partition("?")[0], query)
    except PathError as exc:
        return responses.bad_request(str(exc))
    if matched is None:
        return responses.not_found()
    route = matched.route
    entry.route = route.name
    is_registry = route.protocol is _REGISTRY
    try:
        form, body = await _trigger_form(request) if route.token_param and read_body else (None, None)
        credential = extract_credential(
            request.headers, query, token_param=route.token_param, form=form,
            bearer=not is_registry, max_length=config.max_token_length,
        )
    except CredentialError as exc:
        return responses.bad_request(str(exc))
    entry.token = credential.token if credential else None
    grant = _registry_grant(request, gateway.issuer) if is_registry and credential is None else None
    locator = credential_key(credential.token) if credential else grant.key if grant else None
    try:
        if locator is None:
            decision = await authorize(gateway, route.action, matched.target, None)
            if is_registry and credential is None and registry.bearer_token(request.headers):
                decision = Decision(Reason.INVALID_REGISTRY_TOKEN, action=route.action)
        else:  # `authorize` spelled out: a warm cache answers without a coroutine (most requests)
            decision = (remembered(gateway, route.action, matched.target, locator)
                        or await read_and_decide(gateway, route.action, matched.target, locator))  # fmt: skip
        if limit and decision.reason is Reason.UNKNOWN_TOKEN:
            blocked = await gateway.limiter.fail(gateway.store, client, limit)
            if blocked:
                metrics.rate_limited.inc()
                entry.record(decision)
                return responses.too_many(blocked)
    except StoreUnavailable:
        metrics.redis_errors.inc()
        entry.reason = "store_unavailable"
        return responses.unavailable()
    allowed = decision.reason in ALLOWING
    if allowed and grant is not None and not grant.allows(matched.params.get("repo", ""), route.action):
        decision, allowed = Decision(Reason.INSUFFICIENT_TOKEN_SCOPE, decision.state, route.action), False
    entry.record(decision)
    if not allowed:
        repository = matched.params.get("repo", "")
        wanted = registry.ACTION_NAMES.get(route.action.name, "") if route.action else ""
        scope = f"repository:{repository}:{wanted}" if repository and wanted else None
        return responses.denial(decision, route.protocol, config.explain, _realm(request, config), scope)
    if decision.reason is not _SAME_PROJECT:  # only cross-project accesses are recorded
        gateway.recorder.note(gateway.store, decision, route.name)
    return Verdict(matched, decision, credential, path, body)


async def handle(request: web.Request, entry: RequestLog, gateway: Gateway) -> web.StreamResponse:
    """Route, authenticate, authorize, then proxy or deny one gateway request."""
    raw_path = entry.path
    query = request.query if "?" in raw_path else _NO_QUERY  # no parsing for a plain path
    verdict = await evaluate(request, entry, gateway, request.method, raw_path, query)
    if not isinstance(verdict, Verdict):  # answered already (a denial, a bad request)
        return verdict
    runtime, metrics = gateway.runtime, gateway.metrics
    route, credential, decision = verdict.matched.route, verdict.credential, verdict.decision
    if route.local == "job":
        return job_json(decision)
    upstream = runtime.config.upstreams.get(route.upstream)
    if upstream is None:
        return responses.not_found()
    entry.upstream = upstream.name
    pass_token = upstream.pass_token and credential is not None
    raw_query = raw_path.partition("?")[2] if query is not _NO_QUERY else ""
    forward = Forward(
        upstream=upstream,
        path=upstream.upstream_path(verdict.path) if upstream.path_rewrite else verdict.path,
        query=filter_query(raw_query, route.strip_query if pass_token else route.secret_query)
        if raw_query else "",
        drop_headers=frozenset() if pass_token else _credential_headers(credential),
        identity=_identity(decision, route.pipeline_source),
        body=verdict.body,
        body_idle_timeout=runtime.config.body_idle_timeout,
        # a client's own id goes upstream too, with any token in it masked
        request_id=mask(entry.request_id, credential.token if credential else None)
        if entry.id_from_client else entry.request_id,
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
        entry.upstream_seconds = time.perf_counter() - started
        entry.bytes_in, entry.bytes_out = transfer.sent, transfer.received


FORWARD_AUTH_PATH = "/-/auth"


async def forward_auth(request: web.Request, entry: RequestLog, gateway: Gateway) -> web.StreamResponse:
    """Forward-auth mode: judge the original request a proxy describes, forward nothing.

    nginx `auth_request` sends `X-Original-Method`/`X-Original-URI`; Traefik ForwardAuth
    `X-Forwarded-Method`/`X-Forwarded-Uri`; Envoy ext_authz (HTTP) the original method
    with the original path after `/-/auth` (its `path_prefix`). Allowed: 200 with the
    identity headers. Denied: the gateway's own denial, except that nginx gets 403 for it
    (auth_request treats any status but 2xx/401/403 as an error; the shipped nginx snippet
    turns 403 back into the uniform 404).
    """
    headers = request.headers
    nginx = "X-Original-URI" in headers
    if nginx:
        method, target = headers.get("X-Original-Method", "GET"), headers["X-Original-URI"]
    elif "X-Forwarded-Uri" in headers:
        method, target = headers.get("X-Forwarded-Method", "GET"), headers["X-Forwarded-Uri"]
    else:
        method, target = request.method, request.raw_path.removeprefix(FORWARD_AUTH_PATH) or "/"
    method = method.upper()
    if not target.startswith("/"):
        return responses.bad_request("the original URI must be a path")
    query: MultiMapping[str] = MultiDict(parse_qsl(target.partition("?")[2], keep_blank_values=True))
    verdict = await evaluate(request, entry, gateway, method, target, query, read_body=False)
    if not isinstance(verdict, Verdict):
        if nginx and verdict.status not in (200, 401):
            return web.Response(status=403, body=verdict.body, content_type="application/json")
        return verdict
    route = verdict.matched.route
    identity = {**_identity(verdict.decision, route.pipeline_source), "X-Jobgate-Route": route.name}
    return web.Response(status=200, headers=identity)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    redis = gateway.runtime.config.redis
    gateway.store = Store(connect(redis.effective_url, redis.timeout), redis.key_prefix)
    yield
    await gateway.store.close()


async def _cache_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    if not gateway.cache.enabled:
        yield
        return
    follower = asyncio.ensure_future(follow_invalidations(gateway.cache, gateway.store))
    yield
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[GATEWAY].runtime
    runtime.open_sessions()
    yield
    for session in runtime.sessions.values():
        await session.close()


async def _fold_metrics(app: web.Application) -> None:
    app[GATEWAY].metrics.fold()  # a stopping worker's last requests are counted and logged


def build_gateway(config: Config, metrics: Metrics | None = None) -> web.Application:
    """The gateway application: every path goes through `handle`."""
    app = web.Application(client_max_size=config.max_form_body)
    gateway = app[GATEWAY] = Gateway(
        runtime=Runtime(config),
        cache=DecisionCache(config.cache.ttl, config.cache.max_entries),
        metrics=metrics or Metrics(),
        issuer=registry.issuer_for(config.registry),
    )
    gateway.metrics.log = access_log
    app.cleanup_ctx.extend([_store_ctx, _cache_ctx, _sessions_ctx])
    app.on_cleanup.append(_fold_metrics)
    app.router.add_get("/jwt/auth", observed(registry_token, gateway))
    app.router.add_route("*", FORWARD_AUTH_PATH, observed(forward_auth, gateway))
    app.router.add_route("*", FORWARD_AUTH_PATH + "/{tail:.*}", observed(forward_auth, gateway))
    app.router.add_route("*", "/{tail:.*}", observed(handle, gateway))
    return app
