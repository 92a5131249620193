"""Local Redis deployments for the Cluster and Sentinel tests and bench/bench_failover.py.

Plain code, no pytest: the fixtures in conftest.py and the benchmark both start these.
Every process is a ``redis-server`` the suite finds (``find_server_binary``), in a temp
dir on free loopback ports, and is stopped by its own pid.

- :class:`LocalCluster`: primaries with a replica each, joined through redis-py alone
  (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE; no redis-cli). It can move slots from one
  primary to another as ``redis-cli --cluster reshard`` does (:meth:`~LocalCluster.migrate`).
- :class:`SentinelGroup`: a primary, its replica and three sentinels.
- :class:`VersionedSource`: a "database" behind a cached function whose rows carry a
  version, to count wrong and stale values a Cache serves while the topology changes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot
from redis.sentinel import Sentinel

from cachelayer.testing import RedisServer, find_server_binary, free_port

HOST = "127.0.0.1"
SLOTS = 16384
SERVICE = "mymaster"


def wait_for(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``check`` (a Redis error counts as "not yet") until true, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test deployment is not ready: {what} after {timeout} s")
        time.sleep(0.05)


def slot_of(key: str) -> int:
    """The cluster slot of ``key`` (its hash tag, if it has one)."""
    return int(key_slot(key.encode()))


# -- Redis Cluster ------------------------------------------------------------------------


class LocalCluster:
    """``primaries`` primaries with a replica each, on free ports; stopped by pid.

    Args:
        primaries: how many primaries (3 at least for a failover: a majority of the
            primaries must vote for the promoted replica).
        node_timeout_ms: ``cluster-node-timeout``: a primary that does not answer for
            this long is failed over.
    """

    def __init__(self, primaries: int = 3, node_timeout_ms: int = 2000) -> None:
        self.primaries = primaries
        self.buses = [free_port() for _ in range(2 * primaries)]
        args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms))  # fmt: skip
        self.servers = [RedisServer(args=(*args, "--cluster-port", str(b))) for b in self.buses]
        self.ids: list[str] = []

    def start(self) -> LocalCluster:
        """Start the servers and join them; the first ``primaries`` own the slots in equal
        ranges, each of the others replicates one of them. (About 6 s.)"""
        try:
            for server in self.servers:
                server.start()
            self._form()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        """A redis+cluster:// URL naming two seed nodes."""
        return "redis+cluster://" + ",".join(f"{HOST}:{s.port}" for s in self.servers[:2])

    def node(self, index: int) -> redis.Redis:
        """A plain client of one node (close it after use)."""
        port = self.servers[index].port
        return redis.Redis(HOST, port, socket_timeout=5, decode_responses=True)

    def _form(self) -> None:
        nodes = [self.node(i) for i in range(len(self.servers))]
        try:
            self.ids = [node.execute_command("CLUSTER MYID") for node in nodes]
            for server, bus in zip(self.servers[1:], self.buses[1:], strict=True):
                nodes[0].execute_command("CLUSTER MEET", HOST, server.port, bus)
            for i, node in enumerate(nodes[: self.primaries]):
                first = i * SLOTS // self.primaries
                last = (i + 1) * SLOTS // self.primaries - 1
                node.execute_command("CLUSTER ADDSLOTSRANGE", first, last)

            def all_known() -> bool:
                # (redis-py parses CLUSTER NODES into {address: {"flags": ..., ...}})
                return all(
                    sum(
                        "handshake" not in n["flags"]
                        for n in node.execute_command("CLUSTER NODES").values()
                    )
                    == len(nodes)
                    for node in nodes
                )

            wait_for("every node knows every other", all_known)
            for i, node in enumerate(nodes[self.primaries :]):
                node.execute_command("CLUSTER REPLICATE", self.ids[i % self.primaries])
            wait_for("cluster_state:ok and every replica in sync", self.healthy)
        finally:
            for node in nodes:
                node.close()

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every live replica is in sync."""
        for i, server in enumerate(self.servers):
            if server.process is None:
                continue
            node = self.node(i)
            try:
                if node.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
                info = node.info("replication")
                if info["role"] != "master" and info.get("master_link_status") != "up":
                    return False
            finally:
                node.close()
        return True

    def owners(self, via: int = 0) -> list[int]:
        """For each slot, the index in ``servers`` of the primary that serves it, as node
        ``via`` sees the cluster now."""
        node = self.node(via)
        try:
            table = node.execute_command("CLUSTER NODES")
        finally:
            node.close()
        index = {node_id: i for i, node_id in enumerate(self.ids)}
        owners = [-1] * SLOTS
        for entry in table.values():
            for span in entry["slots"]:
                first, last = int(span[0]), int(span[-1])
                owners[first : last + 1] = [index[entry["node_id"]]] * (last - first + 1)
        return owners

    def primary_indexes(self) -> list[int]:
        """The servers that are primaries now (live ones)."""
        return sorted({i for i in self.owners() if i >= 0})

    def replica_of(self, primary: int) -> int:
        """The index of the replica formed for primary ``primary``."""
        return self.primaries + primary

    def migrate(
        self,
        slots: Iterable[int],
        source: int,
        target: int,
        batch: int = 10,
        pause: float = 0.0,
    ) -> int:
        """Move ``slots`` from primary ``source`` to primary ``target``, slot by slot, as
        a resharding does: SETSLOT IMPORTING on the target, MIGRATING on the source,
        MIGRATE the keys ``batch`` at a time (``pause`` seconds between batches: the
        window in which clients get ASK and TRYAGAIN), then SETSLOT NODE on the target,
        the source and the other primaries. Returns the number of keys moved."""
        src, dst = self.node(source), self.node(target)
        others = [self.node(i) for i in self.primary_indexes() if i not in (source, target)]
        moved = 0
        try:
            for slot in slots:
                dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.ids[source])
                src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.ids[target])
                while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                    src.execute_command(
                        "MIGRATE", HOST, self.servers[target].port, "", 0, 5000,
                        "REPLACE", "KEYS", *keys,
                    )  # fmt: skip
                    moved += len(keys)
                    if pause:
                        time.sleep(pause)
                for node in (dst, src, *others):
                    node.execute_command("CLUSTER SETSLOT", slot, "NODE", self.ids[target])
        finally:
            for node in (src, dst, *others):
                node.close()
        return moved

    def kill(self, index: int) -> None:
        """SIGKILL one server (by its pid) and reap it."""
        server = self.servers[index]
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it

    def promoted(self, index: int) -> bool:
        """Has server ``index`` (a replica) become a primary with slots?"""
        return index in self.primary_indexes_seen_by(index)

    def primary_indexes_seen_by(self, via: int) -> set[int]:
        return {i for i in self.owners(via) if i >= 0}

    def close(self) -> None:
        """Stop every server this object started (by pid) and remove their dirs."""
        for server in self.servers:
            server.close()


# -- Redis Sentinel -----------------------------------------------------------------------


class SentinelProcess:
    """One sentinel (``redis-server <conf> --sentinel``) in a temp dir, stopped by pid."""

    def __init__(self, primary_port: int, down_after_ms: int) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="cachelayer-sentinel-")
        conf = Path(self._dir.name) / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind {HOST}\nprotected-mode no\ndaemonize no\n"
            f"dir {self._dir.name}\nloglevel warning\n"
            f"sentinel monitor {SERVICE} {HOST} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.process = subprocess.Popen(  # our own binary and arguments
            [find_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._dir.cleanup()


@dataclass
class SentinelGroup:
    """A primary, its replica and the sentinels watching them."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelProcess]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def master_address(self) -> tuple[str, int]:
        """The primary's address as the sentinels report it now."""
        sentinel = Sentinel([(HOST, s.port) for s in self.sentinels], socket_timeout=1)
        try:
            host, port = sentinel.discover_master(SERVICE)
            return str(host), int(port)
        finally:
            for client in sentinel.sentinels:
                client.close()

    def close(self) -> None:
        """Stop every process of the group (by pid)."""
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.close()
        self.primary.close()


