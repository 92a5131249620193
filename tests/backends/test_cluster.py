"""The Redis Cluster store on a real local cluster: 3 primaries with a replica each.

The cluster (conftest.py's ``cluster``, started by ``_topology.LocalCluster``) is shared
by the test session: six servers in cluster mode from the redis-server binary the suite
finds (``find_server_binary``), each in a temp dir on free ports, joined through redis-py
alone (CLUSTER MEET, ADDSLOTSRANGE, REPLICATE; no redis-cli), and stopped by their pids
at the end.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis.cluster import ClusterNode, RedisCluster

from cachelayer import Cache
from cachelayer.backends import Store, store_from_url
from cachelayer.backends.cluster import ClusterStore
from cachelayer.errors import ConfigurationError, StoreBusy
from cachelayer.testing import free_port
from cachelayer.testing_contract import Face, PublisherContract, StoreContract

from ._cache_e2e import CacheEndToEnd
from ._topology import HOST, LocalCluster, wait_for

PRIMARIES = 3

pytestmark = pytest.mark.usefixtures("collect_stray_sockets")


def _store(url: str) -> ClusterStore:
    # Generous timeouts: these tests pin behaviour, not latency, on a busy machine.
    return ClusterStore(url, socket_timeout=2.0, connect_timeout=2.0)


class TestClusterStore(StoreContract, PublisherContract):
    """The contract suite on the cluster, sync and async faces.

    The suite pairs keys like ``<prefix>k`` and ``<prefix>lease`` in its atomic steps,
    where cachelayer pairs a key with its derived key (same slot, docs/keys.md). A
    hash-tagged prefix puts each test's keys in one slot so those pairs are valid on a
    cluster; test_keys_of_every_primary and the Cache tests cover keys of many slots.
    """

    @pytest.fixture
    def store(self, cluster_url: str) -> Iterator[Store]:
        store = _store(cluster_url)
        yield store
        store.close()

    @pytest.fixture(params=["sync", "async"])
    def face(self, request: pytest.FixtureRequest, store: Store) -> Iterator[Face]:
        """Each face, with a hash-tagged key prefix of its own (one slot per test)."""
        face = Face(store, request.param == "async", "{ct" + uuid.uuid4().hex[:10] + "}:")
        yield face
        face.finish()


class TestCacheOnCluster(CacheEndToEnd):
    """A Cache end to end on the cluster."""

    @pytest.fixture
    def make_store(self, cluster_url: str) -> Callable[[], Store]:
        return lambda: _store(cluster_url)


def test_keys_of_every_primary(cluster_url: str) -> None:
    """Many-key calls over keys of every primary: get_many in order, delete counts,
    scan and clear reach every primary."""
    store = _store(cluster_url)
    try:
        client = store.client
        keys = [f"spread{i}:k" for i in range(60)]
        owners = {client.get_node_from_key(key).name for key in keys}
        assert len(owners) == PRIMARIES
        store.set_many([(key, key.encode(), 60.0) for key in keys[::2]])
        assert store.get_many(keys) == [k.encode() if i % 2 == 0 else None for i, k in
                                        enumerate(keys)]  # fmt: skip
        assert set(store.scan("spread*")) == set(keys[::2])
        assert store.delete(keys[:10]) == 5
        assert store.clear("spread") == 25
        assert store.get_many(keys) == [None] * len(keys)
    finally:
        store.close()


def test_urls_build_cluster_stores(cluster_url: str) -> None:
    """redis+cluster:// URLs build a ClusterStore (via a Cache too); bad ones are refused."""
    store = store_from_url(cluster_url)
    assert isinstance(store, ClusterStore)
    store.close()
    cache = Cache(cluster_url + "?socket_timeout=2", namespace="urls")
    cache.set("k", 1, ttl=5)
    assert cache.get("k") == 1
    cache.clear()
    cache.close()
    for bad in (cluster_url + "/3", cluster_url + "?sockettimeout=1", "redis+cluster://"):
        with pytest.raises(ConfigurationError):
            store_from_url(bad)


def test_cluster_down_at_start_fails_open() -> None:
    """A Cache made while no node answers still starts; its calls miss (fail open)."""
    cache = Cache(f"redis+cluster://{HOST}:{free_port()}", namespace="down")
    assert cache.get("k", default="fallback") == "fallback"
    assert cache.get_or_load("k", lambda: 7, ttl=5) == 7
    cache.close()


