"""The token is [MASKED] in every record, whatever carried it (issue 16)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.observe import MASK, mask, maskable

from .conftest import RecordingUpstream, World, raw_request

PKG = "/api/v4/projects/1/packages/generic/tool/1.0/tool.bin"


def pct(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode())


@pytest.mark.parametrize(
    "shape",
    [
        "/nowhere?job_token={t}",  # unmatched route
        "/nowhere?%6Aob_token={p}",  # encoded name and value
        "/nowhere/{t}/x",  # the token in the path
        "/nowhere/{p}",
        PKG + "?job_token={t}&job_token=glcbt-1_other-token-value",  # a 400 (ambiguous)
        "/api/v4/projects/1/packages/generic/{t}/1.0/x?x=%ZZ",
    ],
)
async def test_the_access_line_never_holds_the_token(
    gateway: Any, world: World, capfd: Any, shape: str
) -> None:
    token = world.tokens["100"]
    await raw_request(gateway, f"GET {shape.format(t=token, p=pct(token))} HTTP/1.1", {})
    from gateway.app import GATEWAY

    gateway.app[GATEWAY].metrics.fold()
    err = capfd.readouterr().err
    assert '"path"' in err and token not in err and pct(token) not in err and MASK in err


def test_mask_reads_encoded_forms() -> None:
    token = "glcbt-5_secretsecretsecret"
    assert token not in mask(f"/x?%6Aob_token={pct(token)}", token)
    assert mask("/x?%6Aob_token=abc", None) == f"/x?%6Aob_token={MASK}"
    assert mask(f"/p/{token}/x") == f"/p/{MASK}/x"  # jobgate's own token shape, known or not
    assert mask("/api/v4/projects/1/packages", "1") != ""  # a short value is not worth masking...


async def test_the_unhandled_error_record_masks_the_clients_request_id(
    make_gateway: Any, upstream: RecordingUpstream, world: World, caplog: Any, monkeypatch: Any
) -> None:
    """A bug before the credential is read: the record's id is masked from the request's places."""
    import gateway.pipeline

    async def broken(*args: Any, **kwargs: Any) -> web.Response:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.pipeline, "evaluate", broken)
    client = await make_gateway()
    token = "opaque-token-without-prefix-1234567890"
    with caplog.at_level(logging.ERROR, logger="jobgate"):
        status, _ = await raw_request(client, f"GET {PKG} HTTP/1.1",
                                      {"JOB-TOKEN": token, "X-Request-Id": f"req-{token}"})  # fmt: skip
    assert status == 500
    records = [r.getMessage() for r in caplog.records if "unhandled" in r.getMessage()]
    assert records and all(token not in r for r in records) and "req-[MASKED]" in records[0]


_PLAIN = st.sampled_from(["/", "a", "x", "1", "_", "?", "&", "-", ".", "bin", "api"])
_TRIGGERS = st.sampled_from(
    ["gl", "glcbt-1_ab", "glptt-x", "%", "%67lcbt-1_ab", "+", "a+b", "=", "job_token=", "@", "a://u@h"]
)


@settings(max_examples=1000, deadline=None)
@given(
    pieces=st.lists(st.one_of(_PLAIN, _PLAIN, _PLAIN, _TRIGGERS, st.text(max_size=3)), max_size=10),
    token=st.one_of(st.sampled_from([None, "", "a b"]), _PLAIN, _TRIGGERS, st.text(min_size=1, max_size=6)),
    others=st.lists(st.one_of(_PLAIN, _TRIGGERS, st.text(max_size=5)), max_size=3).map(tuple),
    embed=st.sampled_from(["none", "token", "other"]),
)
def test_the_access_lines_shortcut_never_skips_what_mask_would_change(
    pieces: list[str], token: str | None, others: tuple[str, ...], embed: str
) -> None:
    """`maskable` False must mean `mask` leaves the text as it is (the access line skips it then)."""
    inside = {"none": "", "token": token or "", "other": others[0] if others else ""}[embed]
    text = "".join(pieces[: len(pieces) // 2]) + inside + "".join(pieces[len(pieces) // 2 :])
    if not maskable(text, token, others):
        assert mask(text, token, *others) == text
