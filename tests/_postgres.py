"""A PostgreSQL for the tests that are about PostgreSQL: found, or started privately.

``POSTGRES_URL`` wins when set. Otherwise a server on 127.0.0.1:5432 that accepts
``postgres`` without a password is used. Otherwise a private cluster is created with the
``initdb`` and ``postgres`` binaries (PATH, or Debian's /usr/lib/postgresql/<v>/bin) in a
temporary directory, on a free port, and stopped by its pid. As root, the cluster runs as
the ``postgres`` user (PostgreSQL refuses to run as root). Nothing found is a loud error.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from cachelayer.testing import free_port

LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"


def reachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise FileNotFoundError(
        f"PostgreSQL tests need a server: set POSTGRES_URL, run one on 127.0.0.1:5432, "
        f"or install PostgreSQL's binaries ({name} was not found)"
    )


@contextmanager
def private_postgres() -> Iterator[str]:
    """A throwaway cluster; yields its URL and stops it by pid afterwards."""
    initdb, postgres = _bin("initdb"), _bin("postgres")
    root = Path(tempfile.mkdtemp(prefix="cachelayer-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    data, port = root / "data", free_port()
    proc = None
    try:
        subprocess.run(
            [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        proc = subprocess.Popen(
            [*as_user, postgres, "-D", str(data), "-p", str(port), "-k", str(root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while not reachable(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private PostgreSQL did not start")
            time.sleep(0.2)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    url = os.environ.get("POSTGRES_URL")
    if url:
        psycopg.connect(url, connect_timeout=5).close()  # loud when unreachable
        yield url
    elif reachable(LOCAL):
        yield LOCAL
    else:
        with private_postgres() as private:
            yield private
