"""Redis memory per job at scale, for the job layouts `Store.start_job` writes.

    python bench/job_memory.py [--jobs 1000000]

For each field set (the README example's `job start --id --project --user --ref`, and
every field `job start` takes), one job is written by `Store.start_job` itself; its exact
fields and values are then copied to N job keys by a Lua loop (a distinct token digest
each), and `INFO memory` is read before and after: bytes per job = the growth / N.
`MEMORY USAGE` of one key is printed beside it. Starts its own redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.devredis import RedisProcess
from gateway.store import Store, connect

#: What an orchestrator tells `job start`: the README example, and every field set.
FIELD_SETS: dict[str, dict[str, Any]] = {
    "readme example (--ref main)": {"ref": "main"},
    "every field": {
        "pipeline_id": 1234567, "name": "build", "ref": "main", "stage": "build",
        "sha": "0123456789abcdef0123456789abcdef01234567", "tag": True, "pipeline_iid": 4321,
        "pipeline_source": "push", "username": "alice", "user_name": "Alice Example", "allow_failure": True,
    },
}  # fmt: skip

_COPY = """
local p, first, count = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl_at = tonumber(ARGV[3])
for i = first, first + count - 1 do
  local hex = redis.sha1hex('d' .. i) .. string.sub(redis.sha1hex('e' .. i), 1, 24)
  local digest = string.gsub(hex, '..', function(cc) return string.char(tonumber(cc, 16)) end)
  local key = p .. 'job:' .. i
  for j = 4, #ARGV, 2 do
    if ARGV[j] == 'd' then
      redis.call('HSET', key, 'd', digest)
    else
      redis.call('HSET', key, ARGV[j], ARGV[j + 1])
    end
  end
  redis.call('EXPIREAT', key, ttl_at)
end
return count
"""


async def measure(redis_url: str, jobs: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Bytes per job with `jobs` jobs of the layout `start_job(**fields)` writes."""
    store = Store(connect(redis_url, 60.0))
    await store.client.flushdb()
    await store.set_project(1, "bench/app", "private")
    await store.start_job(1, 1, 7, **fields)
    template = await store.client.hgetall(f"{store.prefix}job:1")
    ttl_at = int(await store.client.expiretime(f"{store.prefix}job:1"))
    pairs = [item for name, value in sorted(template.items()) for item in (name, value)]
    copy = store.client.register_script(_COPY)
    await copy(keys=[store.prefix], args=[2, 999, ttl_at, *pairs])  # warm-up: allocator, script cache
    before = int((await store.client.info("memory"))["used_memory"])
    for first in range(1001, jobs + 1, 10_000):
        await copy(keys=[store.prefix], args=[first, min(10_000, jobs + 1 - first), ttl_at, *pairs])
    after = int((await store.client.info("memory"))["used_memory"])
    usage = await store.client.memory_usage(f"{store.prefix}job:1001")
    same = await store.client.hgetall(f"{store.prefix}job:1001")
    assert set(same) == set(template), "the copy has the layout start_job wrote"
    await store.client.flushdb()
    await store.close()
    return {
        "jobs": jobs,
        "fields": sorted(k.decode() for k in template),
        "bytes_per_job": round((after - before) / (jobs - 1000), 1),
        "memory_usage_one_key": usage,
    }


async def main_async(jobs: int) -> dict[str, Any]:
    with RedisProcess() as redis:
        return {name: await measure(redis.url, jobs, fields) for name, fields in FIELD_SETS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.jobs)), indent=2))


if __name__ == "__main__":
    main()
