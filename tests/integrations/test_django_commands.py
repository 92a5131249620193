"""The management commands of the cachelayer.django app, run with call_command.

``cachelayer_stats`` reports each cachelayer alias (a timed round trip to its store, the
circuit breaker, the Cache's counters); ``cachelayer_clear`` deletes one alias's
namespace and version only. Against a real Redis, process memory and a dead port.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from cachelayer import MISSING
from cachelayer.django import get_cache
from cachelayer.testing import free_port

BACKEND = "cachelayer.django.CacheBackend"


@pytest.fixture
def aliases(redis_url: str, namespace: str) -> Iterator[dict[str, Any]]:
    """cachelayer aliases on Redis ("default", and "other" in another namespace), memory
    ("local") and a dead port with a password in its URL ("down"), plus a LocMemCache;
    the shared Caches are cleared and closed afterwards."""
    port = free_port()
    dead = f"redis://app:s3cret@127.0.0.1:{port}/0?socket_timeout=0.3&socket_connect_timeout=0.3"
    setting = {
        "default": {
            "BACKEND": BACKEND,
            "LOCATION": redis_url,
            "OPTIONS": {"namespace": namespace, "version": 3},
        },
        "other": {
            "BACKEND": BACKEND,
            "LOCATION": redis_url,
            "OPTIONS": {"namespace": namespace + "o"},
        },
        "local": {
            "BACKEND": BACKEND,
            "LOCATION": "memory://",
            "OPTIONS": {"namespace": namespace},
        },
        "down": {"BACKEND": BACKEND, "LOCATION": dead, "OPTIONS": {"namespace": namespace}},
        "stock": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHES=setting):
        yield setting
        for alias in ("default", "other", "local", "down"):
            cache = get_cache(alias)
            cache.clear()
            cache.close()


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_stats_reports_every_cachelayer_alias(aliases: dict[str, Any], namespace: str) -> None:
    """cachelayer_stats lists each cachelayer alias (not the LocMemCache one) with its
    store, a round trip, the breaker and this process's counters; a dead store's ping
    fails without raising, and passwords are hidden."""
    cache = get_cache()
    cache.set("k", 1)
    cache.get("k")
    cache.get("absent")
    out, _ = run("cachelayer_stats")
    assert "default:" in out
    assert "local:" in out
    assert "down:" in out
    assert "stock" not in out
    assert f"namespace {namespace!r}, version 3, codec json" in out
    assert "hits 1, misses 1" in out
    assert "breaker    closed" in out
    assert "ping       failed: ConnectionError" in out
    assert "s3cret" not in out
    assert "app:***@" in out
    assert "memory:// lives in each process" in out


def test_stats_json(aliases: dict[str, Any], namespace: str) -> None:
    """--json prints one object per alias; aliases may be named."""
    get_cache().set("k", 1)
    out, _ = run("cachelayer_stats", "default", "down", "--json")
    report = json.loads(out)
    assert set(report) == {"default", "down"}
    default = report["default"]
    assert default["namespace"] == namespace
    assert default["version"] == "3"
    assert default["codec"] == "json"
    assert default["breaker"] == "closed"
    assert default["ping_error"] is None
    assert default["ping_ms"] >= 0
    assert default["stats"]["sets"] == 1
    assert report["down"]["ping_ms"] is None
    assert "ConnectionError" in report["down"]["ping_error"]


def test_stats_refuses_other_aliases(aliases: dict[str, Any]) -> None:
    """Naming an alias that is not cachelayer's (or none at all) is a CommandError."""
    with pytest.raises(CommandError, match="'stock'"):
        run("cachelayer_stats", "stock")
    with pytest.raises(CommandError, match="'nope'"):
        run("cachelayer_stats", "nope")


def test_clear_deletes_one_namespace_and_version_only(
    aliases: dict[str, Any], redis_url: str, namespace: str
) -> None:
    """cachelayer_clear [alias] deletes that alias's namespace and version: another
    namespace, another version and unrelated keys in the same database stay."""
    client = redis.Redis.from_url(redis_url)
    try:
        get_cache().set("a", 1)
        get_cache().set("b", 2)
        get_cache("other").set("a", "kept")
        client.set(f"{namespace}:v1:a", b"another version")
        client.set(f"unrelated-{namespace}", b"kept")
        out, err = run("cachelayer_clear", "--noinput")
        assert "Deleted 2 keys of 'default'" in out
        assert err == ""
        assert get_cache().get("a", MISSING) is MISSING
        assert get_cache("other").get("a") == "kept"
        assert client.get(f"{namespace}:v1:a") == b"another version"
        assert client.get(f"unrelated-{namespace}") == b"kept"
        run("cachelayer_clear", "other", "--noinput")
        assert get_cache("other").get("a", MISSING) is MISSING
    finally:
        client.delete(f"{namespace}:v1:a", f"unrelated-{namespace}")
        client.close()


def test_clear_reports_what_it_cannot_do(aliases: dict[str, Any]) -> None:
    """A dead store is a CommandError, not a silent success; memory:// is cleared in
    this process only, which stderr says; another backend is refused."""
    with pytest.raises(CommandError, match="could not clear 'down'"):
        run("cachelayer_clear", "down", "--noinput")
    get_cache("local").set("k", 1)
    out, err = run("cachelayer_clear", "local", "--noinput")
    assert "Deleted 1 keys of 'local'" in out
    assert "this process's copy only" in err
    assert get_cache("local").get("k", MISSING) is MISSING
    with pytest.raises(CommandError, match="'stock'"):
        run("cachelayer_clear", "stock", "--noinput")


def test_clear_says_what_it_deletes_and_asks_first(
    aliases: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --noinput it names what it will delete -- the sessions, when they live in
    that cache -- and deletes nothing unless the answer is yes (it used to wipe every
    session without a word)."""
    get_cache("local").set("k", 1)
    answers = iter(["no", "yes"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    with override_settings(
        SESSION_ENGINE="django.contrib.sessions.backends.cache", SESSION_CACHE_ALIAS="local"
    ):
        out, _ = run("cachelayer_clear", "local")
        assert "holds the sessions: every user will be logged out" in out
        assert "Nothing deleted." in out
        assert get_cache("local").get("k") == 1
        out, _ = run("cachelayer_clear", "local")
    assert "Deleted 1 keys of 'local'" in out
    assert get_cache("local").get("k", MISSING) is MISSING
