"""The baseline a user would write in an afternoon: a plain aiohttp pass-through proxy.

    python bench/naive_proxy.py PORT UPSTREAM_URL

One shared ClientSession, request and response headers copied minus hop-by-hop ones,
bodies streamed with `iter_chunked(65536)`, the default asyncio event loop. No
authentication, no log, no metrics: what jobgate is measured against.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
SESSION = web.AppKey("session", aiohttp.ClientSession)


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.body_exists else None
        async with request.app[SESSION].request(
            request.method, upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
