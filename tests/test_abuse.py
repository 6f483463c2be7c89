"""Abuse over raw sockets: smuggling, path tricks and duplicate parameters never reach a wrong place."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RecordingUpstream, World, raw_request

PKG = "/api/v4/projects/1/packages/generic/a/1/a"


@pytest.mark.parametrize(
    ("name", "headers", "body"),
    [
        ("content-length and transfer-encoding", {"Content-Length": "5", "Transfer-Encoding": "chunked"},
         b"0\r\n\r\nGET /api/v4/projects/2/packages/x HTTP/1.1\r\n\r\n"),
        ("two different content-lengths", {"Content-Length": "5\r\nContent-Length: 40"}, b"hello"),
        ("transfer-encoding not chunked last", {"Transfer-Encoding": "chunked, identity"},
         b"5\r\nhello\r\n0\r\n\r\n"),
        ("obsolete line folding", {"X-Folded": "a\r\n b"}, b""),
        ("space before colon", {"Content-Length ": "3"}, b"abc"),
    ],
)  # fmt: skip
async def test_request_smuggling_is_rejected(
    gateway: Any, upstream: RecordingUpstream, world: World, name: str, headers: dict[str, str], body: bytes
) -> None:
    headers = {"JOB-TOKEN": world.tokens["100"], **headers}
    status, _ = await raw_request(gateway, f"PUT {PKG} HTTP/1.1", headers, body)
    assert status == 400, name
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("GET /API/v4/projects/1/packages/generic/a/1/a HTTP/1.1", 404),  # case changes match nothing
        ("GET /api/v4/projects/1;x=2/packages/generic/a/1/a HTTP/1.1", 404),  # `;` is not a separator
        ("GET /api/v4/projects/1/packages/generic/a/1/a/. HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/generic/a/1/a%2F..%2F..%2F2 HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/generic/a/1/a%5C..%5C..%5C2 HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/npm/@scope%2Fpkg HTTP/1.1", 200),
        ("GET /api/v4/projects/%31/packages/generic/a/1/a HTTP/1.1", 200),  # %31 is 1, forwarded as 1
        ("GET /api/v4/projects/1/packages/generic/a/1/a?job_token=x&job_token=y HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/generic/" + "a/" * 3000 + "a HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/generic/a/1/a%00 HTTP/1.1", 400),
        ("GET /api/v4/projects/1/packages/generic/a/1/a%C0%AF HTTP/1.1", 400),  # overlong UTF-8 '/'
    ],
)
async def test_path_tricks_never_change_the_target(
    gateway: Any, upstream: RecordingUpstream, world: World, request_line: str, status: int
) -> None:
    got, _ = await raw_request(gateway, request_line, {"JOB-TOKEN": world.tokens["100"]})
    assert got == status
    if status == 200:
        assert upstream.last.path_qs in (PKG, "/api/v4/projects/1/packages/npm/@scope%2Fpkg")
        assert upstream.last.headers["x-jobgate-target-project-id"] == ["1"]
    else:
        assert upstream.requests == []
