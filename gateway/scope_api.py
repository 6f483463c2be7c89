"""GitLab's job token scope REST API, served on the admin listener under `/api/v4/`.

The calls, shapes, status codes and error texts of GitLab's
`lib/api/project_job_token_scope.rb` (GITLAB.md §4), so python-gitlab and the GitLab
Terraform provider manage jobgate unchanged:

    GET    /api/v4/projects/:id                                        the project (fields clients read)
    GET    /api/v4/projects/:id/job_token_scope                        {inbound_enabled, outbound_enabled}
    PATCH  /api/v4/projects/:id/job_token_scope                        {enabled} -> 204
    GET    /api/v4/projects/:id/job_token_scope/allowlist              projects (offset pagination)
    POST   /api/v4/projects/:id/job_token_scope/allowlist              {target_project_id} -> 201
    DELETE /api/v4/projects/:id/job_token_scope/allowlist/:target_project_id      -> 204
    GET    /api/v4/projects/:id/job_token_scope/groups_allowlist       groups (offset pagination)
    POST   /api/v4/projects/:id/job_token_scope/groups_allowlist       {target_group_id} -> 201
    DELETE /api/v4/projects/:id/job_token_scope/groups_allowlist/:target_group_id -> 204

`:id` is a project id or its URL-encoded full path, as in GitLab. The `allowlist` of
project P is P's *inbound* list: the projects (and groups) whose job tokens may reach P.
Entries added here carry default permissions; policies on entries stay in jobgate's own
admin API and CLI (GitLab has them only in GraphQL). Authentication: the admin token as
`PRIVATE-TOKEN` or `Authorization: Bearer`; anything else is GitLab's 401.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from yarl import URL

from .model import ProjectState
from .store import ControlError, Store

PREFIX = "/api/v4/"
DEFAULT_PER_PAGE, MAX_PER_PAGE = 20, 100
TARGET_NOT_IN_SCOPE = "Target project is not in the job token scope"
GROUP_NOT_IN_SCOPE = "Target group is not in the job token scope"


def credential(request: web.Request) -> str | None:
    """The token a GitLab API client sent: `PRIVATE-TOKEN`, else `Authorization: Bearer`."""
    if "PRIVATE-TOKEN" in request.headers:
        return request.headers["PRIVATE-TOKEN"].strip()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def unauthorized() -> web.Response:
    """GitLab's answer to a missing or wrong token."""
    return _message(401, "401 Unauthorized")


