"""The only module that talks to Redis: key layout, the one-round-trip read, control-plane writes.

Key layout (every key starts with the configured prefix, by default ``{jobgate}:``; the
braces are a Redis Cluster hash tag, so every key lives in one slot and the Lua
scripts below run unchanged on a cluster):

====================  ======  ==========================================================
key                   type    content
====================  ======  ==========================================================
``job:<id>``          hash    one key per job: ``p`` project, ``u`` user, ``s`` status,
                              ``e`` erased, ``x`` expiry (unix seconds), ``d`` the job
                              token's SHA-256 (32 raw bytes), ``t`` start (unix seconds);
                              only when given: ``pl`` pipeline, ``n`` name, ``r`` ref,
                              ``st`` stage, ``sh`` sha, ``tg`` ref is a tag (1), ``pi``
                              pipeline iid, ``ps`` pipeline source, ``un`` username, ``um``
                              user's name, ``af`` allow failure (1). A job token names its
                              job (``glcbt-<id>_<secret>``), so it is found by id and
                              checked against ``d``. Jobs written before ``t`` and the
                              optional fields existed read as "not given".
``tok:<sha256 hex>``  string  ``t:<project>:<owner>`` for a pipeline trigger token
``prj:<id>``          hash    path, visibility, pending_delete, scope (outbound limit
                              on), inbound (inbound limit on), push_repository (git push
                              with a job token allowed), ``feature:<name>`` (builds,
                              container_registry, packages, releases, environments,
                              repository: enabled, private or disabled; absent: enabled)
``path:<path>``       string  project id for a lower-cased full path
``mem:<project>``     hash    user id -> access level
``out:<source>``      set     outbound allowlist: target project ids
``in:<target>``       hash    inbound allowlist: ``p:<project id>`` or ``g:<group path>``
                              (lower-cased) -> comma-separated job token policies, ``*``
                              for default
``grp:<id>``          hash    a group: ``path`` (its full path, as given)
``gpath:<path>``      string  group id for a lower-cased full group path
``gin:<path>``        set     the target project ids whose ``in:`` hash has a ``g:<path>``
                              entry (lower-cased path), so a group rename finds them
``auth:<target>``     hash    authentication log: ``<source id>|<route>`` -> count of
                              cross-project accesses (for `inbound suggest`)
``fail:<client ip>``  string  unknown-token attempts in the current minute (rate limit)
``events``            pubsub  ``<event> <nonce> <epoch>`` after every write that changes a
                              decision: ``job:<id>``, ``prj:<id>``, ``tok:<sha256>``,
                              ``path:<path>`` (several joined by commas); each lease holder
                              acknowledges with RPUSH ``ack:<nonce>`` of its holder id
``epoch``             string  how many events were announced (INCR with each PUBLISH)
``leases``            zset    caching processes: holder id -> lease expiry (Redis time, ms).
                              A process caches only while its lease is valid, and renews it
                              only after a self-ping through its own subscription came back
``ping:<holder>``     pubsub  a holder's self-ping channel
``ack:<nonce>``       list    the holder ids that applied one event
====================  ======  ==========================================================

Group entries are stored by path, the way the hot-path read walks a source project's
groups; a group's id is only what the control plane names it by. Renaming a group
(``set_group`` with a new path) rewrites, in the same script, every ``g:<old path>``
entry listed in ``gin:<old path>`` to ``g:<new path>``, so an entry's id and path stay
consistent. A rename moves only that group's own entries: subgroups and projects keep
the paths they were given until the orchestrator sets theirs (GitLab reports each).

A revoking write returns once it is durable (``WAIT 1`` when replicas are connected) and
every process that held a lease when it was announced has acknowledged it or seen its
lease lapse: so no cache anywhere allows on state older than a write that returned
(docs/reliability.md: the argument and the worst case).
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from .model import (
    ACCESS_LEVELS,
    DEFAULT_PERMISSIONS,
    FEATURE_LEVELS,
    FEATURES,
    FINISH_STATUSES,
    JOB_TOKEN_PREFIX,
    POLICIES,
    TRIGGER_TOKEN_PREFIX,
    VISIBILITIES,
    AccessState,
    InboundEntry,
    JobState,
    ProjectState,
    TargetRef,
    TokenKind,
    inbound_candidates,
    is_path_segment,
)

JOB_RETENTION_SECONDS = 86400  # a finished job's record stays this long after its expiry
ANNOUNCE_WAIT = 2.0  # seconds a revoking write waits (WAIT 1) for a replica to have it
MAX_JOB_TIMEOUT = 366 * 86400  # seconds: a job token lives a year at most
MAX_ID = (1 << 63) - 1  # ids are positive 64-bit integers (GitLab's bigint ids)


class StoreUnavailable(Exception):
    """Redis could not be reached or answered an error: callers fail closed."""


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn a Redis or socket error into StoreUnavailable: callers fail closed."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(type(exc).__name__) from None


class ControlError(Exception):
    """A control-plane write was refused; the message says why (safe to show)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


#: The key an anonymous registry token stands for: no token, public reads only. No
#: `credential_key` ever starts with `a:`, so only a registry token jobgate signed names it.
ANONYMOUS_KEY = "a:"


