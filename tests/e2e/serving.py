"""Real processes for end-to-end tests: `jobgate serve` and a bulk upstream."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from gateway.devredis import free_port
from gateway.observe import Metrics

HERE = Path(__file__).parent
SHIPPED = HERE.parent.parent / "config" / "gateway.yaml"


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Poll `url` until it answers; fail with the process's log when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def static_files(tmp_path: Path, files: dict[str, str]) -> Iterator[str]:
    """`python -m http.server` serving `files` (path -> text) on a free port: its base URL."""
    root = tmp_path / "static-files"
    for path, text in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(text)
    port, log = free_port(), tmp_path / "http.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


def registry_token_auth(gw: JobgateProcess, tmp_path: Path) -> dict[str, str]:
    """docker-registry's `auth: token:` settings for verifying `gw`'s registry tokens itself:
    jobgate's /jwt/auth as realm, and the certificate `jobgate admin registry certificate`
    prints (written after `gw`'s config, which creates the signing key) as rootcertbundle."""
    gw.config_path.write_text(yaml.safe_dump(gw.config))
    bundle = tmp_path / "rootcertbundle.pem"
    bundle.write_text(gw.admin("registry", "certificate") + "\n")
    return {"realm": f"{gw.url}/jwt/auth", "service": "container_registry", "issuer": "jobgate",
            "rootcertbundle": str(bundle)}  # fmt: skip


class JobgateProcess:
    """`jobgate serve` in a subprocess on free ports, with its stderr captured to a file."""

    def __init__(
        self,
        directory: Path,
        redis_url: str,
        upstreams: dict[str, str],
        workers: int | None = 1,  # None: `serve`'s default, one per core
        **extra: Any,
    ) -> None:
        self.directory = directory
        self.workers = workers
        self.port, self.admin_port, self.metrics_port = free_port(), free_port(), free_port()
        addresses = {
            "listen": f"127.0.0.1:{self.port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}",
            "metrics_listen": f"127.0.0.1:{self.metrics_port}",
            "redis": {"url": redis_url},
        }
        self.config: dict[str, Any] = {
            **addresses,
            "admin_token": "e2e-admin-token",
            "upstreams": {name: {"url": url} for name, url in upstreams.items()},
            **extra,
        }
        self.config_path = directory / "jobgate.yaml"
        self.log_path = directory / "jobgate.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def shipped(
        cls, directory: Path, redis_url: str, upstreams: dict[str, str], **extra: Any
    ) -> JobgateProcess:
        """config/gateway.yaml as shipped and the default flags (`--workers`: one per core),
        with only addresses and ports changed."""
        gateway = cls(directory, redis_url, upstreams, workers=None)
        config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
        for name, url in upstreams.items():
            config["upstreams"][name]["url"] = url
        for key in ("listen", "admin_listen", "metrics_listen", "redis"):
            config[key] = gateway.config[key]
        gateway.config = {**config, **extra}
        return gateway

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> JobgateProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path),
                 *(["--workers", str(self.workers)] if self.workers is not None else [])],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_http(f"http://127.0.0.1:{self.metrics_port}/-/health", self.process, self.log_path)
        # with workers, the parent's listeners come up before the workers' shared port does
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    log = self.log_path.read_text()[-3000:]
                    raise RuntimeError(f"port {self.port} never opened:\n{log}") from None
                time.sleep(0.05)
        return self

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        """Everything the gateway printed, including the access lines of every finished request
        (written at the next fold, Metrics.FOLD_SECONDS at most after the request ended)."""
        time.sleep(Metrics.FOLD_SECONDS * 3)
        return self.log_path.read_text(errors="replace")

    def admin(self, *args: str) -> str:
        """Run `jobgate admin --config <this config> ARGS`; its stdout (fails loudly)."""
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "admin", "--config", str(self.config_path), *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
        return result.stdout.strip()

    def rss_peak_kib(self) -> int:
        """The process's peak resident set size (VmHWM) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def rss_kib(self) -> int:
        """The process's current resident set size in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def __enter__(self) -> JobgateProcess:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class BulkUpstream:
    """tests/e2e/bulk_upstream.py in a subprocess: streams N zero bytes, counts uploads."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log_path = directory / "bulk.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BulkUpstream:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(HERE / "bulk_upstream.py"), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        wait_http(self.url + "/health", self.process, self.log_path)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=10)
