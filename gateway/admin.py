"""The control plane: the admin HTTP API and the `jobgate admin` CLI, both over store.Store.

The orchestrator writes job state through these verbs and never needs Redis' key
layout. HTTP API (bearer admin token, JSON bodies, on `admin_listen`):

    PUT    /admin/v1/projects/{id}                    {path, visibility, scope, inbound, pending_delete,
                                                       push_repository, features: {name: level}}
    PUT    /admin/v1/projects/{id}/members/{user}     {access_level}      (0 removes)
    PUT    /admin/v1/projects/{source}/allowlist/{target}
    DELETE /admin/v1/projects/{source}/allowlist/{target}
    PUT    /admin/v1/groups/{id}                      {path}  (a new path rewrites the group's entries)
    PUT    /admin/v1/projects/{target}/inbound/{source}  {policies: [...]} (absent: default)
    DELETE /admin/v1/projects/{target}/inbound/{source}  (source: id or URL-encoded group path)
    GET    /admin/v1/projects/{target}/inbound-suggestions  (from the authentication log)
    POST   /admin/v1/jobs                             {id, project, user, pipeline, name, ref, timeout,
                                                       stage, sha, tag, pipeline_iid, pipeline_source,
                                                       username, user_name, allow_failure}
    GET    /admin/v1/jobs/{id}
    POST   /admin/v1/jobs/{id}/finish                 {status}
    POST   /admin/v1/jobs/{id}/erase
    POST   /admin/v1/triggers                         {project, owner}
    POST   /admin/v1/triggers/revoke                  {token}

GitLab's job token scope REST API is served beside it under `/api/v4/` (gateway/scope_api.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import scope_api
from .config import PRIVATE_REDIS_URL, ConfigError, RegistryConfig, ScopeConfig, load_config
from .model import ACCESS_LEVELS, FINISH_STATUSES, VISIBILITIES
from .signing import SigningKeyError, load_or_create_key
from .store import ControlError, Store, StoreUnavailable, connect, parse_feature, parse_id, validate_id

ADMIN_STORE = web.AppKey("admin_store", Store)


@dataclass
class AdminToken:
    """The admin bearer token in force; SIGHUP replaces its value (`set_admin_token`)."""

    value: str

    def __repr__(self) -> str:
        return "AdminToken([MASKED])"


ADMIN_TOKEN = web.AppKey("admin_token", AdminToken)
MAX_ADMIN_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer admin token on every call; control errors become clear 4xx answers.

    GitLab's API under `/api/v4/` also takes it as `PRIVATE-TOKEN`, and refuses as GitLab does.
    """
    expected = request.app[ADMIN_TOKEN].value.encode()
    if request.path.startswith(scope_api.PREFIX):
        sent = scope_api.credential(request)
        if sent is None or not hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), expected):
            return scope_api.unauthorized()
        return await _answer(request, handler)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        return web.json_response(
            {"message": "401 Unauthorized"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="jobgate-admin"'},
        )
    return await _answer(request, handler)


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as exc:
        return _error(exc.status, str(exc))
    except StoreUnavailable:
        return _error(503, "503 Service Unavailable: Redis is unreachable")


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.body_exists:
        return {}
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        raise ControlError("request body too large", 413)
    try:
        data = json.loads(await request.read(), parse_constant=_no_constant)
    except web.HTTPRequestEntityTooLarge:
        raise ControlError("request body too large", 413) from None
    except RecursionError:
        raise ControlError("body must be a JSON object (it nests too deep)") from None
    except ControlError:
        raise
    except (ValueError, UnicodeDecodeError):
        raise ControlError("body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ControlError("body must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    """json.loads' hook for NaN, Infinity and -Infinity, which are not JSON."""
    raise ControlError(f"body must be JSON: {name} is not a number")


def _int(value: Any, name: str, required: bool = True) -> int | None:
    if value is None and not required:
        return None
    if isinstance(value, str):
        return parse_id(value, name)  # ASCII digits only: "١٢٣" is not 123
    return validate_id(value, name)


def _flag(value: Any, name: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return bool(value == "on")
    raise ControlError(f"{name} must be true/false or on/off")


def _str(value: Any, name: str, default: str | None = None) -> str | None:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ControlError(f"{name} must be a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ControlError(f"{name} must be valid Unicode text (no lone surrogates)") from None
    return value


def _path_id(request: web.Request, name: str) -> int:
    return parse_id(request.match_info[name], name)


async def _put_project(request: web.Request) -> web.Response:
    body = await _body(request)
    project = await request.app[ADMIN_STORE].set_project(
        _path_id(request, "id"),
        path=_str(body.get("path"), "path"),
        visibility=_str(body.get("visibility"), "visibility"),
        scope=_flag(body.get("scope"), "scope"),
        inbound=_flag(body.get("inbound"), "inbound"),
        pending_delete=_flag(body.get("pending_delete"), "pending_delete"),
        features=_features(body.get("features")),
        push_repository=_flag(body.get("push_repository"), "push_repository"),
    )
    return web.json_response({"id": _path_id(request, "id"), **project})


def _features(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ControlError('features must be an object of feature -> level, e.g. {"packages": "private"}')
    return value


async def _put_member(request: web.Request) -> web.Response:
    body = await _body(request)
    level = _int(body.get("access_level"), "access_level")
    assert level is not None
    project, user = _path_id(request, "id"), _path_id(request, "user")
    await request.app[ADMIN_STORE].set_member(project, user, level)
    return web.json_response({"project": project, "user": user, "access_level": level})


async def _allowlist(request: web.Request) -> web.Response:
    source, target = _path_id(request, "id"), _path_id(request, "target")
    present = request.method == "PUT"
    await request.app[ADMIN_STORE].set_outbound(source, target, present)
    return web.json_response({"source": source, "target": target, "present": present})


async def _inbound(request: web.Request) -> web.Response:
    body = await _body(request)
    target, source = _path_id(request, "id"), request.match_info["source"]
    policies = body.get("policies")
    if policies is not None and (
        not isinstance(policies, list) or not all(isinstance(p, str) for p in policies)
    ):
        raise ControlError("policies must be a list of policy names")
    present = request.method == "PUT"
    entry = await request.app[ADMIN_STORE].set_inbound(target, source, present, policies)
    return web.json_response({"target": target, "source": entry, "present": present})


async def _put_group(request: web.Request) -> web.Response:
    body = await _body(request)
    path = _str(body.get("path"), "path")
    if not path:
        raise ControlError("path is required")
    group_id = _path_id(request, "id")
    moved = await request.app[ADMIN_STORE].set_group(group_id, path)
    return web.json_response({"id": group_id, "path": path, "rewritten_entries": moved})


async def _suggest(request: web.Request) -> web.Response:
    return web.json_response(await request.app[ADMIN_STORE].suggest_inbound(_path_id(request, "id")))


async def _start_job(request: web.Request) -> web.Response:
    body = await _body(request)
    timeout = body.get("timeout", 3600)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ControlError("timeout must be a number of seconds")  # the store checks its range
    job_id = _int(body.get("id"), "id")
    token = await request.app[ADMIN_STORE].start_job(
        job_id,  # type: ignore[arg-type]
        project_id=_int(body.get("project"), "project"),  # type: ignore[arg-type]
        user_id=_int(body.get("user"), "user"),  # type: ignore[arg-type]
        pipeline_id=_int(body.get("pipeline"), "pipeline", required=False),
        name=_str(body.get("name"), "name", "") or "",
        ref=_str(body.get("ref"), "ref", "") or "",
        timeout=timeout,
        stage=_str(body.get("stage"), "stage", "") or "",
        sha=_str(body.get("sha"), "sha", "") or "",
        tag=bool(_flag(body.get("tag"), "tag")),
        pipeline_iid=_int(body.get("pipeline_iid"), "pipeline_iid", required=False),
        pipeline_source=_str(body.get("pipeline_source"), "pipeline_source", "") or "",
        username=_str(body.get("username"), "username", "") or "",
        user_name=_str(body.get("user_name"), "user_name", "") or "",
        allow_failure=bool(_flag(body.get("allow_failure"), "allow_failure")),
    )
    return web.json_response({"id": job_id, "token": token}, status=201)


async def _get_job(request: web.Request) -> web.Response:
    job = await request.app[ADMIN_STORE].get_job(_path_id(request, "id"))
    if job is None:
        return _error(404, "job does not exist")
    return web.json_response(job)


async def _finish_job(request: web.Request) -> web.Response:
    body = await _body(request)
    status = _str(body.get("status"), "status", "success") or "success"
    job_id = _path_id(request, "id")
    await request.app[ADMIN_STORE].finish_job(job_id, status)
    return web.json_response({"id": job_id, "status": status})


async def _erase_job(request: web.Request) -> web.Response:
    job_id = _path_id(request, "id")
    await request.app[ADMIN_STORE].erase_job(job_id)
    return web.json_response({"id": job_id, "erased": True})


async def _create_trigger(request: web.Request) -> web.Response:
    body = await _body(request)
    token = await request.app[ADMIN_STORE].create_trigger(
        _int(body.get("project"), "project"),  # type: ignore[arg-type]
        _int(body.get("owner"), "owner"),  # type: ignore[arg-type]
    )
    return web.json_response({"token": token}, status=201)


async def _revoke_trigger(request: web.Request) -> web.Response:
    body = await _body(request)
    token = _str(body.get("token"), "token")
    if not token:
        raise ControlError("token is required")
    if not await request.app[ADMIN_STORE].revoke_trigger(token):
        return _error(404, "no such trigger token")
    return web.json_response({"revoked": True})


def set_admin_token(app: web.Application, admin_token: str) -> None:
    """Make `admin_token` the one the admin API `app` accepts from the next request on."""
    app[ADMIN_TOKEN].value = admin_token


def build_admin(store: Store, admin_token: str) -> web.Application:
    """The admin HTTP API application."""
    app = web.Application(middlewares=[admin_guard], client_max_size=MAX_ADMIN_BODY)
    app[ADMIN_STORE] = store
    app[ADMIN_TOKEN] = AdminToken(admin_token)
    p = "/admin/v1/projects/{id}"
    app.router.add_put(p, _put_project)
    app.router.add_put(p + "/members/{user}", _put_member)
    app.router.add_route("PUT", p + "/allowlist/{target}", _allowlist)
    app.router.add_route("DELETE", p + "/allowlist/{target}", _allowlist)
    app.router.add_get(p + "/inbound-suggestions", _suggest)
    app.router.add_route("PUT", p + "/inbound/{source:.+}", _inbound)
    app.router.add_route("DELETE", p + "/inbound/{source:.+}", _inbound)
    app.router.add_post("/admin/v1/jobs", _start_job)
    app.router.add_get("/admin/v1/jobs/{id}", _get_job)
    app.router.add_post("/admin/v1/jobs/{id}/finish", _finish_job)
    app.router.add_post("/admin/v1/jobs/{id}/erase", _erase_job)
    app.router.add_post("/admin/v1/triggers", _create_trigger)
    app.router.add_post("/admin/v1/triggers/revoke", _revoke_trigger)
    app.router.add_put("/admin/v1/groups/{id}", _put_group)
    scope_api.ScopeApi(store).add_routes(app.router)
    return app


# -- the CLI --------------------------------------------------------------------------


def _cli_id(text: str) -> int:
    """An id argument: ASCII decimal digits (argparse's int() would read '١٢٣' as 123)."""
    try:
        return parse_id(text, "id")
    except ControlError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("id ")) from None


def _cli_seconds(text: str) -> float:
    """A number of seconds in ASCII (float() would read '١٢٣'); the store checks the range."""
    if not text.isascii():
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text[:40]!r}") from None


def _onoff(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def add_where_options(parser: argparse.ArgumentParser, after_verb: bool = False) -> None:
    """`--config F | --redis-url URL`; on a subcommand (`after_verb`) they leave the values
    given before the verb alone unless given again."""
    where = parser.add_mutually_exclusive_group()
    default: Any = argparse.SUPPRESS if after_verb else None
    where.add_argument(
        "--config",
        default=default,
        metavar="F",
        help="read Redis settings (and scope switches) from this config file",
    )
    where.add_argument(
        "--redis-url",
        default=default,
        metavar="URL",
        help=f"Redis URL (default: the config's, else the private one, {PRIVATE_REDIS_URL})",
    )


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every innermost subcommand below `parser`."""
    leaves = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                leaves.extend(leaf_parsers(child) or [child])
    return leaves


def add_admin_parser(sub: Any) -> None:
    """The `jobgate admin ...` grammar, exactly as SPEC §7 lists it, with a help line everywhere."""
    admin = sub.add_parser(
        "admin", help="write job state: projects, members, scope, jobs, triggers",
        description="Write job state (the orchestrator's verbs). Ids are integers; tokens are "
        "printed alone on stdout. --config/--redis-url may come before or after the verb.",
    )  # fmt: skip
    add_where_options(admin)
    nouns = admin.add_subparsers(dest="noun", required=True, metavar="NOUN")
    onoff = "on|off"
    levels = ", ".join(f"{level} {name}" for level, name in ACCESS_LEVELS.items())

    project = nouns.add_parser("project", help="projects: path, visibility, scope switches")
    project_verbs = project.add_subparsers(dest="verb", required=True, metavar="VERB")
    pset = project_verbs.add_parser(
        "set", help="create or update a project (a new one needs --path and --visibility)",
        description="Create or update a project. A new project has the outbound limit off, the "
        "inbound limit on and is not pending deletion (GitLab's defaults); an update changes only "
        "what is given.",
    )  # fmt: skip
    pset.add_argument("id", type=_cli_id, help="the project id")
    pset.add_argument("--path", metavar="GROUP/SUB/NAME", help="the project's full path")
    pset.add_argument("--visibility", choices=VISIBILITIES, help="private, internal or public")
    pset.add_argument(
        "--scope",
        type=_onoff,
        metavar=onoff,
        help='outbound limit ("Limit CI_JOB_TOKEN access"); a new project: off',
    )
    pset.add_argument(
        "--inbound",
        type=_onoff,
        metavar=onoff,
        help="inbound limit (only allowlisted projects' job tokens); a new project: on",
    )
    pset.add_argument(
        "--pending-delete",
        type=_onoff,
        metavar=onoff,
        help="being deleted: every job token is refused; a new project: off",
    )
    pset.add_argument(
        "--push-repository",
        type=_onoff,
        metavar=onoff,
        help="git push with a job token (developer, own project only); a new project: off",
    )
    pset.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=LEVEL",
        help="a feature's visibility: enabled|private|disabled (repeatable; default enabled)",
    )

    member = nouns.add_parser("member", help="members and their access levels")
    mset = member.add_subparsers(dest="verb", required=True, metavar="VERB").add_parser(
        "set", help="set a user's access level in a project (0 removes)"
    )
    mset.add_argument("project_id", type=_cli_id, help="the project id")
    mset.add_argument("user_id", type=_cli_id, help="the user id")
    mset.add_argument("access_level", type=_cli_id, help=f"one of {levels}")

    allow = nouns.add_parser("allowlist", help="outbound allowlists: where a project's jobs may go")
    allow_verbs = allow.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in ("add", "remove"):
        p = allow_verbs.add_parser(verb, help=f"{verb} TARGET on SOURCE's outbound allowlist")
        p.add_argument("source_id", type=_cli_id, help="the project whose jobs make the requests")
        p.add_argument("target_id", type=_cli_id, help="the project they may reach")

    inbound = nouns.add_parser("inbound", help="inbound allowlists: whose jobs may reach a project")
    inbound_verbs = inbound.add_subparsers(dest="verb", required=True, metavar="VERB")
    suggest = inbound_verbs.add_parser(
        "suggest", help="projects that reached TARGET with a job token (the authentication log)"
    )
    suggest.add_argument("target_id", type=_cli_id, help="the project reached")
    for verb in ("add", "remove"):
        p = inbound_verbs.add_parser(verb, help=f"{verb} SOURCE on TARGET's inbound allowlist")
        p.add_argument("target_id", type=_cli_id, help="the project reached")
        p.add_argument("source", help="a project id or a group path whose jobs may reach it")
        if verb == "add":
            p.add_argument("--policies", metavar="P,P,...",
                           help="comma-separated job token policies (read_packages, admin_releases, ...); "
                           "absent: default permissions")  # fmt: skip

    job = nouns.add_parser("job", help="jobs: start (prints the token), finish, erase")
    job_verbs = job.add_subparsers(dest="verb", required=True, metavar="VERB")
    start = job_verbs.add_parser("start", help="record a running job; prints its token")
    start.add_argument("--id", type=_cli_id, required=True, help="the job id")
    start.add_argument("--project", type=_cli_id, required=True, help="the job's project id")
    start.add_argument("--user", type=_cli_id, required=True, help="the user the job runs as")
    start.add_argument("--pipeline", type=_cli_id, help="the pipeline id (default: none)")
    start.add_argument("--name", default="", help="the job name (default: empty)")
    start.add_argument("--ref", default="", help="the branch or tag (default: empty)")
    start.add_argument("--timeout", type=_cli_seconds, default=3600.0, metavar="SECONDS",
                       help="the token expires this many seconds after start (default: 3600)")  # fmt: skip
    for option, meaning in (
        ("--stage", "the stage"),
        ("--sha", "the commit SHA"),
        ("--pipeline-source", "what started the pipeline (push, schedule, ...)"),
        ("--username", "the user's username"),
        ("--user-name", "the user's full name"),
    ):
        start.add_argument(option, default="", help=f"{meaning} (default: none)")
    start.add_argument("--pipeline-iid", type=_cli_id, help="the pipeline number in its project")
    start.add_argument("--tag", action="store_true", help="the ref is a tag")
    start.add_argument("--allow-failure", action="store_true", help="the job may fail")
    finish = job_verbs.add_parser("finish", help="set a job's final status (revokes its token)")
    finish.add_argument("id", type=_cli_id, help="the job id")
    finish.add_argument("--status", choices=FINISH_STATUSES, default="success",
                        help="the final status (default: success)")  # fmt: skip
    erase = job_verbs.add_parser("erase", help="erase a job (revokes its token)")
    erase.add_argument("id", type=_cli_id, help="the job id")

    group = nouns.add_parser("group", help="groups: the ids GitLab's API names them by")
    gset = group.add_subparsers(dest="verb", required=True, metavar="VERB").add_parser(
        "set", help="create a group or change its path (the inbound entries naming it follow)"
    )
    gset.add_argument("id", type=_cli_id, help="the group id")
    gset.add_argument("--path", required=True, metavar="GROUP/SUB", help="the group's full path")

    registry = nouns.add_parser("registry", help="the container registry token signing key")
    registry.add_subparsers(dest="verb", required=True, metavar="VERB").add_parser(
        "certificate", help="print the PEM certificate of the registry signing key (a registry's "
        "rootcertbundle); creates the key file first when it is missing",
    )  # fmt: skip

    trigger = nouns.add_parser("trigger", help="pipeline trigger tokens")
    trigger_verbs = trigger.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = trigger_verbs.add_parser("create", help="create a trigger token; prints it")
    create.add_argument("project_id", type=_cli_id, help="the project whose pipelines it triggers")
    create.add_argument("--owner", type=_cli_id, required=True, help="the user the pipelines run as")
    revoke = trigger_verbs.add_parser("revoke", help="revoke a trigger token")
    revoke.add_argument("token", help="the trigger token")
    for leaf in leaf_parsers(admin):  # `jobgate admin job start ... --config F` works too
        add_where_options(leaf, after_verb=True)


async def _run_admin(store: Store, args: argparse.Namespace) -> str:
    noun, verb = args.noun, args.verb
    if noun == "project":
        fields = await store.set_project(
            args.id, args.path, args.visibility, args.scope, args.inbound, args.pending_delete,
            features=dict(parse_feature(f) for f in args.feature), push_repository=args.push_repository,
        )  # fmt: skip
        return json.dumps({"id": args.id, **fields}, sort_keys=True)
    if noun == "member":
        await store.set_member(args.project_id, args.user_id, args.access_level)
        return f"member {args.user_id} of project {args.project_id}: {args.access_level}"
    if noun == "allowlist":
        await store.set_outbound(args.source_id, args.target_id, verb == "add")
        return f"outbound {verb}: {args.source_id} -> {args.target_id}"
    if noun == "inbound" and verb == "suggest":
        lines = []
        for item in await store.suggest_inbound(args.target_id):
            routes = ",".join(f"{r}={n}" for r, n in sorted(item["routes"].items()))
            state = f"covered by {item['covered_by']}" if item["covered_by"] else "not on the list"
            lines.append(f"{item['source']}\t{item['path'] or '?'}\t{routes}\t{state}")
        return "\n".join(lines) or f"no project has reached project {args.target_id} with a job token"
    if noun == "inbound":
        policies = args.policies.split(",") if getattr(args, "policies", None) else None
        entry = await store.set_inbound(args.target_id, args.source, verb == "add", policies)
        return f"inbound {verb}: {entry} -> {args.target_id}"
    if noun == "group":
        moved = await store.set_group(args.id, args.path)
        return json.dumps({"id": args.id, "path": args.path, "rewritten_entries": moved})
    if noun == "job" and verb == "start":
        return await store.start_job(
            args.id, args.project, args.user, args.pipeline, args.name, args.ref, args.timeout,
            stage=args.stage, sha=args.sha, tag=args.tag, pipeline_iid=args.pipeline_iid,
            pipeline_source=args.pipeline_source, username=args.username, user_name=args.user_name,
            allow_failure=args.allow_failure,
        )  # fmt: skip
    if noun == "job" and verb == "finish":
        await store.finish_job(args.id, args.status)
        return f"job {args.id}: {args.status}"
    if noun == "job":
        await store.erase_job(args.id)
        return f"job {args.id}: erased"
    if verb == "create":
        return await store.create_trigger(args.project_id, args.owner)
    if not await store.revoke_trigger(args.token):
        raise ControlError("no such trigger token", 404)
    return "trigger token revoked"


@dataclass(frozen=True)
class CliSettings:
    """What a CLI command needs from `--config F` or `--redis-url URL`."""

    redis_url: str
    key_prefix: str = "{jobgate}:"
    timeout: float = 5.0
    scope: ScopeConfig = field(default_factory=ScopeConfig)


def cli_settings(args: argparse.Namespace) -> CliSettings:
    """Settings from `--config` (ConfigError on a bad file) or `--redis-url`, else the private Redis."""
    if args.config and args.redis_url:
        raise ConfigError(["--config and --redis-url: give one of them, not both"])
    if args.config:
        config = load_config(args.config)
        redis = config.redis
        return CliSettings(redis.effective_url, redis.key_prefix, redis.timeout, config.scope)
    return CliSettings(args.redis_url or PRIVATE_REDIS_URL)


def run_cli(
    args: argparse.Namespace,
    name: str,
    work: Callable[[Store, CliSettings], Awaitable[tuple[int, str]]],
    refused: int,
) -> int:
    """Run one CLI command against Redis: print its text, map errors to exit codes.

    2 a bad config file, `refused` a ControlError (its message on stderr), 3 Redis unreachable.
    """
    try:
        settings = cli_settings(args)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2

    async def run() -> tuple[int, str]:
        store = Store(connect(settings.redis_url, settings.timeout), settings.key_prefix)
        try:
            return await work(store, settings)
        finally:
            await store.close()

    try:
        code, text = asyncio.run(run())
    except ControlError as exc:
        print(f"jobgate {name}: {exc}", file=sys.stderr)
        return refused
    except StoreUnavailable as exc:
        where = settings.redis_url.split("@")[-1]
        print(f"jobgate {name}: Redis at {where} is unreachable ({exc})", file=sys.stderr)
        return 3
    print(text)
    return code


def registry_certificate(args: argparse.Namespace) -> int:
    """`jobgate admin registry certificate`: the signing key's certificate on stdout (no Redis)."""
    try:
        registry = load_config(args.config).registry if args.config else RegistryConfig()
        key = load_or_create_key(registry.signing_key_file)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except SigningKeyError as exc:
        print(f"jobgate admin registry certificate: {exc}", file=sys.stderr)
        return 2
    print(key.certificate_pem(), end="")
    return 0


def admin_main(args: argparse.Namespace) -> int:
    """Run one `jobgate admin` command; exit 0, or 1 with the reason on stderr."""
    if args.noun == "registry":
        return registry_certificate(args)

    async def work(store: Store, settings: CliSettings) -> tuple[int, str]:
        return 0, await _run_admin(store, args)

    return run_cli(args, "admin", work, refused=1)
