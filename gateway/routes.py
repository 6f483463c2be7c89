"""The route table: every endpoint jobgate protects, as data, and the matcher over it.

A request path is first normalized into decoded segments (`split_path`), rejecting dot
segments, double encoding, NUL bytes and empty segments, so the project matched here is
the project the upstream sees: the upstream receives the same segments re-encoded
canonically (`canonical_path`). A request that matches no row is answered 404 and never
forwarded.

Template syntax, one item per path segment:

- `literal`      the segment must equal it (case-sensitive, after decoding)
- `{project}`    one segment naming the target project: a numeric id or an
                 URL-encoded full path (`group%2Fproject`)
- `{job}`        one segment naming a job by id: the target is the job's project
- `{name}`       any one segment, captured
- `{repo+}`      one or more segments naming a project by path, longest registered
                 path first (git repositories, container repositories)
- `{rest*}`      zero or more trailing segments
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from .credentials import QUERY_PLACES
from .model import DEVELOPER, GUEST, MAINTAINER, REPORTER, TargetRef, is_path_segment

MAX_PATH_LENGTH = 4096
MAX_REPO_DEPTH = 20
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_PLAIN = re.compile(r"[A-Za-z0-9!$&'()*+,;=:@._~-]*")  # segments `quote` would leave as they are
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: An OCI repository name (distribution spec: lower case path components, two or more here).
OCI_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$")
#: A path every check would pass unchanged: plain segments, no dot segment, no empty inner
#: segment. Such a path splits on "/" as it is and is already canonical.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9!$&'()*+,;=:@._~-]+)*/?")


class PathError(ValueError):
    """The request path cannot be normalized safely: answered with 400."""


class Protocol(StrEnum):
    """How a route's denials and challenges are rendered."""

    API = "api"
    JOB = "job"  # `GET /api/v4/job`: a dead or missing token is GitLab's 401
    GIT = "git"
    REGISTRY = "registry"


@dataclass(frozen=True, slots=True, eq=False)
class Action:
    """What a route does to its project, and what that takes.

    Compared and hashed by identity (`eq=False`): each action is one constant, and a
    cache entry remembers its decisions by action on every request.
    """

    name: str
    min_level: int
    policies: tuple[str, ...]  # all needed under a policy-listing inbound entry; () declares none
    read: bool = False  # reads are open on public and internal projects (per feature)
    feature: str | None = None  # the project feature whose visibility governs this action
    policy_checked: bool = True  # False: fine-grained permissions do not apply (trigger, git)
    own_project_only: bool = False
    in_scope_switch: bool = False  # `scope.registry_push_in_scope` lifts own_project_only
    push_opt_in: bool = False  # only where the project allows git push with a job token
    trigger_token: bool = False  # a pipeline trigger token may do this (own project)


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the table: methods + path template -> action, upstream, protocol."""

    name: str
    methods: frozenset[str]
    template: str
    action: Action | None  # None: no project (answered about the job itself)
    upstream: str = "api"
    protocol: Protocol = Protocol.API
    upload: bool = False  # the body is streamed unparsed (its credential places are not read)
    pipeline_source: bool = False
    local: str | None = None  # answered by jobgate itself
    query: tuple[tuple[str, str], ...] = ()  # required query parameters
    strip_query: tuple[str, ...] = ()  # query parameters never forwarded
    acts_on: tuple[str, ...] = ()  # parameters (query or body) the upstream acts on for this route
    segments: tuple[str, ...] = field(init=False, repr=False)
    prefix: tuple[str, ...] = field(init=False, repr=False)  # the leading literal segments
    secret_query: frozenset[str] = field(init=False, repr=False)  # dropped unless pass_token
    #: The parameters the decision depends on (matched or acted on): each may appear once.
    decision_params: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        segments = tuple(self.template[1:].split("/"))
        literal = next((i for i, item in enumerate(segments) if item.startswith("{")), len(segments))
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "prefix", segments[:literal])
        object.__setattr__(self, "secret_query", QUERY_PLACES | set(self.strip_query))
        object.__setattr__(self, "decision_params", frozenset(k for k, _ in self.query) | set(self.acts_on))


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request path matched to a route, with the target it names (shared by requests for
    the same path: see `resolve`; nothing writes to it, `params` included)."""

    route: Route
    target: TargetRef
    params: dict[str, str]
    segments: tuple[str, ...]


