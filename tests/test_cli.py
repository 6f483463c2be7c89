"""The command line: options after the verb, usage of the failing subcommand, a help line everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from gateway.__main__ import _parser
from gateway.devredis import RedisProcess
from gateway.store import Store


def jobgate(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def _walk(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                found.extend(_walk(child, f"{name} {child_name}"))
    return found


def test_every_subcommand_and_option_has_a_help_line() -> None:
    missing = []
    for name, parser in _walk(_parser(), "jobgate"):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{name} {sub}" for sub in action.choices if sub not in helped]
            elif not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_project_set_states_its_defaults() -> None:
    text = jobgate("admin", "project", "set", "--help").stdout
    assert "--inbound on|off" in text and "a new project: on" in " ".join(text.split())
    assert "--scope on|off" in text
    start = " ".join(jobgate("admin", "job", "start", "--help").stdout.split())
    assert "--timeout SECONDS" in start and "(default: 3600)" in start


def test_config_after_the_verb(tmp_path: Path, redis_server: RedisProcess, store: Store) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(f"listen: 127.0.0.1:1\nredis: {{url: '{redis_server.url}'}}\n"
                      "upstreams: {api: {url: 'http://127.0.0.1:2'}}\n")  # fmt: skip
    assert jobgate("admin", "project", "set", "1", "--path", "g/app", "--visibility", "private",
                   "--config", str(config)).returncode == 0  # fmt: skip
    started = jobgate("admin", "job", "start", "--id", "5", "--project", "1", "--user", "7",
                      "--config", str(config))  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("glcbt-")
    url_after = jobgate("admin", "job", "finish", "5", "--redis-url", redis_server.url)
    assert url_after.returncode == 0, url_after.stderr
    both = jobgate("admin", "--redis-url", redis_server.url, "job", "erase", "5", "--config", str(config))
    assert both.returncode == 2 and "give one of them, not both" in both.stderr


def test_an_error_shows_the_failing_subcommands_usage() -> None:
    unknown = jobgate("admin", "job", "start", "--id", "1", "--project", "1", "--user", "7", "--bogus")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("usage: jobgate admin job start")
    assert "jobgate admin job start: error: unrecognized arguments: --bogus" in unknown.stderr
    bad_value = jobgate("admin", "project", "set", "1", "--inbound", "maybe")
    assert bad_value.stderr.startswith("usage: jobgate admin project set")
    assert "argument --inbound: expected on or off" in bad_value.stderr


async def test_explain_shows_the_git_text_and_one_status(redis_server: RedisProcess, store: Store) -> None:
    await store.set_project(1, "group/app", "private")
    await store.set_project(2, "other/repo", "private")
    await store.set_member(1, 7, 30)
    await store.set_member(2, 7, 10)
    await store.start_job(100, 1, 7)
    clone = jobgate("explain", "--redis-url", redis_server.url, "--job", "100", "GET",
                    "/other/repo.git/info/refs?service=git-upload-pack")  # fmt: skip
    assert clone.returncode == 1, clone.stderr
    assert ("client    404 The project you were looking for could not be found or you don't have "
            "permission to view it.") in clone.stdout  # fmt: skip
    role = jobgate("explain", "--redis-url", redis_server.url, "--job", "100", "GET",
                   "/api/v4/projects/2/packages/generic/a/1/a")  # fmt: skip
    assert 'client    404 {"message":"404 Not Found"}' in role.stdout
    assert "403 403" not in clone.stdout + role.stdout
