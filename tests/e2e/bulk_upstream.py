"""A bulk upstream: GET streams ?size= zero bytes (with Content-Length), PUT/POST count bytes."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

BLOCK = b"\0" * (1 << 20)


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    await asyncio.sleep(float(request.query.get("delay", "0")))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    left = size
    while left > 0:
        chunk = BLOCK[: min(left, len(BLOCK))]
        await response.write(chunk)
        left -= len(chunk)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.json_response({"received": total})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/{tail:.*}", download)
    app.router.add_route("PUT", "/{tail:.*}", upload)
    app.router.add_route("POST", "/{tail:.*}", upload)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
