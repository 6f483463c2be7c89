"""Every place a job token can travel in a request, from one table: extract, say where, strip.

`PLACES` is the table. Extraction reads every place a route admits; the request headers
and query parameters stripped before forwarding are the ones the table names for the
places that carried the token; the fast path (a lone `JOB-TOKEN` header, most requests)
applies only when no other place of the table could carry anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from multidict import MultiMapping, istr

CI_USER = "gitlab-ci-token"
JOB_TOKEN_HEADER = "JOB-TOKEN"
JOB_TOKEN_UNDERSCORE_HEADER = "JOB_TOKEN"  # CGI maps it to HTTP_JOB_TOKEN, as JOB-TOKEN
JOB_TOKEN_PARAM = "job_token"
TOKEN_PARAM = "token"
AUTHORIZATION = istr("Authorization")


class Source(StrEnum):
    """Where in a request a token was found."""

    HEADER = "header"
    HEADER_UNDERSCORE = "header_underscore"
    JOB_TOKEN_PARAM = "job_token_param"
    TOKEN_PARAM = "token_param"
    FORM_JOB_TOKEN = "form_job_token"
    FORM = "form"
    BASIC = "basic"
    BEARER = "bearer"


class Where(Enum):
    """The part of the request a place is in."""

    HEADER = "header"  # a request header of its own
    QUERY = "query"  # a query parameter
    FORM = "form"  # a top-level field of the request body (form or JSON)
    AUTHORIZATION = "authorization"  # a scheme of the Authorization header


@dataclass(frozen=True, slots=True)
class Place:
    """One place a token can travel: the part of the request and its name there."""

    source: Source
    where: Where
    name: str  # header name, parameter or field name, or Authorization scheme (lower case)

    @property
    def header(self) -> str | None:
        """The request header that carries this place, if it is in one."""
        if self.where is Where.HEADER:
            return self.name.lower()
        return "authorization" if self.where is Where.AUTHORIZATION else None


#: Every place GitLab reads a job token from (`lib/gitlab/auth/auth_finders.rb`), in its
#: order of precedence (which never decides: two different tokens are refused). Every
#: job-token route reads every place; bodies only where a route parses its body.
PLACES: tuple[Place, ...] = (
    Place(Source.HEADER, Where.HEADER, JOB_TOKEN_HEADER),
    Place(Source.HEADER_UNDERSCORE, Where.HEADER, JOB_TOKEN_UNDERSCORE_HEADER),
    Place(Source.JOB_TOKEN_PARAM, Where.QUERY, JOB_TOKEN_PARAM),
    Place(Source.TOKEN_PARAM, Where.QUERY, TOKEN_PARAM),
    Place(Source.FORM_JOB_TOKEN, Where.FORM, JOB_TOKEN_PARAM),
    Place(Source.FORM, Where.FORM, TOKEN_PARAM),
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
#: The body fields that are credential places.
FORM_PLACES = frozenset(p.name for p in PLACES if p.where is Where.FORM)
#: The query parameters that are credential places, and their sources.
QUERY_PLACES = frozenset(p.name for p in PLACES if p.where is Where.QUERY)
QUERY_SOURCES = frozenset(p.source for p in PLACES if p.where is Where.QUERY)
_HEADER_PLACES = tuple(istr(p.name) for p in PLACES if p.where is Where.HEADER)
#: Shorter values in a credential place are no token worth masking (every "1" of a log
#: line would go); jobgate's tokens are over 40 characters.
MIN_MASKED_LENGTH = 8


class CredentialError(Exception):
    """The request's credentials or body are malformed or ambiguous: refused.

    `rule` names the refusal (a `decision.Reason` value); `tokens` are the candidate
    tokens seen, so that the logs can mask every one of them.
    """

    rule = "malformed_credential"
    status = 400

    def __init__(self, message: str, tokens: Collection[str] = ()) -> None:
        super().__init__(message)
        self.tokens = tuple(tokens)


class AmbiguousToken(CredentialError):
    """Two different tokens in one request."""

    rule = "ambiguous_token"


class MalformedBody(CredentialError):
    """A body that claims a form or JSON type but does not parse as one."""

    rule = "malformed_body"


class BodyStalled(CredentialError):
    """A form or JSON body that stopped arriving for longer than `limits.body_idle_timeout`."""

    rule = "body_stalled"
    status = 408


class BodyTooLarge(CredentialError):
    """A form or JSON body over `limits.max_form_body` on a route that parses its body."""

    rule = "body_too_large"
    status = 413


class Credential(NamedTuple):
    """One token and every place in the request that carried it (a named tuple: made per request)."""

    token: str
    sources: frozenset[Source]

    def __repr__(self) -> str:
        return f"Credential(token='[MASKED]', sources={sorted(self.sources)})"


@functools.cache
def carrier_headers(sources: frozenset[Source]) -> frozenset[str]:
    """The request headers (lower case) that carried a token found in `sources`."""
    return frozenset(header for s in sources if (header := _BY_SOURCE[s].header) is not None)


_QUERY_SEPARATOR = re.compile(r"([&;] *)")  # Rack 2.2's DEFAULT_SEP: /[&;] */n


def parse_query(raw_query: str, separators: str = "&;") -> list[tuple[str, str]]:
    """The parameters of a raw query as Rack reads them: pairs split on `&` and `;` (spaces
    after a separator dropped), names and values `+`- and percent-decoded, in order."""
    if not raw_query:
        return []
    pieces = _QUERY_SEPARATOR.split(raw_query) if separators == "&;" else raw_query.split(separators)
    pairs = []
    for piece in pieces[::2] if separators == "&;" else pieces:
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def base_name(name: str) -> str:
    """A parameter's name as Rack's nested parser files it (`ref[]`, `ref[x]` -> `ref`)."""
    return name.partition("[")[0] if "[" in name else name


def split_authorization(value: str) -> tuple[str, str]:
    """An Authorization value's scheme (lower case) and parameter, split on any run of
    whitespace as Ruby's `split(" ", 2)` does."""
    parts = value.split(None, 1)
    if not parts:
        return "", ""
    return parts[0].lower(), parts[1].strip() if len(parts) > 1 else ""