def start_sentinel_group(down_after_ms: int = 1000) -> SentinelGroup:
    """A primary, its replica and 3 sentinels (quorum 2) that see both and each other.
    The sentinels call the primary down after ``down_after_ms`` without a reply."""
    group = SentinelGroup(RedisServer(), RedisServer(), [])
    try:
        group.primary.start()
        group.replica.args = ("--replicaof", HOST, str(group.primary.port))
        group.replica.start()
        group.sentinels = [SentinelProcess(group.primary.port, down_after_ms) for _ in range(3)]
        link = redis.Redis(HOST, group.replica.port, decode_responses=True)
        wait_for("replica in sync", lambda: link.info("replication")["master_link_status"] == "up")
        link.close()
        watchers = [redis.Redis(HOST, s.port, decode_responses=True) for s in group.sentinels]

        def sentinels_ready() -> bool:
            states = [w.execute_command("SENTINEL MASTER", SERVICE) for w in watchers]
            return all(
                int(s["num-slaves"]) >= 1 and int(s["num-other-sentinels"]) == 2 for s in states
            )

        try:
            wait_for("each sentinel sees the replica and the 2 others", sentinels_ready)
        finally:
            for watcher in watchers:
                watcher.close()
    except BaseException:
        group.close()
        raise
    return group


