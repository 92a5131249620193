"""A failover under load, on Sentinel and on Cluster: one table, one command.

Usage::

    python bench/bench_failover.py [--threads N] [--after S] [--only sentinel|cluster]

For each deployment, started privately (tests/backends/_topology.py: a primary, its
replica and 3 sentinels, down-after 1 s; a cluster of 3 primaries with a replica each,
cluster-node-timeout 1 s), ``--threads`` threads read a tagged cached function over 50
rows while a writer writes rows and invalidates them (a row or a tag group, 20 a second),
and the primary serving every row is killed (SIGKILL, by its pid). Every Cache setting is
the default (0.1 s timeouts, breaker: 5 failures, 5 s open). Per deployment: calls, calls
that raised, seconds from the kill to the promotion and to hits on the promoted replica,
and stale reads after the kill: reads that returned a row older than a write that had
finished before the read began, split by whether that write's invalidation succeeded
(then lost with the old primary) or failed (the store was down: fail-open). Then
``--after`` seconds more of load (4 by default). Each run stops every process it started
(by pid); loopback only; about 50 s in all.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.backends._topology

from tests.backends._topology import (
    HOST,
    FailoverFigures,
    LocalCluster,
    measure_failover,
    slot_of,
    start_sentinel_group,
)

from cachelayer import Cache
from cachelayer.backends.cluster import ClusterStore
from cachelayer.backends.sentinel import SentinelStore
from cachelayer.testing import RedisServer

ROWS = 50


def sentinel_run(threads: int, after: float) -> FailoverFigures:
    group = start_sentinel_group(down_after_ms=1000)
    try:
        cache = Cache(SentinelStore(group.url), namespace="failover")
        figures = measure_failover(
            cache,
            list(range(ROWS)),
            kill=lambda: _kill(group.primary),
            promoted=lambda: group.master_address() == (HOST, group.replica.port),
            threads=threads,
            after=after,
        )
        cache.clear()
        cache.close()
        return figures
    finally:
        group.close()


def cluster_run(threads: int, after: float) -> FailoverFigures:
    cluster = LocalCluster(node_timeout_ms=1000).start()
    try:
        victim, replica = 0, cluster.replica_of(0)
        owners = cluster.owners()
        namespace = next(
            ns for ns in (f"failover{n}" for n in range(10_000))
            if owners[slot_of(ns + ":v1:")] == victim
        )  # fmt: skip
        rows = [i for i in range(5000) if owners[slot_of(f"{namespace}:v1:item:{i}")] == victim]
        cache = Cache(ClusterStore(cluster.url), namespace=namespace)
        figures = measure_failover(
            cache,
            rows[:ROWS],
            kill=lambda: cluster.kill(victim),
            promoted=lambda: cluster.owners(via=replica).count(replica) > 0,
            threads=threads,
            after=after,
        )
        cache.clear()
        cache.close()
        return figures
    finally:
        cluster.close()


def _kill(server: RedisServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    server.stop()  # reaps it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--after", type=float, default=4.0)
    parser.add_argument("--only", choices=("sentinel", "cluster"))
    args = parser.parse_args()
    runs = {"sentinel": sentinel_run, "cluster": cluster_run}
    rows = []
    for name, run in runs.items():
        if args.only in (None, name):
            figures = run(args.threads, args.after)
            print(f"{name}: {figures.line()}", flush=True)
            rows.append((name, figures))

    def secs(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    print(f"\nfailover under load: {args.threads} threads, {ROWS} rows, every Cache default\n")
    print(
        "| deployment | calls | failed calls | promoted after | hits resumed after | "
        "stale reads after the kill (invalidation succeeded / failed) | last stale read |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, f in rows:
        print(
            f"| {name} | {f.calls:,} | {f.raised} | {secs(f.promoted_after)} | "
            f"{secs(f.hits_resumed_after)} | {f.stale_acked} / {f.stale_unacked:,} | "
            f"{secs(f.last_stale_after)} |"
        )


if __name__ == "__main__":
    main()
