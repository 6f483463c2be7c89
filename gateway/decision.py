"""decide(action, state) -> Decision: GitLab's job token rules as a pure function, no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from .config import ScopeConfig
from .model import EXECUTING_STATUSES, AccessState, JobState, ProjectState, TokenKind
from .routes import Action


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
    FEATURE_DISABLED = "feature_disabled"
    TRIGGER_TOKEN_NOT_ALLOWED = "trigger_token_not_allowed"
    INSUFFICIENT_TOKEN_SCOPE = "insufficient_token_scope"
    #: Outcomes decided before the rules: the client is over the brute-force limit, or
    #: Redis could not be read (fail closed).
    RATE_LIMITED = "rate_limited"
    STORE_UNAVAILABLE = "store_unavailable"
    INVALID_REGISTRY_TOKEN = "invalid_registry_token"
    #: Refusals at the trust boundary (docs/reliability.md): requests that jobgate and the
    #: upstream (or the proxy in front) could read differently, and malformed input.
    MALFORMED_PATH = "malformed_path"
    MALFORMED_CREDENTIAL = "malformed_credential"
    MALFORMED_BODY = "malformed_body"
    BODY_TOO_LARGE = "body_too_large"
    BODY_STALLED = "body_stalled"
    AMBIGUOUS_TOKEN = "ambiguous_token"
    TOKEN_OUTSIDE_PLACES = "token_outside_credential_places"
    METHOD_OVERRIDE = "method_override"
    DUPLICATE_PARAMETER = "duplicate_parameter"
    REPOSITORY_NAME_INVALID = "repository_name_invalid"
    GIT_PATH_NOT_PROJECT = "git_path_not_project"
    FORWARD_AUTH_OFF = "forward_auth_off"
    FORWARD_AUTH_AMBIGUOUS = "forward_auth_ambiguous"
    FORWARD_AUTH_UNSTRIPPABLE = "forward_auth_unstrippable_token"


#: Reasons that mean "this credential cannot act at all": protocols re-challenge for these.
DEAD_CREDENTIAL = frozenset({
    Reason.NO_CREDENTIAL, Reason.UNKNOWN_TOKEN, Reason.JOB_NOT_RUNNING, Reason.JOB_ERASED,
    Reason.TOKEN_EXPIRED, Reason.INSUFFICIENT_TOKEN_SCOPE, Reason.INVALID_REGISTRY_TOKEN,
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


def policy_grants(policies: frozenset[str], needed: str) -> bool:
    """True when the fine-grained policies include `needed`; `admin_x` implies `read_x`."""
    if needed in policies:
        return True
    return needed.startswith("read_") and "admin_" + needed.removeprefix("read_") in policies


def missing_policies(action: Action, policies: frozenset[str]) -> tuple[str, ...]:
    """The policies `action` needs that a policy-listing entry lacks (all must be listed)."""
    return tuple(p for p in action.policies if not policy_grants(policies, p))


@dataclass(frozen=True, slots=True)
class Check:
    """One rule a decision looked at, for `jobgate explain`: what it saw and whether it held."""

    rule: str
    passed: bool
    detail: str


class _Trace:
    """Collects checks when explaining; costs one attribute test per rule otherwise."""

    def __init__(self, checks: list[Check] | None) -> None:
        self.checks = checks

    def __call__(self, rule: str, passed: bool, detail: Callable[[], object]) -> bool:
        if self.checks is not None:
            self.checks.append(Check(rule, passed, str(detail())))
        return passed


def _token_validity(state: AccessState, now: float, check: _Trace) -> Reason | None:
    """Why the token cannot act at all, or None while it is live."""
    if not check("token known", state.kind is not TokenKind.UNKNOWN, lambda: state.kind.value):
        return Reason.UNKNOWN_TOKEN
    job = state.job
    if job is not None:
        running = job.status in EXECUTING_STATUSES
        if not check("job running", running, lambda: f"job {job.id} is {job.status}"):
            return Reason.JOB_NOT_RUNNING
        if not check("job not erased", not job.erased, lambda: "erased" if job.erased else "not erased"):
            return Reason.JOB_ERASED
        left = job.expires_at - now
        if not check("token not expired", left > 0, lambda: f"{left:.0f} s left"):
            return Reason.TOKEN_EXPIRED
    source = state.source
    if not check("source project exists", source is not None, lambda: source.path if source else "missing"):
        return Reason.PROJECT_NOT_FOUND
    assert source is not None
    if not check("source project not pending deletion", not source.pending_delete, lambda: source.path):
        return Reason.PROJECT_PENDING_DELETE
    return None


def _anonymous(action: Action | None, state: AccessState, check: _Trace) -> Decision:
    """No credential, on the registry's anonymous token: reads of public projects only (GitLab
    hands anonymous clients a pull-only token for public images)."""
    target = state.target
    public_read = (
        action is not None and action.read and not action.push_opt_in and target is not None
        and not target.pending_delete and target.visibility == "public"
        and target.feature(action.feature) == "enabled"
    )  # fmt: skip
    if check("anonymous read of a public project", public_read,
             lambda: f"{target.path} is {target.visibility}" if target else "no project"):  # fmt: skip
        return Decision(Reason.PUBLIC_READ, state, action)
    return Decision(Reason.NO_CREDENTIAL, state, action)


_DEFAULT_SCOPE = ScopeConfig()


def decide(
    action: Action | None,
    state: AccessState,
    now: float,
    scope: ScopeConfig = _DEFAULT_SCOPE,
    checks: list[Check] | None = None,
    token_grants: bool = True,
) -> Decision:
    """Allow or deny one request of `action` given the looked-up `state` at time `now`.

    `action` None means a request about the job itself (`GET /api/v4/job`). `token_grants`
    False: the request came with a registry token that does not grant this action on its
    repository, so what the job could do is refused (the client asks for a wider token).
    When `checks` is a list, every rule looked at is appended to it (the same code path
    decides).
    """
    check = _Trace(checks)
    decision = _decide(action, state, now, scope, check)
    if decision.allowed and not check("registry token grants the action", token_grants,
                                      lambda: action.name if action else "job lookup"):  # fmt: skip
        return Decision(Reason.INSUFFICIENT_TOKEN_SCOPE, state, action)
    return decision


def _decide(
    action: Action | None, state: AccessState, now: float, scope: ScopeConfig, check: _Trace
) -> Decision:
    if state.kind is TokenKind.ANONYMOUS:
        return _anonymous(action, state, check)
    invalid = _token_validity(state, now, check)
    if invalid is not None:
        return Decision(invalid, state, action)
    trigger = state.kind is TokenKind.TRIGGER
    if trigger and not check("trigger token may do this", action is not None and action.trigger_token,
                             lambda: action.name if action else "job lookup"):  # fmt: skip
        return Decision(Reason.TRIGGER_TOKEN_NOT_ALLOWED, state, action)
    if action is None:
        return Decision(Reason.JOB_ONLY, state, action)

    def verdict(reason: Reason) -> Decision:
        return Decision(reason, state, action)

    source, target = state.source, state.target
    assert source is not None
    if not check("target project exists", target is not None, lambda: target.path if target else "none"):
        return verdict(Reason.PROJECT_NOT_FOUND)
    assert target is not None
    if not check("target project not pending deletion", not target.pending_delete, lambda: target.path):
        return verdict(Reason.PROJECT_PENDING_DELETE)
    feature = target.feature(action.feature)
    if not check("project feature not disabled", feature != "disabled",
                 lambda: f"{target.path}'s {action.feature}: {feature}"):  # fmt: skip
        return verdict(Reason.FEATURE_DISABLED)
    push_allowed = not action.push_opt_in or target.push_repository
    if not check("project allows this push with a job token", push_allowed,
                 lambda: f"{target.path}: push_repository {target.push_repository}"):  # fmt: skip
        return verdict(Reason.ACTION_NOT_ALLOWED)
    # GitLab's job_token_access_allowed_to?: a public/internal project's reads are open per feature
    open_read = action.read and target.visibility in ("public", "internal") and feature == "enabled"
    has_role = open_read or state.access_level >= action.min_level

    def role() -> str:
        if open_read:
            return f"{action.name} of a {target.visibility} project needs no role"
        if action.read and target.visibility != "private":
            return (f"{target.path}'s {action.feature} is {feature}: user {state.user_id}: level "
                    f"{state.access_level}, {action.name} needs {action.min_level}")  # fmt: skip
        return f"user {state.user_id}: level {state.access_level}, {action.name} needs {action.min_level}"

    if target.id == source.id:
        check("same project", True, lambda: target.path)
        return verdict(Reason.SAME_PROJECT if check("role", has_role, role) else Reason.INSUFFICIENT_ROLE)
    if trigger:
        check("trigger token on its own project", False, lambda: f"{source.path} -> {target.path}")
        return verdict(Reason.TRIGGER_TOKEN_NOT_ALLOWED)
    own_only = action.own_project_only and not (action.in_scope_switch and scope.registry_push_in_scope)
    if not check("not limited to the job's own project", not own_only, lambda: action.name):
        return verdict(Reason.OWN_PROJECT_ONLY)
    if open_read:
        check("public or internal read", True, lambda: f"{target.path} is {target.visibility}")
        return verdict(Reason.PUBLIC_READ)
    outbound = target.visibility != "private" or not source.outbound_limit or state.in_outbound_allowlist
    if not check("outbound scope", outbound, lambda: (
        f"{target.path} on {source.path}'s outbound allowlist: {state.in_outbound_allowlist}"
        if source.outbound_limit else f"{source.path} does not limit outbound access"
    )):  # fmt: skip
        return verdict(Reason.OUTSIDE_SCOPE)
    inbound_enforced = target.inbound_limit or scope.enforce_inbound
    entry = state.inbound_entry
    if not check("inbound scope", not inbound_enforced or entry is not None, lambda: (
        f"{target.path}'s inbound allowlist entry for {source.path}: {entry.source if entry else 'none'}"
        if inbound_enforced else f"{target.path} does not limit inbound access"
    )):  # fmt: skip
        return verdict(Reason.OUTSIDE_INBOUND_SCOPE)
    if not check("role", has_role, role):
        return verdict(Reason.INSUFFICIENT_ROLE)
    policies = entry.policies if inbound_enforced and entry is not None else None
    # Trigger and git are not policy-checked; an API route that declares no policy is denied
    # under a policy-listing entry (GitLab: `policies.empty?` -> false); every listed one is needed.
    if policies is not None and action.policy_checked:
        granted = bool(action.policies) and not missing_policies(action, policies)
        if not check("job token policy", granted, lambda: (
            f"needs {' and '.join(action.policies) or 'a declared policy'}, "
            f"entry has {','.join(sorted(policies))}"
        )):  # fmt: skip
            return verdict(Reason.POLICY_MISSING)
    return verdict(Reason.IN_SCOPE)