# -- what a Cache serves while the topology changes -----------------------------------------


@dataclass
class ReadCounts:
    """What readers got (see :class:`VersionedSource`)."""

    calls: int = 0
    raised: list[BaseException] = field(default_factory=list)
    wrong: list[tuple[Any, Any]] = field(default_factory=list)
    #: reads older than a write whose invalidation had *succeeded* before the read began
    stale_acked: int = 0
    #: reads older than a write (its invalidation failed: store down) done before it began
    stale_unacked: int = 0
    #: (monotonic time, after an acked invalidation?) of each stale read
    stale_at: list[tuple[float, bool]] = field(default_factory=list)


class VersionedSource:
    """The database behind a cached function: row ``k`` is ``[k, version]``.

    :meth:`write` bumps rows' versions, then runs the caller's invalidation and records
    when it returned, and whether it succeeded. :meth:`read` calls the cached function and
    counts its value as wrong (another row, or a version never written) or stale (older
    than a write that had finished, invalidation included, before the read began).
    """

    def __init__(self, keys: Sequence[int]) -> None:
        self.keys = list(keys)
        self.version = dict.fromkeys(self.keys, 0)
        self.acked = dict.fromkeys(self.keys, 0)  # version whose invalidation succeeded
        self.written = dict.fromkeys(self.keys, 0)  # version whose write + invalidation ended
        self.loads = 0
        self.counts = ReadCounts()
        self._lock = threading.Lock()

    def load(self, key: int) -> list[int]:
        """The loader: the row as it is now."""
        with self._lock:
            self.loads += 1
            return [key, self.version[key]]

    def write(self, keys: Sequence[int], invalidate: Callable[[], bool]) -> bool:
        """Bump the rows ``keys``, then invalidate (``invalidate()`` returns success)."""
        done = self.bump(keys)
        ok = invalidate()
        self.invalidated(done, ok)
        return ok

    def bump(self, keys: Sequence[int]) -> dict[int, int]:
        """The first half of a write: bump the rows; returns their new versions."""
        with self._lock:
            for key in keys:
                self.version[key] += 1
            return {key: self.version[key] for key in keys}

    def invalidated(self, done: dict[int, int], ok: bool) -> None:
        """The second half: the rows ``done`` (from :meth:`bump`) were invalidated, with
        success or not."""
        with self._lock:
            for key, version in done.items():
                self.written[key] = max(self.written[key], version)
                if ok:
                    self.acked[key] = max(self.acked[key], version)

    def floors(self, key: int) -> tuple[int, int]:
        """Call before a read: the versions it must not be older than."""
        with self._lock:
            return self.acked[key], self.written[key]

    def check(self, key: int, floors: tuple[int, int], value: Any) -> None:
        """Count one read's ``value`` of row ``key`` (``floors`` taken before it began)."""
        counts = self.counts
        counts.calls += 1
        if not (isinstance(value, list) and len(value) == 2 and value[0] == key) or not (
            0 <= value[1] <= self.version[key]
        ):
            counts.wrong.append((key, value))
        elif value[1] < floors[0]:
            counts.stale_acked += 1
            counts.stale_at.append((time.monotonic(), True))
        elif value[1] < floors[1]:
            counts.stale_unacked += 1
            counts.stale_at.append((time.monotonic(), False))

    def read(self, key: int, call: Callable[[], Any]) -> None:
        """One read through the cache, checked; an exception is counted, not raised."""
        floors = self.floors(key)
        try:
            value = call()
        except BaseException as exc:  # the figure: calls that raised
            self.counts.calls += 1
            self.counts.raised.append(exc)
            return
        self.check(key, floors, value)


# -- a failover under load -----------------------------------------------------------------


