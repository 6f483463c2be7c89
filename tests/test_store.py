"""store.Store against a real redis-server: the one-round-trip read and control-plane writes."""

from __future__ import annotations

import pytest

from gateway.model import TargetRef, TokenKind
from gateway.store import ControlError, Store


async def test_read_access_resolves_job_source_target_level_and_scope(store: Store) -> None:
    await store.set_project(1, "group/sub/app", "private", scope=True)
    await store.set_project(2, "other/lib", "private")
    await store.set_member(2, 7, 20)
    await store.set_outbound(1, 2, True)
    await store.set_inbound(2, "group", True)
    token = await store.start_job(100, 1, 7, pipeline_id=5, name="build", ref="main")

    state = await store.read_access(token, TargetRef(project_id=2))
    assert state.kind is TokenKind.JOB
    assert state.job is not None and state.job.id == 100 and state.job.status == "running"
    assert state.source is not None and state.source.path == "group/sub/app"
    assert state.source.outbound_limit and state.source.inbound_limit
    assert state.target is not None and state.target.id == 2
    assert state.access_level == 20 and state.in_outbound_allowlist
    assert state.inbound_entry is not None and state.inbound_entry.source == "g:group"
    assert state.inbound_entry.policies is None


async def test_nearest_inbound_entry_wins(store: Store) -> None:
    await store.set_project(1, "a/b/c/app", "private")
    await store.set_project(2, "x/lib", "private")
    await store.set_inbound(2, "a", True, ["read_packages"])
    await store.set_inbound(2, "a/b", True, ["read_releases"])
    token = await store.start_job(100, 1, 7)
    entry = (await store.read_access(token, TargetRef(project_id=2))).inbound_entry
    assert entry is not None and entry.source == "g:a/b" and entry.policies == {"read_releases"}
    await store.set_inbound(2, "1", True, ["admin_jobs"])
    entry = (await store.read_access(token, TargetRef(project_id=2))).inbound_entry
    assert entry is not None and entry.source == "p:1" and entry.policies == {"admin_jobs"}


async def test_longest_registered_path_wins(store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    await store.set_project(2, "group/app/image", "private")
    token = await store.start_job(100, 1, 7)
    paths = ("group/app/image/sub", "group/app/image", "group/app")
    assert (await store.read_access(token, TargetRef(paths=paths))).target.id == 2  # type: ignore[union-attr]
    paths = ("group/app/other", "group/app")
    assert (await store.read_access(token, TargetRef(paths=paths))).target.id == 1  # type: ignore[union-attr]
    assert (await store.read_access(token, TargetRef(paths=("GROUP/App",)))).target.id == 1  # type: ignore[union-attr]


async def test_unknown_token_and_unknown_target(store: Store) -> None:
    assert (await store.read_access("glcbt-x", TargetRef(project_id=1))).kind is TokenKind.UNKNOWN
    await store.set_project(1, "group/app", "private")
    token = await store.start_job(100, 1, 7)
    state = await store.read_access(token, TargetRef(project_id=99))
    assert state.kind is TokenKind.JOB and state.target is None


async def test_project_path_rename_moves_the_index(store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    await store.set_project(1, "group/renamed")
    token = await store.start_job(100, 1, 7)
    assert (await store.read_access(token, TargetRef(paths=("group/app",)))).target is None
    assert (await store.read_access(token, TargetRef(paths=("group/renamed",)))).target is not None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.set_project(2), "does not exist: give --path and --visibility"),
        (lambda s: s.set_project(1, "noslash", "private"), "must look like group/name"),
        (lambda s: s.set_project(1, "a/../b", "private"), "invalid project path segment"),
        (lambda s: s.set_project(1, "a/b", "secret"), "visibility must be one of"),
        (lambda s: s.set_member(1, 7, 25), "access level must be one of"),
        (lambda s: s.set_member(42, 7, 30), "project 42 does not exist"),
        (lambda s: s.start_job(1, 42, 7), "project 42 does not exist"),
        (lambda s: s.start_job(1, 1, 7, timeout=0), "timeout must be a number of seconds above 0"),
        (lambda s: s.finish_job(12345), "job 12345 does not exist"),
        (lambda s: s.finish_job(1, "exploded"), "status must be one of"),
        (lambda s: s.set_inbound(1, "bad path!", True), "project id or a group path"),
        (lambda s: s.set_inbound(1, "group", True, ["read_everything"]), "unknown job token policy"),
        (lambda s: s.create_trigger(42, 7), "project 42 does not exist"),
    ],
)
async def test_control_plane_refuses_bad_writes_clearly(store: Store, call: object, message: str) -> None:
    await store.set_project(1, "group/app", "private")
    with pytest.raises(ControlError, match=message.replace("(", r"\(")):
        await call(store)  # type: ignore[operator]


