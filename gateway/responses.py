"""Every answer jobgate gives itself: denials, challenges and errors, per protocol, in one place.

A denied client sees the same 404 whatever the rule, so a project's existence never
leaks; explain mode (off by default) answers GitLab's 403 messages instead. Git and the
container registry get the challenges and texts their clients expect.
"""

from __future__ import annotations

from aiohttp import web

from .decision import DEAD_CREDENTIAL, Decision, Reason, missing_policies
from .routes import Protocol

REGISTRY_SERVICE = "container_registry"

GIT_NOT_FOUND = "The project you were looking for could not be found or you don't have permission to view it."
REALM = "GitLab"


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """GitLab's error shape: `{"message": "<status> <text>"}`."""
    return web.json_response({"message": message}, status=status, headers=headers)


def not_found() -> web.Response:
    """The uniform denial of the JSON API."""
    return json_error(404, "404 Not Found")


def bad_request(detail: str) -> web.Response:
    """Malformed input; `detail` must never contain a token."""
    return json_error(400, f"400 Bad request - {detail}")


_PHRASES = {400: "Bad request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            413: "Payload Too Large"}  # fmt: skip


def refused(rule: str, detail: str, status: int = 400) -> web.Response:
    """A request refused at the trust boundary, naming the rule; `detail` never holds a token."""
    return json_error(status, f"{status} {_PHRASES.get(status, 'Refused')} - {rule}: {detail}")


def too_many(retry_after: int) -> web.Response:
    """Too many unknown-token attempts from this client."""
    return json_error(429, "429 Too Many Requests", {"Retry-After": str(retry_after)})


def unavailable() -> web.Response:
    """Redis is unreachable: fail closed."""
    return json_error(503, "503 Service Unavailable", {"Retry-After": "1"})


def upstream_failure(status: int) -> web.Response:
    """The upstream could not be reached (502) or timed out (504); the client stalled (408)."""
    text = {502: "502 Bad Gateway", 504: "504 Gateway Timeout", 408: "408 Request Timeout"}[status]
    return json_error(status, text, {"Connection": "close"} if status == 408 else None)


def explain_message(decision: Decision) -> str:
    """GitLab's 403 wording for a denial, naming projects but never a token."""
    source = decision.source.path if decision.source else "?"
    target = decision.target.path if decision.target else "?"
    reason = decision.reason
    if reason in (Reason.OUTSIDE_SCOPE, Reason.OUTSIDE_INBOUND_SCOPE, Reason.OWN_PROJECT_ONLY):
        return f"Authentication by CI/CD job token not allowed from {source} to {target}."
    if reason is Reason.POLICY_MISSING and decision.action:
        entry = decision.state.inbound_entry if decision.state else None
        listed = entry.policies if entry and entry.policies is not None else frozenset()
        needed = missing_policies(decision.action, listed)
        if not needed:  # the route declares no policy: none can grant it
            return f"Insufficient permissions to access this resource in project {target}."
        return (
            f"Insufficient permissions to access this resource in project {target}. "
            f"The following token permission is required: {', '.join(needed)}."
        )
    if reason is Reason.INSUFFICIENT_ROLE:
        return f"403 Forbidden - insufficient role in project {target}"
    return f"403 Forbidden - {reason.value}"


def denial(
    decision: Decision, protocol: Protocol, explain: bool = False, realm: str = "", scope: str | None = None
) -> web.Response:
    """The answer to a denied request, as the client's protocol expects it.

    Git asks for credentials when none came; the registry also re-challenges a dead or
    too-narrow registry token (`realm`/`scope` name its token endpoint and the scope).
    """
    reason = decision.reason
    if protocol is Protocol.JOB:  # GitLab answers `GET /job` without a live job token with 401
        return json_error(401, "401 Unauthorized")
    if protocol is Protocol.REGISTRY and reason in DEAD_CREDENTIAL:
        return registry_challenge(realm, scope)
    if protocol is Protocol.GIT and reason is Reason.NO_CREDENTIAL:
        return git_challenge()
    if explain and reason not in (Reason.NO_CREDENTIAL, Reason.UNKNOWN_TOKEN):
        return json_error(403, explain_message(decision))
    if protocol is Protocol.GIT:
        return web.Response(status=404, text=GIT_NOT_FOUND)
    if protocol is Protocol.REGISTRY:
        return registry_not_found()
    return not_found()


def git_challenge() -> web.Response:
    """401 asking git for credentials: it sends none until asked."""
    return web.Response(
        status=401,
        text="HTTP Basic: Access denied\n",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
    )


def registry_challenge(realm: str, scope: str | None = None) -> web.Response:
    """401 telling a registry client where to get a registry token."""
    header = f'Bearer realm="{realm}",service="{REGISTRY_SERVICE}"'
    if scope:
        header += f',scope="{scope}"'
    body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}]}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": header})


def registry_not_found() -> web.Response:
    """The uniform registry denial: the repository is unknown to this client."""
    body = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry",
                        "detail": None}]}  # fmt: skip
    return web.json_response(body, status=404)
