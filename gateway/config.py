"""Options as frozen dataclasses, loaded from one YAML file and validated at once.

Every problem in a file is collected and reported together, each naming the file
and the dotted key: ``config/gateway.yaml: upstreams.git.url: expected an http(s)
URL, got 'git.local'``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

#: Where `jobgate serve` starts its private redis-server when no `redis.url` is set.
PRIVATE_REDIS_URL = "redis://127.0.0.1:6479/0"

#: Redis URL schemes: plain, TLS, socket, Redis Cluster and Redis Sentinel.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel")

#: The GitLab 18.4 families' upstreams: each falls back to `api` when not configured
#: (`Config.upstream_for`).
FALLBACK_UPSTREAMS = (
    "deployments", "environments", "pipelines", "merge_requests", "repository", "secure_files", "issues",
)  # fmt: skip
#: The upstream names the route table refers to.
UPSTREAM_NAMES = (
    "api",
    "packages",
    "container_registry",
    "artifacts",
    "triggers",
    "releases",
    "terraform",
    "git",
    *FALLBACK_UPSTREAMS,
)

T = TypeVar("T")


class ConfigError(Exception):
    """A config file has one or more problems; each names the file and the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TLSConfig:
    """Certificate and key for a listener that terminates TLS."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream service that allowed requests are streamed to."""

    name: str
    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    tls_verify: bool = True
    ca_file: str | None = None
    pass_token: bool = False
    preserve_host: bool = False
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    path_rewrite: tuple[tuple[re.Pattern[str], str], ...] = ()

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: the first matching `path_rewrite` rule applied, if any."""
        for pattern, replacement in self.path_rewrite:
            rewritten, count = pattern.subn(replacement, path, count=1)
            if count:
                return rewritten if rewritten.startswith("/") else "/" + rewritten
        return path

    def __repr__(self) -> str:
        shown = {k: "[MASKED]" for k in self.headers}
        return f"UpstreamConfig(name={self.name!r}, url={self.url!r}, headers={shown!r})"


@dataclass(frozen=True)
class RedisConfig:
    """How to reach the Redis that holds job state."""

    url: str | None = None
    timeout: float = 2.0
    key_prefix: str = "{jobgate}:"

    @property
    def effective_url(self) -> str:
        """The configured URL, or the private Redis that `serve` starts."""
        return self.url or PRIVATE_REDIS_URL


#: The key file's name in the state directory when `registry.signing_key_file` is absent.
SIGNING_KEY_NAME = "registry-signing-key.pem"


def default_signing_key_file(env: Mapping[str, str] | None = None) -> str:
    """Where the registry signing key lives when `registry.signing_key_file` is absent.

    `$XDG_STATE_HOME/jobgate/`, else `/var/lib/jobgate/` for root, else
    `~/.local/state/jobgate/`: a state directory, never the checkout (docs/operations.md).
    """
    env = os.environ if env is None else env
    if env.get("XDG_STATE_HOME"):
        base = Path(env["XDG_STATE_HOME"]) / "jobgate"
    elif os.geteuid() == 0:
        base = Path("/var/lib/jobgate")
    else:
        base = Path(env.get("HOME") or Path.home()) / ".local" / "state" / "jobgate"
    return str(base / SIGNING_KEY_NAME)


@dataclass(frozen=True)
class RegistryConfig:
    """The container registry token flow: RS256 tokens signed with the key in `signing_key_file`."""

    signing_key_file: str = field(default_factory=default_signing_key_file)
    token_ttl: int = 300  # seconds
    anonymous_pull: bool = True  # no credentials: a pull-only token for public projects' images


@dataclass(frozen=True)
class CacheConfig:
    """The per-process decision-input cache (invalidated through Redis pub/sub)."""

    ttl: float = 5.0  # seconds; 0 turns the cache off (every decision reads Redis)
    max_entries: int = 100_000


@dataclass(frozen=True)
class ScopeConfig:
    """Instance-wide switches of the job token scope."""

    enforce_inbound: bool = False
    registry_push_in_scope: bool = False


#: The proxies whose forward-auth description headers jobgate can read (`forward_auth.proxy`).
FORWARD_AUTH_PROXIES = ("nginx", "traefik", "envoy")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Config:
    """The whole gateway configuration."""

    source: str
    listen: Address
    admin_listen: Address | None
    metrics_listen: Address | None
    redis: RedisConfig
    upstreams: Mapping[str, UpstreamConfig]
    scope: ScopeConfig
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    admin_token: str | None = None
    explain: bool = False
    tls: TLSConfig | None = None
    max_token_length: int = 1024
    max_form_body: int = 1 << 20
    failed_auth_per_minute: int = 300  # unknown-token attempts per client IP; 0: no limit
    idle_timeout: float = 75.0  # seconds a connection may sit without a complete request
    body_idle_timeout: float = 60.0  # seconds a request body may stall between chunks
    public_url: str | None = None
    web_url: str | None = None  # GitLab's web base for `web_url` fields (`GET /api/v4/job`)

    def upstream_for(self, name: str) -> UpstreamConfig | None:
        """The upstream a route names; the GitLab 18.4 families go to `api` unless configured."""
        upstream = self.upstreams.get(name)
        if upstream is None and name in FALLBACK_UPSTREAMS:
            return self.upstreams.get("api")
        return upstream

    #: The proxy kind that calls `/-/auth` (None: forward-auth is off, `/-/auth` is a 404).
    forward_auth_proxy: str | None = None
    #: Peers whose Forwarded / X-Forwarded-* / X-Real-IP headers are believed (default none).
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def __repr__(self) -> str:
        return (
            f"Config(source={self.source!r}, listen={self.listen}, "
            f"upstreams={sorted(self.upstreams)!r}, admin_token="
            f"{'[MASKED]' if self.admin_token else None})"
        )


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Reader:
    """Reads typed values out of nested YAML mappings, recording every problem."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {key}: {message}")

    def section(self, data: Any, key: str, known: set[str]) -> dict[str, Any]:
        """A mapping at `key`; unknown keys inside it are problems."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(key, f"expected a mapping, got {type(data).__name__}")
            return {}
        for name in data:
            if name not in known:
                where = f"{key}.{name}" if key else str(name)
                self.problem(where, f"unknown key (known: {', '.join(sorted(known))})")
        return data

    def expand(self, key: str, value: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.problem(key, f"environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(substitute, value)

    def get(
        self,
        data: dict[str, Any],
        prefix: str,
        name: str,
        convert: Callable[[str, Any], T | None],
        default: T,
    ) -> T:
        key = f"{prefix}.{name}" if prefix else name
        if name not in data or data[name] is None:
            return default
        raw = data[name]
        if isinstance(raw, str):
            raw = self.expand(key, raw)
        value = convert(key, raw)
        return default if value is None else value

    def string(self, key: str, raw: Any) -> str | None:
        if not isinstance(raw, str):
            self.problem(key, f"expected a string, got {type(raw).__name__}")
            return None
        return raw

    def boolean(self, key: str, raw: Any) -> bool | None:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "yes", "no", "on", "off"):
            return raw.lower() in ("true", "yes", "on")
        self.problem(key, f"expected true or false, got {raw!r}")
        return None

    def positive(self, key: str, raw: Any) -> float | None:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = -1.0
        if isinstance(raw, bool) or not value > 0:
            self.problem(key, f"expected a positive number, got {raw!r}")
            return None
        return value

    def count(self, key: str, raw: Any) -> int | None:
        value = self.positive(key, raw)
        if value is None:
            return None
        if value != int(value):
            self.problem(key, f"expected a whole number, got {raw!r}")
            return None
        return int(value)

    def address(self, key: str, raw: Any) -> Address | None:
        text = str(raw)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.problem(key, f"expected host:port, got {text!r}")
            return None
        return Address(host.strip("[]"), int(port))

    def http_url(self, key: str, raw: Any) -> str | None:
        text = str(raw)
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(key, f"expected an http(s) URL, got {text!r}")
            return None
        if parts.query or parts.fragment:
            self.problem(key, f"an upstream URL takes no query or fragment, got {text!r}")
            return None
        return text.rstrip("/")

    def redis_url(self, key: str, raw: Any) -> str | None:
        text = str(raw)
        parts = urlsplit(text)
        if parts.scheme not in REDIS_SCHEMES:
            self.problem(key, f"expected a {', '.join(s + '://' for s in REDIS_SCHEMES)} URL, got {text!r}")
            return None
        if parts.scheme == "unix":
            if not parts.path:
                self.problem(key, f"expected unix:///path/to/redis.sock, got {text!r}")
                return None
            return text
        hosts = parts.netloc.rpartition("@")[2].split(",")  # Sentinel and Cluster URLs may list several
        for host in hosts:
            name, colon, port = host.rpartition(":")
            if not colon or "]" in port:  # no port given (or a bare [IPv6] literal)
                name, port = host, ""
            if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
                self.problem(key, f"expected host[:port] in the Redis URL, got {host!r} in {text!r}")
                return None
        database = parts.path.strip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            self.problem(
                key, f"expected a database number after the host (redis://host:port/0), got {text!r}"
            )
            return None
        return text

    def readable_file(self, key: str, raw: Any) -> str | None:
        text = str(raw)
        if not Path(text).is_file():
            self.problem(key, f"file not found: {text!r}")
            return None
        return text


_TOP = {
    "listen",
    "admin_listen",
    "metrics_listen",
    "redis",
    "upstreams",
    "scope",
    "admin_token",
    "explain",
    "tls",
    "limits",
    "public_url",
    "registry",
    "cache",
    "admin_public",
    "web_url",
    "forward_auth",
    "trusted_proxies",
}
_UPSTREAM = {
    "url",
    "connect_timeout",
    "read_timeout",
    "tls_verify",
    "ca_file",
    "pass_token",
    "preserve_host",
    "headers",
    "path_rewrite",
}


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token
_HEADER_VALUE_BREAK = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB


def _upstream(r: _Reader, name: str, data: Any) -> UpstreamConfig | None:
    key = f"upstreams.{name}"
    if not isinstance(data, dict) or "url" not in data:
        r.problem(key, "expected a mapping with at least `url`")
        return None
    d = r.section(data, key, _UPSTREAM)
    headers: dict[str, str] = {}
    for hname, hvalue in r.section(d.get("headers"), f"{key}.headers", set(d.get("headers") or {})).items():
        value = r.get({hname: hvalue}, f"{key}.headers", hname, r.string, "")
        if not _HEADER_NAME.fullmatch(str(hname)):
            r.problem(f"{key}.headers", f"{str(hname)!r} is not an HTTP header name")
        elif _HEADER_VALUE_BREAK.search(value):  # the value may be a secret: never shown
            r.problem(
                f"{key}.headers.{hname}", "a header value may not hold CR, LF or other control characters"
            )
        headers[str(hname)] = value
    rewrites: list[tuple[re.Pattern[str], str]] = []
    raw_rules = d.get("path_rewrite") or {}
    if not isinstance(raw_rules, dict):
        r.problem(f"{key}.path_rewrite", "expected a mapping of regular expression -> replacement")
        raw_rules = {}
    for pattern, replacement in raw_rules.items():
        try:
            rewrites.append((re.compile(str(pattern)), str(replacement or "")))
        except re.error as exc:
            r.problem(f"{key}.path_rewrite", f"invalid regular expression {pattern!r}: {exc}")
    url = r.get(d, key, "url", r.http_url, "")
    if not url:
        return None
    return UpstreamConfig(
        name=name,
        url=url,
        connect_timeout=r.get(d, key, "connect_timeout", r.positive, 5.0),
        read_timeout=r.get(d, key, "read_timeout", r.positive, 300.0),
        tls_verify=r.get(d, key, "tls_verify", r.boolean, True),
        ca_file=r.get(d, key, "ca_file", r.readable_file, None),
        pass_token=r.get(d, key, "pass_token", r.boolean, False),
        preserve_host=r.get(d, key, "preserve_host", r.boolean, False),
        headers=MappingProxyType(headers),
        path_rewrite=tuple(rewrites),
    )


def parse_config(data: Any, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    """Validate parsed YAML into a Config, or raise ConfigError listing every problem."""
    r = _Reader(source, os.environ if env is None else env)
    top = r.section(data if data is not None else {}, "", _TOP)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(r.problems)

    listen = r.get(top, "", "listen", r.address, None)
    if "listen" not in top:
        r.problem("listen", "required (e.g. 127.0.0.1:8080)")

    rd = r.section(top.get("redis"), "redis", {"url", "timeout", "key_prefix"})
    redis = RedisConfig(
        url=r.get(rd, "redis", "url", r.redis_url, None),
        timeout=r.get(rd, "redis", "timeout", r.positive, 2.0),
        key_prefix=r.get(rd, "redis", "key_prefix", r.string, "{jobgate}:"),
    )

    upstreams: dict[str, UpstreamConfig] = {}
    raw_upstreams = r.section(top.get("upstreams"), "upstreams", set(UPSTREAM_NAMES))
    for name, value in raw_upstreams.items():
        if name in UPSTREAM_NAMES and (upstream := _upstream(r, name, value)):
            upstreams[name] = upstream
    if not raw_upstreams:
        r.problem("upstreams", f"required: at least one of {', '.join(UPSTREAM_NAMES)}")

    sd = r.section(top.get("scope"), "scope", {"enforce_inbound", "registry_push_in_scope"})
    scope = ScopeConfig(
        enforce_inbound=r.get(sd, "scope", "enforce_inbound", r.boolean, False),
        registry_push_in_scope=r.get(sd, "scope", "registry_push_in_scope", r.boolean, False),
    )

    gd = r.section(
        top.get("registry"), "registry", {"signing_key_file", "token_ttl", "token_secret", "anonymous_pull"}
    )
    if "token_secret" in gd:
        r.problem(
            "registry.token_secret",
            "removed: registry tokens are RS256, signed with the key in "
            "registry.signing_key_file (`jobgate serve` creates it when missing; docs/operations.md)",
        )
    registry = RegistryConfig(
        signing_key_file=r.get(gd, "registry", "signing_key_file", r.string, "")
        or default_signing_key_file(r.env),
        token_ttl=r.get(gd, "registry", "token_ttl", r.count, 300),
        anonymous_pull=r.get(gd, "registry", "anonymous_pull", r.boolean, True),
    )

    cd = r.section(top.get("cache"), "cache", {"ttl", "max_entries"})
    cache = CacheConfig(
        ttl=0.0 if cd.get("ttl") in (0, "0") else r.get(cd, "cache", "ttl", r.positive, 5.0),
        max_entries=r.get(cd, "cache", "max_entries", r.count, 100_000),
    )

    tls = None
    if top.get("tls") is not None:
        td = r.section(top["tls"], "tls", {"cert_file", "key_file"})
        cert = r.get(td, "tls", "cert_file", r.readable_file, None)
        key = r.get(td, "tls", "key_file", r.readable_file, None)
        for name in ("cert_file", "key_file"):
            if name not in td:
                r.problem(f"tls.{name}", "required when tls is set")
        if cert and key:
            tls = TLSConfig(cert, key)

    limits = {
        "max_token_length", "max_form_body", "failed_auth_per_minute", "idle_timeout", "body_idle_timeout",
    }  # fmt: skip
    ld = r.section(top.get("limits"), "limits", limits)
    admin_token = r.get(top, "", "admin_token", r.string, None) or r.env.get("JOBGATE_ADMIN_TOKEN")
    admin_listen = r.get(top, "", "admin_listen", r.address, None)
    if admin_listen and not admin_token:
        r.problem("admin_token", "required when admin_listen is set (or set JOBGATE_ADMIN_TOKEN)")
    loopback = ("127.0.0.1", "::1", "localhost")
    admin_public = r.get(top, "", "admin_public", r.boolean, False)
    if admin_listen and admin_listen.host not in loopback and not admin_public:
        r.problem("admin_listen", f"{admin_listen.host} is not a loopback address: the control plane "
                  "stays on loopback unless `admin_public: true` says otherwise")  # fmt: skip

    # every value is read (and so checked) before the problems are counted
    metrics_listen = r.get(top, "", "metrics_listen", r.address, None)
    explain = r.get(top, "", "explain", r.boolean, False)
    max_token_length = r.get(ld, "limits", "max_token_length", r.count, 1024)
    max_form_body = r.get(ld, "limits", "max_form_body", r.count, 1 << 20)
    failed_auth_per_minute = 0 if ld.get("failed_auth_per_minute") in (0, "0") \
        else r.get(ld, "limits", "failed_auth_per_minute", r.count, 300)  # fmt: skip
    idle_timeout = r.get(ld, "limits", "idle_timeout", r.positive, 75.0)
    body_idle_timeout = r.get(ld, "limits", "body_idle_timeout", r.positive, 60.0)
    public_url = r.get(top, "", "public_url", r.http_url, None)
    web_url = r.get(top, "", "web_url", r.http_url, None)
    fd = r.section(top.get("forward_auth"), "forward_auth", {"proxy"})
    forward_auth_proxy = r.get(fd, "forward_auth", "proxy", r.string, None)
    if forward_auth_proxy is not None and forward_auth_proxy not in FORWARD_AUTH_PROXIES:
        r.problem("forward_auth.proxy", f"expected one of {', '.join(FORWARD_AUTH_PROXIES)}, "
                  f"got {forward_auth_proxy!r}")  # fmt: skip
        forward_auth_proxy = None
    if top.get("forward_auth") is not None and "proxy" not in fd:
        kinds = ", ".join(FORWARD_AUTH_PROXIES)
        r.problem("forward_auth.proxy", f"required when forward_auth is set ({kinds})")
    trusted_proxies = _networks(r, "trusted_proxies", top.get("trusted_proxies"))

    if r.problems or listen is None:
        raise ConfigError(r.problems)
    return Config(
        source=source,
        listen=listen,
        admin_listen=admin_listen,
        metrics_listen=metrics_listen,
        redis=redis,
        upstreams=MappingProxyType(upstreams),
        scope=scope,
        registry=registry,
        cache=cache,
        admin_token=admin_token,
        explain=explain,
        tls=tls,
        max_token_length=max_token_length,
        max_form_body=max_form_body,
        failed_auth_per_minute=failed_auth_per_minute,
        idle_timeout=idle_timeout,
        body_idle_timeout=body_idle_timeout,
        public_url=public_url,
        web_url=web_url,
        forward_auth_proxy=forward_auth_proxy,
        trusted_proxies=trusted_proxies,
    )


#: What a reload cannot change in a running process: the listening sockets, TLS, and the
#: Redis connections (the store and the cache's subscription are opened once).
RESTART_KEYS = ("listen", "admin_listen", "metrics_listen", "tls", "redis", "limits.idle_timeout",
                "limits.max_form_body", "cache.ttl")  # fmt: skip


def restart_keys(running: Config, new: Config) -> list[str]:
    """The keys whose new value `new` a reload of `running` cannot apply (they need a restart)."""
    pairs = {
        "listen": (running.listen, new.listen),
        "admin_listen": (running.admin_listen, new.admin_listen),
        "metrics_listen": (running.metrics_listen, new.metrics_listen),
        "tls": (running.tls, new.tls),
        "redis": (running.redis, new.redis),
        "limits.idle_timeout": (running.idle_timeout, new.idle_timeout),
        "limits.max_form_body": (running.max_form_body, new.max_form_body),
        "cache.ttl": (running.cache.ttl > 0, new.cache.ttl > 0),  # turning the cache on or off
    }
    return [key for key in RESTART_KEYS if pairs[key][0] != pairs[key][1]]


def _networks(r: _Reader, key: str, raw: Any) -> tuple[IPNetwork, ...]:
    """A list of CIDRs (a bare address is a /32 or /128); each bad entry is a problem."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem(key, f"expected a list of CIDRs (e.g. [10.0.0.0/8]), got {type(raw).__name__}")
        return ()
    networks = []
    for i, item in enumerate(raw):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            r.problem(f"{key}[{i}]", f"expected a CIDR such as 10.0.0.0/8, got {item!r}")
    return tuple(networks)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; ConfigError names the file and every bad key."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{source}: {where}{problem}"]) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping at the top level"])
    return parse_config(data, source, env)
