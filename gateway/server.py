"""Runs the listeners (gateway, admin, metrics), worker processes, signals and the private Redis.

One process (`--workers 1`) serves all three listeners. With N workers the parent keeps
the admin and metrics listeners and forks N workers that share the gateway port through
SO_REUSEPORT; their metrics meet in prometheus-client's multiprocess directory, which the
parent's `/metrics` reads. SIGTERM drains (parent forwards it); SIGHUP reloads (the parent
checks the file once and announces it, then forwards it to the workers, which apply it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import ssl
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from .admin import build_admin, set_admin_token
from .app import GATEWAY, build_gateway
from .config import PRIVATE_REDIS_URL, Address, Config, ConfigError, load_config, restart_keys
from .devredis import PortTaken, RedisNotInstalled, RedisProcess
from .protocols.registry import TokenIssuer, issuer_for
from .signing import SigningKeyError, ensure_key_file, load_key
from .store import Store, connect
from .upstream import Pool

log = logging.getLogger("jobgate")
HEALTH_STORE = web.AppKey("health_store", Store)
HEALTH_REGISTRY = web.AppKey("health_registry", CollectorRegistry)
DRAIN_SECONDS = 30.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[HEALTH_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readiness(request: web.Request) -> web.Response:
    if await request.app[HEALTH_STORE].ping():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "redis unreachable"}, status=503)


def build_metrics_app(store: Store, registry: CollectorRegistry) -> web.Application:
    """`/metrics`, `/-/health` (process up) and `/-/readiness` (Redis reachable)."""
    app = web.Application()
    app[HEALTH_STORE] = store
    app[HEALTH_REGISTRY] = registry
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


async def _start(
    app: web.Application, address: Address, idle_timeout: float = 75.0, **kw: Any
) -> web.AppRunner:
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=DRAIN_SECONDS,
        keepalive_timeout=idle_timeout,  # aiohttp also applies it before the first request
    )  # fmt: skip
    await runner.setup()
    await web.TCPSite(runner, address.host, address.port, **kw).start()
    return runner


_closing: set[asyncio.Task[None]] = set()


def _close_later(pool: Pool) -> None:
    task = asyncio.ensure_future(pool.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class Reloader:
    """SIGHUP in one process: read and check the file once, apply it to everything this
    process serves (gateway, admin token, signing key), keep the old config on any problem.

    The process that announces (the single process, or the `--workers` parent) writes the
    one log line, counts the one reload and names the keys that need a restart; a worker
    applies what its parent announced, silently.
    """

    def __init__(self, path: str, started: Config, reloads: Counter | None) -> None:
        self.path = path
        self.started = started  # the listeners, TLS and Redis in force until a restart
        self.reloads = reloads  # None: a worker, whose parent announces
        self.gateway: web.Application | None = None
        self.admin: web.Application | None = None

    def __call__(self) -> bool:
        """Reload now; False when the file was rejected (the old config stays in force)."""
        issuer = None
        try:
            config = load_config(self.path)
            if self.reloads is not None:  # created here, before any worker reads it
                ensure_key_file(config.registry.signing_key_file)
            if self.gateway is not None:
                issuer = issuer_for(config.registry)  # the key file is read again
            else:
                load_key(config.registry.signing_key_file)
        except (ConfigError, SigningKeyError) as exc:
            for problem in exc.problems if isinstance(exc, ConfigError) else [str(exc)]:
                log.error("reload rejected, keeping the old config: %s", problem)
            if self.reloads is not None:
                self.reloads.labels("rejected").inc()
            return False
        if self.gateway is not None and issuer is not None:
            _apply_to_gateway(self.gateway, config, issuer)
        if self.admin is not None and config.admin_token:
            set_admin_token(self.admin, config.admin_token)
        if self.reloads is not None:
            restart = restart_keys(self.started, config)
            needs = f"; not applied, needs a restart: {', '.join(restart)}" if restart else ""
            log.info("config reloaded from %s%s", self.path, needs)
            self.reloads.labels("applied").inc()
        return True


def _apply_to_gateway(app: web.Application, config: Config, issuer: TokenIssuer) -> None:
    gateway = app[GATEWAY]
    runtime = gateway.runtime
    retired = runtime.apply(config)
    gateway.issuer = issuer
    if gateway.cache.enabled and config.cache.ttl > 0:  # turning it on or off needs a restart
        gateway.cache.ttl, gateway.cache.max_entries = config.cache.ttl, config.cache.max_entries
    gateway.cache.flush()  # remembered decisions were made under the old scope settings
    loop = asyncio.get_running_loop()
    for pool in retired:  # let requests in flight on the old pools finish
        loop.call_later(DRAIN_SECONDS, _close_later, pool)


def reload_config(app: web.Application, path: str) -> bool:
    """Validate `path` and swap it into the gateway `app`; on any problem keep the old config."""
    reloader = Reloader(path, app[GATEWAY].runtime.config, app[GATEWAY].metrics.reloads)
    reloader.gateway = app
    return reloader()


def _multiprocess_registry() -> CollectorRegistry:
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def serve(config: Config, config_path: str, *, gateway: bool = True, control: bool = True,
                reuse_port: bool = False, stop: asyncio.Event | None = None,
                reloader: Reloader | None = None) -> int:  # fmt: skip
    """Serve the gateway and/or the control listeners until SIGTERM/SIGINT, then drain.

    With `stop` given, the caller owns the signals (SIGHUP: `reloader`) and sets it to stop.
    """
    runners: list[web.AppRunner] = []
    app: web.Application | None = None
    if gateway:
        app = build_gateway(config)
        runners.append(
            await _start(
                app,
                config.listen,
                config.idle_timeout,
                ssl_context=_tls_context(config),
                reuse_port=reuse_port or None,
            )
        )
        store = app[GATEWAY].store
        registry = app[GATEWAY].metrics.registry
    else:
        store = Store(connect(config.redis.effective_url, config.redis.timeout), config.redis.key_prefix)
        registry = _multiprocess_registry()
    if reloader is None:  # the single process announces its reloads; a worker does not
        reloader = Reloader(config_path, config, app[GATEWAY].metrics.reloads if app and control else None)
    reloader.gateway = app
    if control and config.admin_listen and config.admin_token:
        reloader.admin = build_admin(store, config.admin_token)
        runners.append(await _start(reloader.admin, config.admin_listen))
    if control and config.metrics_listen:
        runners.append(await _start(build_metrics_app(store, registry), config.metrics_listen))
    if gateway:
        log.info("jobgate listening on %s (pid %d)", config.listen, os.getpid())
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's way, so a full collection walks only what requests left behind.
    gc.collect()
    gc.freeze()

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reloader)
    try:
        await stop.wait()
        log.info("draining in-flight requests")
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        if app is None:
            await store.close()
    return 0


def _run(coroutine: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _spawn_worker(config: Config, config_path: str) -> int:
    pid = os.fork()
    if pid == 0:  # the worker: the gateway listener only, sharing the port
        code = 1
        try:
            code = _run(serve(config, config_path, control=False, reuse_port=True))
        finally:
            os._exit(code)
    return pid


async def _supervise(config: Config, config_path: str, workers: list[int]) -> int:
    """The parent of N workers: control listeners, signal forwarding, exit when one dies."""
    loop = asyncio.get_running_loop()
    forward = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGTERM}
    stop = asyncio.Event()
    reloader = Reloader(config_path, config, _reloads_counter())
    control = asyncio.ensure_future(serve(config, config_path, gateway=False, stop=stop, reloader=reloader))
    for received, sent in forward.items():
        loop.add_signal_handler(received, _forwarder(workers, sent, stop if sent is signal.SIGTERM else None))
    hup = _forwarder(workers, signal.SIGHUP, None)
    loop.add_signal_handler(signal.SIGHUP, lambda: reloader() and hup())  # workers apply what was checked
    code = 0
    while not stop.is_set():
        await asyncio.sleep(0.2)
        for pid in list(workers) if not stop.is_set() else []:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                workers.remove(pid)
                _mark_dead(pid)
                log.error("worker %d exited (status %d): stopping", pid, status)
                code = 1
                stop.set()
                _forwarder(workers, signal.SIGTERM, None)()
    deadline = loop.time() + DRAIN_SECONDS + 5
    while workers and loop.time() < deadline:
        for pid in list(workers):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                workers.remove(pid)
                _mark_dead(pid)
                code = code or (1 if os.waitstatus_to_exitcode(status) else 0)
        await asyncio.sleep(0.1)
    for pid in workers:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await control
    return code


def _reloads_counter() -> Counter:
    """The parent's `jobgate_config_reloads_total` (its workers do not count reloads)."""
    return Counter("jobgate_config_reloads_total", "Config reloads (SIGHUP) by result: applied or rejected.",
                   ["result"], registry=None)  # fmt: skip


