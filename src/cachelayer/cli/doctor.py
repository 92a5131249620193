"""``cachelayer doctor``: what commonly goes wrong with a Redis used as a cache.

See docs/operations.md.

Each check reads (``INFO``, ``CONFIG GET``, ``PING``, a bounded ``SCAN`` with ``PTTL``,
and ``EVAL "return 1"``, which touches no key) and returns findings, each with a severity
and a one-line fix. A command the user may not run, or that a managed service renamed,
becomes an ``unknown`` finding for that check, never a crash. Exit code 1 when any finding
is an error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from .patterns import shape

__all__ = ["SEVERITIES", "Finding", "add_arguments", "diagnose", "main"]

SEVERITIES = ("ok", "info", "warning", "error", "unknown")
_GIB = 1 << 30


@dataclass(frozen=True)
class Finding:
    """One result: ``check`` names what was looked at, ``fix`` is one line (or empty)."""

    check: str
    severity: str
    message: str
    fix: str = ""


class _Refused(Exception):
    """The server refused a command (no permission, unknown or renamed command)."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(command, reason)
        self.command = command
        self.reason = reason


class _Probe:
    """Runs read-only commands, caching INFO sections and turning refusals into _Refused."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._info: dict[str, dict[str, Any]] = {}

    def run(self, command: str, *args: Any) -> Any:
        import redis

        try:
            return self.client.execute_command(command, *args)
        except redis.exceptions.NoPermissionError as exc:
            raise _Refused(command, f"no permission ({exc})") from None
        except redis.exceptions.ResponseError as exc:
            raise _Refused(command, str(exc)) from None

    def info(self, section: str) -> dict[str, Any]:
        if section not in self._info:
            self._info[section] = _as_info(self.run("INFO", section))
        return self._info[section]

    def config(self, name: str) -> str:
        reply = self.run("CONFIG GET", name)
        pairs = (
            reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
        )
        value = next(iter(pairs.values()), "")
        return value.decode() if isinstance(value, bytes) else str(value)


def _as_info(reply: Any) -> dict[str, Any]:
    if isinstance(reply, dict):
        return reply
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            name, _, value = line.partition(":")
            out[name] = value.strip()
    return out


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _size(n: float) -> str:
    return f"{n / _GIB:.1f} GiB" if n >= _GIB else f"{n / (1 << 20):.0f} MiB"


def _version(probe: _Probe) -> Iterator[Finding]:
    server = probe.info("server")
    text = str(server.get("valkey_version") or server.get("redis_version") or "0")
    name = "Valkey" if server.get("valkey_version") else "Redis"
    parts = [_int(p) for p in text.split(".")[:2]] + [0]
    if (parts[0], parts[1]) < (6, 0):
        yield Finding(
            "version", "error", f"{name} {text}: no SET KEEPTTL, which cachelayer's swap uses",
            "upgrade to Redis 6.2+ or Valkey 7.2+",
        )  # fmt: skip
    else:
        yield Finding("version", "ok", f"{name} {text}")
    if probe.run("EVAL", "return 1", 0) != 1:
        yield Finding("scripting", "error", "EVAL did not return 1", "enable Lua scripting")
    else:
        yield Finding("scripting", "ok", "Lua scripts run (guarded fills need them)")


def _memory(probe: _Probe) -> Iterator[Finding]:
    memory = probe.info("memory")
    limit, used = _int(memory.get("maxmemory")), _int(memory.get("used_memory"))
    system = _int(memory.get("total_system_memory"))
    policy = str(memory.get("maxmemory_policy", "")) or probe.config("maxmemory-policy")
    if limit == 0:
        severe = system and used > system // 2
        yield Finding(
            "maxmemory", "error" if severe else "warning",
            f"no maxmemory: Redis grows until the OS kills it or swaps (uses {_size(used)})",
            "CONFIG SET maxmemory <about 3/4 of the RAM meant for Redis>, and in redis.conf",
        )  # fmt: skip
    elif system and limit > system:
        yield Finding(
            "maxmemory", "warning",
            f"maxmemory {_size(limit)} is above the machine's {_size(system)}",
            "CONFIG SET maxmemory below the machine's memory",
        )  # fmt: skip
    else:
        share = used / limit
        severity = "warning" if share >= 0.95 else "ok"
        yield Finding(
            "maxmemory", severity, f"maxmemory {_size(limit)}, {share:.0%} used",
            "raise maxmemory if the hit ratio falls" if severity != "ok" else "",
        )  # fmt: skip
    yield from _eviction(probe, policy, limit)


def _eviction(probe: _Probe, policy: str, limit: int) -> Iterator[Finding]:
    if policy == "noeviction":
        yield Finding(
            "eviction", "error" if limit else "warning",
            "maxmemory-policy noeviction: once memory is full every write fails with OOM"
            + ("" if limit else " (takes effect when a maxmemory is set)"),
            "CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu)",
        )  # fmt: skip
    elif policy.startswith("volatile-"):
        keys, expires = _keyspace(probe)
        share = expires / keys if keys else 1.0
        if share < 0.9:
            yield Finding(
                "eviction", "warning",
                f"{policy} evicts only keys with a TTL, and {1 - share:.0%} of the {keys} "
                "keys have none: when the rest is gone, writes fail with OOM",
                "CONFIG SET maxmemory-policy allkeys-lru, or give those keys a TTL",
            )  # fmt: skip
        else:
            yield Finding("eviction", "ok", f"{policy}; {share:.0%} of keys have a TTL")
    else:
        yield Finding("eviction", "ok", f"maxmemory-policy {policy}")


def _keyspace(probe: _Probe) -> tuple[int, int]:
    keys = expires = 0
    for name, value in probe.info("keyspace").items():
        if not name.startswith("db"):
            continue
        fields = value if isinstance(value, dict) else dict(
            part.split("=", 1) for part in str(value).split(",")
        )  # fmt: skip
        keys += _int(fields.get("keys"))
        expires += _int(fields.get("expires"))
    return keys, expires


def _persistence(probe: _Probe) -> Iterator[Finding]:
    save, aof = probe.config("save"), probe.config("appendonly")
    used = _int(probe.info("memory").get("used_memory"))
    if aof == "yes":
        fsync = probe.config("appendfsync")
        if fsync == "always":
            yield Finding(
                "persistence", "warning", "appendonly with appendfsync always: every write "
                "waits for the disk", "CONFIG SET appendonly no (a cache can be rebuilt)",
            )  # fmt: skip
        else:
            yield Finding(
                "persistence", "info", f"appendonly on (appendfsync {fsync}): a cache "
                "rarely needs it; rewrites fork", "CONFIG SET appendonly no",
            )  # fmt: skip
    if save.strip():
        yield Finding(
            "persistence", "warning" if used > _GIB else "info",
            f"RDB snapshots on (save {save}) with {_size(used)}: each fork copies pages "
            "and can stall writes", 'CONFIG SET save ""',
        )  # fmt: skip
    if aof != "yes" and not save.strip():
        yield Finding("persistence", "ok", "no persistence (right for a cache)")


def _last_save(probe: _Probe) -> Iterator[Finding]:
    persistence = probe.info("persistence")
    fork_ms = _int(probe.info("stats").get("latest_fork_usec")) / 1000
    if persistence.get("rdb_last_bgsave_status") == "err":
        stops = probe.config("stop-writes-on-bgsave-error") == "yes"
        yield Finding(
            "last save", "error" if stops else "warning",
            "the last RDB save failed" + (": Redis refuses writes" if stops else ""),
            "fix the disk (see the Redis log), or CONFIG SET save \"\"",
        )  # fmt: skip
    if fork_ms > 500:
        yield Finding(
            "last save", "warning", f"the latest fork took {fork_ms:.0f} ms (the server "
            "was stalled that long)", 'CONFIG SET save "" and appendonly no, or less data',
        )  # fmt: skip


def _latency(probe: _Probe, pings: int, clock: Callable[[], float]) -> Iterator[Finding]:
    times = []
    for _ in range(pings):
        start = clock()
        probe.run("PING")
        times.append((clock() - start) * 1000)
    median, worst = statistics.median(times), max(times)
    text = f"{pings} PINGs: median {median:.2f} ms, max {worst:.2f} ms"
    if median >= 10:
        yield Finding(
            "latency",
            "warning",
            text + ": every cache read pays this",
            "put the cache near the app (same zone), or check the server's load",
        )
    elif median >= 2:
        yield Finding("latency", "info", text, "a cache a network hop away: fine, but watch it")
    else:
        yield Finding("latency", "ok", text)


def _clients(probe: _Probe) -> Iterator[Finding]:
    clients = probe.info("clients")
    connected = _int(clients.get("connected_clients"))
    limit = _int(clients.get("maxclients")) or _int(probe.config("maxclients"))
    share = connected / limit if limit else 0.0
    severity = "error" if share >= 0.95 else "warning" if share >= 0.8 else "ok"
    yield Finding(
        "clients", severity, f"{connected} of maxclients {limit} connections in use",
        "" if severity == "ok" else "raise maxclients, or lower max_connections per process",
    )  # fmt: skip
    rejected = _int(probe.info("stats").get("rejected_connections"))
    if rejected:
        yield Finding(
            "clients", "warning", f"{rejected} connections rejected since start (maxclients)",
            "raise maxclients, or lower max_connections per process",
        )  # fmt: skip


def _errors(probe: _Probe) -> Iterator[Finding]:
    evicted = _int(probe.info("stats").get("evicted_keys"))
    if evicted:
        yield Finding(
            "errors", "info", f"{evicted} keys evicted since start (memory was full)",
            "fine for a cache; raise maxmemory if the hit ratio suffers",
        )  # fmt: skip
    try:
        stats = probe.info("errorstats")
    except _Refused:
        stats = {}  # Redis < 6.2 has no errorstats; the checks above still stand
    oom = stats.get("errorstat_OOM")
    count = _int(oom.get("count")) if isinstance(oom, dict) else _int(
        str(oom or "count=0").split("=")[-1]
    )  # fmt: skip
    if count:
        yield Finding(
            "errors", "warning", f"{count} writes refused with OOM since start",
            "set an allkeys-* maxmemory-policy, or raise maxmemory",
        )  # fmt: skip
    if not evicted and not count:
        yield Finding("errors", "ok", "no evictions, no OOM errors since start")


def _ttl_leaks(probe: _Probe, sample: int) -> Iterator[Finding]:
    cursor, names = 0, list[Any]()
    while len(names) < sample:
        cursor, batch = probe.client.scan(cursor, count=200)
        names.extend(batch[: sample - len(names)])
        if int(cursor) == 0:
            break
    if not names:
        yield Finding("key TTLs", "ok", "the database is empty")
        return
    pipe = probe.client.pipeline(transaction=False)
    for name in names:
        pipe.pttl(name)
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(r, Exception) for r in replies):
        raise _Refused("PTTL", str(next(r for r in replies if isinstance(r, Exception))))
    total: Counter[str] = Counter()
    leaked: Counter[str] = Counter()
    for raw, pttl in zip(names, replies, strict=True):
        key = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
        s = shape(key)
        if s.kind != "value":
            continue
        space = f"{s.namespace}:v{s.version}"
        total[space] += 1
        if pttl == -1:
            leaked[space] += 1
    for space in sorted(total):
        if leaked[space]:
            yield Finding(
                "key TTLs", "warning",
                f"{space}: {leaked[space]} of {total[space]} sampled keys have no TTL "
                "(they stay until evicted or deleted)",
                f"give the Cache or cached() a ttl; `cachelayer profile --match '{space}:*'` "
                "shows which",
            )  # fmt: skip
        else:
            yield Finding("key TTLs", "ok", f"{space}: all {total[space]} sampled keys expire")
    if not total:
        yield Finding("key TTLs", "info", f"no cachelayer keys among {len(names)} sampled")


def diagnose(
    client: Any,
    *,
    pings: int = 10,
    sample_keys: int = 1000,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Finding]:
    """Run every check; a refused command makes its check ``unknown``, never raises."""
    import redis

    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return [Finding("connection", "error", f"cannot reach Redis: {exc}",
                        "check the URL, the password and the network")]  # fmt: skip
    probe = _Probe(client)
    checks: list[tuple[str, Callable[[], Iterator[Finding]]]] = [
        ("version", lambda: _version(probe)),
        ("maxmemory", lambda: _memory(probe)),
        ("persistence", lambda: _persistence(probe)),
        ("last save", lambda: _last_save(probe)),
        ("latency", lambda: _latency(probe, pings, clock)),
        ("clients", lambda: _clients(probe)),
        ("errors", lambda: _errors(probe)),
        ("key TTLs", lambda: _ttl_leaks(probe, sample_keys)),
    ]
    findings: list[Finding] = []
    for name, check in checks:
        found: list[Finding] = []
        try:
            found.extend(check())
        except _Refused as exc:
            found.append(Finding(
                name, "unknown", f"{exc.command} refused: {exc.reason}",
                f"grant this user {exc.command} (+{exc.command.lower().replace(' ', '|')}), "
                "or run doctor as an admin user",
            ))  # fmt: skip
        except redis.exceptions.RedisError as exc:
            found.append(Finding(name, "unknown", f"{type(exc).__name__}: {exc}"))
        findings.extend(found)
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cachelayer doctor``."""
    parser.add_argument("--redis", required=True, metavar="URL", help="redis://host:port/db")
    parser.add_argument("--pings", type=int, default=10, help="PINGs for the latency check")
    parser.add_argument(
        "--sample-keys", type=int, default=1000, help="keys sampled (SCAN) for the TTL check"
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


_STYLE = {"ok": "green", "info": "cyan", "warning": "yellow", "error": "bold red",
          "unknown": "magenta"}  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Run ``cachelayer doctor``: 1 when any finding is an error, else 0."""
    import redis
    from redis.exceptions import RedisClusterException

    from ..errors import ConfigurationError
    from ._connect import connect

    try:
        servers = connect(args.redis, timeout=5)
    except (redis.exceptions.RedisError, RedisClusterException, ConfigurationError) as exc:
        print(f"cachelayer doctor: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    findings: list[Finding] = []
    try:
        for node in servers.nodes:  # a cluster: every node, replicas included
            found = diagnose(node, pings=args.pings, sample_keys=args.sample_keys)
            if len(servers.nodes) > 1:
                name = servers.name(node)
                found = [replace(f, check=f"{name} {f.check}") for f in found]
            findings += found
    finally:
        servers.close()
    code = 1 if any(f.severity == "error" for f in findings) else 0
    if args.json:
        print(json.dumps({"exit_code": code, "findings": [asdict(f) for f in findings]},
                         indent=2))  # fmt: skip
        return code
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cachelayer doctor: {args.redis.split('@')[-1]}", title_justify="left")
    for column in ("severity", "check", "finding", "fix"):
        table.add_column(column)
    for f in findings:
        style = _STYLE[f.severity]
        table.add_row(f"[{style}]{f.severity}[/]", f.check, f.message, f.fix)
    console = Console()
    console.print(table)
    counts = Counter(f.severity for f in findings)
    console.print(", ".join(f"{counts[s]} {s}" for s in SEVERITIES if counts[s]))
    return code