def _a(name: str, level: int, policies: tuple[str, ...], **kw: Any) -> Action:
    return Action(name, level, policies, **kw)


# the project features (model.FEATURES) whose visibility governs each action
ENV, BUILDS, PKG, REL, REPO = "environments", "builds", "packages", "releases", "repository"
CR = "container_registry"
READ_PACKAGE = _a("read_package", REPORTER, ("read_packages",), read=True, feature=PKG)
PUSH_PACKAGE = _a("push_package", DEVELOPER, ("admin_packages",), feature=PKG)
DELETE_PACKAGE = _a("delete_package", MAINTAINER, ("admin_packages",), feature=PKG)
READ_PACKAGE_PIPELINES = _a("read_package_pipelines", REPORTER, ("read_pipelines",), read=True, feature=PKG)
DOWNLOAD_ARTIFACTS = _a("download_artifacts", REPORTER, ("read_jobs",), read=True, feature=BUILDS)
READ_JOBS = _a("read_jobs", REPORTER, ("read_jobs",), read=True, feature=BUILDS)
TRIGGER_PIPELINE = _a("trigger_pipeline", DEVELOPER, (), policy_checked=False, trigger_token=True)
READ_PIPELINES = _a("read_pipelines", REPORTER, ("read_pipelines",), read=True, feature=BUILDS)
UPDATE_PIPELINE_METADATA = _a("update_pipeline_metadata", DEVELOPER, ("admin_pipelines",), feature=BUILDS)
READ_DEPLOYMENTS = _a("read_deployments", REPORTER, ("read_deployments",), read=True, feature=ENV)
CREATE_DEPLOYMENT = _a("create_deployment", DEVELOPER, ("admin_deployments", "admin_environments"),
                       feature=ENV)  # fmt: skip
UPDATE_DEPLOYMENT = _a("update_deployment", DEVELOPER, ("admin_deployments",), feature=ENV)
DELETE_DEPLOYMENT = _a("delete_deployment", MAINTAINER, ("admin_deployments",), feature=ENV)
READ_ENVIRONMENTS = _a("read_environments", REPORTER, ("read_environments",), read=True, feature=ENV)
MANAGE_ENVIRONMENT = _a("manage_environment", DEVELOPER, ("admin_environments",), feature=ENV)
CLEAN_UP_ENVIRONMENTS = _a("clean_up_environments", MAINTAINER, ("admin_environments",), feature=ENV)
READ_MERGE_REQUESTS = _a("read_merge_requests", REPORTER, ("read_merge_requests",), read=True, feature=REPO)
READ_RELEASE = _a("read_release", GUEST, ("read_releases",), read=True, feature=REL)
MANAGE_RELEASE = _a("manage_release", DEVELOPER, ("admin_releases",), feature=REL)
READ_CHANGELOG = _a("read_changelog", REPORTER, ("read_releases",), read=True, feature=REPO)
PUBLISH_CATALOG = _a("publish_catalog", DEVELOPER, ("admin_releases",), feature=REL)
READ_REPOSITORY = _a("read_repository", REPORTER, ("read_repositories",), read=True, feature=REPO)
READ_SECURE_FILES = _a("read_secure_files", DEVELOPER, ("read_secure_files",))
MANAGE_SECURE_FILES = _a("manage_secure_files", MAINTAINER, ("admin_secure_files",))
READ_TF_STATE = _a("read_terraform_state", DEVELOPER, ("read_terraform_state",))
WRITE_TF_STATE = _a("write_terraform_state", MAINTAINER, ("admin_terraform_state",))
READ_ISSUES = _a("read_issues", GUEST, ("read_work_items",), read=True)
READ_REGISTRY = _a("read_registry", REPORTER, ("read_containers",), read=True, feature=CR,
                   own_project_only=True)  # fmt: skip
MANAGE_REGISTRY = _a("manage_registry", MAINTAINER, ("admin_containers",), feature=CR, own_project_only=True)
PULL_IMAGE = _a("pull_image", REPORTER, ("read_containers",), read=True, feature=CR)
PUSH_IMAGE = _a("push_image", DEVELOPER, ("admin_containers",), feature=CR, own_project_only=True,
                in_scope_switch=True)  # fmt: skip
