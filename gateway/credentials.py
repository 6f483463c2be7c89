"""Every place a job token can travel in a request, from one table: extract, say where, strip.

`PLACES` is the table. Extraction reads every place a route admits; the request headers
and query parameters stripped before forwarding are the ones the table names for the
places that carried the token; the fast path (a lone `JOB-TOKEN` header, most requests)
applies only when no other place of the table could carry anything.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote_plus

import aiohttp
from aiohttp import web
from multidict import MultiMapping, istr

CI_USER = "gitlab-ci-token"
JOB_TOKEN_HEADER = "JOB-TOKEN"
JOB_TOKEN_PARAM = "job_token"
TOKEN_PARAM = "token"
AUTHORIZATION = istr("Authorization")


class Source(StrEnum):
    """Where in a request a token was found."""

    HEADER = "header"
    JOB_TOKEN_PARAM = "job_token_param"
    TOKEN_PARAM = "token_param"
    FORM = "form"
    BASIC = "basic"
    BEARER = "bearer"


class Where(Enum):
    """The part of the request a place is in."""

    HEADER = "header"  # a request header of its own
    QUERY = "query"  # a query parameter
    FORM = "form"  # a field of the request body (form or JSON)
    AUTHORIZATION = "authorization"  # a scheme of the Authorization header


@dataclass(frozen=True, slots=True)
class Place:
    """One place a token can travel: the part of the request, its name there, which routes read it."""

    source: Source
    where: Where
    name: str  # header name, parameter or field name, or Authorization scheme (lower case)
    token_param_only: bool = False  # only on routes that take the trigger's `token`

    @property
    def header(self) -> str | None:
        """The request header that carries this place, if it is in one."""
        if self.where is Where.HEADER:
            return self.name.lower()
        return "authorization" if self.where is Where.AUTHORIZATION else None


#: Every place a token is read from, in GitLab's order of precedence (which never decides:
#: two different tokens are refused).
PLACES: tuple[Place, ...] = (
    Place(Source.HEADER, Where.HEADER, JOB_TOKEN_HEADER),
    Place(Source.JOB_TOKEN_PARAM, Where.QUERY, JOB_TOKEN_PARAM),
    Place(Source.TOKEN_PARAM, Where.QUERY, TOKEN_PARAM, token_param_only=True),
    Place(Source.FORM, Where.FORM, TOKEN_PARAM, token_param_only=True),
    Place(Source.BASIC, Where.AUTHORIZATION, "basic"),
    Place(Source.BEARER, Where.AUTHORIZATION, "bearer"),
)
_BY_SOURCE = {place.source: place for place in PLACES}
#: Header names any place reads: when none of them is in a request but one JOB-TOKEN,
#: and it has no query and no form, that header is the only place a token can be.
_CARRIER_HEADERS = tuple(istr(name) for name in dict.fromkeys(p.header for p in PLACES if p.header))
_LONE_HEADER = istr(JOB_TOKEN_HEADER.lower())  # equal to its entry in _CARRIER_HEADERS
_OTHER_CARRIERS = tuple(name for name in _CARRIER_HEADERS if name != _LONE_HEADER)
_ALONE = {source: frozenset({source}) for source in Source}


class CredentialError(Exception):
    """The request's credentials are malformed or ambiguous: answered with 400."""


class Credential(NamedTuple):
    """One token and every place in the request that carried it (a named tuple: made per request)."""

    token: str
    sources: frozenset[Source]

    def __repr__(self) -> str:
        return f"Credential(token='[MASKED]', sources={sorted(self.sources)})"


def query_places(token_param: bool) -> frozenset[str]:
    """The query parameters that may carry a token on a route (`token_param`: the trigger's too)."""
    return frozenset(
        p.name for p in PLACES if p.where is Where.QUERY and (token_param or not p.token_param_only)
    )


@functools.cache
def carrier_headers(sources: frozenset[Source]) -> frozenset[str]:
    """The request headers (lower case) that carried a token found in `sources`."""
    return frozenset(header for s in sources if (header := _BY_SOURCE[s].header) is not None)


