"""The floor for a Python proxy: jobgate's own streaming code with no authentication at all.

python bench/bare_proxy.py PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from gateway.config import UpstreamConfig
from gateway.proxy import Forward, forward_request
from gateway.relay import Transfer
from gateway.upstream import Pool

SESSION = web.AppKey("session", object)


def main() -> None:
    port, upstream_url = int(sys.argv[1]), sys.argv[2]
    upstream = UpstreamConfig(name="bench", url=upstream_url)

    async def handle(request: web.Request) -> web.StreamResponse:
        forward = Forward(upstream=upstream, path=request.path, query=request.query_string)
        return await forward_request(request.app[SESSION], request, forward, Transfer())  # type: ignore[arg-type]

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = Pool(upstream)
        yield
        await app[SESSION].close()  # type: ignore[attr-defined]

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