DELETE_IMAGE = _a("delete_image", DEVELOPER, ("admin_containers",), feature=CR, own_project_only=True,
                  in_scope_switch=True)  # fmt: skip
CLONE = _a("clone", REPORTER, (), read=True, feature=REPO, policy_checked=False)
PUSH_CODE = _a("push_code", DEVELOPER, (), feature=REPO, policy_checked=False, own_project_only=True,
               push_opt_in=True)  # fmt: skip

#: The container registry's action names (token scopes, registry tokens) and their actions.
REGISTRY_ACTIONS: dict[str, Action] = {"pull": PULL_IMAGE, "push": PUSH_IMAGE, "delete": DELETE_IMAGE}
REGISTRY_ACTION_NAMES: dict[Action, str] = {action: name for name, action in REGISTRY_ACTIONS.items()}

P = "/api/v4/projects/{project}"


def methods(names: str) -> frozenset[str]:
    """A route's methods from a space-separated list."""
    return frozenset(names.split())


READ = methods("GET HEAD")


#: The protected endpoints, in GitLab's URL layout (GITLAB.md §1, family by family). First
#: match wins: a specific row comes before the catch-all of its family.
ROUTES: tuple[Route, ...] = (
    Route("job", READ, "/api/v4/job", None, local="job", protocol=Protocol.JOB),
    # deployments
    Route("deployments_read", READ, P + "/deployments", READ_DEPLOYMENTS, upstream="deployments"),
    Route(
        "deployment_read", READ, P + "/deployments/{deployment_id}", READ_DEPLOYMENTS, upstream="deployments"
    ),
    Route(
        "deployment_merge_requests",
        READ,
        P + "/deployments/{deployment_id}/merge_requests",
        READ_DEPLOYMENTS,
        upstream="deployments",
    ),
    Route(
        "deployment_create", methods("POST"), P + "/deployments", CREATE_DEPLOYMENT, upstream="deployments"
    ),
    Route(
        "deployment_update",
        methods("PUT"),
        P + "/deployments/{deployment_id}",
        UPDATE_DEPLOYMENT,
        upstream="deployments",
    ),
    Route(
        "deployment_delete",
        methods("DELETE"),
        P + "/deployments/{deployment_id}",
        DELETE_DEPLOYMENT,
        upstream="deployments",
    ),
    Route(
        "deployment_approval",
        methods("POST"),
        P + "/deployments/{deployment_id}/approval",
        UPDATE_DEPLOYMENT,
        upstream="deployments",
    ),
    # environments
    Route("environments_read", READ, P + "/environments", READ_ENVIRONMENTS, upstream="environments"),
    Route(
        "environment_read",
        READ,
        P + "/environments/{environment_id}",
        READ_ENVIRONMENTS,
        upstream="environments",
    ),
    Route(
        "environment_create",
        methods("POST"),
        P + "/environments",
        MANAGE_ENVIRONMENT,
        upstream="environments",
    ),
    Route(
        "environments_review_apps_delete",
        methods("DELETE"),
        P + "/environments/review_apps",
        CLEAN_UP_ENVIRONMENTS,
        upstream="environments",
    ),
    Route(
        "environments_stop_stale",
        methods("POST"),
        P + "/environments/stop_stale",
        CLEAN_UP_ENVIRONMENTS,
        upstream="environments",
    ),
    Route(
        "environment_write",
        methods("PUT DELETE"),
        P + "/environments/{environment_id}",
        MANAGE_ENVIRONMENT,
        upstream="environments",
    ),
    Route(
        "environment_stop",
        methods("POST"),
        P + "/environments/{environment_id}/stop",
        MANAGE_ENVIRONMENT,
        upstream="environments",
    ),
    # packages: the pipelines of a package, the POSTs GitLab treats as reads, then every format
    Route(
        "package_pipelines",
        READ,
        P + "/packages/{package_id}/pipelines",
        READ_PACKAGE_PIPELINES,
        upstream="pipelines",
    ),
    Route(
        "packages_npm_advisories",
        methods("POST"),
        P + "/packages/npm/-/npm/v1/security/advisories/bulk",
        READ_PACKAGE,
        upstream="packages",
    ),
    Route(
        "packages_npm_audits",
        methods("POST"),
        P + "/packages/npm/-/npm/v1/security/audits/quick",
        READ_PACKAGE,
        upstream="packages",
    ),
    Route(
        "packages_conan_upload_urls",
        methods("POST"),
        P + "/packages/conan/v1/conans/{name}/{version}/{username}/{channel}/upload_urls",
        READ_PACKAGE,
        upstream="packages",
    ),
    Route(
        "packages_conan_package_upload_urls",
        methods("POST"),
        P + "/packages/conan/v1/conans/{name}/{version}/{username}/{channel}/packages/{reference}"
        "/upload_urls",
        READ_PACKAGE,
        upstream="packages",
    ),
    Route("packages_read", READ, P + "/packages/{rest*}", READ_PACKAGE, upstream="packages"),
    Route(
        "packages_write",
        methods("PUT POST PATCH"),
        P + "/packages/{rest*}",
        PUSH_PACKAGE,
        upstream="packages",
        upload=True,
    ),
    Route("packages_delete", methods("DELETE"), P + "/packages/{rest*}", DELETE_PACKAGE, upstream="packages"),
    # jobs and artifacts
    Route("jobs_read", READ, P + "/jobs", READ_JOBS, upstream="artifacts"),
    Route("pipeline_jobs_read", READ, P + "/pipelines/{pipeline_id}/jobs", READ_JOBS, upstream="artifacts"),
    Route("artifacts_of_job", READ, "/api/v4/jobs/{job}/artifacts", DOWNLOAD_ARTIFACTS, upstream="artifacts"),
    Route(
        "artifacts_by_ref",
        READ,
        P + "/jobs/artifacts/{ref}/download",
        DOWNLOAD_ARTIFACTS,
        upstream="artifacts",
    ),
    Route(
        "artifacts_file_by_ref",
        READ,
        P + "/jobs/artifacts/{ref}/raw/{rest*}",
        DOWNLOAD_ARTIFACTS,
        upstream="artifacts",
    ),
    Route(
        "artifacts_by_job",
        READ,
        P + "/jobs/{job_id}/artifacts/{rest*}",
        DOWNLOAD_ARTIFACTS,
        upstream="artifacts",
    ),
    Route(
        "trigger_pipeline",
        methods("POST"),
        P + "/trigger/pipeline",
        TRIGGER_PIPELINE,
        upstream="triggers",
        pipeline_source=True,
        acts_on=("ref",),
    ),
    Route(
        "trigger_pipeline_ref",
        methods("POST"),
        P + "/ref/{ref}/trigger/pipeline",
        TRIGGER_PIPELINE,
        upstream="triggers",
        pipeline_source=True,
        acts_on=("ref",),
    ),
    Route("releases_read", READ, P + "/releases/{rest*}", READ_RELEASE, upstream="releases"),
    Route(
        "releases_write",
        methods("POST PUT DELETE"),
        P + "/releases/{rest*}",
        MANAGE_RELEASE,
        upstream="releases",
    ),
    Route("changelog_read", READ, P + "/repository/changelog", READ_CHANGELOG, upstream="releases"),
    Route("catalog_publish", methods("POST"), P + "/catalog/publish", PUBLISH_CATALOG, upstream="releases"),
    Route("terraform_state_read", READ, P + "/terraform/state/{name}", READ_TF_STATE, upstream="terraform"),
    Route(
        "terraform_state_version_read",
        READ,
        P + "/terraform/state/{name}/versions/{serial}",
        READ_TF_STATE,
        upstream="terraform",
    ),
    Route(
        "terraform_state_version_delete",
        methods("DELETE"),
        P + "/terraform/state/{name}/versions/{serial}",
        WRITE_TF_STATE,
        upstream="terraform",
    ),
    Route(
        "terraform_state_write",
        methods("POST DELETE"),
        P + "/terraform/state/{name}",
        WRITE_TF_STATE,
        upstream="terraform",
        upload=True,
    ),
    Route(
        "terraform_state_lock",
        methods("POST DELETE LOCK UNLOCK"),
        P + "/terraform/state/{name}/lock",
        WRITE_TF_STATE,
        upstream="terraform",
    ),
    # pipelines
    Route("pipelines_read", READ, P + "/pipelines", READ_PIPELINES, upstream="pipelines"),
    Route("pipeline_read", READ, P + "/pipelines/{pipeline_id}", READ_PIPELINES, upstream="pipelines"),
    Route(
        "pipeline_bridges_read",
        READ,
        P + "/pipelines/{pipeline_id}/bridges",
        READ_PIPELINES,
        upstream="pipelines",
    ),
    Route(
        "pipeline_metadata_update",
        methods("PUT"),
        P + "/pipelines/{pipeline_id}/metadata",
        UPDATE_PIPELINE_METADATA,
        upstream="pipelines",
    ),
    # merge requests
    Route("merge_requests_read", READ, P + "/merge_requests", READ_MERGE_REQUESTS, upstream="merge_requests"),
    Route(
        "merge_request_read",
        READ,
        P + "/merge_requests/{iid}",
        READ_MERGE_REQUESTS,
        upstream="merge_requests",
    ),
    Route(
        "merge_request_notes_read",
        READ,
        P + "/merge_requests/{iid}/notes",
        READ_MERGE_REQUESTS,
        upstream="merge_requests",
    ),
    Route(
        "merge_request_note_read",
        READ,
        P + "/merge_requests/{iid}/notes/{note_id}",
        READ_MERGE_REQUESTS,
        upstream="merge_requests",
    ),
    # repository (REST)
    Route(
        "repository_branches_read", READ, P + "/repository/branches", READ_REPOSITORY, upstream="repository"
    ),
    Route("repository_tags_read", READ, P + "/repository/tags", READ_REPOSITORY, upstream="repository"),
    Route(
        "repository_commit_read",
        READ,
        P + "/repository/commits/{sha}",
        READ_REPOSITORY,
        upstream="repository",
    ),
    Route(
        "repository_commit_merge_requests_read",
        READ,
        P + "/repository/commits/{sha}/merge_requests",
        READ_REPOSITORY,
        upstream="repository",
    ),
    Route(
        "repository_file_raw_read",
        READ,
        P + "/repository/files/{file_path}/raw",
        READ_REPOSITORY,
        upstream="repository",
    ),
    # secure files
    Route("secure_files_read", READ, P + "/secure_files", READ_SECURE_FILES, upstream="secure_files"),
    Route(
        "secure_file_read",
        READ,
        P + "/secure_files/{secure_file_id}",
        READ_SECURE_FILES,
        upstream="secure_files",
    ),
    Route(
        "secure_file_download",
        READ,
        P + "/secure_files/{secure_file_id}/download",
        READ_SECURE_FILES,
        upstream="secure_files",
    ),
    Route(
        "secure_file_create",
        methods("POST"),
        P + "/secure_files",
        MANAGE_SECURE_FILES,
        upstream="secure_files",
    ),
    Route(
        "secure_file_delete",
        methods("DELETE"),
        P + "/secure_files/{secure_file_id}",
        MANAGE_SECURE_FILES,
        upstream="secure_files",
    ),
    # issues
    Route("issues_read", READ, P + "/issues", READ_ISSUES, upstream="issues"),
    Route("issue_read", READ, P + "/issues/{issue_iid}", READ_ISSUES, upstream="issues"),
    # container registry
    Route("registry_api_read", READ, P + "/registry/{rest*}", READ_REGISTRY),
    Route("registry_api_write", methods("POST PUT DELETE"), P + "/registry/{rest*}", MANAGE_REGISTRY),
    Route("registry_base", READ, "/v2/", None, upstream="container_registry", protocol=Protocol.REGISTRY),
    Route(
        "registry_upload",
        methods("POST PUT PATCH GET HEAD DELETE"),
        "/v2/{repo+}/blobs/uploads/{rest*}",
        PUSH_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
        strip_query=("mount", "from"),
        acts_on=("mount", "from"),
        upload=True,
    ),
    Route(
        "registry_blob_read",
        READ,
        "/v2/{repo+}/blobs/{digest}",
        PULL_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
    ),
    Route(
        "registry_blob_delete",
        methods("DELETE"),
        "/v2/{repo+}/blobs/{digest}",
        DELETE_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
    ),
    Route(
        "registry_manifest_read",
        READ,
        "/v2/{repo+}/manifests/{reference}",
        PULL_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
    ),
    Route(
        "registry_manifest_write",
        methods("PUT"),
        "/v2/{repo+}/manifests/{reference}",
        PUSH_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
        upload=True,
    ),
    Route(
        "registry_manifest_delete",
        methods("DELETE"),
        "/v2/{repo+}/manifests/{reference}",
        DELETE_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
    ),
    Route(
        "registry_tags",
        READ,
        "/v2/{repo+}/tags/list",
        PULL_IMAGE,
        upstream="container_registry",
        protocol=Protocol.REGISTRY,
    ),
    Route(
        "git_refs",
        READ,
        "/{repo+}/info/refs",
        CLONE,
        upstream="git",
        protocol=Protocol.GIT,
        query=(("service", "git-upload-pack"),),
    ),
    Route(
        "git_refs_push",
        READ,
        "/{repo+}/info/refs",
        PUSH_CODE,
        upstream="git",
        protocol=Protocol.GIT,
        query=(("service", "git-receive-pack"),),
    ),
    Route(
        "git_upload_pack",
        methods("POST"),
        "/{repo+}/git-upload-pack",
        CLONE,
        upstream="git",
        protocol=Protocol.GIT,
        upload=True,
    ),
    Route(
        "git_receive_pack",
        methods("POST"),
        "/{repo+}/git-receive-pack",
        PUSH_CODE,
        upstream="git",
        protocol=Protocol.GIT,
        upload=True,
    ),
)


