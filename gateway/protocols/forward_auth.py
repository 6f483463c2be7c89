"""Forward-auth mode: judge the original request the configured proxy describes, forward nothing.

Only the proxy named by `forward_auth.proxy` describes the original request, and only in
its own way: nginx `auth_request` with `X-Original-Method`/`X-Original-URI` (set by the
shipped snippet); Traefik ForwardAuth with `X-Forwarded-Method`/`X-Forwarded-Uri`
(`pkg/middlewares/auth/forward.go`); Envoy ext_authz (HTTP service) with the original
method and the original path after `/-/auth` (its `path_prefix`). A request that also
carries another kind's description is refused: a client can add headers that a proxy
copies onto the auth request. Without `forward_auth`, `/-/auth` is a 404.

Allowed: 200 with the identity headers (and, for nginx, `X-Jobgate-Forward-Uri`: the
canonical path and the query without its token, which the snippet proxies). Traefik and
Envoy cannot rewrite the request they forward, so a token in the query is refused there;
no proxy hands jobgate the body, so a form or JSON body GitLab would parse is refused on
routes that parse bodies. Denied: the gateway's own answer, except that nginx gets 403
for every 4xx (auth_request turns anything but 2xx/401/403 into a 500; the shipped
snippet turns 403 back into the uniform 404).
"""

from __future__ import annotations

from aiohttp import web

from .. import responses
from ..credentials import filter_query
from ..decision import Reason
from ..observe import RequestLog
from ..pipeline import Admitted, Gateway, evaluate, identity_of

FORWARD_AUTH_PATH = "/-/auth"
FORWARD_URI = "X-Jobgate-Forward-Uri"

#: The headers each proxy kind describes the original request with: (URI, method).
DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "nginx": ("X-Original-URI", "X-Original-Method"),
    "traefik": ("X-Forwarded-Uri", "X-Forwarded-Method"),
}


def _refused(log: RequestLog, reason: Reason, detail: str) -> web.Response:
    log.reason = reason
    return responses.refused(reason.value, detail)


async def forward_auth(request: web.Request, log: RequestLog, gateway: Gateway) -> web.StreamResponse:
    """Answer the configured proxy's question about one original request: 200 with identity, or the denial."""
    kind = gateway.runtime.config.forward_auth_proxy
    if kind is None:
        log.reason = Reason.FORWARD_AUTH_OFF
        return responses.not_found()
    answer = await _judge(request, log, gateway, kind)
    if kind == "nginx" and 400 <= answer.status < 500 and answer.status not in (401, 403):
        assert isinstance(answer, web.Response)
        return web.Response(status=403, body=answer.body, content_type="application/json")
    return answer


async def _judge(request: web.Request, log: RequestLog, gateway: Gateway, kind: str) -> web.StreamResponse:
    headers = request.headers
    tail = request.raw_path.removeprefix(FORWARD_AUTH_PATH)
    foreign = [name for other, names in DESCRIPTIONS.items() if other != kind
               for name in names if name in headers]  # fmt: skip
    if kind != "envoy" and tail:
        foreign.append("a path after /-/auth")
    if foreign:
        return _refused(log, Reason.FORWARD_AUTH_AMBIGUOUS,
                        f"{kind} describes the request; also found {', '.join(foreign)}")  # fmt: skip
    if kind == "envoy":
        method, target = request.method, tail or "/"
    else:
        uri_header, method_header = DESCRIPTIONS[kind]
        if len(headers.getall(uri_header, [])) != 1 or len(headers.getall(method_header, [])) != 1:
            return _refused(log, Reason.FORWARD_AUTH_AMBIGUOUS,
                            f"{kind} sends one {uri_header} and one {method_header}")  # fmt: skip
        method, target = headers[method_header].strip().upper(), headers[uri_header]
    if not target.startswith("/") or not target.isascii() or not target.isprintable():
        return _refused(log, Reason.MALFORMED_PATH, "the original URI must be an ASCII path")
    described_by = frozenset(h.lower() for h in DESCRIPTIONS.get(kind, ()))
    admitted = await evaluate(request, log, gateway, method, target, read_body=False,
                              strippable=kind == "nginx", described_by=described_by)  # fmt: skip
    if not isinstance(admitted, Admitted):
        return admitted
    canonical = admitted.request
    route = canonical.matched.route
    answer = {**identity_of(admitted), "X-Jobgate-Route": route.name}
    if kind == "nginx":
        query = filter_query(canonical.raw_query, route.secret_query)
        answer[FORWARD_URI] = canonical.path + (f"?{query}" if query else "")
    return web.Response(status=200, headers=answer)
