"""GitLab's job token rules, one named row per rule, against the pure decide()."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.config import ScopeConfig
from gateway.decision import ALLOWING, Reason, decide, policy_grants
from gateway.model import AccessState, InboundEntry, JobState, ProjectState, TokenKind
from gateway.routes import (
    CLONE,
    DELETE_IMAGE,
    DELETE_PACKAGE,
    DOWNLOAD_ARTIFACTS,
    MANAGE_REGISTRY,
    PULL_IMAGE,
    PUSH_CODE,
    PUSH_IMAGE,
    PUSH_PACKAGE,
    READ_PACKAGE,
    READ_REGISTRY,
    READ_RELEASE,
    READ_TF_STATE,
    TRIGGER_PIPELINE,
    WRITE_TF_STATE,
    Action,
)

NOW = 1_000_000.0
SOURCE = ProjectState(1, "group/app", "private", False, False, True)
PRIVATE = ProjectState(2, "other/lib", "private", False, False, True)
JOB = JobState(100, 1, 7, "running", False, NOW + 600, 55, "build", "main")


def state(
    target: ProjectState | None = SOURCE,
    level: int = 30,
    *,
    job: JobState = JOB,
    source: ProjectState = SOURCE,
    outbound: bool = False,
    entry: InboundEntry | None = None,
) -> AccessState:
    return AccessState(
        kind=TokenKind.JOB,
        job=job,
        source=source,
        target=target,
        access_level=level,
        in_outbound_allowlist=outbound,
        inbound_entry=entry,
    )


PUBLIC = replace(PRIVATE, visibility="public")
INTERNAL = replace(PRIVATE, visibility="internal")
OPEN_PRIVATE = replace(PRIVATE, inbound_limit=False)  # inbound limit switched off
LIMITED_SOURCE = replace(SOURCE, outbound_limit=True)
PROJECT_ENTRY = InboundEntry("p:1", None)
GROUP_ENTRY = InboundEntry("g:group", None)

RULES = [
    # (rule name, action, state, scope, expected reason)
    ("same_project_developer_reads", READ_PACKAGE, state(level=30), None, Reason.SAME_PROJECT),
    ("same_project_developer_pushes", PUSH_PACKAGE, state(level=30), None, Reason.SAME_PROJECT),
    ("same_project_delete_needs_maintainer", DELETE_PACKAGE, state(level=30), None,
     Reason.INSUFFICIENT_ROLE),
    ("same_project_maintainer_deletes", DELETE_PACKAGE, state(level=40), None, Reason.SAME_PROJECT),
    ("same_project_guest_cannot_read_private_packages", READ_PACKAGE, state(level=10), None,
     Reason.INSUFFICIENT_ROLE),
    ("guest_reads_releases", READ_RELEASE, state(level=10), None, Reason.SAME_PROJECT),
    ("reporter_reads_artifacts", DOWNLOAD_ARTIFACTS, state(level=20), None, Reason.SAME_PROJECT),
    ("terraform_read_needs_developer", READ_TF_STATE, state(level=20), None,
     Reason.INSUFFICIENT_ROLE),
    ("terraform_write_needs_maintainer", WRITE_TF_STATE, state(level=30), None,
     Reason.INSUFFICIENT_ROLE),
    ("trigger_needs_developer", TRIGGER_PIPELINE, state(level=20), None, Reason.INSUFFICIENT_ROLE),
    ("git_push_denied_to_job_tokens", PUSH_CODE, state(level=50), None, Reason.ACTION_NOT_ALLOWED),
    ("job_not_running_after_success", READ_PACKAGE, state(job=replace(JOB, status="success")),
     None, Reason.JOB_NOT_RUNNING),
    ("job_not_running_after_cancel", READ_PACKAGE, state(job=replace(JOB, status="canceled")),
     None, Reason.JOB_NOT_RUNNING),
    ("canceling_job_invalid_on_job_token_routes", READ_PACKAGE,
     state(job=replace(JOB, status="canceling")), None, Reason.JOB_NOT_RUNNING),
    ("erased_job_invalid", READ_PACKAGE, state(job=replace(JOB, erased=True)), None,
     Reason.JOB_ERASED),
    ("token_expired_at_timeout", READ_PACKAGE, state(job=replace(JOB, expires_at=NOW)), None,
     Reason.TOKEN_EXPIRED),
    ("source_pending_delete", READ_PACKAGE, state(source=replace(SOURCE, pending_delete=True)),
     None, Reason.PROJECT_PENDING_DELETE),
    ("target_pending_delete", READ_PACKAGE,
     state(replace(PUBLIC, pending_delete=True)), None, Reason.PROJECT_PENDING_DELETE),
    ("target_not_found", READ_PACKAGE, state(None), None, Reason.PROJECT_NOT_FOUND),
    ("public_target_readable_from_any_job", READ_PACKAGE, state(PUBLIC, 0), None,
     Reason.PUBLIC_READ),
    ("internal_target_readable_gitlab_333444_not_copied", READ_PACKAGE, state(INTERNAL, 0), None,
     Reason.PUBLIC_READ),
    ("public_clone_open", CLONE, state(PUBLIC, 0), None, Reason.PUBLIC_READ),
    ("public_read_open_even_with_inbound_limit", DOWNLOAD_ARTIFACTS, state(PUBLIC, 0), None,
     Reason.PUBLIC_READ),
    ("public_write_needs_inbound_scope", PUSH_PACKAGE, state(PUBLIC, 30), None,
     Reason.OUTSIDE_INBOUND_SCOPE),
    ("public_write_in_inbound_scope_with_role", PUSH_PACKAGE, state(PUBLIC, 30, entry=PROJECT_ENTRY),
     None, Reason.IN_SCOPE),
    ("public_write_in_scope_needs_role", PUSH_PACKAGE, state(PUBLIC, 20, entry=PROJECT_ENTRY),
     None, Reason.INSUFFICIENT_ROLE),
    ("outbound_list_does_not_restrict_public_writes", PUSH_PACKAGE,
     state(replace(PUBLIC, inbound_limit=False), 30, source=LIMITED_SOURCE), None, Reason.IN_SCOPE),
    ("private_target_needs_membership", READ_PACKAGE, state(OPEN_PRIVATE, 0), None,
     Reason.INSUFFICIENT_ROLE),
    ("private_target_member_no_limits", READ_PACKAGE, state(OPEN_PRIVATE, 20), None,
     Reason.IN_SCOPE),
    ("private_target_inbound_limit_without_entry", READ_PACKAGE, state(PRIVATE, 20), None,
     Reason.OUTSIDE_INBOUND_SCOPE),
    ("private_target_inbound_project_entry", READ_PACKAGE, state(PRIVATE, 20, entry=PROJECT_ENTRY),
     None, Reason.IN_SCOPE),
    ("private_target_inbound_group_entry", READ_PACKAGE, state(PRIVATE, 20, entry=GROUP_ENTRY),
     None, Reason.IN_SCOPE),
    ("inbound_entry_does_not_replace_membership", READ_PACKAGE,
     state(PRIVATE, 0, entry=PROJECT_ENTRY), None, Reason.INSUFFICIENT_ROLE),
    ("outbound_limit_target_not_listed", READ_PACKAGE,
     state(OPEN_PRIVATE, 20, source=LIMITED_SOURCE), None, Reason.OUTSIDE_SCOPE),
    ("outbound_limit_target_listed", READ_PACKAGE,
     state(OPEN_PRIVATE, 20, source=LIMITED_SOURCE, outbound=True), None, Reason.IN_SCOPE),
    ("both_limits_both_must_pass_outbound_fails", READ_PACKAGE,
     state(PRIVATE, 20, source=LIMITED_SOURCE, entry=PROJECT_ENTRY), None, Reason.OUTSIDE_SCOPE),
    ("both_limits_both_must_pass_inbound_fails", READ_PACKAGE,
     state(PRIVATE, 20, source=LIMITED_SOURCE, outbound=True), None, Reason.OUTSIDE_INBOUND_SCOPE),
    ("both_limits_both_pass", READ_PACKAGE,
     state(PRIVATE, 20, source=LIMITED_SOURCE, outbound=True, entry=GROUP_ENTRY), None,
     Reason.IN_SCOPE),
    ("instance_setting_enforces_inbound_everywhere", READ_PACKAGE, state(OPEN_PRIVATE, 20),
     ScopeConfig(enforce_inbound=True), Reason.OUTSIDE_INBOUND_SCOPE),
    ("registry_api_own_project_only", READ_REGISTRY, state(PUBLIC, 50), None,
     Reason.OWN_PROJECT_ONLY),
    ("registry_api_own_project_allowed", READ_REGISTRY, state(level=20), None,
     Reason.SAME_PROJECT),
    ("registry_manage_needs_maintainer", MANAGE_REGISTRY, state(level=30), None,
     Reason.INSUFFICIENT_ROLE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "access", "scope", "expected"),
    [pytest.param(a, s, c, e, id=name) for name, a, s, c, e in RULES],
)
def test_gitlab_rule(
    action: Action, access: AccessState, scope: ScopeConfig | None, expected: Reason
) -> None:
    decision = decide(action, access, NOW, scope or ScopeConfig())
    assert decision.reason is expected
    assert decision.allowed is (expected in ALLOWING)


def test_direction_matters_job_inbound_list_does_not_open_the_other_project() -> None:
    # Project 2 sits on the *job's* project's inbound list: that opens 1 to 2's jobs, not 2 to 1's.
    # From job 100 (project 1), project 2 with its own inbound limit and no entry for 1 is closed.
    decision = decide(READ_PACKAGE, state(PRIVATE, 20, entry=None), NOW)
    assert decision.reason is Reason.OUTSIDE_INBOUND_SCOPE


def test_registry_push_switch_extends_in_scope() -> None:
    push = Action("push_image", 30, ("admin_containers",), own_project_only=True, in_scope_switch=True)
    access = state(PRIVATE, 30, entry=PROJECT_ENTRY)
    assert decide(push, access, NOW).reason is Reason.OWN_PROJECT_ONLY
    assert decide(push, access, NOW, ScopeConfig(registry_push_in_scope=True)).allowed


def test_unknown_token() -> None:
    assert decide(READ_PACKAGE, AccessState(kind=TokenKind.UNKNOWN), NOW).reason is Reason.UNKNOWN_TOKEN


def test_trigger_token_only_triggers_its_own_project() -> None:
    trigger = AccessState(
        kind=TokenKind.TRIGGER, trigger_owner_id=7, source=SOURCE,
        target=SOURCE, access_level=30,
    )  # fmt: skip
    assert decide(TRIGGER_PIPELINE, trigger, NOW).reason is Reason.SAME_PROJECT
    assert decide(READ_PACKAGE, trigger, NOW).reason is Reason.TRIGGER_TOKEN_NOT_ALLOWED
    other = replace(trigger, target=PUBLIC)
    assert decide(TRIGGER_PIPELINE, other, NOW).reason is Reason.TRIGGER_TOKEN_NOT_ALLOWED
    owner_demoted = replace(trigger, access_level=20)
    assert decide(TRIGGER_PIPELINE, owner_demoted, NOW).reason is Reason.INSUFFICIENT_ROLE


def test_job_endpoint_needs_only_a_live_job() -> None:
    assert decide(None, state(None), NOW).reason is Reason.JOB_ONLY
    assert decide(None, state(None, job=replace(JOB, status="failed")), NOW).reason is Reason.JOB_NOT_RUNNING


@pytest.mark.parametrize(
    ("policies", "needed", "granted"),
    [
        ({"read_packages"}, "read_packages", True),
        ({"admin_packages"}, "read_packages", True),
        ({"read_packages"}, "admin_packages", False),
        ({"admin_releases"}, "read_packages", False),
    ],
)
def test_policy_grants(policies: set[str], needed: str, granted: bool) -> None:
    assert policy_grants(frozenset(policies), needed) is granted


@pytest.mark.parametrize(
    ("target", "action", "reason"),
    [
        pytest.param(PUBLIC, READ_REGISTRY, Reason.PUBLIC_READ, id="anonymous_pulls_public_images"),
        pytest.param(INTERNAL, PULL_IMAGE, Reason.NO_CREDENTIAL, id="anonymous_not_internal"),
        pytest.param(PRIVATE, PULL_IMAGE, Reason.NO_CREDENTIAL, id="anonymous_not_private"),
        pytest.param(PUBLIC, PUSH_IMAGE, Reason.NO_CREDENTIAL, id="anonymous_never_pushes"),
        pytest.param(PUBLIC, DELETE_IMAGE, Reason.NO_CREDENTIAL, id="anonymous_never_deletes"),
        pytest.param(replace(PUBLIC, pending_delete=True), PULL_IMAGE, Reason.NO_CREDENTIAL,
                     id="anonymous_not_pending_delete"),
        pytest.param(None, PULL_IMAGE, Reason.NO_CREDENTIAL, id="anonymous_no_project"),
    ],
)  # fmt: skip
def test_anonymous_registry_token(target: ProjectState | None, action: Action, reason: Reason) -> None:
    anonymous = AccessState(kind=TokenKind.ANONYMOUS, target=target)
    assert decide(action, anonymous, NOW).reason is reason