@functools.lru_cache(maxsize=4096)
def credential_key(token: str) -> str:
    """How the store finds a token: `j:<job id>:<sha256>` for a job token, `t:<sha256>` else.

    Only the digest part is ever compared or stored; the key is what caches and registry
    tokens carry instead of the token. Remembered for the last 4,096 tokens of the process
    (a CI job sends its token many times); like request buffers, it is never written out.
    """
    digest = token_digest(token)
    if token.startswith(JOB_TOKEN_PREFIX):
        job_id, sep, _ = token[len(JOB_TOKEN_PREFIX) :].partition("_")
        if sep and job_id.isdigit() and job_id.isascii() and len(job_id) < 19:
            return f"j:{int(job_id)}:{digest}"
    return f"t:{digest}"


#: The job fields the hot path reads after ``p`` (and ``d``, compared in the script).
_JOB_FIELDS = ("u", "s", "e", "x", "pl", "n", "r", "t", "st", "sh", "tg", "pi", "ps", "un", "um", "af")
#: The project fields a decision reads, in reply order.
_PROJECT_FIELDS = ("path", "visibility", "pending_delete", "scope", "inbound", "push_repository",
                   *(f"feature:{name}" for name in FEATURES))  # fmt: skip
_JOB_ITEMS = 2 + len(_JOB_FIELDS)  # job id, project, the fields
_N = len(_PROJECT_FIELDS)


def _lua_list(names: Sequence[str]) -> str:
    return "{" + ", ".join(f"'{n}'" for n in names) + "}"


# One round trip: token -> job -> source project, target project (by id, longest path, or
# a job's project), the user's level in the target, outbound membership, nearest inbound entry.
_READ_ACCESS = """
local p = KEYS[1]
local out = {}
local source_id, user_id
local jobfields = JOB_FIELDS
if ARGV[1] == 'j' then
  local job = redis.call('HMGET', p .. 'job:' .. ARGV[2], 'p', 'd', unpack(jobfields))
  if not job[1] or job[2] ~= ARGV[3] then return {''} end
  out = {'j', ARGV[2], job[1]}
  for i = 3, #jobfields + 2 do out[#out + 1] = job[i] or '' end
  source_id, user_id = job[1], job[3]
elseif ARGV[1] == 'a' then
  out = {'a', '', ''}
  for i = 1, #jobfields do out[#out + 1] = '' end
else
  local tok = redis.call('GET', p .. 'tok:' .. ARGV[2])
  if not tok or string.sub(tok, 1, 2) ~= 't:' then return {''} end
  local rest = string.sub(tok, 3)
  local sep = string.find(rest, ':', 1, true)
  source_id, user_id = string.sub(rest, 1, sep - 1), string.sub(rest, sep + 1)
  out = {'t', source_id, user_id}
  for i = 1, #jobfields do out[#out + 1] = '' end
end
local fields = PROJECT_FIELDS
local src = {}
if source_id then src = redis.call('HMGET', p .. 'prj:' .. source_id, unpack(fields)) end
for i = 1, #fields do out[#out + 1] = src[i] or '' end
local target_id = false
if ARGV[4] == 'id' then
  target_id = ARGV[5]
elseif ARGV[4] == 'job' then
  target_id = redis.call('HGET', p .. 'job:' .. ARGV[5], 'p')
elseif ARGV[4] == 'path' then
  for i = 5, #ARGV do
    target_id = redis.call('GET', p .. 'path:' .. ARGV[i])
    if target_id then break end
  end
end
if not target_id or redis.call('EXISTS', p .. 'prj:' .. target_id) == 0 then
  out[#out + 1] = ''
  return out
end
out[#out + 1] = target_id
local tgt = redis.call('HMGET', p .. 'prj:' .. target_id, unpack(fields))
for i = 1, #fields do out[#out + 1] = tgt[i] or '' end
if not source_id then  -- anonymous: no role, no scope
  out[#out + 1] = '0'
  out[#out + 1] = 0
  return out
end
out[#out + 1] = redis.call('HGET', p .. 'mem:' .. target_id, user_id) or '0'
out[#out + 1] = redis.call('SISMEMBER', p .. 'out:' .. source_id, target_id)
local inkey = p .. 'in:' .. target_id
local entry = 'p:' .. source_id
local policies = redis.call('HGET', inkey, entry)
if not policies and src[1] then
  local path = string.lower(src[1])
  while true do
    local cut = string.match(path, '^(.*)/[^/]*$')
    if not cut or cut == '' then break end
    path = cut
    entry = 'g:' .. path
    policies = redis.call('HGET', inkey, entry)
    if policies then break end
  end
end
if policies then
  out[#out + 1] = entry
  out[#out + 1] = policies
end
return out
""".replace("JOB_FIELDS", _lua_list(_JOB_FIELDS)).replace("PROJECT_FIELDS", _lua_list(_PROJECT_FIELDS))

