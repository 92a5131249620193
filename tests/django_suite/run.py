"""Run Django's own cache tests against ``cachelayer.django.CacheBackend``.

Django's wheel does not ship its test suite; its sdist does. This script downloads the
sdist of the Django installed here (``pip download --no-binary :all:``) into a temporary
directory, adds the two files beside it (``settings.py``, ``cache_tests.py``) and runs
Django's ``tests/runtests.py`` on:

- ``template_tests.syntax_tests.test_cache``: the ``{% cache %}`` tag, with the default
  cache a cachelayer backend;
- ``cache.test_cachelayer`` (``cache_tests.py``): Django's ``BaseCacheTests`` and its
  middleware, ``cache_page`` and ``django.utils.cache`` tests over cachelayer backends.

Both run once on ``memory://`` and once on Redis: ``REDIS_URL`` when it is set, otherwise
a private server (``cachelayer.testing.RedisServer``), as the test suite does. A missing
server is an error, not a skip. Exits non-zero if any run fails.

Usage::

    python tests/django_suite/run.py [--sdist django-X.Y.Z.tar.gz] [-v 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import django

from cachelayer.testing import RedisServer

HERE = Path(__file__).resolve().parent
LABELS = ["template_tests.syntax_tests.test_cache", "cache.test_cachelayer"]


def fetch_sdist(version: str, into: Path) -> Path:
    """Django's sdist of ``version`` from the package index, downloaded into ``into``."""
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip, "--no-binary", ":all:", f"django=={version}", "--dest", str(into)], check=True
    )
    found = sorted(into.glob("[dD]jango-*.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"expected one Django sdist in {into}, found {found}")
    return found[0]


def unpack_tests(sdist: Path, into: Path) -> Path:
    """Django's ``tests/`` directory out of the sdist, with the cachelayer files added."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"]]
        if not members:
            raise SystemExit(f"{sdist.name} holds no tests/ directory")
        if hasattr(tarfile, "data_filter"):  # refuse links and paths out of `into`
            archive.extractall(into, members=members, filter="data")
        else:  # Python without extraction filters: the archive is PyPI's own sdist
            archive.extractall(into, members=members)
    tests = into / members[0].name.split("/")[0] / "tests"
    shutil.copyfile(HERE / "settings.py", tests / "cachelayer_settings.py")
    shutil.copyfile(HERE / "cache_tests.py", tests / "cache" / "test_cachelayer.py")
    return tests


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """``REDIS_URL``, or a private server for the length of the run."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


def start_django_tests(tests: Path, location: str, verbosity: int) -> subprocess.Popen[str]:
    """Django's runtests.py on LABELS with every cache on ``location``, started.

    One process per store (``--parallel=1``): runtests' parallel mode needs ``tblib`` to
    report an error at all, and the two stores already run side by side.
    """
    env = dict(os.environ)
    env["CACHELAYER_DJANGO_LOCATION"] = location
    env["CACHELAYER_DJANGO_NAMESPACE"] = "djsuite" + uuid.uuid4().hex[:8]
    command = [sys.executable, "runtests.py", "--settings=cachelayer_settings"]
    command += ["--parallel=1", f"--verbosity={verbosity}", *LABELS]
    return subprocess.Popen(
        command, cwd=tests, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help="a Django sdist already downloaded")
    parser.add_argument("-v", "--verbosity", type=int, default=1, choices=[0, 1, 2, 3])
    args = parser.parse_args(argv)
    results: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="cachelayer-django-suite-") as tmp:
        work = Path(tmp)
        sdist = args.sdist or fetch_sdist(django.__version__, work)
        tests = unpack_tests(sdist, work)
        with redis_url() as url:
            runs = {
                where: start_django_tests(tests, where, args.verbosity)
                for where in ("memory://", url)
            }
            for where, run in runs.items():
                output, _ = run.communicate()
                print(f"\n== Django {django.__version__}'s tests, caches on {where}\n{output}")
                results[where] = run.returncode == 0
    for where, passed in results.items():
        print(f"{'passed' if passed else 'FAILED'}: Django's cache tests on {where}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
