"""The container registry adapter: Docker's token flow over the same decision.

Clients (`docker login`, skopeo, buildah) first call `/v2/` and get a Bearer challenge
naming jobgate's `/jwt/auth` realm; they send the job token there as basic auth user
`gitlab-ci-token` and receive a short-lived registry token (a JWT in GitLab's shape:
`access: [{type, name, actions}]`) granting only what the job may do. Every later `/v2/`
request carries that token; jobgate verifies it, checks the grant, and re-decides against
live Redis state, so finishing the job denies the very next request (proxy mode: the
registry behind jobgate runs without auth of its own).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ..config import RegistryConfig
from ..routes import DELETE_IMAGE, PULL_IMAGE, PUSH_IMAGE, Action
from ..signing import SigningKey, load_or_create_key

SERVICE = "container_registry"
ISSUER = "jobgate"
ACTIONS: dict[str, Action] = {"pull": PULL_IMAGE, "push": PUSH_IMAGE, "delete": DELETE_IMAGE}
ACTION_NAMES = {action.name: name for name, action in ACTIONS.items()}
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+$")
MAX_SCOPES = 16


@dataclass(frozen=True, slots=True)
class Grant:
    """A verified registry token: whose job token it stands for and what it allows."""

    key: str  # the job token's credential key (job id and digest), never the token
    access: dict[str, frozenset[str]]

    def allows(self, repository: str, action: Action | None) -> bool:
        """True when the token names `repository` with the registry action of `action`."""
        if action is None:
            return True
        return ACTION_NAMES.get(action.name, "") in self.access.get(repository, frozenset())


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
        claims = {
            "iss": ISSUER, "aud": SERVICE, "sub": "gitlab-ci-token", "jti": secrets.token_hex(12),
            "iat": int(now), "nbf": int(now) - 5, "exp": int(now) + self.ttl,
            "access": access, "jgk": key,
        }  # fmt: skip
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{header}.{payload}.{self._sign(header + '.' + payload)}"

    def verify(self, token: str, now: float) -> Grant | None:
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
            return Grant(str(claims["jgk"]), access)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The registry token an `Authorization: Bearer` header carries, if any."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def issuer_for(config: RegistryConfig) -> TokenIssuer:
    """The issuer signing with the key in `registry.signing_key_file` (created when missing)."""
    return TokenIssuer(load_or_create_key(config.signing_key_file), config.token_ttl)


def parse_scopes(values: Iterable[str]) -> list[tuple[str, list[str]]]:
    """`repository:<name>:<actions>` scopes as (name, actions); other scope types are ignored."""
    scopes = []
    for value in list(values)[:MAX_SCOPES]:
        kind, _, rest = value.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not _REPOSITORY.match(name) or len(name) > 255:
            continue
        wanted = ["pull", "push", "delete"] if actions == "*" else actions.split(",")
        scopes.append((name, [a for a in wanted if a in ACTIONS]))
    return scopes


def challenge(realm: str, scope: str | None = None) -> web.Response:
    """401 telling the client where to get a registry token."""
    header = f'Bearer realm="{realm}",service="{SERVICE}"'
    if scope:
        header += f',scope="{scope}"'
    body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}]}
    return web.json_response(body, status=401, headers={"WWW-Authenticate": header})


def not_found() -> web.Response:
    """The uniform registry denial: the repository is unknown to this client."""
    body = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry",
                        "detail": None}]}  # fmt: skip
    return web.json_response(body, status=404)


def token_response(token: str, ttl: int, now: float) -> web.Response:
    """The token endpoint's answer, in the shape docker, skopeo and buildah read."""
    from datetime import UTC, datetime

    issued = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return web.json_response({"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued})


def unauthorized() -> web.Response:
    """The token endpoint's refusal of a missing or dead job token (docker login fails)."""
    return web.json_response(
        {"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied", "detail": None}]},
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="GitLab Container Registry"'},
    )