_SET_PROJECT = """
local p, id, path, vis = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'prj:' .. id
local old = redis.call('HGET', key, 'path')
if path == '' then
  if not old then return {err = 'project ' .. id .. ' does not exist: give --path and --visibility'} end
  path = old
end
if vis == '' then
  vis = redis.call('HGET', key, 'visibility')
  if not vis then return {err = 'project ' .. id .. ' does not exist: give --path and --visibility'} end
end
local owner = redis.call('GET', p .. 'path:' .. string.lower(path))
if owner and owner ~= id then
  return {err = 'path ' .. path .. ' already belongs to project ' .. owner}
end
if old and string.lower(old) ~= string.lower(path) then
  redis.call('DEL', p .. 'path:' .. string.lower(old))
end
redis.call('SET', p .. 'path:' .. string.lower(path), id)
redis.call('HSET', key, 'path', path, 'visibility', vis)
if not old then
  redis.call('HSET', key, 'pending_delete', '0', 'scope', '0', 'inbound', '1')
end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
return redis.call('HGETALL', key)
"""

_START_JOB = """
local p, id, project, digest = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. 'prj:' .. project) == 0 then
  return {err = 'project ' .. project .. ' does not exist: register it with `admin project set`'}
end
local key = p .. 'job:' .. id
if redis.call('EXISTS', key) == 1 then return {err = 'job ' .. id .. ' already exists'} end
local expires, retain = tonumber(ARGV[5]), tonumber(ARGV[6])
if not expires or not retain or retain ~= math.floor(retain) or retain <= expires or retain >= 2^52 then
  return {err = 'timeout out of range'}
end
redis.call('HSET', key, 'p', project, 'u', ARGV[4], 's', 'running', 'e', '0',
  'x', ARGV[5], 'd', digest, 't', ARGV[7])
for i = 8, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
local ok = redis.pcall('EXPIREAT', key, retain)
if type(ok) == 'table' and ok.err then
  redis.call('DEL', key)  -- all or nothing: never a running job without an expiry
  return {err = 'timeout out of range'}
end
return 1
"""

_UPDATE_JOB = """
local p, id = KEYS[1], ARGV[1]
local key = p .. 'job:' .. id
if redis.call('EXISTS', key) == 0 then return {err = 'job ' .. id .. ' does not exist'} end
redis.call('HSET', key, ARGV[2], ARGV[3])
return redis.call('HGET', key, 's')
"""

_CREATE_TRIGGER = """
local p = KEYS[1]
if redis.call('EXISTS', p .. 'prj:' .. ARGV[2]) == 0 then
  return {err = 'project ' .. ARGV[2] .. ' does not exist'}
end
redis.call('SET', p .. 'tok:' .. ARGV[1], 't:' .. ARGV[2] .. ':' .. ARGV[3])
return 1
"""

_REVOKE_TRIGGER = """
local p = KEYS[1]
local key = p .. 'tok:' .. ARGV[1]
local value = redis.call('GET', key)
if not value or string.sub(value, 1, 2) ~= 't:' then return 0 end
redis.call('DEL', key)
return 1
"""

_REQUIRE_PROJECTS = """
local p = KEYS[1]
for i = 1, #ARGV do
  if redis.call('EXISTS', p .. 'prj:' .. ARGV[i]) == 0 then
    return {err = 'project ' .. ARGV[i] .. ' does not exist'}
  end
end
return 1
"""


_SET_INBOUND = """
local p, target, entry, value = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local key = p .. 'in:' .. target
local existed = redis.call('HEXISTS', key, entry)
if existed == 1 and ARGV[4] == 'keep' then return existed end
if value == '' then
  redis.call('HDEL', key, entry)
  if string.sub(entry, 1, 2) == 'g:' then redis.call('SREM', p .. 'gin:' .. string.sub(entry, 3), target) end
else
  redis.call('HSET', key, entry, value)
  if string.sub(entry, 1, 2) == 'g:' then redis.call('SADD', p .. 'gin:' .. string.sub(entry, 3), target) end
end
return existed
"""

_SET_GROUP = """
local p, id, path = KEYS[1], ARGV[1], ARGV[2]
local lower = string.lower(path)
local owner = redis.call('GET', p .. 'gpath:' .. lower)
if owner and owner ~= id then
  return {err = 'group path ' .. path .. ' already belongs to group ' .. owner}
end
local key = p .. 'grp:' .. id
local old = redis.call('HGET', key, 'path')
local moved = {}
if old and string.lower(old) ~= lower then
  local was = string.lower(old)
  redis.call('DEL', p .. 'gpath:' .. was)
  for _, target in ipairs(redis.call('SMEMBERS', p .. 'gin:' .. was)) do
    local inkey = p .. 'in:' .. target
    local value = redis.call('HGET', inkey, 'g:' .. was)
    if value then
      redis.call('HDEL', inkey, 'g:' .. was)
      redis.call('HSET', inkey, 'g:' .. lower, value)
      redis.call('SADD', p .. 'gin:' .. lower, target)
      moved[#moved + 1] = target
    end
  end
  redis.call('DEL', p .. 'gin:' .. was)
end
redis.call('SET', p .. 'gpath:' .. lower, id)
redis.call('HSET', key, 'path', path)
return moved
"""

