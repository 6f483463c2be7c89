"""Property-based fuzzing of everything that reads untrusted input: never an unexpected exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from gateway.config import ConfigError, parse_config
from gateway.credentials import Credential, CredentialError, extract_credential, scan_places
from gateway.observe import RequestLog, mask
from gateway.protocols.registry import TokenIssuer, parse_scopes
from gateway.routes import (
    PathError,
    canonical_path,
    match,
    normalize_path,
    project_ref,
    repo_ref,
    resolve,
    split_path,
)
from gateway.signing import SigningKey

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
pathish = st.lists(
    st.one_of(text, st.sampled_from(["api", "v4", "projects", "packages", "..", ".", "%2e%2e", "%2F", "%252F",
                                     "g%2Fp", "1", "v2", "info", "refs", "git-upload-pack", ""])),
    max_size=12,
).map(lambda parts: "/" + "/".join(parts))  # fmt: skip
header_names = st.sampled_from(["JOB-TOKEN", "job-token", "JOB_TOKEN", "Authorization", "X-Other"])
header_values = st.one_of(text, st.sampled_from(["Basic Z2l0bGFiLWNpLXRva2VuOmE=", "Bearer x", "Basic %%"]))


@FUZZ
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=4),
    query=st.lists(st.tuples(st.sampled_from(["job_token", "token", "x"]), text), max_size=4),
    form=st.one_of(
        st.none(), st.dictionaries(st.sampled_from(["job_token", "token"]), st.lists(text, max_size=2))
    ),
    bearer=st.booleans(),
)
def test_credential_extraction(headers: list[tuple[str, str]], query: list[tuple[str, str]],
                               form: dict[str, list[str]] | None, bearer: bool) -> None:  # fmt: skip
    request = CIMultiDict(headers), MultiDict(query)
    try:
        result = extract_credential(*request, form=form, bearer=bearer)
    except CredentialError as exc:
        assert str(exc) in CREDENTIAL_ERRORS  # the gateway's own words, never a value it read
        with pytest.raises(CredentialError):  # the fast path refuses what the table's scan refuses
            scan_places(*request, form=form, bearer=bearer)
        return
    assert result == scan_places(*request, form=form, bearer=bearer)  # the fast path
    assert result is None or (isinstance(result, Credential) and result.token and result.sources)


CREDENTIAL_ERRORS = {
    "malformed basic authorization", "the request carries more than one different token", "empty token",
    "token too long", "malformed token",
}  # fmt: skip


@FUZZ
@given(
    path=st.one_of(pathish, text), method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "LOCK", "BREW"])
)
def test_path_normalization_and_routing(path: str, method: str) -> None:
    try:
        segments = split_path(path)
    except PathError:
        return
    for segment in segments[:-1]:
        assert segment not in (".", "..", "")
    assert split_path(canonical_path(segments)) == segments  # what the upstream sees is what matched
    matched = match(method, segments, {"service": "git-upload-pack"})
    if matched is not None:
        assert method in matched.route.methods


@FUZZ
@given(path=st.one_of(pathish, text, st.text(alphabet="/.a9~%2eE-_\\", max_size=24).map(lambda t: "/" + t)))
def test_plain_path_shortcut_agrees_with_full_normalization(path: str) -> None:
    """`normalize_path` skips decoding for plain paths: it must answer exactly as decoding does."""
    try:
        slow: Any = (split_path(path), canonical_path(split_path(path)))
    except PathError:
        slow = PathError
    try:
        fast: Any = normalize_path(path)
    except PathError:
        fast = PathError
    assert fast == slow


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "LOCK", "PATCH"]), path=pathish,
       query=st.sampled_from([{}, {"service": "git-upload-pack"}, {"service": "x"}]))  # fmt: skip
def test_remembered_resolution_agrees_with_fresh_matching(
    method: str, path: str, query: dict[str, str]
) -> None:
    """`resolve` remembers paths without a query: the first and the remembered answer are both
    exactly what normalizing and matching afresh gives."""
    try:
        segments, canonical = normalize_path(path)
        fresh: Any = (match(method, segments, query), canonical)
    except PathError:
        fresh = PathError
    for _ in range(2):
        try:
            answer: Any = resolve(method, path, query)
        except PathError:
            answer = PathError
        assert answer == fresh


@FUZZ
@given(segment=text)
def test_project_refs(segment: str) -> None:
    ref = project_ref(segment)
    if ref is not None:
        assert (ref.project_id is None) != (not ref.paths)
    repo = repo_ref(segment.split("/"))
    if repo is not None:
        assert all(p.count("/") >= 1 for p in repo.paths)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)),
    max_leaves=12,
)
config_keys = st.sampled_from(["listen", "redis", "upstreams", "scope", "admin_token", "admin_listen", "tls",
                               "limits", "cache", "registry", "explain", "bogus"])  # fmt: skip


@FUZZ
@given(data=st.one_of(json_values, st.dictionaries(config_keys, json_values, max_size=6)))
def test_config_loading(data: Any) -> None:
    try:
        config = parse_config(data, "fuzz.yaml", env={})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml: ") for p in exc.problems)
        return
    # accepted: a mapping of known keys only, with at least one upstream to serve
    assert isinstance(data, dict) and "bogus" not in data and config.upstreams


ISSUER = TokenIssuer(SigningKey.generate())


@FUZZ
@given(token=text, scopes=st.lists(text, max_size=4))
def test_registry_tokens_and_scopes(token: str, scopes: list[str]) -> None:
    assert ISSUER.verify(token, 0.0) is None
    assert ISSUER.verify(f"a.b.{token}", 0.0) is None  # a non-ASCII signature once raised
    for name, actions in parse_scopes(scopes):
        assert name and set(actions) <= {"pull", "push", "delete"}


TOKEN = "glcbt-9_s3cr3t"


@FUZZ
@given(path=st.one_of(text, st.builds(lambda a, b: f"{a}{TOKEN}{b}", text, text)),
       request_id=st.one_of(text, st.just(f"id-{TOKEN}")), from_client=st.booleans())  # fmt: skip
def test_access_lines_are_json_without_the_token(path: str, request_id: str, from_client: bool) -> None:
    """Only the path and a client's request id are escaped and masked in the access line: whatever
    they hold, the line is one JSON object, the token is nowhere, the other fields intact."""
    entry = RequestLog(request_id if from_client else "0a1b-2c", "GET", path, "127.0.0.1")
    entry.id_from_client, entry.token, entry.reason, entry.status = from_client, TOKEN, "same_project", 200
    line = entry.line()
    assert "\n" not in line and TOKEN not in line
    fields = json.loads(line)
    assert fields["path"] == mask(path, TOKEN)
    assert fields["request_id"] == (mask(request_id, TOKEN) if from_client else "0a1b-2c")
    assert (fields["method"], fields["remote"], fields["reason"]) == ("GET", "127.0.0.1", "same_project")