async def test_path_collision_is_refused(store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    with pytest.raises(ControlError, match="already belongs to project 1"):
        await store.set_project(2, "Group/App", "private")


async def test_duplicate_job_is_refused(store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    await store.start_job(100, 1, 7)
    with pytest.raises(ControlError, match="job 100 already exists"):
        await store.start_job(100, 1, 7)


async def test_revoking_writes_wait_for_every_lease_holder(store: Store) -> None:
    """A write returns once every process holding a cache lease acknowledged it, or once that
    lease lapsed; processes without a lease are not waited for."""
    import asyncio
    import time

    await store.set_project(1, "group/app", "private")
    await store.start_job(100, 1, 7)
    pubsub = store.client.pubsub()
    await pubsub.subscribe(store.events_channel)
    await pubsub.get_message(timeout=1)
    seen: list[str] = []
    stop = asyncio.Event()

    async def subscriber() -> None:
        while not stop.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message:
                event, nonce, _epoch = message["data"].decode().split()
                seen.append(event)
                await store.acknowledge(nonce, "a")

    task = asyncio.ensure_future(subscriber())
    assert await store.announce("job:100") == 0  # a subscriber without a lease: no wait
    assert await store.renew_lease("a", 5.0) == 2  # the epoch it must have applied (2 events)
    assert await store.announce("job:100") == 1
    await store.finish_job(100)
    await store.set_member(1, 7, 20)  # lowering a role changes decisions too
    assert seen == ["job:100", "job:100", "job:100", "prj:1"]
    stop.set()
    await task  # ended before its connection closes (a cancelled read could outlive it)
    await pubsub.aclose()
    await store.renew_lease("a", 0.4)  # a holder that stopped answering: its lease lapses
    started = time.monotonic()
    assert await store.announce("job:100") == 0
    assert 0.2 < time.monotonic() - started < 1.0
    await store.renew_lease("b", 5.0)
    await store.drop_lease("b")  # a stopping process gives its lease up
    started = time.monotonic()
    assert await store.announce("job:100") == 0
    assert time.monotonic() - started < 0.2


@pytest.mark.parametrize(
    "entries",
    [(), ("g:a",), ("g:a", "g:a/b"), ("g:a/b/c",), ("p:1", "g:a"), ("g:a/b", "g:x"), ("g:a/b/c/app",)],
)
async def test_the_read_script_and_suggest_walk_the_inbound_entries_alike(
    store: Store, entries: tuple[str, ...]
) -> None:
    """The Lua read and `inbound_candidates` (used by `inbound suggest`) pick the same entry."""
    from gateway.model import inbound_candidates

    await store.set_project(1, "A/b/c/app", "private")
    await store.set_project(2, "x/lib", "private")
    for entry in entries:
        await store.set_inbound(2, entry[2:], True)
    token = await store.start_job(100, 1, 7)
    found = (await store.read_access(token, TargetRef(project_id=2))).inbound_entry
    expected = next((c for c in inbound_candidates(1, "A/b/c/app") if c in entries), None)
    assert (found.source if found else None) == expected
    await store.record_access(2, 1, "packages_read")
    assert [item["covered_by"] for item in await store.suggest_inbound(2)] == [expected]


async def test_a_job_stores_only_the_fields_it_was_given(store: Store) -> None:
    # Redis memory per job is what scales (bench/job_memory.py): the README example's job
    # writes its validity fields, its start and its ref, nothing empty
    await store.set_project(1, "g/app", "private")
    await store.start_job(100, 1, 7, ref="main")
    assert set(await store.client.hkeys(f"{store.prefix}job:100")) == {
        b"p", b"u", b"s", b"e", b"x", b"d", b"t", b"r"}  # fmt: skip
    await store.start_job(101, 1, 7, 9, "build", "v1", stage="s", sha="abc", tag=True,
                          pipeline_iid=3, pipeline_source="push", username="u", user_name="U",
                          allow_failure=True)  # fmt: skip
    assert len(await store.client.hkeys(f"{store.prefix}job:101")) == 18


async def test_group_rename_rewrites_the_entries_naming_it(store: Store) -> None:
    await store.set_project(1, "old/app", "private")
    await store.set_project(2, "x/lib", "private")
    await store.set_project(3, "x/tool", "private")
    await store.set_group(10, "old")
    await store.set_inbound(2, "old", True, ["read_packages"])
    await store.set_inbound(3, "OLD", True)
    await store.set_inbound(3, "1", True)
    assert await store.set_group(10, "old") == []  # same path: nothing moves
    assert sorted(await store.set_group(10, "New")) == [2, 3]
    assert await store.get_group(10) == "New"
    assert await store.group_ids(["new", "old"]) == [10, None]
    assert await store.inbound_entries(2) == {"g:new": "read_packages"}
    assert await store.inbound_entries(3) == {"g:new": "*", "p:1": "*"}
    await store.set_project(1, "New/app")  # GitLab moves the group's projects with it
    token = await store.start_job(100, 1, 7)
    entry = (await store.read_access(token, TargetRef(project_id=2))).inbound_entry
    assert entry is not None and entry.source == "g:new" and entry.policies == {"read_packages"}
    await store.set_inbound(2, "new", False)  # removal keeps the index in step: a rename moves nothing
    assert await store.set_group(10, "third") == [3]


async def test_group_paths_are_unique_and_valid(store: Store) -> None:
    await store.set_group(10, "a/b")
    with pytest.raises(ControlError, match="group path A/B already belongs to group 10"):
        await store.set_group(11, "A/B")
    with pytest.raises(ControlError, match="group path must look like"):
        await store.set_group(11, "a//b")
    await store.set_group(10, "c")
    await store.set_group(11, "a/b")  # the old path is free again
    assert await store.group_ids(["a/b", "c"]) == [11, 10]
