"""Every endpoint family of GitLab 18.4 (GITLAB.md §1), decided row by row.

For each row of `tests/gitlab_surface.py`, from a job of another project, against a private
target whose inbound allowlist entry lists policies: allowed with the route's role and
policies, denied with one policy missing, denied a role lower. Then the rules 18.4 added:
several policies, a route that declares none, features, git push by opt-in.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl

import pytest

from gateway.decision import ALLOWING, Check, Reason, decide
from gateway.model import GITLAB_POLICIES, POLICIES, InboundEntry
from gateway.routes import (
    CLONE,
    CREATE_DEPLOYMENT,
    DOWNLOAD_ARTIFACTS,
    PULL_IMAGE,
    PUSH_CODE,
    PUSH_PACKAGE,
    READ_ISSUES,
    READ_PACKAGE,
    READ_RELEASE,
    READ_TF_STATE,
    TRIGGER_PIPELINE,
    Action,
    match,
    split_path,
)

from .gitlab_surface import SURFACE, row_id
from .test_decision import INTERNAL, NOW, PRIVATE, PUBLIC, SOURCE, state


def action_of(method: str, path: str) -> Action:
    raw, _, query = path.partition("?")
    matched = match(method, split_path(raw), dict(parse_qsl(query)))
    assert matched is not None and matched.route.action is not None
    return matched.route.action


def entry(*policies: str) -> InboundEntry:
    return InboundEntry("p:1", frozenset(policies))


CHECKED = [pytest.param(m, p, pol, id=row_id(f, m, p)) for f, m, p, pol in SURFACE if pol is not None]


@pytest.mark.parametrize(("method", "path", "policies"), CHECKED)
def test_allowed_with_the_role_and_every_policy(method: str, path: str, policies: tuple[str, ...]) -> None:
    action = action_of(method, path)
    decision = decide(action, state(PRIVATE, action.min_level, entry=entry(*policies)), NOW)
    assert decision.reason is Reason.IN_SCOPE


@pytest.mark.parametrize(("method", "path", "policies"), CHECKED)
def test_denied_with_a_policy_missing(method: str, path: str, policies: tuple[str, ...]) -> None:
    action = action_of(method, path)
    for missing in policies:
        others = [p for p in policies if p != missing] or ["read_work_items" if missing != "read_work_items"
                                                           else "read_jobs"]  # fmt: skip
        decision = decide(action, state(PRIVATE, 50, entry=entry(*others)), NOW)
        assert decision.reason is Reason.POLICY_MISSING, missing


@pytest.mark.parametrize(("method", "path", "policies"), CHECKED)
def test_denied_a_role_lower(method: str, path: str, policies: tuple[str, ...]) -> None:
    action = action_of(method, path)
    decision = decide(action, state(PRIVATE, action.min_level - 10, entry=entry(*policies)), NOW)
    assert decision.reason is Reason.INSUFFICIENT_ROLE


UNCHECKED = [pytest.param(m, p, id=row_id(f, m, p)) for f, m, p, pol in SURFACE
             if pol is None and f in ("trigger", "git")]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), UNCHECKED)
def test_trigger_and_git_keep_their_own_rules_under_a_policy_entry(method: str, path: str) -> None:
    action = action_of(method, path)
    decision = decide(action, state(PRIVATE, 30, entry=entry("read_releases")), NOW)
    expected = Reason.ACTION_NOT_ALLOWED if action is PUSH_CODE else Reason.IN_SCOPE
    assert decision.reason is expected


def test_there_are_gitlabs_19_policies_and_the_deprecated_containers() -> None:
    assert len(GITLAB_POLICIES) == 19
    assert {"read_pipelines", "admin_pipelines", "read_merge_requests", "read_repositories",
            "read_work_items"} <= GITLAB_POLICIES  # fmt: skip
    assert {"read_containers", "admin_containers"} == POLICIES - GITLAB_POLICIES


NO_POLICY = Action("undeclared", 20, (), read=True)

RULES = [
    # (rule, action, state, expected reason)
    ("deployment_create_needs_both_policies", CREATE_DEPLOYMENT,
     state(PRIVATE, 30, entry=entry("admin_deployments", "admin_environments")), Reason.IN_SCOPE),
    ("deployment_create_without_admin_environments", CREATE_DEPLOYMENT,
     state(PRIVATE, 30, entry=entry("admin_deployments")), Reason.POLICY_MISSING),
    ("deployment_create_without_admin_deployments", CREATE_DEPLOYMENT,
     state(PRIVATE, 30, entry=entry("admin_environments", "read_deployments")), Reason.POLICY_MISSING),
    ("admin_pipelines_implies_read_pipelines", action_of("GET", "/api/v4/projects/5/pipelines"),
     state(PRIVATE, 20, entry=entry("admin_pipelines")), Reason.IN_SCOPE),
    ("api_route_without_a_policy_denied_under_a_policy_entry", NO_POLICY,
     state(PRIVATE, 20, entry=entry(*GITLAB_POLICIES)), Reason.POLICY_MISSING),
    ("api_route_without_a_policy_allowed_under_default_permissions", NO_POLICY,
     state(PRIVATE, 20, entry=InboundEntry("p:1", None)), Reason.IN_SCOPE),
    ("trigger_not_policy_checked", TRIGGER_PIPELINE, state(PRIVATE, 30, entry=entry("read_jobs")),
     Reason.IN_SCOPE),
    ("clone_not_policy_checked", CLONE, state(PRIVATE, 20, entry=entry("read_jobs")), Reason.IN_SCOPE),
    ("issues_guest_reads_with_read_work_items", READ_ISSUES,
     state(PRIVATE, 10, entry=entry("read_work_items")), Reason.IN_SCOPE),
    # feature visibility (GitLab's job_token_access_allowed_to?)
    ("public_feature_enabled_read_open", READ_PACKAGE, state(PUBLIC, 0), Reason.PUBLIC_READ),
    ("public_feature_private_read_needs_membership", READ_PACKAGE,
     state(replace(PUBLIC, features=(("packages", "private"),)), 0), Reason.OUTSIDE_INBOUND_SCOPE),
    ("public_feature_private_member_in_scope_reads", READ_PACKAGE,
     state(replace(PUBLIC, features=(("packages", "private"),)), 20, entry=entry("read_packages")),
     Reason.IN_SCOPE),
    ("public_feature_private_member_without_role", READ_PACKAGE,
     state(replace(PUBLIC, features=(("packages", "private"),), inbound_limit=False), 10),
     Reason.INSUFFICIENT_ROLE),
    ("internal_builds_private_artifacts_closed", DOWNLOAD_ARTIFACTS,
     state(replace(INTERNAL, features=(("builds", "private"),)), 0), Reason.OUTSIDE_INBOUND_SCOPE),
    ("other_feature_private_does_not_close_this_one", READ_RELEASE,
     state(replace(PUBLIC, features=(("packages", "private"),)), 0), Reason.PUBLIC_READ),
    ("registry_feature_private_closes_pulls", PULL_IMAGE,
     state(replace(PUBLIC, features=(("container_registry", "private"),)), 0), Reason.OUTSIDE_INBOUND_SCOPE),
    ("repository_feature_private_closes_clones", CLONE,
     state(replace(PUBLIC, features=(("repository", "private"),), inbound_limit=False), 0),
     Reason.INSUFFICIENT_ROLE),
    ("feature_disabled_denies_even_members", READ_PACKAGE,
     state(replace(PRIVATE, features=(("packages", "disabled"),)), 50, entry=InboundEntry("p:1", None)),
     Reason.FEATURE_DISABLED),
    ("feature_disabled_denies_the_own_project", PUSH_PACKAGE,
     state(replace(SOURCE, features=(("packages", "disabled"),)), 50), Reason.FEATURE_DISABLED),
    ("feature_private_own_project_member_reads", READ_PACKAGE,
     state(replace(SOURCE, visibility="public", features=(("packages", "private"),)), 20),
     Reason.SAME_PROJECT),
    ("feature_private_own_project_non_member_denied", READ_PACKAGE,
     state(replace(SOURCE, visibility="public", features=(("packages", "private"),)), 0),
     Reason.INSUFFICIENT_ROLE),
    ("terraform_state_has_no_feature_and_no_open_read", READ_TF_STATE, state(PUBLIC, 0),
     Reason.OUTSIDE_INBOUND_SCOPE),
    # git push with a job token (GitLab 18.4, opt-in per project)
    ("git_push_refused_when_the_project_has_not_opted_in", PUSH_CODE, state(level=30),
     Reason.ACTION_NOT_ALLOWED),
    ("git_push_developer_own_project_opted_in", PUSH_CODE,
     state(replace(SOURCE, push_repository=True), 30, source=replace(SOURCE, push_repository=True)),
     Reason.SAME_PROJECT),
    ("git_push_reporter_refused", PUSH_CODE,
     state(replace(SOURCE, push_repository=True), 20, source=replace(SOURCE, push_repository=True)),
     Reason.INSUFFICIENT_ROLE),
    ("git_push_other_project_refused_even_opted_in", PUSH_CODE,
     state(replace(PRIVATE, push_repository=True), 50, entry=InboundEntry("p:1", None)),
     Reason.OWN_PROJECT_ONLY),
]  # fmt: skip


@pytest.mark.parametrize(("action", "access", "expected"), [pytest.param(*r[1:], id=r[0]) for r in RULES])
def test_gitlab_18_4_rule(action: Action, access: Any, expected: Reason) -> None:
    checks: list[Check] = []
    decision = decide(action, access, NOW, checks=checks)
    assert decision.reason is expected
    assert decision.allowed is (expected in ALLOWING)
    if not decision.allowed:
        assert not checks[-1].passed, checks  # `jobgate explain` ends on the rule that failed


def test_explain_names_the_policies_the_entry_lacks() -> None:
    from gateway.responses import explain_message

    decision = decide(CREATE_DEPLOYMENT, state(PRIVATE, 30, entry=entry("admin_deployments")), NOW)
    assert explain_message(decision) == (
        "Insufficient permissions to access this resource in project other/lib. "
        "The following token permission is required: admin_environments."
    )
    undeclared = decide(NO_POLICY, state(PRIVATE, 30, entry=entry("read_jobs")), NOW)
    assert explain_message(undeclared) == (
        "Insufficient permissions to access this resource in project other/lib."
    )