def candidate_tokens(headers: MultiMapping[str], query: Collection[tuple[str, str]]) -> tuple[str, ...]:
    """Every value a header or query credential place holds, unchecked: what the logs mask
    from the start, whatever the request turns out to be (unmatched, malformed, ambiguous)."""
    found = [v.strip() for name in _HEADER_PLACES for v in headers.getall(name, ())]
    found += [v for k, v in query if base_name(k) in QUERY_PLACES]
    for value in headers.getall(AUTHORIZATION, ()):
        scheme, rest = split_authorization(value)
        if scheme == "bearer":
            found.append(rest)
        elif (decoded := basic_text(value)) is not None:
            found.append(decoded.partition(":")[2])
    return tuple(t for t in found if len(t) >= MIN_MASKED_LENGTH)


def _basic_password(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError("malformed basic authorization") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialError("malformed basic authorization")
    return user, password


def authorization_token(value: str, bearer: bool = True) -> tuple[Source, str] | None:
    """The job token one Authorization value carries (Basic `gitlab-ci-token`, or Bearer
    when `bearer`), or None when it carries none; CredentialError when it is malformed."""
    scheme, rest = split_authorization(value)
    if scheme == _BY_SOURCE[Source.BASIC].name:
        user, password = _basic_password(rest)
        return (Source.BASIC, password) if user == CI_USER else None
    if scheme == _BY_SOURCE[Source.BEARER].name and bearer and rest:
        return Source.BEARER, rest
    return None


def basic_text(value: str) -> str | None:
    """The decoded `user:password` of a Basic Authorization value, if it is one."""
    scheme, rest = split_authorization(value)
    if scheme != "basic":
        return None
    try:
        return base64.b64decode(rest, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def extract_credential(
    headers: MultiMapping[str],
    query: MultiMapping[str],
    *,
    form: Mapping[str, list[str]] | None = None,
    bearer: bool = True,
    max_length: int = 1024,
) -> Credential | None:
    """The single token a request carries, or None when it carries none.

    `form` holds the body's credential fields when the route parses its body; `bearer`
    admits `Authorization: Bearer` (off where a bearer is the protocol's own token, e.g.
    the registry's). Two different tokens are ambiguous and rejected, never resolved by
    precedence.
    """
    if not query and not form and _LONE_HEADER in headers:
        for other in _OTHER_CARRIERS:
            if other in headers:
                break
        else:  # the usual case: the table's scan would find this one token alone
            lone = headers.getall(_LONE_HEADER)
            if len(lone) == 1:
                return Credential(_checked(lone[0].strip(), max_length), _ALONE[Source.HEADER])
    return scan_places(headers, query, form=form, bearer=bearer, max_length=max_length)


def scan_places(
    headers: MultiMapping[str],
    query: MultiMapping[str],
    *,
    form: Mapping[str, list[str]] | None = None,
    bearer: bool = True,
    max_length: int = 1024,
) -> Credential | None:
    """`extract_credential` without its fast path: every place of the table, read in turn."""
    found: list[tuple[Source, str]] = []
    for place in PLACES:
        if place.where is Where.HEADER:
            found += [(place.source, v.strip()) for v in headers.getall(place.name, ())]
        elif place.where is Where.QUERY:  # by Rack's base name: `job_token[]` is `job_token`
            found += [(place.source, v) for k, v in query.items() if base_name(k) == place.name]
        elif place.where is Where.FORM:
            found += [(place.source, v) for v in (form or {}).get(place.name, ())]
    for value in headers.getall(AUTHORIZATION, ()):
        if (carried := authorization_token(value, bearer)) is not None:
            found.append(carried)
    if not found:
        return None
    tokens = {token for _, token in found}
    if len(tokens) > 1:
        raise AmbiguousToken("the request carries more than one different token", tokens)
    token = tokens.pop()
    try:
        token = _checked(token, max_length)
    except CredentialError as exc:
        raise CredentialError(str(exc), (token,)) from None
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
        raise CredentialError("token too long", (token,))
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CredentialError("malformed token", (token,))
    return token


def filter_query(raw_query: str, drop: Collection[str]) -> str:
    """The raw query string without the named parameters (split as `parse_query` splits it,
    names compared decoded and by their Rack base name), other bytes untouched."""
    if not raw_query or not drop:
        return raw_query
    pieces = _QUERY_SEPARATOR.split(raw_query)
    kept: list[str] = []
    for i in range(0, len(pieces), 2):
        piece = pieces[i]
        if not piece or base_name(unquote_plus(piece.partition("=")[0])) in drop:
            continue
        if kept:
            kept.append(pieces[i - 1])
        kept.append(piece)
    return "".join(kept)


_JSON_TYPES = frozenset({"application/json", "text/x-json", "application/jsonrequest"})
URLENCODED = "application/x-www-form-urlencoded"
_FORM_TYPES = frozenset({URLENCODED, "multipart/form-data"})
_MALFORMED = (ValueError, LookupError, RuntimeError, AssertionError, RecursionError)


def parses_body(content_type: str) -> bool:
    """True when a body of this media type is read as parameters (form or JSON) by GitLab's
    stack (Rack's form parsers, Rails/Grape's JSON parser)."""
    return content_type in _FORM_TYPES or content_type in _JSON_TYPES or content_type.endswith("+json")


@dataclass(frozen=True, slots=True)
class BodyForm:
    """A request body read as parameters: its fields, every other string in it, its token
    fields, and the body to forward with and without them."""

    fields: tuple[tuple[str, str], ...]  # top-level fields with string values, in order
    strings: tuple[str, ...]  # every string in the body outside the token fields (names too)
    tokens: dict[str, list[str]]  # the credential places' values
    raw: bytes  # the body as received
    stripped: Any  # the body without its token fields (bytes or an aiohttp.FormData)


async def read_body_form(request: web.Request, max_size: int, idle: float = 60.0) -> BodyForm | None:
    """The body as parameters when its type is one GitLab parses (None otherwise: it streams).

    BodyTooLarge past `max_size`; BodyStalled when no byte came for `idle` seconds;
    MalformedBody when it does not parse.
    """
    ctype = request.content_type
    if not request.body_exists or not parses_body(ctype):
        return None
    if (request.content_length or 0) > max_size:
        raise BodyTooLarge(f"a {ctype} body over {max_size} bytes is not accepted here")
    chunks, size = [], 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise BodyStalled(f"the body stalled for {idle:g} s") from None
        if not chunk:
            break
        size += len(chunk)
        if size > max_size:
            raise BodyTooLarge(f"a {ctype} body over {max_size} bytes is not accepted here")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        if ctype == "multipart/form-data":
            return await _multipart(request, raw)
        if ctype in _FORM_TYPES:
            return _urlencoded(request, raw)
        return _json(raw)
    except CredentialError:
        raise
    except _MALFORMED as exc:
        raise MalformedBody(f"malformed {ctype} body ({type(exc).__name__})") from None


def _urlencoded(request: web.Request, raw: bytes) -> BodyForm:
    charset = request.charset or "utf-8"
    text = raw.decode(charset)  # LookupError / UnicodeDecodeError: malformed
    pairs = parse_query(text, "&")  # Rack splits a form body on `&` only
    tokens = {n: [v for k, v in pairs if base_name(k) == n] for n in FORM_PLACES}
    strings = tuple(x for k, v in pairs for x in ((k,) if base_name(k) in FORM_PLACES else (k, v)))
    stripped = filter_query(text, FORM_PLACES).encode(charset) if any(tokens.values()) else raw
    return BodyForm(tuple(pairs), strings, tokens, raw, stripped)


async def _multipart(request: web.Request, raw: bytes) -> BodyForm:
    loop = asyncio.get_running_loop()
    stream = aiohttp.StreamReader(BaseProtocol(loop), 1 << 16, loop=loop)
    stream.feed_data(raw)
    stream.feed_eof()
    reader = aiohttp.MultipartReader(request.headers, stream)
    form = aiohttp.FormData(default_to_multipart=True)
    fields: list[tuple[str, str]] = []
    strings: list[str] = []
    tokens: dict[str, list[str]] = {n: [] for n in FORM_PLACES}
    while (part := await reader.next()) is not None:
        if not isinstance(part, aiohttp.BodyPartReader):
            raise MalformedBody("nested multipart body")
        if part.name is None:
            raise MalformedBody("a multipart part without a name")
        data = bytes(await part.read(decode=True))
        if part.filename is None:
            value = data.decode(part.get_charset("utf-8"))
            fields.append((part.name, value))
            if base_name(part.name) in FORM_PLACES:
                tokens[base_name(part.name)].append(value)
                strings.append(part.name)
                continue
            strings += (part.name, value)
            form.add_field(part.name, value)
        else:
            strings += (part.name, part.filename, data.decode("latin-1"))
            ctype = part.headers.get("Content-Type", "application/octet-stream")
            form.add_field(part.name, data, filename=part.filename, content_type=ctype)
    return BodyForm(tuple(fields), tuple(strings), tokens, raw, form if any(tokens.values()) else raw)


def _json(raw: bytes) -> BodyForm:
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise MalformedBody("a JSON body that is not UTF-8") from None
    tokens: dict[str, list[str]] = {}
    fields: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for name in FORM_PLACES & data.keys():
            token = data.pop(name)
            if not isinstance(token, str):
                raise CredentialError(f"{name} must be a string")
            tokens[name] = [token]
        fields = [(k, v) for k, v in data.items() if isinstance(v, str)]
    strings = [*tokens]
    pending = [data]
    while pending:  # every string at any depth, without recursion
        item = pending.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, dict):
            strings += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    stripped = json.dumps(data).encode() if tokens else raw
    return BodyForm(tuple(fields), tuple(strings), tokens, raw, stripped)