# Publish an event with the next epoch and name the lease holders that must acknowledge it,
# in one atomic step: a holder that renews later has the event in its epoch (see `renew`).
_ANNOUNCE = """
local p = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', p .. 'leases', '-inf', now)
local epoch = redis.call('INCR', p .. 'epoch')
redis.call('PUBLISH', p .. 'events', ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. epoch)
local out = {now}
local holders = redis.call('ZRANGEBYSCORE', p .. 'leases', '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #holders do out[#out + 1] = holders[i] end
return out
"""

# Renew a caching process's lease (after its self-ping came back): the epoch it must have
# applied before it may use its cache.
_RENEW_LEASE = """
local p = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', p .. 'leases', now + tonumber(ARGV[2]), ARGV[1])
return tonumber(redis.call('GET', p .. 'epoch') or '0')
"""


def _text(value: Any) -> str:
    """A Redis reply item as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _project(values: Sequence[str], project_id: int) -> ProjectState | None:
    path, visibility, pending, scope, inbound, push = values[:6]
    if not path:
        return None
    return ProjectState(
        id=project_id,
        path=path,
        visibility=visibility or "private",
        pending_delete=pending == "1",
        outbound_limit=scope == "1",
        inbound_limit=inbound != "0",
        features=tuple(
            (f, level) for f, level in zip(FEATURES, values[6:], strict=True) if level and level != "enabled"
        ),
        push_repository=push == "1",
    )


def parse_access(raw: Sequence[Any]) -> AccessState:
    """Turn the script's flat reply into an AccessState."""
    values = [_text(v) for v in raw]
    kind = values[0]
    if kind not in ("j", "t", "a"):
        return AccessState(kind=TokenKind.UNKNOWN)
    job = trigger_project = trigger_owner = None
    source_id = 0  # anonymous: no source project
    if kind == "j":
        jid, project, user, status, erased, expires, pipeline, name, ref = values[1:10]
        started, stage, sha, tag, iid, pipeline_source, username, user_name, allow_failure = values[10:19]
        job = JobState(
            id=_int(jid),
            project_id=_int(project),
            user_id=_int(user),
            status=status,
            erased=erased == "1",
            expires_at=float(expires or 0),
            pipeline_id=_int(pipeline) if pipeline else None,
            name=name,
            ref=ref,
            started_at=float(started) if started else None,
            stage=stage,
            sha=sha,
            tag=tag == "1",
            pipeline_iid=_int(iid) if iid else None,
            pipeline_source=pipeline_source,
            username=username,
            user_name=user_name,
            allow_failure=allow_failure == "1",
        )
        source_id = job.project_id
    elif kind == "t":
        trigger_project, trigger_owner = _int(values[1]), _int(values[2])
        source_id = trigger_project
    at = _JOB_ITEMS + 1  # the source project's fields
    source = _project(values[at : at + _N], source_id)
    common = dict(job=job, trigger_owner_id=trigger_owner, source=source)
    token_kind = TokenKind.ANONYMOUS if kind == "a" else TokenKind.JOB if job else TokenKind.TRIGGER
    at += _N  # the target's id, its fields, the level, outbound membership, the inbound entry
    if len(values) <= at or not values[at]:
        return AccessState(kind=token_kind, **common)  # type: ignore[arg-type]
    target = _project(values[at + 1 : at + 1 + _N], _int(values[at]))
    at += 1 + _N
    entry = None
    if len(values) >= at + 4:
        policies = values[at + 3]
        entry = InboundEntry(
            source=values[at + 2],
            policies=None if policies == DEFAULT_PERMISSIONS else frozenset(policies.split(",")),
        )
    return AccessState(
        kind=token_kind,
        target=target,
        access_level=_int(values[at]),
        in_outbound_allowlist=values[at + 1] == "1",
        inbound_entry=entry,
        **common,  # type: ignore[arg-type]
    )


