"""Starts the demo app under gunicorn on a free loopback port, and stops it by its pid."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any


class ServerError(RuntimeError):
    """The demo server did not start; the message holds the end of its log."""


class Server:
    """gunicorn serving the demo app: ``workers`` processes of ``threads`` threads each
    (gthread worker).

    The memory store runs one worker, because it lives in a process: with several, a
    write would invalidate one worker's copy only. With Redis the demo runs several, as
    Django is deployed; their request counters add up in a shared file. The parent binds
    the socket (port 0, so the kernel picks a free port) and hands it to gunicorn, so no
    other program can take the port between the choice and the bind.
    """

    def __init__(self, config: dict[str, Any], threads: int, workers: int = 1) -> None:
        self.config = config
        self.threads = threads
        self.workers = workers
        self.host = "127.0.0.1"
        self.port = 0
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self._counters = tempfile.NamedTemporaryFile(prefix="cldemo-", suffix=".counters")  # noqa: SIM115

    def __enter__(self) -> Server:
        from .counters import file_size

        self._counters.truncate(file_size())
        self._counters.flush()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        sock.listen(2048)
        self._sock, self.port = sock, sock.getsockname()[1]
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = "cachelayer.demo.settings"
        config = {
            **self.config,
            "counters": self._counters.name,
            "counters_shared": self.workers > 1,
        }
        env["CACHELAYER_DEMO"] = json.dumps(config)
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"fd://{sock.fileno()}",
            "--workers", str(self.workers),
            "--worker-class", "gthread", "--threads", str(self.threads),
            "--keep-alive", "30", "--timeout", "120", "--log-level", "warning",
            "cachelayer.demo.wsgi:application",
        ]  # fmt: skip
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command, env=env, pass_fds=[sock.fileno()], stdout=self._log, stderr=self._log
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()  # stop what we started, close the socket and the log
            raise
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"the demo server exited:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerError(
            f"the demo server did not answer within {timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        """Stop the server (its own pid only), then close the socket and the log."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._log.close()
        self._counters.close()