def _mark_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _forwarder(workers: list[int], sig: signal.Signals, stop: asyncio.Event | None) -> Any:
    def forward() -> None:
        if stop is not None:
            stop.set()
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)

    return forward


def run(config: Config, config_path: str, workers: int) -> int:
    """`jobgate serve`: one process, or a parent with `workers` forked gateway workers."""
    key_file = config.registry.signing_key_file
    try:  # before any fork: every worker signs with the one key in this file
        if ensure_key_file(key_file):
            log.info("created the registry signing key %s", key_file)
        load_key(key_file)
    except SigningKeyError as exc:
        log.error("%s", exc)
        return 2
    private = None
    if config.redis.url is None:
        port = int(PRIVATE_REDIS_URL.rsplit(":", 1)[1].split("/")[0])
        try:
            private = RedisProcess(port).start()
        except RedisNotInstalled as exc:
            log.error("no redis.url in %s and %s", config_path, exc)
            return 2
        except PortTaken:
            log.error(
                "no redis.url in %s, and the private redis-server's port 127.0.0.1:%d is taken (another "
                "jobgate serve?): stop what listens there, or set redis.url to the Redis to use",
                config_path, port,
            )  # fmt: skip
            return 2
        except RuntimeError as exc:
            log.error("the private redis-server did not start: %s", exc)
            return 2
        log.info("started a private redis-server at %s", private.url)
    try:
        if workers <= 1:
            return _run(serve(config, config_path))
        pids = [_spawn_worker(config, config_path) for _ in range(workers)]
        log.info("started %d workers on %s: %s", workers, config.listen, pids)
        return _run(_supervise(config, config_path, pids))
    finally:
        if private is not None:
            private.stop()
