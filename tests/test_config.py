"""Config loading: every problem at once, each naming the file and the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "config" / "gateway.yaml"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env={})
    assert str(config.listen) == "127.0.0.1:8080"
    assert config.redis.url is None and config.redis.effective_url == "redis://127.0.0.1:6479/0"
    assert config.admin_token == "dev-admin-token"
    assert set(config.upstreams) == {
        "api", "packages", "container_registry", "artifacts", "triggers", "releases", "terraform", "git",
    }  # fmt: skip


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    return path


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen: nowhere
listn: 127.0.0.1:1
redis: {url: http://x, timeout: -1}
upstreams:
  git: {url: git.local}
  packages: {url: http://127.0.0.1:1, read_timeout: soon, colour: blue}
  mystery: {url: http://127.0.0.1:2}
scope: {enforce_inbound: maybe}
admin_listen: 127.0.0.1:8081
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    problems = "\n".join(caught.value.problems)
    for expected in [
        f"{path}: listen: expected host:port, got 'nowhere'",
        f"{path}: listn: unknown key",
        f"{path}: redis.url: expected a redis://",
        f"{path}: redis.timeout: expected a positive number, got -1",
        f"{path}: upstreams.git.url: expected an http(s) URL, got 'git.local'",
        f"{path}: upstreams.packages.read_timeout: expected a positive number, got 'soon'",
        f"{path}: upstreams.packages.colour: unknown key",
        f"{path}: upstreams.mystery: unknown key",
        f"{path}: scope.enforce_inbound: expected true or false, got 'maybe'",
        f"{path}: admin_token: required when admin_listen is set",
    ]:
        assert expected in problems
    assert len(caught.value.problems) == 10


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ('{X-Auth: "a\\r\\nX-Injected: 1"}', "upstreams.git.headers.X-Auth: a header value may not hold CR"),
        ('{X-Auth: "a\\nb"}', "upstreams.git.headers.X-Auth: a header value may not hold CR"),
        ('{X-Auth: "a\\0b"}', "upstreams.git.headers.X-Auth: a header value may not hold CR"),
        ('{"Bad Name": x}', "upstreams.git.headers: 'Bad Name' is not an HTTP header name"),
        ('{"X:Y": x}', "upstreams.git.headers: 'X:Y' is not an HTTP header name"),
    ],
)
def test_an_upstream_header_that_would_break_the_request_head_is_a_config_error(
    tmp_path: Path, headers: str, problem: str
) -> None:
    """Every request to that upstream would fail (the head serializer refuses it): refused at
    load, naming the key, never showing the value (it may be a secret)."""
    path = write(
        tmp_path,
        f"listen: 127.0.0.1:8080\nupstreams: {{git: {{url: 'http://127.0.0.1:1', headers: {headers}}}}}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: {problem}" in "\n".join(caught.value.problems)
    assert "Injected" not in str(caught.value)


def test_a_tab_in_an_upstream_header_value_is_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: 127.0.0.1:8080\nupstreams: {git: {url: 'http://127.0.0.1:1', headers: {X-A: \"a\\tb\"}}}\n",
    )
    assert load_config(path).upstreams["git"].headers["X-A"] == "a\tb"


def test_environment_variables_fill_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: 127.0.0.1:8080\nadmin_token: ${ADMIN}\n"
        "upstreams: {git: {url: 'http://127.0.0.1:1', headers: {Authorization: 'Basic ${CRED}'}}}\n",
    )
    config = load_config(path, env={"ADMIN": "s3cret", "CRED": "eDp5"})
    assert config.admin_token == "s3cret"
    assert config.upstreams["git"].headers["Authorization"] == "Basic eDp5"
    assert "s3cret" not in repr(config) and "eDp5" not in repr(config.upstreams["git"])
    with pytest.raises(ConfigError, match="admin_token: environment variable ADMIN is not set"):
        load_config(path, env={"CRED": "x"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: [unclosed", "line 1"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("upstreams: {}\n", "listen: required"),
        ("listen: 127.0.0.1:1\n", "upstreams: required"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/gw.yaml")


def test_check_command_reports_and_exits_nonzero(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: x\nupstreams: {git: {url: nope}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{path}: listen: expected host:port" in result.stderr
    assert f"{path}: upstreams.git.url: expected an http(s) URL" in result.stderr
    assert "Traceback" not in result.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(EXAMPLE)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "ok" in ok.stdout


def test_admin_listener_stays_on_loopback_unless_said_otherwise(tmp_path: Path) -> None:
    text = "listen: 127.0.0.1:1\nadmin_listen: 0.0.0.0:8081\nadmin_token: t\nupstreams: {git: {url: 'http://x:1'}}\n"
    with pytest.raises(ConfigError, match=r"admin_listen: 0\.0\.0\.0 is not a loopback address"):
        load_config(write(tmp_path, text), env={})
    assert load_config(write(tmp_path, text + "admin_public: true\n"), env={}).admin_listen is not None


LATE_KEYS = """
listen: 127.0.0.1:8080
metrics_listen: localhost
explain: maybe
public_url: jobgate.example.com
limits: {max_token_length: big, max_form_body: -1, idle_timeout: soon, body_idle_timeout: 0,
         failed_auth_per_minute: many}
redis: {url: "redis://127.0.0.1:notaport/0"}
upstreams: {git: {url: "http://127.0.0.1:1"}}
"""


def test_keys_read_last_are_checked_with_the_rest(tmp_path: Path) -> None:
    # these were read after the `if problems: raise`: `check` said ok, `serve` ignored or crashed
    path = write(tmp_path, LATE_KEYS)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == [
        f"{path}: redis.url: expected host[:port] in the Redis URL, got '127.0.0.1:notaport' in "
        "'redis://127.0.0.1:notaport/0'",
        f"{path}: metrics_listen: expected host:port, got 'localhost'",
        f"{path}: explain: expected true or false, got 'maybe'",
        f"{path}: limits.max_token_length: expected a positive number, got 'big'",
        f"{path}: limits.max_form_body: expected a positive number, got -1",
        f"{path}: limits.failed_auth_per_minute: expected a positive number, got 'many'",
        f"{path}: limits.idle_timeout: expected a positive number, got 'soon'",
        f"{path}: limits.body_idle_timeout: expected a positive number, got 0",
        f"{path}: public_url: expected an http(s) URL, got 'jobgate.example.com'",
    ]
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 2 and checked.stderr.count(f"{path}: ") == 9


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:notaport/0", "expected host[:port]"),
        ("redis://127.0.0.1:70000/0", "expected host[:port]"),
        ("redis://:6379/0", "expected host[:port]"),
        ("redis://127.0.0.1:6379/zero", "expected a database number"),
        ("unix://", "expected unix:///path"),
        ("redis://127.0.0.1:6379/0", None),
        ("redis://:secret@redis:6379", None),
        ("rediss://[::1]:6380/2", None),
        ("redis+cluster://10.0.0.1:7000/0", None),
        ("redis+sentinel://s1:26379,s2:26379/mymaster/0", None),
        ("unix:///run/redis.sock", None),
    ],
)
def test_redis_urls(url: str, problem: str | None) -> None:
    from gateway.config import parse_config

    data = {"listen": "127.0.0.1:1", "redis": {"url": url}, "upstreams": {"git": {"url": "http://x:1"}}}
    if problem is None:
        assert parse_config(data, "gw.yaml", env={}).redis.url == url
        return
    with pytest.raises(ConfigError, match=f"gw.yaml: redis.url: {re.escape(problem)}"):
        parse_config(data, "gw.yaml", env={})
