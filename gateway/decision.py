"""decide(action, state) -> Decision: GitLab's job token rules as a pure function, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import ScopeConfig
from .routes import Action
from .store import EXECUTING_STATUSES, AccessState, JobState, ProjectState, TokenKind


class Reason(StrEnum):
    """Why a request was allowed or denied; each names the GitLab rule that decided."""

    SAME_PROJECT = "same_project"
    PUBLIC_READ = "public_read"
    IN_SCOPE = "in_scope"
    JOB_ONLY = "job_only"
    NO_CREDENTIAL = "no_credential"
    UNKNOWN_TOKEN = "unknown_token"
    JOB_NOT_RUNNING = "job_not_running"
    JOB_ERASED = "job_erased"
    TOKEN_EXPIRED = "token_expired"
    PROJECT_NOT_FOUND = "project_not_found"
    PROJECT_PENDING_DELETE = "project_pending_delete"
    ACTION_NOT_ALLOWED = "action_not_allowed"
    OWN_PROJECT_ONLY = "own_project_only"
    OUTSIDE_SCOPE = "outside_scope"
    OUTSIDE_INBOUND_SCOPE = "outside_inbound_scope"
    INSUFFICIENT_ROLE = "insufficient_role"
    POLICY_MISSING = "policy_missing"
    TRIGGER_TOKEN_NOT_ALLOWED = "trigger_token_not_allowed"
    INSUFFICIENT_TOKEN_SCOPE = "insufficient_token_scope"


#: Reasons that mean "this credential cannot act at all": protocols re-challenge for these.
DEAD_CREDENTIAL = frozenset({
    Reason.NO_CREDENTIAL, Reason.UNKNOWN_TOKEN, Reason.JOB_NOT_RUNNING, Reason.JOB_ERASED,
    Reason.TOKEN_EXPIRED, Reason.INSUFFICIENT_TOKEN_SCOPE,
})  # fmt: skip


ALLOWING = frozenset({Reason.SAME_PROJECT, Reason.PUBLIC_READ, Reason.IN_SCOPE, Reason.JOB_ONLY})


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one authorization: metrics, logs and responses all read this value."""

    reason: Reason
    state: AccessState | None = None
    action: Action | None = None

    @property
    def allowed(self) -> bool:
        """True when the request may go upstream."""
        return self.reason in ALLOWING

    @property
    def job(self) -> JobState | None:
        """The job whose token was presented, if any."""
        return self.state.job if self.state else None

    @property
    def source(self) -> ProjectState | None:
        """The project the token belongs to."""
        return self.state.source if self.state else None

    @property
    def target(self) -> ProjectState | None:
        """The project the request is about."""
        return self.state.target if self.state else None


def policy_grants(policies: frozenset[str], needed: str | None) -> bool:
    """True when the fine-grained policies include `needed`; `admin_x` implies `read_x`."""
    if needed is None:
        return False
    if needed in policies:
        return True
    return needed.startswith("read_") and "admin_" + needed.removeprefix("read_") in policies


def _token_validity(state: AccessState, now: float) -> Reason | None:
    """Why the token cannot act at all, or None while it is live."""
    if state.kind is TokenKind.UNKNOWN:
        return Reason.UNKNOWN_TOKEN
    job = state.job
    if job is not None:
        if job.status not in EXECUTING_STATUSES:
            return Reason.JOB_NOT_RUNNING
        if job.erased:
            return Reason.JOB_ERASED
        if now >= job.expires_at:
            return Reason.TOKEN_EXPIRED
    if state.source is None:
        return Reason.PROJECT_NOT_FOUND
    if state.source.pending_delete:
        return Reason.PROJECT_PENDING_DELETE
    return None


_DEFAULT_SCOPE = ScopeConfig()


def decide(
    action: Action | None, state: AccessState, now: float, scope: ScopeConfig = _DEFAULT_SCOPE
) -> Decision:
    """Allow or deny one request of `action` given the looked-up `state` at time `now`.

    `action` None means a request about the job itself (`GET /api/v4/job`).
    """
    invalid = _token_validity(state, now)
    if invalid is not None:
        return Decision(invalid, state, action)
    if state.kind is TokenKind.TRIGGER and (action is None or not action.trigger_token):
        return Decision(Reason.TRIGGER_TOKEN_NOT_ALLOWED, state, action)
    if action is None:
        return Decision(Reason.JOB_ONLY, state, action)

    def verdict(reason: Reason) -> Decision:
        return Decision(reason, state, action)

    source, target = state.source, state.target
    assert source is not None
    if target is None:
        return verdict(Reason.PROJECT_NOT_FOUND)
    if target.pending_delete:
        return verdict(Reason.PROJECT_PENDING_DELETE)
    if action.denied_to_job_tokens:
        return verdict(Reason.ACTION_NOT_ALLOWED)
    open_read = action.read and target.visibility in ("public", "internal")
    has_role = open_read or state.access_level >= action.min_level

    if target.id == source.id:
        return verdict(Reason.SAME_PROJECT if has_role else Reason.INSUFFICIENT_ROLE)
    if state.kind is TokenKind.TRIGGER:
        return verdict(Reason.TRIGGER_TOKEN_NOT_ALLOWED)
    if action.own_project_only and not (action.in_scope_switch and scope.registry_push_in_scope):
        return verdict(Reason.OWN_PROJECT_ONLY)
    if open_read:
        return verdict(Reason.PUBLIC_READ)
    if target.visibility == "private" and source.outbound_limit and not state.in_outbound_allowlist:
        return verdict(Reason.OUTSIDE_SCOPE)
    inbound_enforced = target.inbound_limit or scope.enforce_inbound
    if inbound_enforced and state.inbound_entry is None:
        return verdict(Reason.OUTSIDE_INBOUND_SCOPE)
    if not has_role:
        return verdict(Reason.INSUFFICIENT_ROLE)
    entry = state.inbound_entry
    policies = entry.policies if inbound_enforced and entry is not None else None
    if policies is not None and not policy_grants(policies, action.policy):
        return verdict(Reason.POLICY_MISSING)
    return verdict(Reason.IN_SCOPE)