def _message(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _not_found(resource: str) -> web.Response:
    """GitLab's `not_found!(resource)`: `404 <resource> Not Found`."""
    return _message(404, f"404 {resource} Not Found")


def _bad_request(reason: str) -> web.Response:
    """GitLab's `bad_request!(reason)`."""
    return _message(400, f"400 Bad request - {reason}")


def _invalid(name: str, problem: str) -> web.Response:
    """A Grape parameter validation error: `{"error": "<name> is missing|invalid"}`."""
    return web.json_response({"error": f"{name} is {problem}"}, status=400)


def _integer(value: Any) -> int | None:
    """A Grape `Integer` parameter: an int or a string of digits; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 1 << 63 else None
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        number = int(value.strip())
        return number if number < 1 << 63 else None
    return None


def _boolean(value: Any) -> bool | None:
    """A Grape `Boolean` parameter; None when it is not one."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in ("true", "1", "yes", "t", "y"):
        return True
    if text in ("false", "0", "no", "f", "n"):
        return False
    return None


async def _params(request: web.Request) -> dict[str, Any]:
    """The query merged with a JSON or form body, as Grape reads parameters."""
    params: dict[str, Any] = dict(request.query)
    if not request.body_exists:
        return params
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ControlError("body must be JSON") from None
        if isinstance(body, dict):
            params.update(body)
    else:
        params.update(await request.post())
    return params


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _project_body(project: ProjectState, base: str) -> dict[str, Any]:
    """A project in the shape of GitLab's `BasicProjectDetails`, with what jobgate knows."""
    namespace = project.path.rsplit("/", 1)[0]
    return {
        "id": project.id,
        "description": None,
        "name": _name(project.path),
        "name_with_namespace": " / ".join(project.path.split("/")),
        "path": _name(project.path),
        "path_with_namespace": project.path,
        "created_at": None,
        "default_branch": None,
        "tag_list": [],
        "topics": [],
        "ssh_url_to_repo": None,
        "http_url_to_repo": f"{base}/{project.path}.git",
        "web_url": f"{base}/{project.path}",
        "readme_url": None,
        "avatar_url": None,
        "forks_count": 0,
        "star_count": 0,
        "last_activity_at": None,
        "namespace": {
            "id": None,
            "name": _name(namespace),
            "path": _name(namespace),
            "kind": "group",
            "full_path": namespace,
            "parent_id": None,
            "avatar_url": None,
            "web_url": f"{base}/groups/{namespace}",
        },
    }


def _paginate(request: web.Request, items: list[Any]) -> web.Response:
    """One page of `items` with GitLab's offset pagination headers."""
    page = _integer(request.query.get("page", "1"))
    per_page = _integer(request.query.get("per_page", str(DEFAULT_PER_PAGE)))
    if page is None:
        return _invalid("page", "invalid")
    if per_page is None:
        return _invalid("per_page", "invalid")
    page = max(page, 1)
    per_page = min(per_page, MAX_PER_PAGE) if per_page > 0 else DEFAULT_PER_PAGE
    total = len(items)
    pages = max(1, -(-total // per_page))
    chunk = items[(page - 1) * per_page : page * per_page]

    def link(number: int) -> str:
        return str(request.url.update_query(page=str(number), per_page=str(per_page)))

    links = []
    if 1 < page <= pages + 1:
        links.append(f'<{link(page - 1)}>; rel="prev"')
    if page < pages:
        links.append(f'<{link(page + 1)}>; rel="next"')
    links += [f'<{link(1)}>; rel="first"', f'<{link(pages)}>; rel="last"']
    headers = {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Total": str(total),
        "X-Total-Pages": str(pages),
        "X-Next-Page": str(page + 1) if page < pages else "",
        "X-Prev-Page": str(page - 1) if 1 < page <= pages + 1 else "",
        "Link": ", ".join(links),
    }
    return web.json_response(chunk, headers=headers)


class ScopeApi:
    """The handlers of GitLab's job token scope API over one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Register every route under `/api/v4/`."""
        p = "/api/v4/projects/{id}"
        scope = p + "/job_token_scope"
        router.add_get(p, self.get_project)
        router.add_get(scope, self.get_scope)
        router.add_patch(scope, self.patch_scope)
        router.add_get(scope + "/allowlist", self.list_projects)
        router.add_post(scope + "/allowlist", self.add_project)
        router.add_delete(scope + "/allowlist/{target}", self.remove_project)
        router.add_get(scope + "/groups_allowlist", self.list_groups)
        router.add_post(scope + "/groups_allowlist", self.add_group)
        router.add_delete(scope + "/groups_allowlist/{target}", self.remove_group)

    async def _project(self, request: web.Request) -> ProjectState | None:
        """The project `:id` names: a numeric id or a URL-encoded full path."""
        raw = request.match_info["id"]
        project_id = _integer(raw)
        if project_id is None:
            project_id = await self.store.project_id_by_path(raw)
        return None if project_id is None else await self.store.get_project(project_id)

    @staticmethod
    def _base(request: web.Request) -> str:
        return str(URL.build(scheme=request.scheme, authority=request.host))

    async def get_project(self, request: web.Request) -> web.Response:
        """`GET /projects/:id`: the fields python-gitlab and the Terraform provider read."""
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        body = _project_body(project, self._base(request))
        body.update(
            visibility=project.visibility,
            archived=False,
            marked_for_deletion_on=None,
            ci_job_token_scope_enabled=project.outbound_limit,
            _links={"self": f"{self._base(request)}{PREFIX}projects/{project.id}"},
        )
        return web.json_response(body)

    async def get_scope(self, request: web.Request) -> web.Response:
        """`GET /projects/:id/job_token_scope`."""
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        return web.json_response(
            {"inbound_enabled": project.inbound_limit, "outbound_enabled": project.outbound_limit}
        )

    async def patch_scope(self, request: web.Request) -> web.StreamResponse:
        """`PATCH /projects/:id/job_token_scope` with `enabled` (the inbound limit): 204."""
        params = await _params(request)
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        if params.get("enabled") in (None, ""):
            return _invalid("enabled", "missing")
        enabled = _boolean(params["enabled"])
        if enabled is None:
            return _invalid("enabled", "invalid")
        await self.store.set_project(project.id, inbound=enabled)
        return web.Response(status=204)

    async def list_projects(self, request: web.Request) -> web.Response:
        """`GET /projects/:id/job_token_scope/allowlist`: the projects on the inbound list."""
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        entries = await self.store.inbound_entries(project.id)
        ids = sorted(int(e[2:]) for e in entries if e.startswith("p:"))
        base = self._base(request)
        found = [await self.store.get_project(i) for i in ids]
        return _paginate(request, [_project_body(p, base) for p in found if p is not None])

    async def add_project(self, request: web.Request) -> web.Response:
        """`POST /projects/:id/job_token_scope/allowlist` with `target_project_id`: 201."""
        params = await _params(request)
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        if params.get("target_project_id") in (None, ""):
            return _invalid("target_project_id", "missing")
        target_id = _integer(params["target_project_id"])
        if target_id is None:
            return _invalid("target_project_id", "invalid")
        if await self.store.get_project(target_id) is None:
            return _not_found("target_project_id not found")
        if target_id == project.id:
            return _bad_request("Validation failed: Target project can't be the same as the source project")
        _, existed = await self.store.write_inbound(project.id, str(target_id), True, replace=False)
        if existed:
            return _bad_request("Target project is already in the job token scope")
        return web.json_response(
            {"source_project_id": project.id, "target_project_id": target_id}, status=201
        )

    async def remove_project(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /projects/:id/job_token_scope/allowlist/:target_project_id`: 204."""
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        target_id = _integer(request.match_info["target"])
        if target_id is None or await self.store.get_project(target_id) is None:
            return _not_found("Project")
        if target_id == project.id:
            return _bad_request("Source project cannot be removed from the job token scope")
        _, existed = await self.store.write_inbound(project.id, str(target_id), False)
        if not existed:
            return _bad_request(TARGET_NOT_IN_SCOPE)
        return web.Response(status=204)

    async def list_groups(self, request: web.Request) -> web.Response:
        """`GET /projects/:id/job_token_scope/groups_allowlist`: `[{id, web_url, name}]`.

        Entries naming a path no group id was given for (`jobgate admin inbound add T
        some/path`) are jobgate's own and are not listed here.
        """
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        paths = [e[2:] for e in await self.store.inbound_entries(project.id) if e.startswith("g:")]
        base = self._base(request)
        groups = []
        for group_id in sorted(i for i in await self.store.group_ids(paths) if i is not None):
            path = await self.store.get_group(group_id)
            if path is not None:
                groups.append({"id": group_id, "web_url": f"{base}/groups/{path}", "name": _name(path)})
        return _paginate(request, groups)

    async def add_group(self, request: web.Request) -> web.Response:
        """`POST /projects/:id/job_token_scope/groups_allowlist` with `target_group_id`: 201."""
        params = await _params(request)
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        if params.get("target_group_id") in (None, ""):
            return _invalid("target_group_id", "missing")
        group_id = _integer(params["target_group_id"])
        if group_id is None:
            return _invalid("target_group_id", "invalid")
        path = await self.store.get_group(group_id)
        if path is None:
            return _not_found("target_group_id not found")
        _, existed = await self.store.write_inbound(project.id, path, True, replace=False)
        if existed:
            return _bad_request("Target group is already in the job token scope")
        return web.json_response({"source_project_id": project.id, "target_group_id": group_id}, status=201)

    async def remove_group(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /projects/:id/job_token_scope/groups_allowlist/:target_group_id`: 204."""
        project = await self._project(request)
        if project is None:
            return _not_found("Project")
        group_id = _integer(request.match_info["target"])
        path = None if group_id is None else await self.store.get_group(group_id)
        if path is None:
            return _not_found("target_group_id not found")
        _, existed = await self.store.write_inbound(project.id, path, False)
        if not existed:
            return _bad_request(GROUP_NOT_IN_SCOPE)
        return web.Response(status=204)
