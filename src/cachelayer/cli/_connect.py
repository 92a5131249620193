"""The servers a ``--redis`` URL names, for the commands that read them directly.

``redis://`` (and ``rediss://``, ``unix://``, ``valkey://``) is one server;
``redis+sentinel://`` is the primary the sentinels name; ``redis+cluster://`` is a
cluster client (commands routed by key) plus one plain client per node, for what runs
per node (``SCAN``, ``INFO``, ``CONFIG GET``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Servers", "connect"]


@dataclass
class Servers:
    """What a URL names: ``client`` routes by key; ``primaries`` and ``nodes`` (a
    cluster's, replicas included) are plain per-node clients, or ``[client]``."""

    client: Any
    primaries: list[Any]
    nodes: list[Any]
    close: Callable[[], None]
    names: dict[int, str] = field(default_factory=dict)

    def name(self, node: Any) -> str:
        """``host:port`` of a node client."""
        return self.names.get(id(node), "")


def connect(url: str, timeout: float, connect_timeout: float = 5.0) -> Servers:
    scheme = url.partition("://")[0].lower()
    if scheme.endswith("+cluster"):
        from ..backends.cluster import ClusterStore

        store = ClusterStore(url, socket_timeout=timeout, connect_timeout=connect_timeout)
        client: Any = store.client
        names: dict[int, str] = {}

        def plain(node: Any) -> Any:
            conn = client.get_redis_connection(node)
            names[id(conn)] = node.name
            return conn

        primaries = [plain(node) for node in client.get_primaries()]
        # Every node CLUSTER NODES lists, replicas included (CLUSTER SLOTS, the
        # client's own map, lists a replica only once it is in sync).
        from redis.cluster import ClusterNode

        known = {node.name for node in client.get_primaries()}
        everyone = list(primaries)
        for address, info in sorted(client.cluster_nodes().items()):
            flags = str(info.get("flags", ""))
            if address in known or "fail" in flags or "noaddr" in flags:
                continue
            host, _, port = address.rpartition(":")
            known.add(address)
            everyone.append(plain(ClusterNode(host, int(port))))  # type: ignore[no-untyped-call]
        return Servers(client, primaries, everyone, store.close, names)
    if scheme.endswith("+sentinel"):
        from ..backends.sentinel import SentinelStore

        sentinel = SentinelStore(url, socket_timeout=timeout, connect_timeout=connect_timeout)
        return Servers(sentinel.client, [sentinel.client], [sentinel.client], sentinel.close)
    import redis

    single = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=connect_timeout
    )
    return Servers(single, [single], [single], single.close)
