"""Stores: where cachelayer keeps its bytes. One module per store, one interface (base.py).

``store_from_url`` picks the store for a Cache URL; pass a store object to ``Cache``
instead to set options a URL cannot carry.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from .._redact import redact_url
from ..errors import ConfigurationError
from .base import AsyncStore, Store, SyncAsAsync
from .memory import MemoryStore

__all__ = ["AsyncStore", "MemoryStore", "Store", "SyncAsAsync", "store_from_url"]


def store_from_url(url: str) -> Store:
    """Build the store a URL names.

    ``memory://[?max_entries=N&max_bytes=SIZE]`` is process memory; ``redis://``,
    ``rediss://``, ``unix://`` and ``valkey://`` are Redis-compatible servers;
    ``redis+cluster://host:port,host:port`` is a Redis Cluster and
    ``redis+sentinel://host:26379,host:26379/service/db`` a primary found through its
    sentinels (docs/scaling.md).

    Raises:
        ConfigurationError: unknown scheme or option.
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(f"{redact_url(url)!r}: a memory URL has no host or path")
        options = dict(parse_qsl(parts.query, strict_parsing=False))
        unknown = set(options) - {"max_entries", "max_bytes"}
        if unknown:
            raise ConfigurationError(
                f"{redact_url(url)!r}: unknown memory option(s) {', '.join(sorted(unknown))} "
                "(known: max_entries, max_bytes)"
            )
        try:
            max_entries = int(options.get("max_entries", 10_000))
        except ValueError:
            raise ConfigurationError(
                f"{redact_url(url)!r}: max_entries must be an integer"
            ) from None
        return MemoryStore(max_entries=max_entries, max_bytes=options.get("max_bytes", "64MB"))
    if scheme.endswith("+cluster"):
        from .cluster import ClusterStore

        return ClusterStore(url)
    if scheme.endswith("+sentinel"):
        from .sentinel import SentinelStore

        return SentinelStore(url)
    from .redis import RedisStore

    return RedisStore(url)
