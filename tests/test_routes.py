"""Path normalization and the route table."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest

from gateway.model import TargetRef
from gateway.routes import ROUTES, PathError, canonical_path, match, split_path

from .gitlab_surface import FAMILY_UPSTREAM, SURFACE, UNROUTED, P, row_id


@pytest.mark.parametrize(
    ("method", "path", "route", "target"),
    [
        ("GET", "/api/v4/projects/5/packages/generic/a/1/f.bin", "packages_read", TargetRef(5)),
        ("HEAD", "/api/v4/projects/5/packages", "packages_read", TargetRef(5)),
        ("PUT", "/api/v4/projects/5/packages/generic/a/1/f.bin", "packages_write", TargetRef(5)),
        ("DELETE", "/api/v4/projects/5/packages/9", "packages_delete", TargetRef(5)),
        ("GET", "/api/v4/projects/g%2Fsub%2Fp/packages/pypi/simple/x", "packages_read",
         TargetRef(paths=("g/sub/p",))),
        ("GET", "/api/v4/projects/5/jobs/artifacts/main/download", "artifacts_by_ref", TargetRef(5)),
        ("GET", "/api/v4/projects/5/jobs/artifacts/feature%2Fx/raw/out/a.txt",
         "artifacts_file_by_ref", TargetRef(5)),
        ("GET", "/api/v4/projects/5/jobs/77/artifacts", "artifacts_by_job", TargetRef(5)),
        ("GET", "/api/v4/projects/5/jobs/77/artifacts/dist/app.tar", "artifacts_by_job", TargetRef(5)),
        ("POST", "/api/v4/projects/5/trigger/pipeline", "trigger_pipeline", TargetRef(5)),
        ("POST", "/api/v4/projects/5/ref/main/trigger/pipeline", "trigger_pipeline_ref", TargetRef(5)),
        ("GET", "/api/v4/projects/5/releases", "releases_read", TargetRef(5)),
        ("GET", "/api/v4/projects/5/releases/v1.0/assets/links", "releases_read", TargetRef(5)),
        ("POST", "/api/v4/projects/5/releases/v1.0/assets/links", "releases_write", TargetRef(5)),
        ("GET", "/api/v4/projects/5/terraform/state/prod", "terraform_state_read", TargetRef(5)),
        ("POST", "/api/v4/projects/5/terraform/state/prod", "terraform_state_write", TargetRef(5)),
        ("LOCK", "/api/v4/projects/5/terraform/state/prod/lock", "terraform_state_lock", TargetRef(5)),
        ("DELETE", "/api/v4/projects/5/terraform/state/prod/lock", "terraform_state_lock",
         TargetRef(5)),
        ("GET", "/api/v4/projects/5/registry/repositories", "registry_api_read", TargetRef(5)),
        ("GET", "/api/v4/job", "job", TargetRef()),
        ("POST", "/g/sub/p.git/git-upload-pack", "git_upload_pack",
         TargetRef(paths=("g/sub/p", "g/sub"))),
        ("POST", "/g/p/git-receive-pack", "git_receive_pack", TargetRef(paths=("g/p",))),
    ],
)  # fmt: skip
def test_route_table(method: str, path: str, route: str, target: TargetRef) -> None:
    matched = match(method, split_path(path))
    assert matched is not None
    assert matched.route.name == route
    assert matched.target == target


def test_git_refs_needs_its_service() -> None:
    segments = split_path("/g/p.git/info/refs")
    assert match("GET", segments, {"service": "git-upload-pack"}).route.name == "git_refs"  # type: ignore[union-attr]
    assert match("GET", segments, {"service": "git-receive-pack"}).route.name == "git_refs_push"  # type: ignore[union-attr]
    assert match("GET", segments, {}) is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v4/projects/5/variables"),
        ("GET", "/api/v4/projects/5"),
        ("GET", "/api/v4/Projects/5/packages/x"),
        ("PATCH", "/api/v4/projects/5/releases/v1"),
        ("GET", "/api/v4/projects/5;x=1/packages/x"),
        ("GET", "/api/v4/projects/notapath/packages/x"),
        ("GET", "/api/v4/projects/99999999999999999999/packages/x"),
        ("POST", "/api/v4/projects/5/trigger/pipeline/extra"),
        ("GET", "/api/v4/job/"),
        ("GET", "/single/info/refs"),
    ],
)
def test_unlisted_paths_match_nothing(method: str, path: str) -> None:
    assert match(method, split_path(path), {"service": "git-upload-pack"}) is None


@pytest.mark.parametrize(
    "raw",
    ["/a/../b", "/a/./b", "/a/%2e%2E/b", "/a/%2E/b", "/a/%252F/b", "/a//b", "/a/%00", "/a/%0a",
     "/a/%ff", "a/b", "/" + "x" * 5000],
)  # fmt: skip
def test_ambiguous_paths_are_rejected(raw: str) -> None:
    with pytest.raises(PathError):
        split_path(raw)


def test_canonical_path_is_what_was_matched() -> None:
    segments = split_path("/api/v4/projects/g%2fp/packages/npm/@scope%2Fpkg/-/pkg-1.0.tgz")
    assert segments[3] == "g/p"
    assert canonical_path(segments) == "/api/v4/projects/g%2Fp/packages/npm/@scope%2Fpkg/-/pkg-1.0.tgz"
    assert canonical_path(split_path("/api/v4/pro%6aects/1")) == "/api/v4/projects/1"


def test_every_route_names_a_known_upstream() -> None:
    from gateway.config import UPSTREAM_NAMES

    assert {r.upstream for r in ROUTES} <= set(UPSTREAM_NAMES)
    assert len({r.name for r in ROUTES}) == len(ROUTES)


@pytest.mark.parametrize(
    ("method", "path", "route", "repo"),
    [
        ("GET", "/v2/", "registry_base", None),
        ("GET", "/v2/g/app/image/manifests/v1", "registry_manifest_read", "g/app/image"),
        ("PUT", "/v2/g/app/manifests/sha256:abc", "registry_manifest_write", "g/app"),
        ("DELETE", "/v2/g/app/manifests/v1", "registry_manifest_delete", "g/app"),
        ("HEAD", "/v2/g/app/blobs/sha256:abc", "registry_blob_read", "g/app"),
        ("POST", "/v2/g/app/x/blobs/uploads/", "registry_upload", "g/app/x"),
        ("PATCH", "/v2/g/app/blobs/uploads/1f2e-uuid", "registry_upload", "g/app"),
        ("GET", "/v2/g/sub/app/tags/list", "registry_tags", "g/sub/app"),
    ],
)
def test_registry_routes(method: str, path: str, route: str, repo: str | None) -> None:
    matched = match(method, split_path(path))
    assert matched is not None and matched.route.name == route
    assert (matched.target.paths[0] if matched.target.paths else None) == repo


def test_registry_catalog_is_not_routed() -> None:
    assert match("GET", split_path("/v2/_catalog")) is None


def test_route_names_need_no_escaping_in_the_access_log() -> None:
    import re

    assert all(re.fullmatch(r"[a-z_]+", route.name) for route in ROUTES)


def test_every_route_names_a_known_policy_and_a_configurable_upstream() -> None:
    from gateway.config import UPSTREAM_NAMES
    from gateway.model import POLICIES
    from gateway.routes import Protocol

    for route in ROUTES:
        assert route.upstream in UPSTREAM_NAMES, route.name
        assert isinstance(route.protocol, Protocol), route.name
        if route.action is not None:
            assert set(route.action.policies) <= POLICIES, route.name


# -- GitLab 18.4's surface (GITLAB.md §1), row by row -----------------------------------


def _match(method: str, path: str) -> Any:
    raw, _, query = path.partition("?")
    return match(method, split_path(raw), dict(parse_qsl(query)))


@pytest.mark.parametrize(
    ("family", "method", "path", "policies"),
    [pytest.param(*row, id=row_id(*row[:3])) for row in SURFACE],
)
def test_every_gitlab_endpoint_is_a_row_with_its_policies(
    family: str, method: str, path: str, policies: tuple[str, ...] | None
) -> None:
    matched = _match(method, path)
    assert matched is not None, "not routed"
    action = matched.route.action
    assert action is not None
    if policies is None:  # trigger and git: not policy-checked; the registry API keeps `containers`
        assert not action.policy_checked or set(action.policies) <= {"read_containers", "admin_containers"}
    else:
        assert action.policy_checked and set(action.policies) == set(policies)
    assert matched.route.upstream == FAMILY_UPSTREAM[family]
    if path.startswith(P):
        assert matched.target == TargetRef(5)


def test_the_artifacts_of_a_job_name_their_job() -> None:
    matched = _match("GET", "/api/v4/jobs/77/artifacts")
    assert matched is not None and matched.target == TargetRef(job_id=77)
    assert _match("GET", "/api/v4/jobs/x7/artifacts") is None
    assert _match("GET", "/api/v4/jobs/77/artifacts/extra") is None


@pytest.mark.parametrize(("method", "path"), UNROUTED)
def test_group_and_instance_package_paths_stay_unrouted(method: str, path: str) -> None:
    assert _match(method, path) is None


def test_the_new_families_fall_back_to_the_api_upstream() -> None:
    from gateway.config import FALLBACK_UPSTREAMS, parse_config

    config = parse_config(
        {"listen": "127.0.0.1:0", "upstreams": {"api": {"url": "http://api:1"}, "issues": {"url": "http://i:2"}}},
        "t.yaml", env={},
    )  # fmt: skip
    assert config.upstream_for("issues").url == "http://i:2"  # type: ignore[union-attr]
    for name in set(FALLBACK_UPSTREAMS) - {"issues"}:
        assert config.upstream_for(name).url == "http://api:1"  # type: ignore[union-attr]
    assert config.upstream_for("packages") is None  # the families jobgate always had do not fall back
