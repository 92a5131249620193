"""Every ```python block of README.md and docs/*.md runs, as a reader would paste it.

The blocks of one markdown file run in order in one fresh module namespace (a later block
may use an earlier one's names), in a Python process of their own per file (with
warnings as errors), so Django's global settings, event loops and threads a block leaves
behind cannot reach other tests. A block may ``await`` at top level, as in
``python -m asyncio``; such blocks share one event loop per file. A block that calls
``sys.exit()`` with a success status passes.

Each run is pointed at the suite's Redis and kept apart from other runs:

- every Redis URL in a block (``redis://``, ``rediss://``, ``valkey://``, ``unix://``,
  placeholders such as ``redis://...`` included) is replaced by ``redis_url``;
- every ``Cache`` made during the run gets a namespace prefixed with a unique run id, and
  is cleared and closed afterwards; the test then deletes any key left with that prefix;
- the secrets the docs read from the environment (``CACHE_KEY``, ...) are set to random
  values, as a reader's deployment would set them.

Fences the test recognises (any other ``python``/``py`` info string is an error):

- ```` ```python ````: runs.
- ```` ```python django-settings ````: a Django settings module. Its upper-case names
  configure Django (``settings.configure``, with an in-memory SQLite database and
  ``INSTALLED_APPS = ["cachelayer.django"]`` unless the block sets them); then the system
  checks must report nothing, and every cache alias is built and stores a value. The
  file's first such block configures the file's own process, so its later blocks run
  inside that project; each later one is checked in a process of its own.
- ```` ```python no-run ````: not run. An HTML comment right above the fence says why,
  ``<!-- no-run: needs a Django project with its models -->``; the test refuses a
  no-run block without one.

A failing block is reported with the markdown file, the block's first line and the
error; line numbers in the traceback are the markdown file's.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
KINDS = {"python": "run", "python django-settings": "django-settings", "python no-run": "no-run"}
PYTHON_INFO = ("python", "python3", "py", "py3")
NO_RUN_REASON = re.compile(r"^\s*<!--\s*no-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
# Any Redis-compatible server URL a block names, up to the end of its string literal.
REDIS_URL = re.compile(r"\b(?:redis|rediss|valkey|unix)://[^\s\"'`)]*")
# Environment variables the docs read their secrets from.
SECRETS = ("CACHE_KEY", "NEW_KEY", "OLD_KEY")
DEFAULT_DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TIMEOUT = 120  # seconds for one markdown file's blocks


@dataclass(frozen=True)
class Block:
    """One fenced python block of a markdown file."""

    line: int  # 1-based line of the block's first line of code
    kind: str  # "run", "django-settings" or "no-run"
    source: str  # the code, dedented
    reason: str | None  # why a no-run block does not run


def blocks_of(path: Path) -> list[Block]:
    """The python blocks of ``path``, in order.

    Raises:
        ValueError: a python fence with an info string the test does not know.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        info = " ".join(opening["info"].split())
        if info.partition(" ")[0].lower() in PYTHON_INFO:
            if info not in KINDS:
                raise ValueError(
                    f"{path.name}:{i + 1}: unknown fence info {info!r}; "
                    f"use one of {', '.join(map(repr, KINDS))}"
                )
            reason = NO_RUN_REASON.match(lines[i - 1]) if i > 0 else None
            blocks.append(
                Block(
                    line=i + 2,
                    kind=KINDS[info],
                    source=textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n",
                    reason=reason["reason"] if reason else None,
                )
            )
        i = end + 1
    return blocks


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened with ``fence`` (CommonMark's rule)."""
    text = line.strip()
    return text.startswith(fence) and not text.strip(fence[0])


def _display(path: Path) -> str:
    """``path`` as a report names it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# -- the runner: one markdown file's blocks, in a process of its own --------------------


def _remember_caches(prefix: str, made: list[Any]) -> None:
    """Make every Cache of this process namespaced under ``prefix``, and remember it."""
    import cachelayer

    original = cachelayer.Cache.__init__

    @functools.wraps(original)  # keeps the signature the Django backend checks OPTIONS with
    def init(self: Any, *args: Any, namespace: str = "cache", **options: Any) -> None:
        original(self, *args, namespace=f"{prefix}{namespace}", **options)
        made.append(self)

    cachelayer.Cache.__init__ = init  # type: ignore[method-assign]


def _compile(block: Block, filename: str, redis_url: str) -> Any:
    """Compile a block on ``redis_url``, so that tracebacks give the markdown's lines."""
    source = REDIS_URL.sub(redis_url, block.source)
    padded = "\n" * (block.line - 1) + source
    return compile(padded, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _configure_django(code: Any) -> None:
    """Configure Django from a settings block, run the checks, use every cache alias."""
    import django
    from django.conf import settings
    from django.core import checks
    from django.core.cache import caches

    names: dict[str, Any] = {"__name__": "settings"}
    exec(code, names)
    values = {name: value for name, value in names.items() if name.isupper()}
    values.setdefault("INSTALLED_APPS", ["cachelayer.django"])
    values.setdefault("DATABASES", DEFAULT_DATABASES)
    settings.configure(**values)
    django.setup()
    problems = [str(message) for message in checks.run_checks()]
    assert not problems, f"Django's system checks: {problems}"
    for alias in settings.CACHES:
        key = f"docs-check-{uuid.uuid4().hex}"
        caches[alias].set(key, {"ok": [1, 2]}, 30)
        assert caches[alias].get(key) == {"ok": [1, 2]}, f"CACHES[{alias!r}] stores nothing"
        caches[alias].delete(key)


def _check_settings_elsewhere(path: Path, block: Block) -> None:
    """Check a later settings block in a fresh process (Django's settings are global)."""
    checked = subprocess.run(
        [sys.executable, "-W", "error", __file__, "--django-settings", str(path), str(block.line)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert checked.returncode == 0, f"the settings do not configure Django:\n{checked.stderr}"


def _traceback_of(error: BaseException, filename: str) -> str:
    """The traceback of ``error`` from the block's own frame (in ``filename``) on."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))


def _run_block(
    path: Path,
    block: Block,
    module: Any,
    django_configured: bool,
    loop: asyncio.AbstractEventLoop | None,
) -> asyncio.AbstractEventLoop | None:
    """Run one block in ``module``; returns the file's event loop once there is one."""
    code = _compile(block, _display(path), os.environ["DOCS_REDIS_URL"])
    if block.kind == "django-settings":
        if django_configured:
            _check_settings_elsewhere(path, block)
        else:
            _configure_django(code)
        exec(code, module.__dict__)
    elif code.co_flags & inspect.CO_COROUTINE:  # a top-level await
        loop = loop or asyncio.new_event_loop()
        loop.run_until_complete(eval(code, module.__dict__))
    else:
        exec(code, module.__dict__)
    return loop


def _run_file(path: Path, result_file: Path) -> None:
    """Run ``path``'s blocks in order; write what happened to ``result_file`` as JSON."""
    made: list[Any] = []
    _remember_caches(os.environ["DOCS_PREFIX"], made)
    module = type(sys)(f"docs_{path.stem.replace('-', '_')}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module
    loop: asyncio.AbstractEventLoop | None = None
    outcome: dict[str, Any] = {"ran": 0, "cleanup": []}
    django_configured = False
    try:
        for block in blocks_of(path):
            if block.kind == "no-run":
                continue
            try:
                loop = _run_block(path, block, module, django_configured, loop)
            except BaseException as error:
                # sys.exit() with a success status ends a script well; anything else fails.
                if not (isinstance(error, SystemExit) and error.code in (None, 0, False)):
                    trace = _traceback_of(error, _display(path))
                    outcome["error"] = {"line": block.line, "traceback": trace}
                    break
            django_configured = django_configured or block.kind == "django-settings"
            outcome["ran"] += 1
    finally:
        for cache in made:
            try:
                cache.clear()
                if loop is not None:
                    loop.run_until_complete(cache.aclose())
                cache.close()
            except Exception:
                outcome["cleanup"].append(traceback.format_exc())
        if loop is not None:
            loop.close()
        result_file.write_text(json.dumps(outcome), encoding="utf-8")


# -- the tests -------------------------------------------------------------------------


def run_markdown(path: Path, redis_url: str, workdir: Path) -> int:
    """Run ``path``'s python blocks against ``redis_url``; returns how many ran.

    Raises:
        AssertionError: naming the file, the failing block's line and its error.
    """
    blocks = blocks_of(path)
    unexplained = [b.line for b in blocks if b.kind == "no-run" and not b.reason]
    assert not unexplained, (
        f"{_display(path)}: the no-run blocks at lines {unexplained} need a reason on the "
        "line above their fence: <!-- no-run: why it cannot run -->"
    )
    to_run = sum(b.kind != "no-run" for b in blocks)
    if not to_run:
        return 0
    prefix = f"docs{uuid.uuid4().hex[:12]}-"
    result_file = workdir / "result.json"
    env = {
        **os.environ,
        **{name: secrets.token_hex(16) for name in SECRETS},
        "DOCS_REDIS_URL": redis_url,
        "DOCS_PREFIX": prefix,
    }
    try:
        process = subprocess.run(
            [sys.executable, "-W", "error", __file__, str(path), str(result_file)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
            cwd=workdir,
        )
    finally:
        client = redis.Redis.from_url(redis_url)
        left = [*client.scan_iter(f"{prefix}*"), *client.scan_iter(f"{{{prefix}*")]
        if left:
            client.delete(*left)
        client.close()
    assert result_file.exists(), (
        f"{_display(path)}: the runner died (exit {process.returncode}):\n{process.stderr}"
    )
    outcome = json.loads(result_file.read_text(encoding="utf-8"))
    error = outcome.get("error")
    assert error is None, (
        f"{_display(path)}, block at line {error['line']} failed:\n{error['traceback']}"
        f"--- its output ---\n{process.stdout}{process.stderr}"
    )
    assert not outcome["cleanup"], "\n".join(outcome["cleanup"])
    assert outcome["ran"] == to_run
    return to_run


@pytest.mark.parametrize("path", MARKDOWN, ids=_display)
def test_python_blocks_run(path: Path, redis_url: str, tmp_path: Path) -> None:
    """Every python block of the file runs, in order, against Redis; no-run ones say why."""
    run_markdown(path, redis_url, tmp_path)


def test_blocks_are_found_with_their_kind_line_and_reason(tmp_path: Path) -> None:
    """Fences are read with their info string, an indented one dedented, reasons kept."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n\n"
        "1. A step:\n\n   ```python django-settings\n   A = 1\n   ```\n\n"
        "<!-- no-run: needs a project -->\n```python no-run\nfrom shop import models\n```\n"
        "````python\nprint('```')\n````\n",
        encoding="utf-8",
    )
    assert blocks_of(doc) == [
        Block(line=4, kind="run", source="x = 1\n", reason=None),
        Block(line=14, kind="django-settings", source="A = 1\n", reason=None),
        Block(
            line=19, kind="no-run", source="from shop import models\n", reason="needs a project"
        ),
        Block(line=22, kind="run", source="print('```')\n", reason=None),
    ]


def test_an_unknown_python_fence_is_refused(tmp_path: Path) -> None:
    """A misspelt marker (``python norun``) is an error, not a block that silently runs."""
    doc = tmp_path / "doc.md"
    doc.write_text("```python norun\nx = 1\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"doc\.md:1: unknown fence info 'python norun'"):
        blocks_of(doc)


def test_a_no_run_block_needs_a_reason(tmp_path: Path, redis_url: str) -> None:
    """A no-run block without the comment above it fails the file's test."""
    doc = tmp_path / "doc.md"
    doc.write_text("Text.\n\n```python no-run\nx = 1\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"no-run blocks at lines \[4\] need a reason"):
        run_markdown(doc, redis_url, tmp_path)


def test_a_failing_block_is_reported_with_its_file_line_and_error(
    tmp_path: Path, redis_url: str
) -> None:
    """Blocks share names in order; the one that fails is named by file, line and error."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\nfrom cachelayer import Cache\n"
        'cache = Cache("redis://localhost:6379/0", namespace="shop")\n'
        'cache.set("a", 1)\n```\n\n'
        '```python\nassert cache.get("a") == 1\nundefined_name\n```\n',
        encoding="utf-8",
    )
    with pytest.raises(AssertionError) as failure:
        run_markdown(doc, redis_url, tmp_path)
    message = str(failure.value)
    assert f"{doc}, block at line 8 failed" in message
    assert f'File "{doc}", line 9' in message
    assert "NameError: name 'undefined_name' is not defined" in message


if __name__ == "__main__":
    if sys.argv[1] == "--django-settings":
        _remember_caches(os.environ["DOCS_PREFIX"], [])
        markdown, line = Path(sys.argv[2]), int(sys.argv[3])
        (settings_block,) = [b for b in blocks_of(markdown) if b.line == line]
        _configure_django(
            _compile(settings_block, _display(markdown), os.environ["DOCS_REDIS_URL"])
        )
    else:
        _run_file(Path(sys.argv[1]), Path(sys.argv[2]))
