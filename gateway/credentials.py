"""Pull the job token out of a request: a pure function of its headers, query and form."""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import NamedTuple

from multidict import MultiMapping, istr

CI_USER = "gitlab-ci-token"
JOB_TOKEN_HEADER = "JOB-TOKEN"
JOB_TOKEN_PARAM = "job_token"
TOKEN_PARAM = "token"


class Source(StrEnum):
    """Where in a request a token was found."""

    HEADER = "header"
    JOB_TOKEN_PARAM = "job_token_param"
    TOKEN_PARAM = "token_param"
    FORM = "form"
    BASIC = "basic"
    BEARER = "bearer"


_ALONE = {source: frozenset({source}) for source in Source}
_HEADER_ALONE = _ALONE[Source.HEADER]
# Header names as `istr`: multidict looks them up without case-folding them first.
_JOB_TOKEN = istr(JOB_TOKEN_HEADER)
_AUTHORIZATION = istr("Authorization")


class CredentialError(Exception):
    """The request's credentials are malformed or ambiguous: answered with 400."""


class Credential(NamedTuple):
    """One token and every place in the request that carried it (a named tuple: one per request)."""

    token: str
    sources: frozenset[Source]

    def __repr__(self) -> str:
        return f"Credential(token='[MASKED]', sources={sorted(self.sources)})"


def _basic_password(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError("malformed basic authorization") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialError("malformed basic authorization")
    return user, password


def _from_authorization(values: Iterable[str]) -> list[tuple[Source, str]]:
    found = []
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            user, password = _basic_password(rest)
            if user == CI_USER:
                found.append((Source.BASIC, password))
        elif scheme == "bearer" and rest.strip():
            found.append((Source.BEARER, rest.strip()))
    return found


def extract_credential(
    headers: MultiMapping[str],
    query: MultiMapping[str],
    *,
    token_param: bool = False,
    form: Mapping[str, list[str]] | None = None,
    bearer: bool = True,
    max_length: int = 1024,
) -> Credential | None:
    """The single token a request carries, or None when it carries none.

    `token_param` admits the trigger endpoint's `token` parameter (query or `form`);
    `bearer` admits `Authorization: Bearer` (off where a bearer is the protocol's own
    token, e.g. the registry's). Two different tokens are ambiguous and rejected, never
    resolved by precedence.
    """
    in_header = headers.getall(_JOB_TOKEN, ())
    if len(in_header) == 1 and not query and not token_param and _AUTHORIZATION not in headers:
        # the usual case; tuple.__new__ skips the named tuple's Python-level constructor
        return tuple.__new__(Credential, (_checked(in_header[0].strip(), max_length), _HEADER_ALONE))
    found: list[tuple[Source, str]] = [(Source.HEADER, v.strip()) for v in in_header]
    found += [(Source.JOB_TOKEN_PARAM, v) for v in query.getall(JOB_TOKEN_PARAM, [])]
    if token_param:
        found += [(Source.TOKEN_PARAM, v) for v in query.getall(TOKEN_PARAM, [])]
        found += [(Source.FORM, v) for v in (form or {}).get(TOKEN_PARAM, [])]
    found += [
        (source, token)
        for source, token in _from_authorization(headers.getall("Authorization", []))
        if bearer or source is not Source.BEARER
    ]
    if not found:
        return None
    tokens = {token for _, token in found}
    if len(tokens) > 1:
        raise CredentialError("the request carries more than one different token")
    token = _checked(tokens.pop(), max_length)
    if len(found) == 1:
        return Credential(token, _ALONE[found[0][0]])
    return Credential(token, frozenset(source for source, _ in found))


@functools.lru_cache(maxsize=4096)
def _checked(token: str, max_length: int) -> str:
    """`token` when it can be a token at all; CredentialError when it is empty, too long or malformed.

    Remembered for the last 4,096 good tokens (a CI job sends its token many times); a bad
    one raises again every time.
    """
    if not token:
        raise CredentialError("empty token")
    if len(token) > max_length:
        raise CredentialError("token too long")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CredentialError("malformed token")
    return token
