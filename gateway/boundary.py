"""The trust boundary: requests refused because the upstream could read them differently.

jobgate authorizes its reading of a request; the upstream acts on its own. Where the two
readings could differ (a method override, a decision-relevant parameter given twice, the
token travelling outside the credential places, a repository name the registry would not
take as it is), the request is refused with a `Refused` naming its rule, never judged
(docs/reliability.md, "Trust boundary").
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote_plus

from multidict import MultiMapping, istr

from .credentials import (
    AUTHORIZATION,
    JOB_TOKEN_HEADER,
    JOB_TOKEN_UNDERSCORE_HEADER,
    QUERY_PLACES,
    BodyForm,
    Credential,
    CredentialError,
    authorization_token,
    base_name,
    basic_text,
)
from .decision import Reason
from .routes import OCI_REPOSITORY, Protocol, RouteMatch

#: Headers that Rack::MethodOverride, Express's method-override, Laravel and Symfony honour.
OVERRIDE_HEADERS = (istr("X-HTTP-Method-Override"), istr("X-Method-Override"), istr("X-HTTP-Method"))
METHOD_PARAM = "_method"  # Rack::MethodOverride's form field (also read from the query elsewhere)
_TOKEN_HEADERS = frozenset({JOB_TOKEN_HEADER.lower(), JOB_TOKEN_UNDERSCORE_HEADER.lower()})
_AUTHORIZATION = AUTHORIZATION.lower()


class Refused(Exception):
    """A request refused at the trust boundary: its reason, the status, a detail without the token."""

    def __init__(self, reason: Reason, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status = status


def refuse_method_override(
    method: str, headers: MultiMapping[str], params: Iterable[tuple[str, str]]
) -> None:
    """Refused when a header or a `_method` parameter names a method other than the request's."""
    for header in OVERRIDE_HEADERS:
        for value in headers.getall(header, ()):
            if value.strip().upper() != method:
                raise Refused(Reason.METHOD_OVERRIDE, f"{header} may not name another method than {method}")
    for name, value in params:
        if base_name(name) == METHOD_PARAM and value.strip().upper() != method:
            raise Refused(Reason.METHOD_OVERRIDE, f"{METHOD_PARAM} may not name another method than {method}")


def refuse_duplicates(matched: RouteMatch, params: Iterable[tuple[str, str]]) -> None:
    """Refused when a parameter the route matches or acts on appears more than once (query and
    body together, by Rack's base name: `ref` and `ref[]` are the same parameter)."""
    wanted = matched.route.decision_params
    if not wanted:
        return
    seen: set[str] = set()
    for name, _ in params:
        base = base_name(name)
        if base in wanted:
            if base in seen:
                raise Refused(Reason.DUPLICATE_PARAMETER, f"parameter {base!r} given more than once")
            seen.add(base)


def refuse_repository_name(matched: RouteMatch) -> None:
    """Refused when a registry route names a repository the OCI spec does not allow (upper case...)."""
    repo = matched.params.get("repo")
    if matched.route.protocol is Protocol.REGISTRY and repo is not None and not OCI_REPOSITORY.match(repo):
        raise Refused(Reason.REPOSITORY_NAME_INVALID, "repository names are lower case path components")


def _carries(text: str, token: str) -> bool:
    return token in text or ("%" in text and token in unquote_plus(text))


def refuse_token_elsewhere(
    credential: Credential,
    headers: MultiMapping[str],
    query: Iterable[tuple[str, str]],
    body: BodyForm | None,
    bearer: bool,
    skip: frozenset[str] = frozenset(),
) -> None:
    """Refused when the presented token appears, verbatim or percent-decoded, anywhere but in a
    credential place: another header (another user's Basic, a cookie, the request id...),
    another query parameter, or a body field. Re-encoded copies (base64 other than Basic,
    double encoding) are out of scope. `skip`: headers (lower case) that are no such place (a
    forward-auth proxy's description of the original request)."""
    token = credential.token
    for name, value in headers.items():
        lower = name.lower()
        if lower in _TOKEN_HEADERS or lower in skip:
            continue  # a credential place: it holds this token or the request was ambiguous
        if lower == _AUTHORIZATION:
            try:
                if authorization_token(value, bearer) is not None:
                    continue
            except CredentialError:
                pass
            decoded = basic_text(value)
            if decoded is not None and token in decoded:
                raise Refused(Reason.TOKEN_OUTSIDE_PLACES, "the token appears in another Authorization")
        if _carries(value, token) or _carries(name, token):
            raise Refused(Reason.TOKEN_OUTSIDE_PLACES, f"the token appears in the {name} header")
    for name, value in query:
        if _carries(name, token) or (base_name(name) not in QUERY_PLACES and _carries(value, token)):
            raise Refused(Reason.TOKEN_OUTSIDE_PLACES, "the token appears in another query parameter")
    if body is not None:
        for text in body.strings:
            if _carries(text, token):
                raise Refused(Reason.TOKEN_OUTSIDE_PLACES, "the token appears in another body field")
