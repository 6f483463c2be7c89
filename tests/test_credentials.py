"""extract_credential: every source, ambiguity, malformed input."""

from __future__ import annotations

import base64

import pytest
from multidict import CIMultiDict, MultiDict

from gateway.credentials import CredentialError, Source, extract_credential


def extract(headers: dict[str, str] | list[tuple[str, str]] = (), query: str = "", **kw: object):  # type: ignore[assignment,no-untyped-def]
    from urllib.parse import parse_qsl

    return extract_credential(
        CIMultiDict(headers),
        MultiDict(parse_qsl(query, keep_blank_values=True)),
        **kw,  # type: ignore[arg-type]
    )


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("headers", "query", "kw", "source"),
    [
        ({"JOB-TOKEN": "glcbt-a"}, "", {}, Source.HEADER),
        ({"job-token": "glcbt-a"}, "", {}, Source.HEADER),
        ({}, "job_token=glcbt-a", {}, Source.JOB_TOKEN_PARAM),
        ({"JOB_TOKEN": "glcbt-a"}, "", {}, Source.HEADER_UNDERSCORE),  # CGI: HTTP_JOB_TOKEN too
        ({}, "token=glcbt-a", {}, Source.TOKEN_PARAM),  # every job-token route reads `token`
        ({}, "", {"form": {"token": ["glcbt-a"]}}, Source.FORM),
        ({}, "", {"form": {"job_token": ["glcbt-a"]}}, Source.FORM_JOB_TOKEN),
        ({"Authorization": basic("gitlab-ci-token", "glcbt-a")}, "", {}, Source.BASIC),
        # Ruby's split(" ", 2) takes any run of whitespace between scheme and parameter
        ({"Authorization": "Basic\t" + basic("gitlab-ci-token", "glcbt-a")[6:]}, "", {}, Source.BASIC),
        ({"Authorization": "  basic   " + basic("gitlab-ci-token", "glcbt-a")[6:]}, "", {}, Source.BASIC),
        ({"Authorization": "Bearer glcbt-a"}, "", {}, Source.BEARER),
        ({"Authorization": "bearer glcbt-a"}, "", {}, Source.BEARER),
    ],
)
def test_each_source(headers: dict[str, str], query: str, kw: dict[str, object], source: Source) -> None:
    credential = extract(headers, query, **kw)
    assert credential is not None and credential.token == "glcbt-a"
    assert credential.sources == {source}
    assert "glcbt-a" not in repr(credential)


@pytest.mark.parametrize(
    ("headers", "query", "kw"),
    [
        ({}, "", {}),
        ({"Authorization": basic("alice", "glcbt-a")}, "", {}),
        ({"Authorization": "Bearer glcbt-a"}, "", {"bearer": False}),
        ({"Authorization": "Digest x"}, "", {}),
    ],
)
def test_no_job_token_credential(headers: dict[str, str], query: str, kw: dict[str, object]) -> None:
    assert extract(headers, query, **kw) is None


@pytest.mark.parametrize(
    ("headers", "query", "message"),
    [
        ({"JOB-TOKEN": "glcbt-a"}, "job_token=glcbt-b", "more than one"),
        ({}, "job_token=glcbt-a&job_token=glcbt-b", "more than one"),
        ([("JOB-TOKEN", "glcbt-a"), ("JOB-TOKEN", "glcbt-b")], "", "more than one"),
        ({"Authorization": basic("gitlab-ci-token", "glcbt-b"), "JOB-TOKEN": "glcbt-a"}, "", "more than one"),
        ({"Authorization": "Basic %%%"}, "", "malformed basic"),
        ({"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}, "", "malformed basic"),
        ({"Authorization": "Basic " + base64.b64encode(b"gitlab-ci-token:\xff").decode()}, "", "malformed"),
        ({"JOB-TOKEN": "x" * 2000}, "", "too long"),
        ({"JOB-TOKEN": "  "}, "", "empty token"),  # a lone header takes a shorter path: same checks
        ({"JOB-TOKEN": "glcbt-a b"}, "", "malformed token"),
        ({"JOB-TOKEN": "glcbt-caf\u00e9"}, "", "malformed token"),
        ({}, "job_token=", "empty token"),
        ({}, "job_token=a%00b", "malformed token"),
        ({}, "job_token=caf%C3%A9", "malformed token"),
    ],
)
def test_rejected(headers: object, query: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        extract(headers, query)  # type: ignore[arg-type]


def test_same_token_in_several_places_is_one_credential() -> None:
    credential = extract(
        {"JOB-TOKEN": "glcbt-a", "Authorization": basic("gitlab-ci-token", "glcbt-a")}, "job_token=glcbt-a"
    )
    assert credential is not None
    assert credential.sources == {Source.HEADER, Source.BASIC, Source.JOB_TOKEN_PARAM}


def test_a_lone_header_token_is_the_only_credential_only_when_nothing_else_carries_one() -> None:
    both = extract({"JOB-TOKEN": "glcbt-a", "Authorization": "Bearer glcbt-a"})
    assert both is not None and both.sources == {Source.HEADER, Source.BEARER}
    with pytest.raises(CredentialError, match="more than one"):
        extract({"JOB-TOKEN": "glcbt-a"}, "token=glcbt-b")
    with pytest.raises(CredentialError, match="more than one"):
        extract({"JOB-TOKEN": "glcbt-a"}, "", form={"job_token": ["glcbt-b"]})
    with pytest.raises(CredentialError, match="more than one"):
        extract({"JOB-TOKEN": "glcbt-a", "JOB_TOKEN": "glcbt-b"})
    alone = extract({"JOB-TOKEN": " glcbt-a "}, "other=1")
    assert alone is not None and alone.token == "glcbt-a" and alone.sources == {Source.HEADER}


def test_a_lone_job_token_header_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most requests carry one JOB-TOKEN header and nothing else: no scan of the table for them
    (the fuzz suite checks the fast path answers as the scan would)."""
    from multidict import CIMultiDict, MultiDict

    from gateway import credentials

    def scanned(*args: object, **kwargs: object) -> None:
        raise AssertionError("the table was scanned")

    monkeypatch.setattr(credentials, "scan_places", scanned)
    for name in ("JOB-TOKEN", "job-token"):
        found = credentials.extract_credential(CIMultiDict({name: "glcbt-a"}), MultiDict())
        assert found is not None and found.sources == {Source.HEADER}


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        ("a=1&b=2", [("a", "1"), ("b", "2")]),
        ("a=1;job_token=x", [("a", "1"), ("job_token", "x")]),  # Rack splits on `;` too
        ("a=1&  b=2", [("a", "1"), ("b", "2")]),  # spaces after a separator dropped (Rack's /[&;] */)
        ("%6Aob_token=%67l+c", [("job_token", "gl c")]),  # names and values decoded, `+` a space
        ("flag&&x=", [("flag", ""), ("x", "")]),
    ],
)
def test_parse_query_reads_as_rack(raw: str, pairs: list[tuple[str, str]]) -> None:
    from gateway.credentials import parse_query

    assert parse_query(raw) == pairs


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("a=1&job_token=x&b=2", "a=1&b=2"),
        ("a=1;job_token=x;b=2", "a=1;b=2"),
        ("job_token=x;a=1", "a=1"),
        ("%6Aob_token=x&a=%2F", "a=%2F"),
        ("job_token[]=x&a=1", "a=1"),
    ],
)
def test_filter_query_drops_what_rack_would_read(raw: str, kept: str) -> None:
    from gateway.credentials import filter_query

    assert filter_query(raw, {"job_token"}) == kept