def connect(url: str, timeout: float) -> aioredis.Redis | RedisCluster:
    """A Redis client for a URL.

    `redis://`, `rediss://`, `unix://` as redis-py reads them; `redis+cluster://host:port`
    (any node) for Redis Cluster; `redis+sentinel://host:port,host:port/<master name>[/db]`
    for Redis Sentinel.
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
    }
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **options)
    if url.startswith("redis+sentinel://"):
        from redis.asyncio.sentinel import Sentinel

        parts = urlsplit(url)
        hosts = [h.rpartition(":") for h in parts.netloc.rpartition("@")[2].split(",")]
        service, _, db = parts.path.strip("/").partition("/")
        sentinel = Sentinel([(h, int(p or 26379)) for h, _, p in hosts], **options)  # type: ignore[no-untyped-call]
        master: aioredis.Redis = sentinel.master_for(service, db=int(db or 0), password=parts.password)
        return master
    return aioredis.from_url(url, **options)


def _onoff(value: bool | None) -> str:
    return "" if value is None else ("1" if value else "0")


class Store:
    """Job state, projects and scope in Redis: the one-round-trip read and every write."""

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str = "{jobgate}:") -> None:
        self.client = client
        self.prefix = prefix
        register = client.register_script
        self._read_access = register(_READ_ACCESS)
        self._set_project = register(_SET_PROJECT)
        self._start_job = register(_START_JOB)
        self._update_job = register(_UPDATE_JOB)
        self._create_trigger = register(_CREATE_TRIGGER)
        self._revoke_trigger = register(_REVOKE_TRIGGER)
        self._require_projects = register(_REQUIRE_PROJECTS)
        self._set_inbound = register(_SET_INBOUND)
        self._set_group = register(_SET_GROUP)
        self._announce = register(_ANNOUNCE)
        self._renew_lease = register(_RENEW_LEASE)

    @property
    def events_channel(self) -> str:
        """The pub/sub channel that announces writes which may revoke access."""
        return self.prefix + "events"

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def _call(self, script: Any, args: Sequence[Any]) -> Any:
        with _unavailable_on_error():
            try:
                return await script(keys=[self.prefix], args=list(args))
            except ResponseError as exc:
                message = str(exc)
                if "@user_script" in message or "script:" in message:
                    # a script that failed to run (not one of its refusals): say so without the
                    # script's hash or its Lua line
                    raise StoreUnavailable("ResponseError") from None
                raise ControlError(message) from None

    def ping_channel(self, holder: str) -> str:
        """The channel a caching process pings itself through."""
        return f"{self.prefix}ping:{holder}"

    async def announce(self, event: str, wait: float = ANNOUNCE_WAIT) -> int:
        """Publish `event` and return once it is in force everywhere; how many holders acknowledged.

        1. When replicas are connected, `WAIT 1` (at most `wait` seconds): a write a failover
           could lose has not returned (StoreUnavailable; the caller may retry).
        2. Every process holding a cache lease when the event went out acknowledges it, or its
           lease lapses (after which it uses no cache until a self-ping and renewal, whose
           epoch makes it apply this event first). So the wait is bounded by the longest lease.
        """
        nonce = secrets.token_hex(8)
        ack = f"{self.prefix}ack:{nonce}"
        with _unavailable_on_error():
            reply = await self._announce(keys=[self.prefix], args=[event, nonce])
            sent = time.monotonic()
            now_ms, rest = int(reply[0]), [_text(v) for v in reply[1:]]
            # each holder's lease end on this process's clock (measured from the reply: later)
            ends = zip(rest[::2], rest[1::2], strict=True)
            pending = {holder: sent + (int(float(end)) - now_ms) / 1000 for holder, end in ends}
            await self._replicate(wait)
            acknowledged = 0
            while pending:
                now = time.monotonic()
                pending = {h: until for h, until in pending.items() if until > now}
                if not pending:
                    break
                # short blocking steps: each stays under the client's socket timeout
                step = min(max(max(pending.values()) - now, 0.01), 0.25)
                got = await self.client.blpop([ack], timeout=step)
                if got is not None and pending.pop(_text(got[1]), None) is not None:
                    acknowledged += 1
            await self.client.delete(ack)
        return acknowledged

    async def _replicate(self, wait: float) -> None:
        """`WAIT 1` when the master has replicas: the write survives a failover once it returns."""
        if isinstance(self.client, RedisCluster):
            return  # cluster nodes here run without replicas (see docs/reliability.md)
        info = await self.client.info("replication")
        if int(info.get("connected_slaves", 0)) == 0:
            return
        if int(await self.client.wait(1, max(1, int(wait * 1000)))) < 1:
            raise StoreUnavailable("write not replicated")

    async def acknowledge(self, nonce: str, holder: str) -> None:
        """A lease holder's receipt of one event (see `announce`)."""
        key = f"{self.prefix}ack:{nonce}"
        with _unavailable_on_error():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, holder)
                pipe.expire(key, 30)
                await pipe.execute()

    async def self_ping(self, holder: str, nonce: str) -> None:
        """Publish `nonce` on the holder's own ping channel (it comes back through its subscription)."""
        with _unavailable_on_error():
            await self.client.publish(self.ping_channel(holder), nonce)

    async def renew_lease(self, holder: str, seconds: float) -> int:
        """Hold (or extend) a cache lease for `seconds` from now; the epoch to have applied first."""
        with _unavailable_on_error():
            milliseconds = max(1, int(seconds * 1000))
            return int(await self._renew_lease(keys=[self.prefix], args=[holder, milliseconds]))

    async def drop_lease(self, holder: str) -> None:
        """Give a lease up (a stopping process): writers no longer wait for it."""
        with _unavailable_on_error():
            await self.client.zrem(f"{self.prefix}leases", holder)

    async def epoch(self) -> int:
        """How many events have been announced so far."""
        with _unavailable_on_error():
            return int(await self.client.get(f"{self.prefix}epoch") or 0)

    async def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    # -- the hot path ---------------------------------------------------------

    async def read_access(self, token: str, target: TargetRef) -> AccessState:
        """Everything a decision needs about a token and a target project, in one round trip."""
        return await self.read_access_key(credential_key(token), target)

    async def read_access_key(self, key: str, target: TargetRef) -> AccessState:
        """`read_access` for a token known only by its `credential_key` (or `ANONYMOUS_KEY`)."""
        kind, _, rest = key.partition(":")
        if kind == "a":
            token_args: list[Any] = ["a", "", ""]
        elif kind == "j":
            job_id, _, digest = rest.partition(":")
            token_args = ["j", job_id, bytes.fromhex(digest)]
        else:
            token_args = ["t", rest, ""]
        if target.project_id is not None:
            args: list[Any] = [*token_args, "id", target.project_id]
        elif target.job_id is not None:
            args = [*token_args, "job", target.job_id]
        elif target.paths:
            args = [*token_args, "path", *(p.lower() for p in target.paths)]
        else:
            args = [*token_args, "none"]
        try:
            return parse_access(await self._call(self._read_access, args))
        except StoreUnavailable as exc:
            if exc.args != ("ConnectionError",):
                raise
        # a pooled connection a restarted Redis closed fails once; its reconnection answers
        return parse_access(await self._call(self._read_access, args))

    # -- control plane --------------------------------------------------------

    async def set_project(
        self,
        project_id: int,
        path: str | None = None,
        visibility: str | None = None,
        scope: bool | None = None,
        inbound: bool | None = None,
        pending_delete: bool | None = None,
        features: Mapping[str, str] | None = None,
        push_repository: bool | None = None,
    ) -> dict[str, str]:
        """Create or update a project; path and visibility are required when creating.

        `features` sets the visibility of the named features (the others keep theirs)."""
        if visibility is not None and visibility not in VISIBILITIES:
            raise ControlError(f"visibility must be one of {', '.join(VISIBILITIES)}")
        if path is not None:
            validate_project_path(path)
        feature_args = [a for name, level in validate_features(features or {}).items()
                        for a in (f"feature:{name}", level)]  # fmt: skip
        raw = await self._call(
            self._set_project,
            [
                project_id,
                path or "",
                visibility or "",
                "scope",
                _onoff(scope),
                "inbound",
                _onoff(inbound),
                "pending_delete",
                _onoff(pending_delete),
                "push_repository",
                _onoff(push_repository),
                *feature_args,
            ],
        )
        # a path also drops cached resolutions of longer paths that found a shorter project
        await self.announce(f"prj:{project_id}" + (f",path:{path.lower()}" if path else ""))
        it = iter(_text(v) for v in raw)
        return dict(zip(it, it, strict=True))

    async def set_member(self, project_id: int, user_id: int, access_level: int) -> None:
        """Give a user an access level in a project; 0 removes the membership."""
        if access_level not in ACCESS_LEVELS:
            raise ControlError(
                f"access level must be one of {', '.join(map(str, ACCESS_LEVELS))}, got {access_level}"
            )
        await self._call(self._require_projects, [project_id])
        key = f"{self.prefix}mem:{project_id}"
        with _unavailable_on_error():
            if access_level:
                await self.client.hset(key, str(user_id), str(access_level))
            else:
                await self.client.hdel(key, str(user_id))
        await self.announce(f"prj:{project_id}")

    async def set_outbound(self, source_id: int, target_id: int, present: bool) -> None:
        """Add or remove TARGET on SOURCE's outbound allowlist."""
        await self._call(self._require_projects, [source_id, target_id])
        key = f"{self.prefix}out:{source_id}"
        with _unavailable_on_error():
            if present:
                await self.client.sadd(key, str(target_id))
            else:
                await self.client.srem(key, str(target_id))
        await self.announce(f"prj:{source_id}")

    async def set_inbound(
        self, target_id: int, source: str, present: bool, policies: Sequence[str] | None = None
    ) -> str:
        """Add or remove SOURCE (project id or group path) on TARGET's inbound allowlist."""
        entry, _ = await self.write_inbound(target_id, source, present, policies)
        return entry

    async def write_inbound(
        self,
        target_id: int,
        source: str,
        present: bool,
        policies: Sequence[str] | None = None,
        replace: bool = True,
    ) -> tuple[str, bool]:
        """`set_inbound`, also saying whether the entry was there before the write; with
        `replace=False` an existing entry (and its policies) is left as it is."""
        entry = inbound_entry_key(source)
        required = [target_id] + ([int(entry[2:])] if entry.startswith("p:") else [])
        await self._call(self._require_projects, required)
        value = ""
        if present:
            value = DEFAULT_PERMISSIONS if policies is None else ",".join(sorted(validate_policies(policies)))
        existed = await self._call(
            self._set_inbound, [target_id, entry, value, "replace" if replace else "keep"]
        )
        await self.announce(f"prj:{target_id}")
        return entry, bool(existed)

    async def inbound_entries(self, target_id: int) -> dict[str, str]:
        """TARGET's inbound allowlist: entry (`p:<id>`, `g:<path>`) -> policies (`*`: default)."""
        await self._call(self._require_projects, [target_id])
        with _unavailable_on_error():
            raw = await self.client.hgetall(f"{self.prefix}in:{target_id}")
        return {_text(k): _text(v) for k, v in raw.items()}

    async def get_project(self, project_id: int) -> ProjectState | None:
        """A project's recorded state; None when it does not exist."""
        with _unavailable_on_error():
            raw = await self.client.hmget(f"{self.prefix}prj:{project_id}", _PROJECT_FIELDS)
        return _project([_text(v) if v is not None else "" for v in raw], project_id)

    async def project_id_by_path(self, path: str) -> int | None:
        """The id of the project with this full path (case-insensitive), if any."""
        with _unavailable_on_error():
            found = await self.client.get(f"{self.prefix}path:{path.lower()}")
        return None if found is None else int(found)

    async def set_group(self, group_id: int, path: str) -> list[int]:
        """Create a group or change its path; a rename rewrites the inbound entries naming it.

        Returns the target projects whose entries were rewritten.
        """
        validate_group_path(path)
        moved = [int(t) for t in await self._call(self._set_group, [group_id, path])]
        for target in moved:
            await self.announce(f"prj:{target}")
        return moved

    async def get_group(self, group_id: int) -> str | None:
        """A group's full path; None when no such group."""
        with _unavailable_on_error():
            path = await self.client.hget(f"{self.prefix}grp:{group_id}", "path")
        return None if path is None else _text(path)

    async def group_ids(self, paths: Sequence[str]) -> list[int | None]:
        """The id of the group at each full path (case-insensitive); None where none is set."""
        if not paths:
            return []
        with _unavailable_on_error():
            found = await self.client.mget([f"{self.prefix}gpath:{p.lower()}" for p in paths])
        return [None if f is None else int(f) for f in found]

    async def start_job(
        self,
        job_id: int,
        project_id: int,
        user_id: int,
        pipeline_id: int | None = None,
        name: str = "",
        ref: str = "",
        timeout: float = 3600,
        now: float | None = None,
        *,
        stage: str = "",
        sha: str = "",
        tag: bool = False,
        pipeline_iid: int | None = None,
        pipeline_source: str = "",
        username: str = "",
        user_name: str = "",
        allow_failure: bool = False,
    ) -> str:
        """Record a running job and return its new token (only its digest is stored).

        Beyond what validity needs, the job's description (`GET /api/v4/job`) is stored only
        where given, so a job costs Redis memory only for what the orchestrator said.
        """
        for field, value in (("id", job_id), ("project", project_id), ("user", user_id),
                             ("pipeline", pipeline_id), ("pipeline_iid", pipeline_iid)):  # fmt: skip
            if value is not None:
                validate_id(value, field)
        # the range check also refuses NaN and infinities, and never converts a huge int to float
        number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not number or not 0 < timeout <= MAX_JOB_TIMEOUT:
            raise ControlError(
                f"timeout must be a number of seconds above 0 and at most {MAX_JOB_TIMEOUT}, "
                f"got {timeout!r:.24}"
            )
        now = time.time() if now is None else now
        token = f"{JOB_TOKEN_PREFIX}{job_id}_{secrets.token_urlsafe(30)}"
        expires = math.ceil(now + timeout)
        optional = {
            "pl": "" if pipeline_id is None else pipeline_id, "n": name, "r": ref, "st": stage, "sh": sha,
            "tg": "1" if tag else "", "pi": "" if pipeline_iid is None else pipeline_iid,
            "ps": pipeline_source, "un": username, "um": user_name, "af": "1" if allow_failure else "",
        }  # fmt: skip
        await self._call(
            self._start_job,
            [
                job_id,
                project_id,
                bytes.fromhex(token_digest(token)),
                user_id,
                expires,
                int(expires) + JOB_RETENTION_SECONDS,
                int(now),
                *(item for field_value in optional.items() for item in field_value),
            ],
        )
        return token

    async def finish_job(self, job_id: int, status: str = "success") -> str:
        """Set a job's final status; a non-executing status revokes its token at once."""
        if status not in FINISH_STATUSES:
            raise ControlError(f"status must be one of {', '.join(FINISH_STATUSES)}")
        result = await self._call(self._update_job, [job_id, "s", status])
        await self.announce(f"job:{job_id}")
        return _text(result)

    async def erase_job(self, job_id: int) -> None:
        """Mark a job erased, which revokes its token."""
        await self._call(self._update_job, [job_id, "e", "1"])
        await self.announce(f"job:{job_id}")

    async def count_failure(self, client: str, window: int = 60) -> int:
        """Count one unknown-token attempt from `client` in this window; the count so far."""
        key = f"{self.prefix}fail:{client}"
        with _unavailable_on_error():
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, window, nx=True)
                count, _ = await pipe.execute()
        return int(count)

    async def record_access(self, target_id: int, source_id: int, route: str) -> None:
        """Count one cross-project access in the target's authentication log (best effort: a
        failure only skips the count)."""
        with suppress(StoreUnavailable), _unavailable_on_error():
            await self.client.hincrby(f"{self.prefix}auth:{target_id}", f"{source_id}|{route}", 1)

    async def suggest_inbound(self, target_id: int) -> list[dict[str, Any]]:
        """Projects that reached TARGET with a job token, and whether the inbound list covers them."""
        await self._call(self._require_projects, [target_id])
        with _unavailable_on_error():
            log = await self.client.hgetall(f"{self.prefix}auth:{target_id}")
            entries = {_text(k) for k in await self.client.hkeys(f"{self.prefix}in:{target_id}")}
        sources: dict[int, dict[str, Any]] = {}
        for key, count in log.items():
            source, _, route = _text(key).partition("|")
            item = sources.setdefault(int(source), {"source": int(source), "routes": {}})
            item["routes"][route] = int(count)
        for source_id, item in sources.items():
            with _unavailable_on_error():
                path = await self.client.hget(f"{self.prefix}prj:{source_id}", "path")
            item["path"] = _text(path) if path else None
            candidates = inbound_candidates(source_id, item["path"] or "")
            item["covered_by"] = next((e for e in candidates if e in entries), None)
        return sorted(sources.values(), key=lambda i: (i["covered_by"] is not None, i["source"]))

    async def job_credential_key(self, job_id: int) -> str | None:
        """The credential key of a job's token (for `jobgate explain --job`); None: no such job."""
        with _unavailable_on_error():
            digest = await self.client.hget(f"{self.prefix}job:{job_id}", "d")
        if not isinstance(digest, bytes):
            return None
        return f"j:{job_id}:{digest.hex()}"

    async def get_job(self, job_id: int) -> dict[str, str] | None:
        """A job's recorded fields, for the admin API."""
        with _unavailable_on_error():
            raw = await self.client.hgetall(f"{self.prefix}job:{job_id}")
        if not raw:
            return None
        names = {"p": "project", "u": "user", "s": "status", "e": "erased", "x": "expires",
                 "pl": "pipeline", "n": "name", "r": "ref", "t": "started", "st": "stage", "sh": "sha",
                 "tg": "tag", "pi": "pipeline_iid", "ps": "pipeline_source", "un": "username",
                 "um": "user_name", "af": "allow_failure"}  # fmt: skip
        return {names[_text(k)]: _text(v) for k, v in raw.items() if _text(k) in names}

    async def create_trigger(self, project_id: int, owner_id: int) -> str:
        """Create a pipeline trigger token for a project, acting as its owner."""
        token = TRIGGER_TOKEN_PREFIX + secrets.token_urlsafe(30)
        await self._call(self._create_trigger, [token_digest(token), project_id, owner_id])
        return token

    async def revoke_trigger(self, token: str) -> bool:
        """Revoke a trigger token; False when no such trigger token exists."""
        digest = token_digest(token)
        revoked = bool(await self._call(self._revoke_trigger, [digest]))
        if revoked:
            await self.announce(f"tok:{digest}")
        return revoked