@dataclass
class FailoverFigures:
    """What callers saw around a failover (times in seconds from the kill)."""

    calls: int
    raised: int
    wrong: int
    promoted_after: float | None
    hits_resumed_after: float | None
    #: stale reads that began after the kill, older than a write whose invalidation had
    #: succeeded before the read began (lost with the old primary) ...
    stale_acked: int
    #: ... or whose invalidation failed (the store was down: fail-open)
    stale_unacked: int
    #: when the last stale read was seen
    last_stale_after: float | None
    writes: int
    failed_invalidations: int
    loads: int
    store_errors: int

    def line(self) -> str:
        def secs(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f}s"

        return (
            f"calls={self.calls} raised={self.raised} wrong={self.wrong} "
            f"promoted_after={secs(self.promoted_after)} "
            f"hits_resumed_after={secs(self.hits_resumed_after)} "
            f"stale_after_acked_invalidation={self.stale_acked} "
            f"stale_after_failed_invalidation={self.stale_unacked} "
            f"last_stale_after={secs(self.last_stale_after)} writes={self.writes} "
            f"failed_invalidations={self.failed_invalidations} loads={self.loads} "
            f"store_errors={self.store_errors}"
        )


def measure_failover(
    cache: Any,
    rows: Sequence[int],
    kill: Callable[[], None],
    promoted: Callable[[], bool],
    *,
    threads: int = 4,
    groups: int = 4,
    after: float = 5.0,
    timeout: float = 30.0,
) -> FailoverFigures:
    """Threads read a tagged cached function over ``rows`` while a writer bumps rows and
    invalidates them (a row, or a tag group: 20 writes a second); once the Cache hits,
    ``kill()`` kills the primary. Then wait (at most ``timeout`` s) until ``promoted()``
    and until the Cache hits again, and go on ``after`` more seconds counting stale
    reads. ``cache`` is a fresh ``Cache`` (cleared and closed by the caller)."""
    source = VersionedSource(rows)

    @cache.cached(ttl=30, key="item:{i}", tags=["grp:{g}"])
    def item(i: int, g: int) -> list[int]:
        time.sleep(0.001)  # a quick query
        return source.load(i)

    def invalidated(invalidate: Callable[[], object]) -> bool:
        before = cache.stats.invalidation_errors  # one writer: the counter is its own
        invalidate()
        return bool(cache.stats.invalidation_errors == before)

    stop = threading.Event()
    writes = [0, 0]  # writes, failed invalidations

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            i = rng.choice(source.keys)
            source.read(i, functools.partial(item, i, i % groups))

    def writer() -> None:
        rng = random.Random(-1)
        while not stop.is_set():
            g = rng.randrange(groups)
            if rng.random() < 0.7:
                i = rng.choice([row for row in source.keys if row % groups == g])
                ok = source.write(
                    [i], functools.partial(invalidated, functools.partial(item.invalidate, i, g))
                )
            else:
                group = [row for row in source.keys if row % groups == g]
                tag = f"grp:{g}"
                ok = source.write(
                    group,
                    functools.partial(invalidated, functools.partial(cache.invalidate_tags, tag)),
                )
            writes[0] += 1
            writes[1] += not ok
            stop.wait(0.05)

    workers = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
    workers.append(threading.Thread(target=writer))
    for worker in workers:
        worker.start()
    promoted_at = resumed_at = None
    try:
        wait_for("warm hits", lambda: cache.stats.hits > 500, timeout=20)
        killed = time.monotonic()
        kill()
        time.sleep(0.2)  # calls in flight at the kill finish
        hits_after_kill = cache.stats.hits
        deadline = killed + timeout
        while time.monotonic() < deadline and (promoted_at is None or resumed_at is None):
            now = time.monotonic()
            if promoted_at is None:
                with contextlib.suppress(redis.RedisError):
                    if promoted():
                        promoted_at = now
            if resumed_at is None and cache.stats.hits > hits_after_kill + 100:
                resumed_at = now
            time.sleep(0.02)
        time.sleep(after)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    counts = source.counts
    stale = [(at - killed, acked) for at, acked in counts.stale_at if at > killed]
    return FailoverFigures(
        calls=counts.calls,
        raised=len(counts.raised),
        wrong=len(counts.wrong),
        promoted_after=None if promoted_at is None else promoted_at - killed,
        hits_resumed_after=None if resumed_at is None else resumed_at - killed,
        stale_acked=sum(acked for _, acked in stale),
        stale_unacked=sum(not acked for _, acked in stale),
        last_stale_after=max((at for at, _ in stale), default=None),
        writes=writes[0],
        failed_invalidations=writes[1],
        loads=source.loads,
        store_errors=cache.stats.store_errors,
    )