def normalize_path(raw_path: str) -> tuple[tuple[str, ...], str]:
    """The decoded segments of a raw request path and the canonical path the upstream receives.

    Raises PathError like `split_path`. A path of plain segments (most of them) is its own
    canonical form and needs no decoding.
    """
    if len(raw_path) <= MAX_PATH_LENGTH and raw_path[:1] == "/" and _PLAIN_PATH.fullmatch(raw_path):
        return tuple(raw_path[1:].split("/")), raw_path
    segments = split_path(raw_path)
    return segments, canonical_path(segments)


def split_path(raw_path: str) -> tuple[str, ...]:
    """Decode a raw request path into segments, rejecting anything ambiguous.

    Raises PathError for dot segments (plain or encoded), double encoding, NUL bytes,
    invalid UTF-8, empty inner segments and overlong paths.
    """
    if len(raw_path) > MAX_PATH_LENGTH:
        raise PathError("path too long")
    if not raw_path.startswith("/"):
        raise PathError("path must start with /")
    raw_segments = raw_path[1:].split("/")
    segments = []
    for i, raw in enumerate(raw_segments):
        try:
            decoded = unquote_to_bytes(raw).decode("utf-8") if "%" in raw else raw
        except UnicodeDecodeError:
            raise PathError("path is not valid UTF-8") from None
        if _CONTROL.search(decoded):
            raise PathError("control character in path")
        # also inside an encoded slash: an upstream that decodes %2F must not see `..` either
        if any(piece in (".", "..") for piece in decoded.replace("\\", "/").split("/")):
            raise PathError("dot segment in path")
        if "%" in decoded and _looks_encoded(decoded):
            raise PathError("double-encoded path")
        if decoded == "" and i != len(raw_segments) - 1:
            raise PathError("empty path segment")
        segments.append(decoded)
    return tuple(segments)


