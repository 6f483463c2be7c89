"""The values every step of a request shares: tokens, jobs, projects, access state, targets, grants.

Nothing here does I/O: the store builds these values, the decision reads them, the cache
keeps them, the access log and the identity headers are made from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

JOB_TOKEN_PREFIX = "glcbt-"
TRIGGER_TOKEN_PREFIX = "glptt-"

#: GitLab's access levels, by number and by name.
GUEST, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 20, 30, 40, 50
ACCESS_LEVELS = {0: "none", GUEST: "guest", REPORTER: "reporter", DEVELOPER: "developer",
                 MAINTAINER: "maintainer", OWNER: "owner"}  # fmt: skip

VISIBILITIES = ("private", "internal", "public")
#: The statuses in which a job's token is valid: `running` only (GitLab's AuthJobFinder accepts
#: `canceling` only where the caller passes `allow_canceling`, runner endpoints, none of jobgate's).
EXECUTING_STATUSES = ("running",)
FINISH_STATUSES = ("success", "failed", "canceled", "canceling")

POLICY_RESOURCES = (
    "deployments",
    "environments",
    "jobs",
    "packages",
    "pipelines",
    "releases",
    "secure_files",
    "terraform_state",
)
#: GitLab 18.4's 19 fine-grained job token policies: `read_`/`admin_` x POLICY_RESOURCES and
#: three read-only ones (lib/ci/job_token/policies.rb).
GITLAB_POLICIES = frozenset(
    {f"{mode}_{res}" for mode in ("read", "admin") for res in POLICY_RESOURCES}
    | {"read_merge_requests", "read_repositories", "read_work_items"}
)
#: Deprecated by GitLab, still the policies of jobgate's container-registry routes.
DEPRECATED_POLICIES = frozenset({"read_containers", "admin_containers"})
#: Every policy an inbound allowlist entry may list.
POLICIES = GITLAB_POLICIES | DEPRECATED_POLICIES
#: The project features whose visibility opens (or closes) reads to job tokens of other
#: projects, as GitLab's `job_token_access_allowed_to?`; each is enabled, private or disabled.
FEATURES = ("builds", "container_registry", "packages", "releases", "environments", "repository")
FEATURE_LEVELS = ("enabled", "private", "disabled")
#: How an inbound allowlist entry with "default permissions" is stored.
DEFAULT_PERMISSIONS = "*"


class TokenKind(StrEnum):
    """What a presented token turned out to be."""

    UNKNOWN = "unknown"
    JOB = "job"
    TRIGGER = "trigger"
    ANONYMOUS = "anonymous"  # no credential, on the registry's anonymous token: public reads only


@dataclass(frozen=True, slots=True)
class ProjectState:
    """A project as the decision needs it."""

    id: int
    path: str
    visibility: str
    pending_delete: bool
    outbound_limit: bool
    inbound_limit: bool
    features: tuple[tuple[str, str], ...] = ()  # (feature, level) where not `enabled`
    push_repository: bool = False  # git push with a job token (GitLab 18.4 opt-in)

    def feature(self, name: str | None) -> str:
        """The visibility level of a feature (`enabled` unless set otherwise; None: no feature)."""
        if name is not None:
            for feature, level in self.features:
                if feature == name:
                    return level
        return "enabled"


@dataclass(frozen=True, slots=True)
class JobState:
    """A job as recorded by the orchestrator."""

    id: int
    project_id: int
    user_id: int
    status: str
    erased: bool
    expires_at: float
    pipeline_id: int | None
    name: str
    ref: str
    # what the orchestrator told about the job beyond its validity (`GET /api/v4/job`);
    # jobs recorded before these existed have the defaults
    started_at: float | None = None
    stage: str = ""
    sha: str = ""
    tag: bool = False
    pipeline_iid: int | None = None
    pipeline_source: str = ""
    username: str = ""
    user_name: str = ""
    allow_failure: bool = False


@dataclass(frozen=True, slots=True)
class InboundEntry:
    """The nearest inbound allowlist entry of the target that covers the source project."""

    source: str  # "p:<id>" or "g:<group path>"
    policies: frozenset[str] | None  # None: default permissions


@dataclass(frozen=True, slots=True)
class AccessState:
    """Everything one decision needs, read in one Redis round trip."""

    kind: TokenKind
    job: JobState | None = None
    trigger_owner_id: int | None = None
    source: ProjectState | None = None
    target: ProjectState | None = None
    access_level: int = 0
    in_outbound_allowlist: bool = False
    inbound_entry: InboundEntry | None = None

    @property
    def user_id(self) -> int | None:
        """The user the token acts as."""
        if self.job is not None:
            return self.job.user_id
        return self.trigger_owner_id


class TargetRef(NamedTuple):
    """How a request names its target project: an id, candidate paths longest first, or a
    job whose project it is (`GET /api/v4/jobs/:id/artifacts`).

    A named tuple: part of every cache key, so it hashes fast.
    """

    project_id: int | None = None
    paths: tuple[str, ...] = ()
    job_id: int | None = None


@dataclass(frozen=True, slots=True)
class RegistryGrant:
    """A verified registry token: whose job token it stands for and what it allows."""

    key: str  # the job token's credential key (job id and digest), never the token
    access: dict[str, frozenset[str]]  # repository -> registry actions ("pull", "push", "delete")

    def allows(self, repository: str, registry_action: str) -> bool:
        """True when the token names `repository` with this registry action."""
        return registry_action in self.access.get(repository, frozenset())


def is_path_segment(segment: str) -> bool:
    """GitLab's namespace/project path rule, simplified: [A-Za-z0-9_.-], not dots only."""
    return (
        0 < len(segment) <= 255
        and segment.strip(".") != ""
        and all(c.isascii() and (c.isalnum() or c in "_.-") for c in segment)
        and not segment.endswith((".git", ".atom"))
    )


def inbound_candidates(source_id: int, source_path: str) -> tuple[str, ...]:
    """The inbound allowlist entries that could cover a source project, nearest first:
    the project itself, then its groups from the closest (`g:` paths are lower-case)."""
    groups = source_path.lower().split("/")[:-1]
    return (f"p:{source_id}", *("g:" + "/".join(groups[:n]) for n in range(len(groups), 0, -1)))
