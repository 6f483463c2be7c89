"""The container registry adapter: Docker's token flow over the same decision.

Clients (`docker login`, skopeo, buildah) first call `/v2/` and get a Bearer challenge
naming jobgate's `/jwt/auth` realm; they send the job token there as basic auth user
`gitlab-ci-token` and receive a short-lived registry token (a JWT in GitLab's shape:
`access: [{type, name, actions}]`) granting only what the job may do. Every later `/v2/`
request carries that token; jobgate verifies it, checks the grant, and re-decides against
live Redis state, so finishing the job denies the very next request (proxy mode: the
registry behind jobgate runs without auth of its own).

`/jwt/auth` answers as GitLab's JwtController does: an unknown `service` is a 404, every
`scope` value is split on spaces (RFC 6749 §3.3), a scope whose actions are all denied is
left out of `access`, and a client without credentials gets a pull-only token for public
projects' images (`registry.anonymous_pull`).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDict

from .. import responses
from ..config import RegistryConfig
from ..credentials import CredentialError, candidate_tokens, extract_credential, parse_query
from ..decision import Reason
from ..model import RegistryGrant, TargetRef
from ..observe import RequestLog
from ..pipeline import Gateway
from ..routes import OCI_REPOSITORY, REGISTRY_ACTIONS, repo_ref
from ..signing import SigningKey, load_or_create_key
from ..store import ANONYMOUS_KEY, StoreUnavailable, credential_key

SERVICE = responses.REGISTRY_SERVICE
ISSUER = "jobgate"
MAX_SCOPES = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Mints and verifies RS256 registry tokens (GitLab's `kid`) with the key every replica shares."""

    def __init__(self, key: SigningKey, ttl: int = 300) -> None:
        self._key = key
        self.ttl = ttl

    def _sign(self, signing_input: str) -> str:
        return _b64(self._key.sign(signing_input.encode()))

    def mint(self, key: str, access: list[dict[str, object]], now: float) -> str:
        """A registry token for the job token with credential key `key`."""
        header = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self._key.kid}).encode())
        claims: dict[str, object] = {
            "iss": ISSUER, "aud": SERVICE, "jti": secrets.token_hex(12),
            "iat": int(now), "nbf": int(now) - 5, "exp": int(now) + self.ttl,
            "access": access, "jgk": key,
        }  # fmt: skip
        if key != ANONYMOUS_KEY:  # GitLab's anonymous token has neither subject nor auth type
            claims.update(sub="gitlab-ci-token", auth_type="build")
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{header}.{payload}.{self._sign(header + '.' + payload)}"

    def verify(self, token: str, now: float) -> RegistryGrant | None:
        """The grant of a token this issuer minted and that has not expired, else None."""
        parts = token.split(".")
        if len(parts) != 3 or not token.isascii():
            return None
        try:
            if not self._key.verify(_unb64(parts[2]), (parts[0] + "." + parts[1]).encode()):
                return None
            header = json.loads(_unb64(parts[0]))
            if header["alg"] != "RS256" or header.get("kid") != self._key.kid:
                return None
            claims = json.loads(_unb64(parts[1]))
            if claims["aud"] != SERVICE or not claims["nbf"] <= now < claims["exp"]:
                return None
            access = {
                str(entry["name"]): frozenset(str(a) for a in entry["actions"])
                for entry in claims["access"]
                if entry.get("type") == "repository"
            }
            return RegistryGrant(str(claims["jgk"]), access)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def issuer_for(config: RegistryConfig) -> TokenIssuer:
    """The issuer signing with the key in `registry.signing_key_file` (created when missing)."""
    return TokenIssuer(load_or_create_key(config.signing_key_file), config.token_ttl)


def parse_scopes(values: Iterable[str]) -> list[tuple[str, list[str]]]:
    """`repository:<name>:<actions>` scopes as (name, actions); other scope types are ignored.

    Each value may hold several scopes separated by spaces (RFC 6749 §3.3); at most
    MAX_SCOPES are read in all.
    """
    scopes = []
    for value in [part for given in values for part in given.split(" ") if part][:MAX_SCOPES]:
        kind, _, rest = value.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not OCI_REPOSITORY.match(name) or len(name) > 255:
            continue
        wanted = ["pull", "push", "delete"] if actions == "*" else actions.split(",")
        scopes.append((name, [a for a in dict.fromkeys(wanted) if a in REGISTRY_ACTIONS]))
    return scopes


def token_response(token: str, ttl: int, now: float) -> web.Response:
    """The token endpoint's answer, in the shape docker, skopeo and buildah read."""
    issued = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return web.json_response({"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued})


def unauthorized() -> web.Response:
    """The token endpoint's refusal of a missing or dead job token (docker login fails)."""
    return web.json_response(
        {"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied", "detail": None}]},
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="GitLab Container Registry"'},
    )


async def jwt_auth(request: web.Request, log: RequestLog, gateway: Gateway) -> web.Response:
    """`GET /jwt/auth`: trade a job token (or none) for a registry token granting what it may do."""
    config, metrics = gateway.runtime.config, gateway.metrics
    log.route = "registry_token"
    if request.query.get("service") != SERVICE:
        return web.Response(status=404)  # GitLab: an unknown service is not found
    pairs = parse_query(request.query_string)  # as Rack reads it: `&` and `;`
    log.tokens = candidate_tokens(request.headers, pairs)
    try:
        credential = extract_credential(
            request.headers, MultiDict(pairs), bearer=False, max_length=config.max_token_length
        )
    except CredentialError as exc:
        log.tokens += exc.tokens
        log.reason = Reason(exc.rule)
        return responses.refused(exc.rule, str(exc), exc.status)
    if credential is None and not config.registry.anonymous_pull:
        return unauthorized()
    locator = credential_key(credential.token) if credential else ANONYMOUS_KEY
    log.token = credential.token if credential else None
    authorizer, scope = gateway.authorizer, config.scope
    access: list[dict[str, object]] = []
    try:
        if credential is not None:
            job = authorizer.warm(None, TargetRef(), locator, scope) or await authorizer.read(
                None, TargetRef(), locator, scope
            )
            log.record(job.decision, job.log_fields)
            if not job.decision.allowed:
                return unauthorized()
        for name, actions in parse_scopes(v for k, v in pairs if k == "scope"):
            target = repo_ref(name.split("/")) or TargetRef()
            granted, project = [], None
            for wanted in actions:
                action = REGISTRY_ACTIONS[wanted]
                outcome = authorizer.warm(action, target, locator, scope) or await authorizer.read(
                    action, target, locator, scope
                )
                if outcome.decision.allowed:
                    granted.append(wanted)
                    project = outcome.decision.target
            if granted and project is not None:  # a scope with nothing granted is left out
                meta = {"project_path": project.path.lower(), "project_id": project.id}
                access.append({"type": "repository", "name": name, "actions": granted, "meta": meta})
    except StoreUnavailable:
        metrics.redis_errors.inc()
        return responses.unavailable()
    now, issuer = time.time(), gateway.issuer
    return token_response(issuer.mint(locator, access, now), issuer.ttl, now)