def _looks_encoded(text: str) -> bool:
    hexdigits = "0123456789abcdefABCDEF"
    return any(
        text[i] == "%" and text[i + 1 : i + 3] and all(c in hexdigits for c in text[i + 1 : i + 3])
        for i in range(len(text) - 2)
    )


def canonical_path(segments: Sequence[str]) -> str:
    """The path the upstream receives: each decoded segment re-encoded the one canonical way."""
    return "/" + "/".join(s if _PLAIN.fullmatch(s) else quote(s, safe=_SEGMENT_SAFE) for s in segments)


def project_ref(segment: str) -> TargetRef | None:
    """A `{project}` segment: numeric id or full path; None when it is neither."""
    if segment.isdigit() and segment.isascii():
        return TargetRef(int(segment)) if len(segment) < 19 else None
    parts = segment.split("/")
    if len(parts) < 2 or not all(is_path_segment(p) for p in parts):
        return None
    return TargetRef(paths=(segment,))


def job_ref(segment: str) -> TargetRef | None:
    """A `{job}` segment: a job id, whose project the store finds; None when not an id."""
    if segment.isdigit() and segment.isascii() and len(segment) < 19:
        return TargetRef(job_id=int(segment))
    return None


def repo_ref(segments: Sequence[str]) -> TargetRef | None:
    """A `{repo+}` span: candidate project paths, longest first (`.git` dropped)."""
    parts = list(segments)
    if parts and parts[-1].endswith(".git"):
        parts[-1] = parts[-1][:-4]
    if not 2 <= len(parts) <= MAX_REPO_DEPTH or not all(is_path_segment(p) for p in parts):
        return None
    return TargetRef(paths=tuple("/".join(parts[:n]) for n in range(len(parts), 1, -1)))