def _basic_password(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError("malformed basic authorization") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialError("malformed basic authorization")
    return user, password


def _from_authorization(values: Collection[str], bearer: bool) -> list[tuple[Source, str]]:
    found = []
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == _BY_SOURCE[Source.BASIC].name:
            user, password = _basic_password(rest)
            if user == CI_USER:
                found.append((Source.BASIC, password))
        elif scheme == _BY_SOURCE[Source.BEARER].name and bearer and rest.strip():
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

    `token_param` admits the places only the trigger endpoint reads (its `token`, query or
    `form`); `bearer` admits `Authorization: Bearer` (off where a bearer is the protocol's
    own token, e.g. the registry's). Two different tokens are ambiguous and rejected, never
    resolved by precedence.
    """
    if not query and not form and _LONE_HEADER in headers:
        for other in _OTHER_CARRIERS:
            if other in headers:
                break
        else:  # the usual case: the table's scan would find this one token alone
            lone = headers.getall(_LONE_HEADER)
            if len(lone) == 1:
                return Credential(_checked(lone[0].strip(), max_length), _ALONE[Source.HEADER])
    return scan_places(
        headers, query, token_param=token_param, form=form, bearer=bearer, max_length=max_length
    )


def scan_places(
    headers: MultiMapping[str],
    query: MultiMapping[str],
    *,
    token_param: bool = False,
    form: Mapping[str, list[str]] | None = None,
    bearer: bool = True,
    max_length: int = 1024,
) -> Credential | None:
    """`extract_credential` without its fast path: every place of the table, read in turn."""
    found: list[tuple[Source, str]] = []
    for place in PLACES:
        if place.token_param_only and not token_param:
            continue
        if place.where is Where.HEADER:
            found += [(place.source, v.strip()) for v in headers.getall(place.name, ())]
        elif place.where is Where.QUERY:
            found += [(place.source, v) for v in query.getall(place.name, ())]
        elif place.where is Where.FORM:
            found += [(place.source, v) for v in (form or {}).get(place.name, ())]
    found += _from_authorization(headers.getall(AUTHORIZATION, ()), bearer)
    if not found:
        return None
    tokens = {token for _, token in found}
    if len(tokens) > 1:
        raise CredentialError("the request carries more than one different token")
    token = _checked(tokens.pop(), max_length)
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


def filter_query(raw_query: str, drop: Collection[str]) -> str:
    """The raw query string without the named parameters, other bytes untouched."""
    if not raw_query or not drop:
        return raw_query
    kept = [
        pair for pair in raw_query.split("&") if pair and unquote_plus(pair.partition("=")[0]) not in drop
    ]
    return "&".join(kept)


#: A form's token fields and the body to forward without them (None: forward the body as it is).
FormTokens = tuple[dict[str, list[str]], Any]


async def read_token_form(request: web.Request) -> FormTokens:
    """The form places of a request body (url-encoded, multipart or JSON) and the body without them."""
    names = {p.name for p in PLACES if p.where is Where.FORM}
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        raw = (await request.read()).decode("latin-1")
        pairs = parse_qsl(raw, keep_blank_values=True)
        return {n: [v for k, v in pairs if k == n] for n in names}, filter_query(raw, names).encode("latin-1")
    if ctype == "multipart/form-data":
        post = await request.post()
        form = aiohttp.FormData(default_to_multipart=True)
        tokens: dict[str, list[str]] = {n: [] for n in names}
        for key, value in post.items():
            if key in names and isinstance(value, str):
                tokens[key].append(value)
            elif isinstance(value, web.FileField):
                form.add_field(
                    key, value.file.read(), filename=value.filename, content_type=value.content_type
                )
            else:
                form.add_field(key, value)
        return tokens, form
    if ctype == "application/json":
        raw_json = await request.read()
        try:
            data = json.loads(raw_json)
        except (ValueError, UnicodeDecodeError):
            raise CredentialError("malformed JSON body") from None
        if not isinstance(data, dict) or not names & data.keys():
            return {}, raw_json
        found: dict[str, list[str]] = {}
        for name in names & data.keys():
            token = data.pop(name)
            if not isinstance(token, str):
                raise CredentialError(f"{name} must be a string")
            found[name] = [token]
        return found, json.dumps(data).encode()
    return {}, None
