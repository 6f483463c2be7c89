"""Forward-auth mode: judge the original request a proxy describes, forward nothing.

nginx `auth_request` sends `X-Original-Method`/`X-Original-URI`; Traefik ForwardAuth
`X-Forwarded-Method`/`X-Forwarded-Uri`; Envoy ext_authz (HTTP) the original method with
the original path after `/-/auth` (its `path_prefix`). Allowed: 200 with the identity
headers. Denied: the gateway's own denial, except that nginx gets 403 for it
(auth_request treats any status but 2xx/401/403 as an error; the shipped nginx snippet
turns 403 back into the uniform 404).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict, MultiMapping

from .. import responses
from ..observe import RequestLog
from ..pipeline import Admitted, Gateway, evaluate, identity_of

FORWARD_AUTH_PATH = "/-/auth"


async def forward_auth(request: web.Request, log: RequestLog, gateway: Gateway) -> web.StreamResponse:
    """Answer a proxy's question about one original request: 200 with identity, or the denial."""
    headers = request.headers
    nginx = "X-Original-URI" in headers
    if nginx:
        method, target = headers.get("X-Original-Method", "GET"), headers["X-Original-URI"]
    elif "X-Forwarded-Uri" in headers:
        method, target = headers.get("X-Forwarded-Method", "GET"), headers["X-Forwarded-Uri"]
    else:
        method, target = request.method, request.raw_path.removeprefix(FORWARD_AUTH_PATH) or "/"
    method = method.upper()
    if not target.startswith("/"):
        return responses.bad_request("the original URI must be a path")
    query: MultiMapping[str] = MultiDict(parse_qsl(target.partition("?")[2], keep_blank_values=True))
    admitted = await evaluate(request, log, gateway, method, target, query, read_body=False)
    if not isinstance(admitted, Admitted):
        if nginx and admitted.status not in (200, 401):
            return web.Response(status=403, body=admitted.body, content_type="application/json")
        return admitted
    route = admitted.request.matched.route
    return web.Response(status=200, headers={**identity_of(admitted), "X-Jobgate-Route": route.name})
