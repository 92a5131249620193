"""`cachelayer doctor` against private Redis servers configured well, badly, and behind an ACL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from cachelayer import Cache
from cachelayer.__main__ import main
from cachelayer.cli.doctor import Finding, diagnose
from cachelayer.testing import RedisServer


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """The private server's default user, reset to a well-configured cache after each test."""
    r = redis.Redis.from_url(server.url)
    r.flushall()
    r.config_set("maxmemory", str(256 << 20))
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.config_set("save", "")
    r.config_set("appendonly", "no")
    yield r
    r.flushall()
    r.config_set("maxmemory", "0")
    r.config_set("maxmemory-policy", "noeviction")
    r.execute_command("ACL", "DELUSER", "app", "ops")
    r.close()


def _by_check(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.check, []).append(f)
    return out


def _severities(findings: list[Finding], check: str) -> set[str]:
    return {f.severity for f in _by_check(findings)[check]}


def test_well_configured_server_passes(admin: redis.Redis, server: RedisServer) -> None:
    """maxmemory, allkeys-lru, no persistence, TTLs everywhere: every finding is ok."""
    cache = Cache(server.url, namespace="shop", ttl=60)
    cache.set("user:1", {"id": 1})
    cache.close()
    findings = diagnose(admin)
    assert {f.severity for f in findings} == {"ok"}, findings
    assert main(["doctor", "--redis", server.url]) == 0


def test_noeviction_with_maxmemory_is_an_error(
    admin: redis.Redis, server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """noeviction under a maxmemory refuses writes when full: an error, exit code 1."""
    admin.config_set("maxmemory-policy", "noeviction")
    findings = diagnose(admin)
    assert _severities(findings, "eviction") == {"error"}
    assert main(["doctor", "--redis", server.url, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1
    eviction = [f for f in data["findings"] if f["check"] == "eviction"]
    assert "allkeys-lru" in eviction[0]["fix"]


def test_no_maxmemory_is_found(admin: redis.Redis) -> None:
    """Without maxmemory Redis grows without bound: a warning with the fix."""
    admin.config_set("maxmemory", "0")
    (finding,) = _by_check(diagnose(admin))["maxmemory"]
    assert finding.severity in ("warning", "error")
    assert "no maxmemory" in finding.message
    assert "CONFIG SET maxmemory" in finding.fix


def test_volatile_policy_with_keys_lacking_ttl(admin: redis.Redis) -> None:
    """volatile-lru cannot evict keys without TTL: a warning when most keys have none."""
    admin.config_set("maxmemory-policy", "volatile-lru")
    for i in range(20):
        admin.set(f"session:{i}", b"x")
    admin.set("with:ttl", b"x", ex=60)
    (finding,) = _by_check(diagnose(admin))["eviction"]
    assert finding.severity == "warning"
    assert "95% of the 21 keys" in finding.message


def test_persistence_that_stalls(admin: redis.Redis) -> None:
    """AOF with fsync always and RDB snapshots are reported, each with its fix."""
    admin.config_set("appendonly", "yes")
    admin.config_set("appendfsync", "always")
    admin.config_set("save", "3600 1")
    try:
        findings = _by_check(diagnose(admin))["persistence"]
    finally:
        admin.config_set("appendonly", "no")
        admin.config_set("appendfsync", "everysec")
        admin.config_set("save", "")
    messages = " | ".join(f.message for f in findings)
    assert "appendfsync always" in messages
    assert "RDB snapshots on" in messages
    assert {f.severity for f in findings} <= {"warning", "info"}


def test_namespace_without_ttl_is_found(admin: redis.Redis, server: RedisServer) -> None:
    """A namespace whose keys have no TTL is a warning naming it; others are ok."""
    leaky = Cache(server.url, namespace="leaky", ttl=None)
    fine = Cache(server.url, namespace="shop", ttl=60)
    for i in range(5):
        leaky.set(f"report:{i}", i)
        fine.set(f"user:{i}", i)
    leaky.close()
    fine.close()
    findings = _by_check(diagnose(admin))["key TTLs"]
    by_space = {f.message.split(":")[0]: f for f in findings}
    assert by_space["leaky"].severity == "warning"
    assert "5 of 5 sampled keys have no TTL" in by_space["leaky"].message
    assert by_space["shop"].severity == "ok"


def test_acl_user_without_config_gets_unknown_findings(
    admin: redis.Redis, server: RedisServer
) -> None:
    """A user denied CONFIG gets "unknown: no permission" for what needs it, and no crash."""
    admin.execute_command("ACL", "SETUSER", "ops", "on", ">secret", "~*", "+@all", "-config")
    user = redis.Redis(host=server.host, port=server.port, username="ops", password="secret")
    try:
        findings = diagnose(user)
    finally:
        user.close()
    persistence = _by_check(findings)["persistence"]
    assert [f.severity for f in persistence] == ["unknown"]
    assert "no permission" in persistence[0].message
    assert "CONFIG GET" in persistence[0].message
    # What INFO tells still works without CONFIG.
    assert _severities(findings, "maxmemory") == {"ok"}
    assert _severities(findings, "eviction") == {"ok"}


def test_least_privilege_app_user_never_crashes(admin: redis.Redis, server: RedisServer) -> None:
    """The guide's application user (no INFO, no CONFIG, no PTTL) gets unknowns, exit 0."""
    admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">secret", "~shop:*", "~{shop:*", "+get", "+mget",
        "+set", "+del", "+unlink", "+scan", "+ping", "+evalsha", "+eval", "+script|load",
        "+script|exists",
    )  # fmt: skip
    url = f"redis://app:secret@{server.host}:{server.port}/0"
    user = redis.Redis.from_url(url)
    try:
        findings = diagnose(user)
    finally:
        user.close()
    checks = _by_check(findings)
    assert _severities(findings, "version") == {"unknown"}
    assert _severities(findings, "latency") == {"ok"}
    assert _severities(findings, "key TTLs") <= {"unknown", "ok"}
    assert all(f.fix for f in findings if f.severity == "unknown")
    assert "no permission" in checks["maxmemory"][0].message
    assert main(["doctor", "--redis", url]) == 0


def test_unreachable_server_is_one_error() -> None:
    """A server that does not answer is an error finding, not a traceback."""
    (finding,) = diagnose(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1))
    assert finding.severity == "error"
    assert finding.check == "connection"
