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
#: The statuses in which a job's token is valid.
EXECUTING_STATUSES = ("running", "canceling")
FINISH_STATUSES = ("success", "failed", "canceled", "canceling")

POLICY_RESOURCES = (
    "containers",
    "deployments",
    "environments",
    "jobs",
    "packages",
    "releases",
    "secure_files",
    "terraform_state",
)
#: Every fine-grained job token policy: `read_<resource>` and `admin_<resource>`.
POLICIES = frozenset(f"{mode}_{res}" for mode in ("read", "admin") for res in POLICY_RESOURCES)
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
    """How a request names its target project: an id, or candidate paths longest first.

    A named tuple: part of every cache key, so it hashes fast.
    """

    project_id: int | None = None
    paths: tuple[str, ...] = ()


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
