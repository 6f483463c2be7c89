"""Request ids: unique within a process and across forked workers."""

from __future__ import annotations

import os

from gateway.requestid import next_request_id


def test_ids_are_unique_in_a_process() -> None:
    ids = [next_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_a_forked_worker_draws_its_own_prefix() -> None:
    # the prefix was drawn once at import, before `serve` forked: every worker counted 1, 2, 3 ...
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, ",".join(next_request_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1 << 16).decode().split(",")
    os.close(read)
    os.waitpid(pid, 0)
    parent = [next_request_id() for _ in range(100)]
    assert not set(child) & set(parent)
    assert {i.rsplit("-", 1)[0] for i in child} != {i.rsplit("-", 1)[0] for i in parent}