def _match_segments(
    template: Sequence[str], segments: Sequence[str], params: dict[str, str], start: int = 0
) -> TargetRef | bool | None:
    """Match segments against a template from `start` (the items before it already matched);
    the TargetRef named (True when none), or False."""
    target: TargetRef | bool | None = True
    count = len(segments)
    for i in range(start, len(template)):
        item = template[i]
        if item[:1] != "{":
            if i >= count or item != segments[i]:
                return False
        elif item == "{rest*}":
            params["rest"] = "/".join(segments[i:])
            return target
        elif item == "{repo+}":
            tail = template[i + 1 :]
            fixed = sum(1 for t in tail if t != "{rest*}")
            for split in range(count - fixed, i, -1):  # longest repository first
                if _match_segments(tail, segments[split:], params) is not False:
                    params["repo"] = "/".join(segments[i:split])
                    return repo_ref(segments[i:split]) or False
            return False
        elif i >= count:
            return False
        elif item == "{project}":
            target = project_ref(segments[i]) or False
            if target is False:
                return False
        elif item == "{job}":
            target = job_ref(segments[i]) or False
            if target is False:
                return False
        else:
            params[item[1:-1]] = segments[i]
    return target if count == len(template) else False


def _index(routes: Sequence[Route]) -> tuple[dict[str, tuple[Route, ...]], tuple[Route, ...]]:
    """Routes by the literal first segment they need; a template starting with a
    placeholder is a candidate for every path. Table order is kept within each list."""
    open_first = tuple(r for r in routes if not r.prefix)
    firsts = {r.prefix[0] for r in routes if r.prefix}
    by_first = {f: tuple(r for r in routes if not r.prefix or r.prefix[0] == f) for f in firsts}
    return by_first, open_first


