"""The identity headers jobgate sets on an allowed request: the job, its projects, its user.

The upstream (and, in forward-auth mode, the proxy) learns who is asking from these; any
header a client sent under the same prefix is dropped before they are added.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import istr

from .decision import Decision

IDENTITY_PREFIX = "x-jobgate-"
IDENTITY_JOB = istr("X-Jobgate-Job-Id")
IDENTITY_PROJECT = istr("X-Jobgate-Project-Id")
IDENTITY_TARGET = istr("X-Jobgate-Target-Project-Id")
IDENTITY_USER = istr("X-Jobgate-User-Id")
IDENTITY_PIPELINE_SOURCE = istr("X-Jobgate-Pipeline-Source")


def identity_headers(decision: Decision, pipeline_source: bool) -> Mapping[str, str]:
    """The identity headers of an allowed decision; `pipeline_source` adds the pipeline source
    the upstream must record for a trigger (`pipeline` for a job token, `trigger` else)."""
    state = decision.state
    assert state is not None and state.source is not None
    job, target = state.job, state.target
    identity: dict[str, str] = {IDENTITY_PROJECT: str(state.source.id)}
    if job is not None:
        identity[IDENTITY_JOB] = str(job.id)
        identity[IDENTITY_USER] = str(job.user_id)
    elif state.trigger_owner_id is not None:
        identity[IDENTITY_USER] = str(state.trigger_owner_id)
    if target is not None:
        identity[IDENTITY_TARGET] = str(target.id)
    if pipeline_source:
        identity[IDENTITY_PIPELINE_SOURCE] = "pipeline" if job else "trigger"
    return identity