async def test_ready_clients(cluster_url: str) -> None:
    """A ready RedisCluster (and a builder for the asyncio one) for what a URL cannot say."""
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    host, port = cluster_url.removeprefix("redis+cluster://").split(",")[0].split(":")
    client = RedisCluster(startup_nodes=[ClusterNode(host, int(port))])
    store = ClusterStore(
        client=client,
        async_client=lambda: AsyncCluster(startup_nodes=[AsyncNode(host, int(port))]),
    )
    cache = Cache(store, namespace="ready")
    try:
        cache.set("k", 1, ttl=5)
        assert await cache.aget("k") == 1
        await cache.adelete("k")
        assert cache.get("k") is None
    finally:
        await cache.aclose()
        client.close()
    async_face = ClusterStore(client=client).asynchronous()
    with pytest.raises(ConfigurationError, match="async_client"):
        await async_face.get("k")


async def test_async_pool_full_is_store_busy(cluster: LocalCluster) -> None:
    """On redis-py's asyncio face (``async_client=``) a full connection pool is StoreBusy
    (this process's congestion, a miss that never opens the breaker), not a failure."""
    from redis.asyncio.cluster import ClusterNode as AsyncNode
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    seed = [ClusterNode("127.0.0.1", cluster.servers[0].port)]
    client = RedisCluster(startup_nodes=seed, socket_timeout=2.0)
    store = ClusterStore(
        client=client,
        async_client=lambda: AsyncCluster(
            startup_nodes=[AsyncNode("127.0.0.1", cluster.servers[0].port)],
            max_connections=1,
            socket_timeout=2.0,
        ),
    )
    face = store.asynchronous()
    try:
        replies = await asyncio.gather(
            *(face.get("{busy}:k") for _ in range(20)), return_exceptions=True
        )
        assert any(isinstance(reply, StoreBusy) for reply in replies)
        assert all(reply is None or isinstance(reply, StoreBusy) for reply in replies)
    finally:
        await face.close()
        client.close()


async def test_async_face_multiplexes_per_node(cluster: LocalCluster, cluster_url: str) -> None:
    """The URL's asyncio face: 300 concurrent calls over keys of every node, one
    connection per node, each answered."""
    store = ClusterStore(cluster_url + "?client_name=mux-cluster", socket_timeout=2.0)
    face = store.asynchronous()
    keys = [f"mux:{i}" for i in range(30)]
    try:
        await face.set_many([(k, k.encode(), 60) for k in keys])
        replies = await asyncio.gather(*(face.get(keys[i % 30]) for i in range(300)))
        assert replies == [keys[i % 30].encode() for i in range(300)]
        assert await face.get_many([*keys, "mux:absent"]) == [k.encode() for k in keys] + [None]
        named = []
        for index in cluster.primary_indexes():
            node = cluster.node(index)
            named.append(sum(1 for c in node.client_list() if c.get("name") == "mux-cluster"))
            node.close()
        assert named == [1] * len(named)
        assert await face.delete(keys) == 30
    finally:
        await face.close()
        store.close()


def test_local_tiers_stay_coherent_on_a_cluster(cluster_url: str) -> None:
    """Two Caches (two processes' worth) with local tiers on a cluster: purges published
    through one node reach the other's subscription on another."""
    namespace = f"cl{uuid.uuid4().hex[:8]}"
    a = Cache(cluster_url, namespace=namespace, local={"max_entries": 100})
    b = Cache(cluster_url, namespace=namespace, local={"max_entries": 100})
    try:
        assert a.wait_local(5)
        assert b.wait_local(5)

        def purges() -> int:
            local = b.stats().local
            assert local is not None
            return local.purges

        a.set("k", 1)
        wait_for("the first purge", lambda: purges() == 1)
        assert b.get("k") == 1
        assert b.get("k") == 1
        assert b.stats().local_hits == 1
        a.set("k", 2)
        wait_for("the second purge", lambda: purges() == 2)
        assert b.get("k") == 2
    finally:
        a.clear()
        a.close()
        b.close()