def validate_id(value: object, name: str) -> int:
    """An id: an int from 0 to 2**63 - 1 (not a bool, not a float); ControlError naming `name` else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(f"{name} must be an integer")
    if not 0 <= value <= MAX_ID:
        raise ControlError(f"{name} out of range (0 to {MAX_ID})")
    return value


def parse_id(text: str, name: str) -> int:
    """An id written in ASCII decimal digits (not '١٢٣', not '+1', not ' 1'); ControlError else."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        raise ControlError(f"{name} must be an integer in ASCII digits, got {text[:40]!r}")
    return validate_id(int(text), name)


def validate_project_path(path: str) -> str:
    """A full project path: segments of letters, digits, '_', '-', '.', at least two deep."""
    segments = path.split("/")
    if len(segments) < 2 or len(path) > 1024:
        raise ControlError(f"project path must look like group/name, got {path!r}")
    for segment in segments:
        if not is_path_segment(segment):
            raise ControlError(f"invalid project path segment {segment!r} in {path!r}")
    return path


def validate_group_path(path: str) -> str:
    """A full group path: one or more segments of letters, digits, '_', '-', '.'."""
    if len(path) > 1024 or not all(is_path_segment(s) for s in path.split("/")):
        raise ControlError(f"group path must look like group or group/sub, got {path!r}")
    return path


