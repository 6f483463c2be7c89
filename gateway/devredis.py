"""A private redis-server owned by one process: `jobgate serve` without `redis.url`, and tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "redis-server not found: apt-get install -y redis-server (make test installs it)"


class RedisNotInstalled(RuntimeError):
    """No redis-server on PATH; the message is the line that installs it."""


class PortTaken(RuntimeError):
    """Something already listens on the port the server was to own."""


def port_taken(port: int) -> bool:
    """True when something listens on 127.0.0.1:`port` (connections in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read_reply(sock: socket.socket) -> bytes:
    """One bulk reply (`$<length>\\r\\n<data>`), read whole."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n")
    if not head.startswith(b"$"):
        return data
    while len(rest) < int(head[1:]):
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return rest


class RedisProcess:
    """redis-server on 127.0.0.1:`port`, nothing saved to disk, stopped with the owner."""

    def __init__(
        self, port: int | None = None, directory: str | Path | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        self.port = port or free_port()
        self.extra = extra
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="jobgate-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        """Start the server and wait until it answers as itself (INFO names its pid).

        RedisNotInstalled without redis-server, PortTaken when the port is not free (a
        server already there would otherwise answer in its place).
        """
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled(INSTALL_HINT)
        if port_taken(self.port):
            raise PortTaken(f"127.0.0.1:{self.port} is taken")
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"INFO server\r\n")
                    answer = _read_reply(sock)
                if f"process_id:{self.process.pid}\r".encode() in answer:
                    return self
                if answer:  # another server took the port between the check and the start
                    self.stop()
                    raise PortTaken(f"127.0.0.1:{self.port} is taken")
            except OSError:
                time.sleep(0.05)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
