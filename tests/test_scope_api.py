"""GitLab's job token scope REST API on the admin listener (gateway/scope_api.py, GITLAB.md §4)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.admin import build_admin
from gateway.model import TargetRef
from gateway.store import Store

TOKEN = {"PRIVATE-TOKEN": "admin-secret"}
SCOPE = "/api/v4/projects/2/job_token_scope"
BAD = "400 Bad request - "


@pytest.fixture
async def api(store: Store, aiohttp_client: Any) -> Any:
    """The admin app over projects 1 `group/app`, 2 `team/lib`, 3 `team/tool` and group 10 `group`."""
    await store.set_project(1, "group/app", "private")
    await store.set_project(2, "team/lib", "private")
    await store.set_project(3, "team/tool", "public")
    await store.set_group(10, "group")
    return await aiohttp_client(build_admin(store, "admin-secret"))


@pytest.mark.parametrize(
    "headers",
    [{}, {"PRIVATE-TOKEN": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"},
     {"JOB-TOKEN": "admin-secret"}],
)  # fmt: skip
async def test_anything_but_the_admin_token_is_gitlabs_401(api: Any, headers: dict[str, str]) -> None:
    resp = await api.get(SCOPE, headers=headers)
    assert resp.status == 401
    assert await resp.json() == {"message": "401 Unauthorized"}


@pytest.mark.parametrize("headers", [TOKEN, {"Authorization": "Bearer admin-secret"}])
async def test_get_scope_with_private_token_or_bearer(
    api: Any, store: Store, headers: dict[str, str]
) -> None:
    resp = await api.get(SCOPE, headers=headers)
    assert resp.status == 200
    assert await resp.json() == {"inbound_enabled": True, "outbound_enabled": False}
    await store.set_project(2, scope=True, inbound=False)
    assert await (await api.get(SCOPE, headers=headers)).json() == {
        "inbound_enabled": False, "outbound_enabled": True,
    }  # fmt: skip


async def test_unknown_project_is_gitlabs_404(api: Any) -> None:
    for method, path in [("GET", "/api/v4/projects/99/job_token_scope"), ("GET", "/api/v4/projects/99"),
                         ("PATCH", "/api/v4/projects/99/job_token_scope"),
                         ("GET", "/api/v4/projects/99/job_token_scope/allowlist"),
                         ("POST", "/api/v4/projects/99/job_token_scope/groups_allowlist")]:  # fmt: skip
        resp = await api.request(method, path, headers=TOKEN, json={"enabled": False})
        assert resp.status == 404, path
        assert await resp.json() == {"message": "404 Project Not Found"}


async def test_project_by_id_or_encoded_path(api: Any) -> None:
    for ref in ("2", "team%2Flib", "TEAM%2FLib"):
        resp = await api.get(f"/api/v4/projects/{ref}", headers=TOKEN)
        assert resp.status == 200, ref
        body = await resp.json()
        assert body["id"] == 2 and body["path_with_namespace"] == "team/lib"
        assert body["name"] == body["path"] == "lib" and body["visibility"] == "private"
        assert body["namespace"]["full_path"] == "team" and body["web_url"].endswith("/team/lib")


async def test_patch_sets_the_inbound_limit_and_answers_204(api: Any, store: Store) -> None:
    resp = await api.patch(SCOPE, headers=TOKEN, json={"enabled": False})
    assert resp.status == 204 and await resp.read() == b""
    assert not (await store.get_project(2)).inbound_limit  # type: ignore[union-attr]
    resp = await api.patch(SCOPE, headers=TOKEN, data={"enabled": "true"})  # a form body, as curl sends
    assert resp.status == 204
    assert (await store.get_project(2)).inbound_limit  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "error"), [({}, "enabled is missing"), ({"enabled": "maybe"}, "enabled is invalid")]
)
async def test_patch_validates_enabled_as_grape_does(api: Any, body: dict[str, Any], error: str) -> None:
    resp = await api.patch(SCOPE, headers=TOKEN, json=body)
    assert resp.status == 400
    assert await resp.json() == {"error": error}


async def test_allowlist_add_list_remove(api: Any, store: Store) -> None:
    token = await store.start_job(100, 1, 7)
    resp = await api.post(SCOPE + "/allowlist", headers=TOKEN, json={"target_project_id": 1})
    assert resp.status == 201
    assert await resp.json() == {"source_project_id": 2, "target_project_id": 1}
    state = await store.read_access(token, TargetRef(project_id=2))
    assert state.inbound_entry is not None and state.inbound_entry.source == "p:1"

    resp = await api.get(SCOPE + "/allowlist", headers=TOKEN)
    listed = await resp.json()
    assert [p["id"] for p in listed] == [1] and listed[0]["path_with_namespace"] == "group/app"
    assert resp.headers["X-Total"] == "1" and resp.headers["X-Next-Page"] == ""

    resp = await api.delete(SCOPE + "/allowlist/1", headers=TOKEN)
    assert resp.status == 204 and await resp.read() == b""
    assert (await store.read_access(token, TargetRef(project_id=2))).inbound_entry is None
    assert await (await api.get(SCOPE + "/allowlist", headers=TOKEN)).json() == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "answer"),
    [
        ("POST", "/allowlist", {"target_project_id": 99}, 404,
         {"message": "404 target_project_id not found Not Found"}),
        ("POST", "/allowlist", {}, 400, {"error": "target_project_id is missing"}),
        ("POST", "/allowlist", {"target_project_id": "x"}, 400, {"error": "target_project_id is invalid"}),
        ("POST", "/allowlist", {"target_project_id": 2}, 400,
         {"message": BAD + "Validation failed: Target project can't be the same as the source project"}),
        ("DELETE", "/allowlist/3", None, 400,
         {"message": BAD + "Target project is not in the job token scope"}),
        ("DELETE", "/allowlist/99", None, 404, {"message": "404 Project Not Found"}),
        ("DELETE", "/allowlist/2", None, 400,
         {"message": BAD + "Source project cannot be removed from the job token scope"}),
        ("POST", "/groups_allowlist", {"target_group_id": 99}, 404,
         {"message": "404 target_group_id not found Not Found"}),
        ("POST", "/groups_allowlist", {}, 400, {"error": "target_group_id is missing"}),
        ("DELETE", "/groups_allowlist/10", None, 400,
         {"message": BAD + "Target group is not in the job token scope"}),
        ("DELETE", "/groups_allowlist/99", None, 404, {"message": "404 target_group_id not found Not Found"}),
    ],
)  # fmt: skip
async def test_errors_as_gitlab_answers_them(
    api: Any, method: str, path: str, body: Any, status: int, answer: dict[str, str]
) -> None:
    resp = await api.request(method, SCOPE + path, headers=TOKEN, json=body)
    assert resp.status == status
    assert await resp.json() == answer


async def test_adding_twice_is_refused_and_keeps_the_entrys_policies(api: Any, store: Store) -> None:
    await store.set_inbound(2, "1", True, ["read_packages"])
    await store.set_inbound(2, "group", True, ["read_releases"])
    resp = await api.post(SCOPE + "/allowlist", headers=TOKEN, json={"target_project_id": 1})
    assert resp.status == 400
    assert await resp.json() == {"message": BAD + "Target project is already in the job token scope"}
    resp = await api.post(SCOPE + "/groups_allowlist", headers=TOKEN, json={"target_group_id": 10})
    assert await resp.json() == {"message": BAD + "Target group is already in the job token scope"}
    assert await store.inbound_entries(2) == {"p:1": "read_packages", "g:group": "read_releases"}


async def test_groups_allowlist_add_list_remove(api: Any, store: Store) -> None:
    token = await store.start_job(100, 1, 7)
    resp = await api.post(SCOPE + "/groups_allowlist", headers=TOKEN, json={"target_group_id": 10})
    assert resp.status == 201
    assert await resp.json() == {"source_project_id": 2, "target_group_id": 10}
    state = await store.read_access(token, TargetRef(project_id=2))
    assert state.inbound_entry is not None and state.inbound_entry.source == "g:group"

    await store.set_inbound(2, "no/such/group", True)  # a path with no group id: jobgate's own entry
    resp = await api.get(SCOPE + "/groups_allowlist", headers=TOKEN)
    groups = await resp.json()
    assert groups == [{"id": 10, "web_url": groups[0]["web_url"], "name": "group"}]
    assert groups[0]["web_url"].endswith("/groups/group")

    assert (await api.delete(SCOPE + "/groups_allowlist/10", headers=TOKEN)).status == 204
    assert (await store.read_access(token, TargetRef(project_id=2))).inbound_entry is None


async def test_offset_pagination_headers(api: Any, store: Store) -> None:
    for pid in range(4, 9):
        await store.set_project(pid, f"many/p{pid}", "private")
        await store.set_inbound(2, str(pid), True)
    resp = await api.get(SCOPE + "/allowlist?per_page=2&page=2", headers=TOKEN)
    assert resp.status == 200
    assert [p["id"] for p in await resp.json()] == [6, 7]
    h = resp.headers
    assert (h["X-Total"], h["X-Total-Pages"], h["X-Page"], h["X-Per-Page"]) == ("5", "3", "2", "2")
    assert (h["X-Next-Page"], h["X-Prev-Page"]) == ("3", "1")
    links = dict(
        (part.split("; ")[1].removeprefix("rel=").strip('"'), part.split("; ")[0].strip("<>"))
        for part in h["Link"].split(", ")
    )
    assert set(links) == {"prev", "next", "first", "last"}
    assert "page=3" in links["next"] and "per_page=2" in links["next"] and "page=1" in links["first"]
    assert links["next"].startswith(str(api.make_url("/api/v4/projects/2/job_token_scope/allowlist")))
    last = await api.get(SCOPE + "/allowlist?per_page=2&page=3", headers=TOKEN)
    assert [p["id"] for p in await last.json()] == [8] and last.headers["X-Next-Page"] == ""
    assert 'rel="next"' not in last.headers["Link"]
    assert (await api.get(SCOPE + "/allowlist?page=x", headers=TOKEN)).status == 400
    capped = await api.get(SCOPE + "/allowlist?per_page=1000", headers=TOKEN)
    assert capped.headers["X-Per-Page"] == "100"


async def test_jobgate_admin_api_still_wants_bearer(api: Any) -> None:
    resp = await api.put("/admin/v1/projects/5", json={"path": "g/p", "visibility": "private"}, headers=TOKEN)
    assert resp.status == 401
