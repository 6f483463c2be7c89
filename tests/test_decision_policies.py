"""Job token policy rules (GitLab 18.3 fine-grained permissions), one named row per rule.

Each row is decided by the pure decide() and, through the same call with a trace, shows the
rule that decided it in the checks `jobgate explain` prints.
"""

from __future__ import annotations

import pytest

from gateway.decision import ALLOWING, Check, Reason, decide
from gateway.model import AccessState, InboundEntry
from gateway.routes import (
    DELETE_PACKAGE,
    DOWNLOAD_ARTIFACTS,
    PUSH_PACKAGE,
    READ_PACKAGE,
    READ_RELEASE,
    TRIGGER_PIPELINE,
    Action,
)

from .test_decision import NOW, OPEN_PRIVATE, PRIVATE, state


def entry(*policies: str) -> InboundEntry:
    return InboundEntry("p:1", frozenset(policies))


DEFAULT = InboundEntry("p:1", None)  # `*`: default permissions, the role alone decides

RULES = [
    # (rule, action, state, expected reason)
    ("listed_policy_grants", READ_PACKAGE, state(PRIVATE, 20, entry=entry("read_packages")),
     Reason.IN_SCOPE),
    ("unlisted_policy_denies", READ_PACKAGE, state(PRIVATE, 20, entry=entry("read_releases")),
     Reason.POLICY_MISSING),
    ("admin_implies_read", READ_PACKAGE, state(PRIVATE, 20, entry=entry("admin_packages")),
     Reason.IN_SCOPE),
    ("read_does_not_imply_admin", PUSH_PACKAGE, state(PRIVATE, 30, entry=entry("read_packages")),
     Reason.POLICY_MISSING),
    ("admin_of_another_family_grants_nothing", READ_PACKAGE,
     state(PRIVATE, 40, entry=entry("admin_releases")), Reason.POLICY_MISSING),
    ("role_caps_policy", PUSH_PACKAGE, state(PRIVATE, 20, entry=entry("admin_packages")),
     Reason.INSUFFICIENT_ROLE),
    ("role_caps_policy_maintainer_only_delete", DELETE_PACKAGE,
     state(PRIVATE, 30, entry=entry("admin_packages")), Reason.INSUFFICIENT_ROLE),
    ("policy_and_role_both_pass", DELETE_PACKAGE, state(PRIVATE, 40, entry=entry("admin_packages")),
     Reason.IN_SCOPE),
    ("default_permissions_entry_is_role_only", DELETE_PACKAGE, state(PRIVATE, 40, entry=DEFAULT),
     Reason.IN_SCOPE),
    ("default_permissions_entry_still_needs_role", DELETE_PACKAGE, state(PRIVATE, 30, entry=DEFAULT),
     Reason.INSUFFICIENT_ROLE),
    ("own_project_unlimited", PUSH_PACKAGE, state(level=30), Reason.SAME_PROJECT),
    ("jobs_policy_covers_artifacts", DOWNLOAD_ARTIFACTS, state(PRIVATE, 20, entry=entry("read_jobs")),
     Reason.IN_SCOPE),
    ("releases_need_releases_policy", READ_RELEASE, state(PRIVATE, 20, entry=entry("read_jobs")),
     Reason.POLICY_MISSING),
    ("policy_cannot_control_an_endpoint_without_one", TRIGGER_PIPELINE,
     state(PRIVATE, 30, entry=entry("read_releases")), Reason.IN_SCOPE),
    ("policy_ignored_when_inbound_limit_off", PUSH_PACKAGE,
     state(OPEN_PRIVATE, 30, entry=entry("read_releases")), Reason.IN_SCOPE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("action", "access", "expected"), [pytest.param(a, s, e, id=name) for name, a, s, e in RULES]
)
def test_policy_rule(action: Action, access: AccessState, expected: Reason) -> None:
    checks: list[Check] = []
    decision = decide(action, access, NOW, checks=checks)
    assert decision.reason is expected
    assert decision.allowed is (expected in ALLOWING)
    assert decide(action, access, NOW).reason is expected  # tracing does not change the verdict
    if decision.allowed:
        assert all(c.passed for c in checks), checks
    else:
        assert not checks[-1].passed, checks  # the last rule looked at is the one that failed
