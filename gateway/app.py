"""The gateway application, assembled: its state, its resources' lifetimes, its routes.

Every request goes through `observed` (request id, in-flight gauge, metrics, one
access-log line) to one of three handlers: the registry's token endpoint, forward-auth,
or the pipeline (docs/design.md walks one request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import responses
from .authorize import Authorizer
from .cache import DecisionCache, follow_invalidations
from .config import Config
from .credentials import candidate_tokens, parse_query
from .observe import Metrics, RequestLog, access_log, mask
from .pipeline import Gateway, handle
from .protocols import registry
from .protocols.forward_auth import FORWARD_AUTH_PATH, forward_auth
from .proxy import REQUEST_ID, client_address
from .requestid import next_request_id
from .runtime import Runtime
from .store import Store, connect

GATEWAY = web.AppKey("gateway", Gateway)

log = logging.getLogger("jobgate")
Handler = Callable[[web.Request, RequestLog, Gateway], Awaitable[web.StreamResponse]]


def observed(handler: Handler, gateway: Gateway) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a gateway handler: request id, in-flight gauge, metrics, one access-log line."""
    metrics = gateway.metrics

    async def observe(request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID, "")
        from_client = 0 < len(request_id) <= 128 and request_id.isascii() and request_id.isprintable()
        if not from_client:
            request_id = next_request_id()
        trusted = gateway.runtime.config.trusted_proxies
        remote = client_address(request.remote, request.headers, trusted) if trusted else request.remote
        request_log = RequestLog(request_id, request.method, request.raw_path, remote)
        if from_client:
            request_log.id_from_client = True
        metrics.started()
        try:
            response = await handler(request, request_log, gateway)
            request_log.status = response.status
            if request_log.upstream is None and not response.prepared:  # an answer jobgate gives itself
                request_log.bytes_out = response.content_length or 0
        except web.HTTPException as exc:
            request_log.status = exc.status
            raise
        except Exception as exc:  # a bug must not show a traceback or the token
            if isinstance(exc, ConnectionResetError):
                request_log.status = 499
                raise
            if not request_log.secrets:  # failed before the credential was read: read its places now
                request_log.tokens = candidate_tokens(request.headers, parse_query(request.query_string))
            shown = mask(request_id, *request_log.secrets) if from_client else request_id
            log.error("unhandled %s in request %s", type(exc).__name__, shown)
            request_log.status = 500
            return responses.json_error(500, "500 Internal Server Error")
        finally:
            request_log.seconds = time.perf_counter() - request_log.started
            metrics.finish(request_log)  # counted and logged at the next fold
        if not response.prepared:  # a proxied response carries it already (see proxy.Forward)
            shown = mask(request_id, *request_log.secrets) if from_client else request_id
            response.headers[REQUEST_ID] = shown
        return response

    return observe


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    redis = gateway.runtime.config.redis
    store = gateway.authorizer.store = Store(connect(redis.effective_url, redis.timeout), redis.key_prefix)
    yield
    await store.close()


async def _cache_ctx(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    if not gateway.cache.enabled:
        yield
        return
    lease = gateway.runtime.config.redis.timeout  # a ping answered at least this often
    follower = asyncio.ensure_future(follow_invalidations(gateway.cache, gateway.store, lease))
    yield
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower


async def _pools_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[GATEWAY].runtime
    runtime.open_pools()
    yield
    await runtime.close()


async def _fold_metrics(app: web.Application) -> None:
    app[GATEWAY].metrics.fold()  # a stopping worker's last requests are counted and logged


def build_gateway(config: Config, metrics: Metrics | None = None) -> web.Application:
    """The gateway application: the token endpoint, forward-auth, and every other path to the pipeline."""
    app = web.Application(client_max_size=config.max_form_body)
    metrics = metrics or Metrics()
    cache = DecisionCache(config.cache.ttl, config.cache.max_entries, lookups=metrics.cache_lookups)
    cache.on_lapse = metrics.lease_lapses.inc
    gateway = app[GATEWAY] = Gateway(
        runtime=Runtime(config),
        authorizer=Authorizer(cache, metrics),
        metrics=metrics,
        issuer=registry.issuer_for(config.registry),
    )
    metrics.log = access_log
    app.cleanup_ctx.extend([_store_ctx, _cache_ctx, _pools_ctx])
    app.on_cleanup.append(_fold_metrics)
    app.router.add_get("/jwt/auth", observed(registry.jwt_auth, gateway))
    app.router.add_route("*", FORWARD_AUTH_PATH, observed(forward_auth, gateway))
    app.router.add_route("*", FORWARD_AUTH_PATH + "/{tail:.*}", observed(forward_auth, gateway))
    app.router.add_route("*", "/{tail:.*}", observed(handle, gateway))
    return app
