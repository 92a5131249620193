"""``cachelayer stats``: the fleet's snapshots read from Redis and summed
(src/cachelayer/cli/stats.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cachelayer import _fleet as fleet
from cachelayer.__main__ import main
from cachelayer.cli.stats import summarize

from .conftest import make_cache
from .test_fleet import drop_fleet_keys

ROOT = Path(__file__).resolve().parent.parent

#: A second process: publishes its figures, says so, and waits to be told to stop.
CHILD = textwrap.dedent(
    """
    import sys
    from cachelayer import Cache, _fleet
    from cachelayer.backends.redis import RedisStore

    url, ns = sys.argv[1], sys.argv[2]
    cache = Cache(RedisStore(url), namespace=ns, publish_stats=60)

    @cache.cached(ttl=60)
    def square(n: int) -> int:
        return n * n

    for n in (1, 2, 3, 1, 2, 3, 1):
        square(n)
    _fleet._publishers[ns][0].publish_once()
    print("published", flush=True)
    sys.stdin.readline()
    cache.close()
    """
)


@pytest.fixture
def cleanup(redis_client: redis.Redis, namespace: str) -> Iterator[None]:
    yield
    drop_fleet_keys(redis_client, namespace)


def stats_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_two_caches_and_a_subprocess_are_summed(
    redis_url: str,
    namespace: str,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    cleanup: None,
) -> None:
    """Two Caches of this process (one snapshot) and another process (another): the
    command's totals and per-function rows are their sums."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    first = make_cache("redis", redis_url, namespace, publish_stats=60)
    second = make_cache("redis", redis_url, namespace, publish_stats=60)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "published"

        @first.cached(ttl=60)
        def square(n: int) -> int:
            return n * n

        for n in (1, 2, 1):
            square(n)
        second.set("k", 1)
        second.get("k")
        second.get("absent")
        fleet._publishers[namespace][0].publish_once()

        out = stats_json(capsys, "--redis", redis_url, "--namespace", namespace)
        ns = out["namespaces"][namespace]
        assert ns["processes"] == 2
        mine = first.stats() + second.stats()
        # The child: 3 misses then 4 hits of square; this process: 2 misses, 1 hit, and
        # the direct get's hit and miss.
        assert ns["totals"]["hits"] == mine.hits + 4 == 6
        assert ns["totals"]["misses"] == mine.misses + 3 == 6
        assert ns["totals"]["loads"] == 5
        assert ns["hit_ratio"] == pytest.approx(0.5)
        row = ns["functions"][f"{__name__}.{square.__qualname__}"]
        assert (row["hits"], row["misses"], row["loads"]) == (1, 2, 2)
        child_row = ns["functions"]["__main__.square"]
        assert (child_row["hits"], child_row["misses"], child_row["loads"]) == (4, 3, 3)
        assert ns["reads_avoided"]["per_hour"] == pytest.approx(
            ns["reads_avoided"]["per_second"] * 3600
        )
        # Without --namespace the command finds it with SCAN.
        found = stats_json(capsys, "--redis", redis_url)
        assert found["namespaces"][namespace]["processes"] == 2
    finally:
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.close()
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()
        first.clear()
        first.close()
        second.close()
    # Both processes stopped: their snapshots went with them.
    out = stats_json(capsys, "--redis", redis_url, "--namespace", namespace)
    assert out["namespaces"][namespace]["processes"] == 0


def test_table_watch_and_cost_estimates(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str], cleanup: None
) -> None:
    """The table shows the figures, per function rows and the cost estimates; --watch
    refreshes (bounded here by the hidden --iterations)."""
    cache = make_cache("redis", redis_url, namespace, publish_stats=60)
    try:

        @cache.cached(ttl=60)
        def profile(user_id: int) -> dict[str, int]:
            return {"id": user_id}

        profile(1)
        profile(1)
        fleet._publishers[namespace][0].publish_once()
        args = ["stats", "--redis", redis_url, "--namespace", namespace]
        cost = ["--price-per-million-reads", "0.25", "--node-hourly-price", "0.1"]
        assert main([*args, *cost]) == 0
        text = capsys.readouterr().out
        for words in ("processes", "hit ratio", "database reads avoided", "invalidation lag",
                      "per function", "COST ESTIMATES", "Redis node"):  # fmt: skip
            assert words in text, words
        started = time.monotonic()
        assert main([*args, "--watch", "0.05", "--iterations", "3"]) == 0
        assert time.monotonic() - started < 10
        assert "database reads avoided" in capsys.readouterr().out
    finally:
        cache.clear()
        cache.close()


def test_unknown_namespace_says_how_to_publish(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No process publishes: zero processes (JSON) and no crash."""
    out = stats_json(capsys, "--redis", redis_url, "--namespace", "t-nobody-publishes")
    assert out["namespaces"]["t-nobody-publishes"]["processes"] == 0


def test_summary_and_cost_arithmetic() -> None:
    """Sums over processes, the lag p99 of the summed histograms, and the estimates:
    reads avoided/month = hits/s x 3600 x 730; priced per million; node x 730 h."""
    lag_a = {"bounds": [0.001, 0.01], "counts": [98, 1, 0], "sum": 0.05}
    lag_b = {"bounds": [0.001, 0.01], "counts": [0, 0, 1], "sum": 0.5}

    def snap(host: str, hits: float, lag: dict[str, object] | None) -> dict[str, object]:
        rates = dict.fromkeys(fleet.RATES, 0.0)
        rates["hits"] = hits
        return {
            "host": host,
            "breaker": "closed",
            "totals": {"hits": 100, "misses": 100, "store_errors": 1},
            "rates": rates,
            "errors_by_kind": {"TimeoutError": 1},
            "local": None if lag is None else {"entries": 1, "bytes": 1, "purges": 1, "lag": lag},
            "functions": {},
        }

    summary = summarize(
        [snap("a", 100.0, lag_a), snap("b", 50.0, lag_b), snap("b", 0.0, None)],
        price_per_million_reads=0.5,
        node_hourly_price=1.0,
    )
    assert (summary["processes"], summary["hosts"]) == (3, 2)
    assert summary["totals"]["hits"] == 300
    assert summary["errors"]["by_kind"] == {"TimeoutError": 3}
    assert summary["invalidation_lag_p99"] == 0.01  # 99 of 100 within 10 ms
    month = 150.0 * 3600 * 730
    cost = summary["cost"]
    assert cost["reads_avoided_per_month"] == pytest.approx(month)
    assert cost["database_reads_saved_per_month"] == pytest.approx(month / 1e6 * 0.5)
    assert cost["redis_node_per_month"] == pytest.approx(730.0)
    assert cost["saved_over_cost"] == pytest.approx(month / 1e6 * 0.5 / 730)
