# ruff: noqa: RUF001, RUF003
"""Hostile input to the control plane: a 4xx naming the field, never a traceback, nothing written."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.admin import build_admin
from gateway.devredis import RedisProcess
from gateway.store import ControlError, Store, connect

ADMIN = {"Authorization": "Bearer admin-secret"}
SCRIPT_HASH = re.compile(r"\b[0-9a-f]{40}\b")
NOT_JSON = object()  # a marker: send the value as the raw body


async def snapshot(store: Store) -> dict[bytes, bytes | None]:
    """Every key and its DUMP: two equal snapshots mean Redis was not changed."""
    keys = [key async for key in store.client.scan_iter(count=1000)]
    return {key: await store.client.dump(key) for key in sorted(keys)}


async def seed(store: Store) -> None:
    await store.client.flushdb()
    await store.set_project(1, "g/app", "private")
    await store.set_project(2, "g/lib", "private")
    await store.set_member(1, 7, 30)
    await store.start_job(100, 1, 7)


Send = Callable[[str, str, Any], Awaitable[tuple[int, str, bool]]]


@pytest.fixture
def admin_api(redis_server: RedisProcess) -> Iterator[Send]:
    """send(method, path, body) -> (status, body text, Redis unchanged) over one event loop."""
    with asyncio.Runner() as runner:
        store = Store(connect(redis_server.url, 2.0))

        async def start() -> TestClient:
            client = TestClient(TestServer(build_admin(store, "admin-secret")))
            await client.start_server()
            await seed(store)
            return client

        client = runner.run(start())

        async def send(method: str, path: str, body: Any) -> tuple[int, str, bool]:
            before = await snapshot(store)
            if body is None:
                kwargs: dict[str, Any] = {}
            elif isinstance(body, str | bytes):
                kwargs = {"data": body}
            else:
                kwargs = {"data": json.dumps(body), "headers": {**ADMIN, "Content-Type": "application/json"}}
            kwargs.setdefault("headers", ADMIN)
            resp = await client.request(method, path, **kwargs)
            text = await resp.text()
            return resp.status, text, await snapshot(store) == before

        def run(method: str, path: str, body: Any) -> tuple[int, str, bool]:
            return runner.run(send(method, path, body))

        yield run  # type: ignore[misc]
        runner.run(client.close())
        runner.run(store.close())


DEEP = "[" * 60_000 + "]" * 60_000


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/admin/v1/jobs", '{"id": 5, "project": 1, "user": 7, "timeout": NaN}', "NaN"),
        ("POST", "/admin/v1/jobs", '{"id": 5, "project": 1, "user": 7, "timeout": Infinity}', "Infinity"),
        ("POST", "/admin/v1/jobs", '{"id": 5, "project": 1, "user": 7, "timeout": -Infinity}', "Infinity"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "timeout": 1e300}, "timeout"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "timeout": 10**400}, "timeout"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "timeout": 0}, "timeout"),
        ("POST", "/admin/v1/jobs", {"id": "١٢٣", "project": 1, "user": 7}, "id"),
        ("POST", "/admin/v1/jobs", {"id": "１２３", "project": 1, "user": 7}, "id"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": "١", "user": 7}, "project"),
        ("POST", "/admin/v1/jobs", {"id": 5.0, "project": 1, "user": 7}, "id"),
        ("POST", "/admin/v1/jobs", {"id": 2**63, "project": 1, "user": 7}, "id"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "name": "\ud800"}, "name"),
        ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "pipeline": [1]}, "pipeline"),
        ("POST", "/admin/v1/jobs", DEEP[:65_000], "JSON"),
        ("POST", "/admin/v1/jobs", '{"id": ' + "[" * 30_000 + "]" * 30_000 + "}", "JSON"),
        ("POST", "/admin/v1/jobs/%D9%A1%D9%A0%D9%A0/finish", {}, "id"),  # ١٠٠ is not job 100
        ("POST", "/admin/v1/jobs/100/finish", {"status": ["success"]}, "status"),
        ("PUT", "/admin/v1/projects/%D9%A1", {"path": "g/x", "visibility": "private"}, "id"),
        ("PUT", "/admin/v1/projects/1/members/%EF%BC%97", {"access_level": 20}, "user"),
        ("PUT", "/admin/v1/projects/1/members/7", {"access_level": "٣٠"}, "access_level"),
        ("PUT", "/admin/v1/projects/1/members/7", {"access_level": 1e300}, "access_level"),
        ("PUT", "/admin/v1/projects/2/inbound/%D9%A1", None, "inbound source"),
        ("POST", "/admin/v1/triggers", {"project": 1, "owner": "٧"}, "owner"),
        ("POST", "/admin/v1/triggers/revoke", {"token": "\udc80\ud800"}, "token"),
    ],
)  # fmt: skip
def test_hostile_admin_input_is_a_4xx_naming_the_field_and_writes_nothing(
    admin_api: Any, method: str, path: str, body: Any, field: str
) -> None:
    status, text, unchanged = admin_api(method, path, body)
    assert status == 400, (status, text)
    assert field in json.loads(text)["message"]
    assert "Traceback" not in text and not SCRIPT_HASH.search(text)
    assert unchanged, "a refused write changed Redis"


async def test_a_refused_job_start_leaves_no_job_behind(store: Store) -> None:
    """Regression: timeout 1e300 used to leave a `running` job with no expiry."""
    await store.set_project(1, "g/app", "private")
    for timeout in (1e300, float("inf"), float("nan"), 10**400, -1.0):
        with pytest.raises(ControlError, match="timeout"):
            await store.start_job(5, 1, 7, timeout=timeout)
        assert not await store.client.exists("{jobgate}:job:5")


async def test_a_script_failure_shows_no_script_hash(store: Store) -> None:
    """A script that fails to run is a StoreUnavailable, never a message with its SHA-1."""
    from gateway.store import StoreUnavailable

    broken = store.client.register_script("return redis.call('EXPIREAT', KEYS[1], 'x')")
    with pytest.raises(StoreUnavailable) as caught:
        await store._call(broken, [])
    assert not SCRIPT_HASH.search(str(caught.value))


def cli(redis: RedisProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "admin", "--redis-url", redis.url, *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("job", "start", "--id", "١٢٣", "--project", "1", "--user", "7"), 2, "ASCII digits"),
        (("job", "start", "--id", "5", "--project", "1", "--user", "7", "--timeout", "1e300"), 1, "timeout"),
        (("job", "start", "--id", "5", "--project", "1", "--user", "7", "--timeout", "nan"), 1, "timeout"),
        (("job", "start", "--id", "5", "--project", "1", "--user", "7", "--timeout", "١٢"), 2, "seconds"),
        (("job", "finish", "١٠٠"), 2, "ASCII digits"),
        (("member", "set", "1", "7", "٣٠"), 2, "ASCII digits"),
        (("inbound", "add", "1", "١"), 1, "inbound source"),
    ],
)
async def test_hostile_cli_input_is_refused_and_writes_nothing(
    redis_server: RedisProcess, store: Store, args: tuple[str, ...], code: int, message: str
) -> None:
    await seed(store)
    before = await snapshot(store)
    result = cli(redis_server, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert await snapshot(store) == before


HOSTILE = st.one_of(
    st.sampled_from([
        float("nan"), float("inf"), float("-inf"), 1e300, -1e300, -1, 0.5, 2**63, 2**64, 10**400, True,
        False, "", " 1", "1 ", "+1", "-1", "1e3", "0x10", "١٢٣", "１２３", "٣٠", "\ud800", "\x00",
        "NaN", [], {}, [1], {"a": 1}, [[[[[[[[[[[[]]]]]]]]]]]],
    ]),
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
PATH_HOSTILE = st.one_of(
    st.sampled_from(["١٢٣", "１", "-1", "+1", "1.0", "9" * 25, "0x1", " 1", "\x00", "%", "nan"]),
    st.text(min_size=1, max_size=8),
)
ENDPOINTS = [  # method, path template, a valid body; {x} is a path id under attack
    ("PUT", "/admin/v1/projects/{x}", {"path": "g/new", "visibility": "private", "scope": "on",
                                        "inbound": "off", "pending_delete": False}),
    ("PUT", "/admin/v1/projects/1/members/{x}", {"access_level": 20}),
    ("PUT", "/admin/v1/projects/{x}/allowlist/2", None),
    ("DELETE", "/admin/v1/projects/1/allowlist/{x}", None),
    ("PUT", "/admin/v1/projects/2/inbound/{x}", {"policies": ["read_packages"]}),
    ("DELETE", "/admin/v1/projects/{x}/inbound/g", None),
    ("GET", "/admin/v1/projects/{x}/inbound-suggestions", None),
    ("POST", "/admin/v1/jobs", {"id": 5, "project": 1, "user": 7, "pipeline": 3, "name": "n", "ref": "r",
                                "timeout": 60}),
    ("GET", "/admin/v1/jobs/{x}", None),
    ("POST", "/admin/v1/jobs/{x}/finish", {"status": "failed"}),
    ("POST", "/admin/v1/jobs/{x}/erase", None),
    ("POST", "/admin/v1/triggers", {"project": 1, "owner": 7}),
    ("POST", "/admin/v1/triggers/revoke", {"token": "glptt-x"}),
]  # fmt: skip


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data(), endpoint=st.sampled_from(ENDPOINTS))
def test_every_admin_field_under_hostile_input(admin_api: Any, data: Any, endpoint: Any) -> None:
    """Each field of each verb, one at a time: the answer is below 500, shows no traceback or
    script hash, and a refused write (4xx) leaves Redis exactly as it was."""
    method, template, valid = endpoint
    fields = ["{x}"] * ("{x}" in template) + list(valid or {})
    field = data.draw(st.sampled_from(fields)) if fields else None
    path, body = template.replace("{x}", "100"), dict(valid) if valid else None
    if field == "{x}":
        path = template.replace("{x}", quote(data.draw(PATH_HOSTILE), safe=""))
    elif field is not None:
        assert body is not None
        body[field] = data.draw(HOSTILE)
    status, text, unchanged = admin_api(method, path, body)
    assert status < 500, (status, text)
    assert "Traceback" not in text and not SCRIPT_HASH.search(text)
    if status >= 400:
        assert unchanged, (method, path, body, status, text)
