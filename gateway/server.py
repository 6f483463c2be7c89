"""Runs the three listeners (gateway, admin, metrics), signals and the private Redis."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from contextlib import suppress

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admin import build_admin
from .app import METRICS, RUNTIME, STORE, Runtime, build_gateway
from .config import PRIVATE_REDIS_URL, Address, Config, ConfigError, load_config
from .devredis import RedisProcess
from .observe import Metrics
from .store import Store

log = logging.getLogger("jobgate")
HEALTH_STORE = web.AppKey("health_store", Store)
HEALTH_METRICS = web.AppKey("health_metrics", Metrics)
DRAIN_SECONDS = 30.0


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[HEALTH_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readiness(request: web.Request) -> web.Response:
    if await request.app[HEALTH_STORE].ping():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "redis unreachable"}, status=503)


def build_metrics_app(store: Store, metrics: Metrics) -> web.Application:
    """`/metrics`, `/-/health` (process up) and `/-/readiness` (Redis reachable)."""
    app = web.Application()
    app[HEALTH_STORE] = store
    app[HEALTH_METRICS] = metrics
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/health", _health)
    app.router.add_get("/-/readiness", _readiness)
    return app


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    return context


async def _start(app: web.Application, address: Address, **kw: object) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, address.host, address.port, **kw).start()  # type: ignore[arg-type]
    return runner


_closing: set[asyncio.Task[None]] = set()


def _close_later(session: aiohttp.ClientSession) -> None:
    task = asyncio.ensure_future(session.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def reload_config(app: web.Application, path: str) -> bool:
    """Validate `path` and swap it in; on any problem keep serving the old config."""
    runtime = app[RUNTIME]
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("reload rejected, keeping the old config: %s", problem)
        return False
    fresh = Runtime(config)
    retired = fresh.open_sessions(runtime)
    runtime.config, runtime.sessions = fresh.config, fresh.sessions
    loop = asyncio.get_running_loop()
    for session in retired:  # let requests in flight on the old clients finish
        loop.call_later(DRAIN_SECONDS, _close_later, session)
    log.info("config reloaded from %s", path)
    return True


async def serve(config: Config, config_path: str) -> int:
    """Serve until SIGTERM/SIGINT, draining in-flight requests; SIGHUP reloads the config."""
    private = None
    if config.redis.url is None:
        port = int(PRIVATE_REDIS_URL.rsplit(":", 1)[1].split("/")[0])
        private = await asyncio.to_thread(RedisProcess(port).start)
        log.info("started a private redis-server at %s", private.url)
    metrics = Metrics()
    gateway = build_gateway(config, metrics)
    runners = [await _start(gateway, config.listen, ssl_context=_tls_context(config))]
    store = gateway[STORE]
    if config.admin_listen and config.admin_token:
        runners.append(await _start(build_admin(store, config.admin_token), config.admin_listen))
    if config.metrics_listen:
        runners.append(await _start(build_metrics_app(store, gateway[METRICS]), config.metrics_listen))
    log.info("jobgate listening on %s", config.listen)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_config(gateway, config_path))
    try:
        await stop.wait()
        log.info("draining in-flight requests")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if private is not None:
            with suppress(Exception):
                await asyncio.to_thread(private.stop)
    return 0