def inbound_entry_key(source: str) -> str:
    """`p:<id>` for a project id, `g:<path>` for a group path."""
    if source.isascii() and source.isdigit():
        return f"p:{parse_id(source, 'source')}"
    segments = source.strip("/").split("/")
    if not all(is_path_segment(s) for s in segments):
        raise ControlError(f"inbound source must be a project id or a group path, got {source!r}")
    return "g:" + "/".join(segments).lower()


def validate_features(features: Mapping[str, str]) -> dict[str, str]:
    """Feature visibility levels, each name and level checked against the known ones."""
    for name, level in features.items():
        if name not in FEATURES:
            raise ControlError(f"unknown project feature {name!r} (known: {', '.join(FEATURES)})")
        if level not in FEATURE_LEVELS:
            raise ControlError(
                f"feature {name}: level must be one of {', '.join(FEATURE_LEVELS)}, got {level!r}"
            )
    return dict(features)


def parse_feature(text: str) -> tuple[str, str]:
    """`NAME=LEVEL` (the CLI's `--feature`), checked like `validate_features`."""
    name, sep, level = text.partition("=")
    if not sep:
        raise ControlError(f"--feature expects NAME=LEVEL (e.g. packages=private), got {text!r}")
    validate_features({name: level})
    return name, level


def validate_policies(policies: Sequence[str]) -> set[str]:
    """Job token policy names, each checked against the known set."""
    names = {p.strip() for p in policies if p.strip()}
    unknown = sorted(names - POLICIES)
    if unknown:
        raise ControlError(
            f"unknown job token policy {', '.join(unknown)} (known: {', '.join(sorted(POLICIES))})"
        )
    if not names:
        raise ControlError("give at least one policy, or leave --policies out for defaults")
    return names