def test_profile_and_doctor_read_every_node(
    cluster: LocalCluster, cluster_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cachelayer profile` walks every primary (the totals match MEMORY USAGE summed
    over all the keys); `cachelayer doctor` checks every node, replicas included."""
    import json

    from cachelayer.__main__ import main

    namespace = f"prof{uuid.uuid4().hex[:6]}"
    cache = Cache(cluster_url, namespace=namespace)
    try:
        for i in range(300):
            cache.set(f"user:{i}", {"id": i, "name": "x" * (i % 50)}, ttl=600)
        pattern = f"{namespace}:*"
        assert main(["profile", "--redis", cluster_url, "--rate", "0", "--json",
                     "--match", pattern]) == 0  # fmt: skip
        report = json.loads(capsys.readouterr().out)
        assert report["walked"] == 300
        expected = 0
        client = cache.store.client  # type: ignore[attr-defined]
        for i in range(300):
            expected += int(client.memory_usage(f"{namespace}:v1:user:{i}"))
        total = sum(group["bytes"] for group in report["groups"])
        assert abs(total - expected) <= 0.05 * expected
        main(["doctor", "--redis", cluster_url, "--json", "--pings", "2"])
        findings = json.loads(capsys.readouterr().out)["findings"]
        ports = {s.port for s in cluster.servers}
        named = {int(f["check"].split(" ")[0].rsplit(":", 1)[1]) for f in findings}
        assert named == ports  # every node, primaries and replicas
    finally:
        cache.clear()
        cache.close()


def test_fleet_stats_on_a_cluster(cluster_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """publish_stats writes through the cluster store, and `cachelayer stats` finds the
    namespace (SCAN on every primary) and sums its processes."""
    import json

    from cachelayer import _fleet
    from cachelayer.__main__ import main

    namespace = f"fleet{uuid.uuid4().hex[:6]}"
    cache = Cache(cluster_url, namespace=namespace, publish_stats=60)
    try:

        @cache.cached(ttl=60)
        def square(n: int) -> int:
            return n * n

        for n in (1, 2, 1, 2, 1):
            square(n)
        _fleet._publishers[namespace][0].publish_once()
        assert main(["stats", "--redis", cluster_url, "--json"]) == 0
        figures = json.loads(capsys.readouterr().out)["namespaces"][namespace]
        assert figures["processes"] == 1
        assert figures["totals"]["hits"] == 3
        assert figures["totals"]["misses"] == 2
    finally:
        cache.clear()
        cache.close()


async def test_closing_during_a_map_read_fails_open_and_leaves_nothing(
    cluster: LocalCluster,
) -> None:
    """close() while a command waits on the slot map (the first seed accepts and never
    answers): the command fails as a store failure, not CancelledError, and no node
    connection opened after close() is left behind."""
    import socket

    import redis

    from cachelayer.backends._clustermux import ClusterClient

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the backlog) and never answers
    try:
        client = ClusterClient(
            [("127.0.0.1", silent.getsockname()[1]), ("127.0.0.1", cluster.servers[0].port)],
            {"timeout": 0.5, "connect_timeout": 0.5},
        )
        call = asyncio.create_task(client.execute("k", "GET", "k"))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(redis.ConnectionError, match="closed"):
            await call
        await asyncio.sleep(0.6)  # past the silent seed's timeout: the next seed's turn
        assert client.nodes == {}
    finally:
        silent.close()


def test_invalidation_events_on_a_cluster(cluster_url: str, tmp_path: pathlib.Path) -> None:
    """`cachelayer listen --redis redis+cluster://...` applies events published through a
    cluster Cache (stream, replay marks and values on their own slots)."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from cachelayer.events import Signer

    namespace = f"ev{uuid.uuid4().hex[:6]}"
    secret = "s" * 40
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k1": secret}), encoding="utf-8")
    cache = Cache(cluster_url, namespace=namespace)
    listener = subprocess.Popen(
        [sys.executable, "-m", "cachelayer", "listen", "--redis", cluster_url,
         "--namespace", namespace, "--group", "g", "--key-file", str(keys),
         "--block", "0.05", "--report", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        cache.set("user:1", "old")
        deadline = time.monotonic() + 20
        while cache.get("user:1") is not None and time.monotonic() < deadline:
            cache.publish_invalidation(keys=["user:1"], signer=Signer("k1", secret))
            time.sleep(0.5)
        assert cache.get("user:1") is None
    finally:
        listener.send_signal(signal.SIGTERM)
        _, err = listener.communicate(timeout=20)
        client = cache.store.client  # type: ignore[attr-defined]
        client.delete("{" + namespace + ":}events")
        cache.clear()
        cache.close()
    assert listener.returncode == 0, err
