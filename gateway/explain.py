"""`jobgate explain`: why a job's request would be allowed or denied, rule by rule.

It routes the request, reads the same state and runs the same decide() as the gateway
(with its trace on), and sends nothing upstream.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, MultiDict

from .admin import CliSettings, add_where_options, run_cli
from .boundary import Refused, refuse_duplicates, refuse_method_override, refuse_repository_name
from .config import ScopeConfig
from .credentials import parse_query
from .decision import Check, Decision, decide
from .responses import denial
from .routes import PathError, Protocol, match, split_path
from .store import ControlError, Store, credential_key


def add_explain_parser(sub: Any) -> None:
    """`jobgate explain [--config F | --redis-url URL] (--job ID | --token T) METHOD URL`."""
    explain = sub.add_parser(
        "explain", help="show why a job's request is allowed or denied, rule by rule",
        description="Route the request, read the same state and run the same decision as the "
        "gateway, and print every rule; nothing is sent upstream. Exit 0 allowed, 1 denied, "
        "2 bad input, 3 Redis unreachable.",
    )  # fmt: skip
    add_where_options(explain)
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--job", type=int, help="the job whose token makes the request")
    who.add_argument("--token", help="the token itself (job or trigger token)")
    explain.add_argument("method", help="HTTP method, e.g. GET")
    explain.add_argument("url", help="the request URL or path, e.g. /api/v4/projects/2/packages/...")


def client_answer(decision: Decision, protocol: Protocol, explain: bool) -> str:
    """What the client of `protocol` is answered for a denial (`explain`: in explain mode)."""
    response = denial(decision, protocol, explain, "https://jobgate/jwt/auth")
    assert isinstance(response, web.Response) and response.text is not None
    body = response.text.strip()
    if response.content_type == "application/json":
        body = json.dumps(json.loads(body), separators=(",", ":"))
    return f"{response.status} {body}"


def render(
    method: str, path: str, route_line: str, decision: Decision, checks: list[Check],
    protocol: Protocol = Protocol.API,
) -> str:  # fmt: skip
    """The explanation as text: the route, every check, the decision and what the client sees."""
    lines = [f"request   {method} {path}", f"route     {route_line}"]
    for check in checks:
        lines.append(f"  {'PASS' if check.passed else 'FAIL'}  {check.rule}: {check.detail}")
    verdict = "ALLOW" if decision.allowed else "DENY"
    lines.append(f"decision  {verdict} ({decision.reason.value})")
    if not decision.allowed:
        lines.append(f"client    {client_answer(decision, protocol, explain=False)}")
        lines.append(f"explain   {client_answer(decision, protocol, explain=True)}")
    return "\n".join(lines)


async def _explain(store: Store, args: argparse.Namespace, scope: ScopeConfig) -> tuple[int, str]:
    parts = urlsplit(args.url)
    method = args.method.upper()
    try:
        segments = split_path(parts.path or "/")
    except PathError as exc:
        return 2, f"request   {method} {parts.path}\ndecision  400 ({exc})"
    pairs = parse_query(parts.query)
    matched = match(method, segments, MultiDict(pairs))
    if matched is None:
        return 1, f"request   {method} {parts.path}\nroute     none (unlisted)\ndecision  DENY (404)"
    try:  # what the gateway refuses before judging, as far as a URL shows it
        refuse_repository_name(matched)
        refuse_method_override(method, CIMultiDict(), pairs)
        refuse_duplicates(matched, pairs)
    except Refused as exc:
        return (
            2,
            f"request   {method} {parts.path}\nroute     {matched.route.name}\n"
            f"decision  REFUSED {exc.status} ({exc.reason.value}: {exc.detail})",
        )
    if args.job is not None:
        locator = await store.job_credential_key(args.job)
        if locator is None:
            raise ControlError(f"job {args.job} does not exist")
    else:
        locator = credential_key(args.token)
    state = await store.read_access_key(locator, matched.target)
    checks: list[Check] = []
    decision = decide(matched.route.action, state, time.time(), scope, checks)
    action = matched.route.action
    policies = " and ".join(action.policies) if action and action.policies else "none"
    route_line = matched.route.name + (
        f" (action {action.name}, needs level {action.min_level}, policy {policies}, "
        f"upstream {matched.route.upstream})" if action else " (about the job itself)"
    )  # fmt: skip
    return (0 if decision.allowed else 1), render(
        method, parts.path, route_line, decision, checks, matched.route.protocol
    )


def explain_main(args: argparse.Namespace) -> int:
    """Print the explanation; exit 0 when allowed, 1 when denied, 2 on bad input, 3 Redis down."""

    async def work(store: Store, settings: CliSettings) -> tuple[int, str]:
        return await _explain(store, args, settings.scope)

    return run_cli(args, "explain", work, refused=2)