_ROUTE_INDEX = _index(ROUTES)


def match(
    method: str,
    segments: tuple[str, ...],
    query: Mapping[str, str] | None = None,
    routes: Sequence[Route] = ROUTES,
) -> RouteMatch | None:
    """The first route whose method, template and query match, or None (default deny)."""
    by_first, open_first = _ROUTE_INDEX if routes is ROUTES else _index(routes)
    count = len(segments)
    for route in by_first.get(segments[0], open_first) if segments else open_first:
        if method not in route.methods:
            continue
        template, prefix = route.segments, route.prefix
        if count < len(prefix) or segments[: len(prefix)] != prefix:
            continue
        if route.query and any((query or {}).get(k) != v for k, v in route.query):
            continue
        params: dict[str, str] = {}
        target = _match_segments(template, segments, params, len(prefix))
        if target is False:
            continue
        ref = target if isinstance(target, TargetRef) else TargetRef()
        return RouteMatch(route, ref, params, segments)
    return None


MEMO_PATH_LENGTH = 512  # longer paths are resolved every time (the memo stays small)


def resolve(method: str, raw_path: str, query: Mapping[str, str]) -> tuple[RouteMatch | None, str]:
    """`normalize_path` then `match`: the route and the canonical path; raises PathError.

    The routes are fixed, so a method and a raw path without a query always resolve alike:
    those are remembered (CI fleets fetch the same packages, blobs and refs again and
    again). A RouteMatch is frozen, so requests can share one.
    """
    if query or len(raw_path) > MEMO_PATH_LENGTH:
        segments, path = normalize_path(raw_path)
        return match(method, segments, query), path
    return _resolve_plain(method, raw_path)


@functools.lru_cache(maxsize=4096)
def _resolve_plain(method: str, raw_path: str) -> tuple[RouteMatch | None, str]:
    segments, path = normalize_path(raw_path)
    return match(method, segments), path
