"""Fixtures of the Cluster and Sentinel tests.

One local Redis Cluster per test session: test_cluster.py and test_cluster_migration.py
share it (about 6 s to start); tests that kill a node start a private cluster of their own
(``_topology.LocalCluster``) instead. One Sentinel group per test module (``group``): each
module's failover test kills that module's primary.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest

from ._topology import LocalCluster, SentinelGroup, start_sentinel_group

#: The sentinels call a primary down after this long without a reply.
DOWN_AFTER_MS = 1000


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A fresh cluster of 3 primaries with a replica each (stopped by pid at the end).
    Tests may move slots between its primaries, but not stop its nodes."""
    local = LocalCluster().start()
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    """A primary, its replica and 3 sentinels watching them, for this test module
    (stopped by pid at the end)."""
    started = start_sentinel_group(DOWN_AFTER_MS)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster_url(cluster: LocalCluster) -> str:
    """The redis+cluster:// URL of the session's cluster."""
    return cluster.url


@pytest.fixture
def collect_stray_sockets() -> Iterator[None]:
    """redis-py's asyncio cluster client leaves some node connections (and, after a full
    pool, ClusterNode objects) of a closed loop to the garbage collector, with a
    ResourceWarning. Collect them here, where they come from, with that warning alone
    silenced, rather than failing whichever test happens to run next. (A leak to chase
    in the async cluster face: noted for issue 12.)"""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
