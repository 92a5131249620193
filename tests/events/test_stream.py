"""The Redis Streams consumer against the real Redis: round trips, groups, restarts after
SIGKILL, claims, dead letters, lag, local tiers, the asyncio mode and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from cachelayer import Cache
from cachelayer.events import (
    Signer,
    StreamConsumer,
    Verifier,
    apublish_invalidation,
    dead_letter_for,
    publish_invalidation,
    stream_for,
)
from cachelayer.testing import RedisServer
from tests.conftest import make_cache

from .conftest import SECRET

CacheFactory = Callable[..., Cache]
ConsumerFactory = Callable[..., StreamConsumer]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (for other processes, which no event reaches)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_round_trip_deletes_keys_and_invalidates_tags(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """A published event deletes its keys and invalidates its tags in the consumer's
    Cache; the entry is acknowledged; the publisher's Cache is untouched by publishing."""
    cache = events_cache()
    cache.set("user:42", {"name": "ada"})
    team = cache.cached(ttl=60, key="team:{n}", tags=["team:{n}"])(
        lambda n: {"n": n, "t": time.time()}
    )
    first = team(7)
    consumer = consumers(cache, verifier)
    assert consumer.poll() == 0  # creates the group
    entry = publish_invalidation(cache, keys=["user:42"], tags=["team:7"], signer=signer)
    assert cache.get("user:42") == {"name": "ada"}  # publishing applies nothing
    assert consumer.poll(1.0) == 1
    assert cache.get("user:42") is None
    assert team(7) != first
    assert consumer.counters.applied == 1
    assert consumer.lag().pending == 0
    client = consumer._sync_client()
    assert client.xrange(stream_for(cache.engine.keys.namespace))[0][0].decode() == entry


def test_an_event_signed_with_the_old_key_applies(
    events_cache: CacheFactory, consumers: ConsumerFactory, verifier: Verifier
) -> None:
    """During a rotation, events signed with the key being retired still apply."""
    from .conftest import OLD_SECRET

    cache = events_cache()
    cache.set("k", 1)
    consumer = consumers(cache, verifier)
    consumer.poll()
    publish_invalidation(cache, keys=["k"], signer=Signer("k1", OLD_SECRET))
    consumer.poll(1.0)
    assert cache.get("k") is None


def test_local_tier_of_another_cache_drops_the_entry(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """An event applied by a consumer's Cache reaches a local tier in another Cache
    object (another process, as far as the tier knows) through the purge channel."""
    reader = events_cache(local={"max_ttl": 30})
    applier = events_cache(publish_invalidations=True)
    assert reader.wait_local(5)
    reader.set("user:1", "v1")
    assert reader.get("user:1") == "v1"
    assert reader.get("user:1") == "v1"
    assert len(reader.local or ()) == 1  # served by the tier now
    consumer = consumers(applier, verifier)
    consumer.run_in_thread()
    publish_invalidation(reader, keys=["user:1"], signer=signer)
    wait_for(lambda: reader.get("user:1") is None)
    consumer.stop()
    assert consumer.counters.applied == 1


def test_async_run_applies_with_the_async_methods(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """``await consumer.run()`` applies events as an asyncio task until stop()."""
    cache = events_cache()

    async def scenario() -> None:
        await cache.aset("a", 1)
        consumer = consumers(cache, verifier)
        task = asyncio.create_task(consumer.run())
        await apublish_invalidation(cache, keys=["a"], signer=signer)
        client = redis.asyncio.Redis.from_url(consumer._redis_url())
        await apublish_invalidation(cache, tags=["t"], signer=signer, client=client)
        await client.aclose()
        deadline = time.monotonic() + 10
        while consumer.counters.applied < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await cache.aget("a") is None
        consumer.stop()
        await asyncio.wait_for(task, 5)
        await cache.aclose()

    asyncio.run(scenario())


def test_consumers_of_one_group_apply_each_event_once(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """Four consumers in one group share 200 events: each is applied exactly once."""
    cache = events_cache()
    n = 200
    cache.set_many({f"k{i}": i for i in range(n)})
    group = [consumers(cache, verifier, consumer=f"c{i}", batch=7) for i in range(4)]
    group[0].poll()
    for c in group:
        c.run_in_thread()
    for i in range(n):
        publish_invalidation(cache, keys=[f"k{i}"], signer=signer)
    wait_for(lambda: sum(c.counters.applied for c in group) >= n)
    for c in group:
        c.stop()
    assert sum(c.counters.applied for c in group) == n
    assert sum(c.counters.duplicates for c in group) == 0
    assert sum(c.counters.applied > 0 for c in group) >= 2  # the work was shared
    assert cache.get_many([f"k{i}" for i in range(n)]) == {}
    lag = group[0].lag()
    assert (lag.events, lag.pending) == (0, 0)


VICTIM = textwrap.dedent(
    """
    import sys
    from cachelayer import Cache
    from cachelayer.events import StreamConsumer, Verifier
    url, namespace, secret = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    cache = Cache(url, namespace=namespace)
    consumer = StreamConsumer(cache, Verifier({"k2": secret}), group="g", consumer="victim",
                              batch=10, block=0.05)
    print("ready", flush=True)
    while True:
        consumer.poll(0.05)
    """
)


def test_a_consumer_killed_mid_stream_loses_nothing(
    events_cache: CacheFactory,
    consumers: ConsumerFactory,
    signer: Signer,
    verifier: Verifier,
    redis_url: str,
    namespace: str,
) -> None:
    """SIGKILL a consumer process mid-stream, restart it under its name: every event is
    applied (0 lost), what it had read is re-read first, redeliveries counted."""
    cache = events_cache()
    n = 1500
    cache.set_many({f"k{i}": i for i in range(n)})
    setup = consumers(cache, verifier)
    setup.poll()  # the group exists before anything is published
    pipe = cache.store.client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for i in range(n):
        publish_invalidation(cache, keys=[f"k{i}"], signer=signer, client=pipe)
    pipe.execute()
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, redis_url, namespace, SECRET.hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "ready"
        wait_for(lambda: len(cache.get_many([f"k{i}" for i in range(n)])) < n - 100)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    info = setup._sync_client().xinfo_groups(setup.stream)[0]
    left = int(info["pending"]) + int(info["lag"])
    assert 0 < left < n  # killed mid-stream
    restarted = consumers(cache, verifier, consumer="victim", batch=50)
    while restarted.poll():
        pass
    counts = restarted.counters
    assert counts.applied + counts.duplicates == left
    assert counts.refused == dict.fromkeys(counts.refused, 0)
    assert cache.get_many([f"k{i}" for i in range(n)]) == {}  # 0 lost
    lag = restarted.lag()
    assert (lag.events, lag.pending) == (0, 0)


def test_entries_of_a_dead_consumer_are_claimed(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """Entries a consumer read and never acknowledged are claimed by another once idle
    for ``claim_idle`` seconds, and applied."""
    cache = events_cache()
    cache.set_many({"a": 1, "b": 2})
    survivor = consumers(cache, verifier, consumer="survivor", claim_idle=0.05)
    survivor.poll()
    publish_invalidation(cache, keys=["a"], signer=signer)
    publish_invalidation(cache, keys=["b"], signer=signer)
    client = survivor._sync_client()
    # "dead" reads both and dies before applying them.
    assert len(client.xreadgroup("g", "dead", {survivor.stream: ">"})[0][1]) == 2
    assert survivor.poll() == 0  # nothing new, and not idle long enough yet
    time.sleep(0.1)  # the server's idle clock; no event can stand in for it
    survivor._next_claim = 0.0
    assert survivor.poll() == 2
    assert survivor.counters.claimed == 2
    assert survivor.counters.applied == 2
    assert cache.get_many(["a", "b"]) == {}
    assert survivor.lag().pending == 0


def test_an_event_that_cannot_be_applied_goes_to_the_dead_letter_stream(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """An event the Cache refuses to apply (a key with '}' outside a hash tag) is tried
    max_attempts times, then moved to the dead-letter stream and acknowledged; the
    events behind it are applied meanwhile."""
    cache = events_cache()
    cache.set("fine", 1)
    consumer = consumers(cache, verifier, max_attempts=3)
    consumer.poll()
    poison = publish_invalidation(cache, keys=["a}b"], signer=signer)
    publish_invalidation(cache, keys=["fine"], signer=signer)
    assert consumer.poll(1.0) == 1  # "fine" applied, the poison kept
    assert cache.get("fine") is None
    polls = 0
    while consumer.counters.dead_lettered == 0:
        consumer.poll()
        polls += 1
        assert polls < 10
    assert consumer.counters.failures == 3
    client = consumer._sync_client()
    ((_, letter),) = client.xrange(dead_letter_for(consumer.stream))
    assert letter[b"entry"].decode() == poison
    assert letter[b"n"] == b"3"
    assert {b"p", b"k", b"s"} <= set(letter)
    assert consumer.lag().pending == 0


def test_a_restart_counts_toward_the_attempts(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """Attempts are deliveries (from XPENDING) plus retries in the process: a consumer
    restarted twice on a poison event dead-letters it sooner."""
    cache = events_cache()
    first = consumers(cache, verifier, consumer="c", max_attempts=3)
    first.poll()
    publish_invalidation(cache, keys=["x}y"], signer=signer)
    first.poll(1.0)  # delivery 1 fails
    second = consumers(cache, verifier, consumer="c", max_attempts=3)
    second.poll()  # delivery 2 (its pending list) fails
    third = consumers(cache, verifier, consumer="c", max_attempts=3)
    third.poll()  # delivery 3 fails
    third.poll()  # 4th attempt: buried
    assert third.counters.dead_lettered == 1
    assert third.lag().pending == 0


def test_lag_counts_what_the_group_has_not_read(
    events_cache: CacheFactory,
    consumers: ConsumerFactory,
    signer: Signer,
    verifier: Verifier,
) -> None:
    """lag(): undelivered events and their age, then pending ones, then none."""
    cache = events_cache()
    consumer = consumers(cache, verifier, batch=2)
    consumer.poll()
    for i in range(5):
        publish_invalidation(cache, keys=[f"k{i}"], signer=signer)
    lag = consumer.lag()
    assert (lag.events, lag.pending) == (5, 0)
    assert 0 <= lag.seconds < 5
    consumer._sync_client().xreadgroup("g", "other", {consumer.stream: ">"}, count=2)
    lag = consumer.lag()
    assert (lag.events, lag.pending) == (3, 2)
    assert 0 <= lag.pending_seconds < 5
    consumer.clock = lambda: time.time() + 60  # a minute later
    assert consumer.lag().seconds >= 59
    consumer.clock = time.time
    while consumer.poll():
        pass
    lag = consumer.lag()
    assert (lag.events, lag.pending, lag.seconds) == (3 - 3, 2, 0.0)


def test_the_cli_applies_events_and_stops_on_sigterm(
    events_cache: CacheFactory,
    signer: Signer,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    """``cachelayer listen`` applies events until SIGTERM, then exits 0 with its counters."""
    cache = events_cache()
    cache.set("user:1", 1)
    keys = tmp_path / "keys.json"
    # The key file holds secrets as text (their UTF-8 bytes are the key).
    text_secret = "s" * 40
    keys.write_text(json.dumps({"k9": text_secret}), encoding="utf-8")
    listener = subprocess.Popen(
        [
            sys.executable, "-m", "cachelayer", "listen",
            "--redis", redis_url, "--namespace", namespace, "--group", "cli",
            "--key-file", str(keys), "--block", "0.05", "--report", "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        publish_invalidation(cache, keys=["user:1"], signer=Signer("k9", text_secret))
        wait_for(lambda: cache.get("user:1") is None, timeout=20)
    finally:
        listener.send_signal(signal.SIGTERM)
        _, err = listener.communicate(timeout=20)
    assert listener.returncode == 0, err
    assert '"applied": 1' in err


def test_the_cli_refuses_bad_settings(tmp_path: Path, redis_url: str) -> None:
    """A short secret or a missing key file: exit 2 with the reason, no traceback."""
    keys = tmp_path / "keys.json"
    keys.write_text('{"k": "short"}', encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cachelayer", "listen", "--redis", redis_url,
         "--namespace", "n", "--group", "g", "--key-file", str(keys)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "CACHELAYER_EVENT_KEYS": ""},
    )  # fmt: skip
    assert done.returncode == 2
    assert "at least 32" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_deleted_stream_is_made_again(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """The stream deleted under a running group (NOGROUP): the group is made again."""
    cache = events_cache()
    consumer = consumers(cache, verifier)
    consumer.poll()
    consumer._sync_client().delete(consumer.stream)
    assert consumer.poll() == 0
    cache.set("k", 1)
    publish_invalidation(cache, keys=["k"], signer=signer)
    consumer.poll(1.0)
    assert cache.get("k") is None


def test_a_store_failure_keeps_the_event_for_later(
    private_redis: RedisServer,
    consumers: ConsumerFactory,
    signer: Signer,
    verifier: Verifier,
    redis_url: str,
    namespace: str,
    events_cache: CacheFactory,
) -> None:
    """The Cache's store down while the stream's Redis is up: the event is kept (not
    acknowledged, not dead-lettered however long it lasts) and applied once it is back."""
    events_cache()  # cleans the namespace on the suite's Redis afterwards
    cache = make_cache("redis", private_redis.url, namespace)
    try:
        consumer = consumers(cache, verifier, url=redis_url, max_attempts=2)
        consumer.poll()
        publish_invalidation(cache, keys=["k"], signer=signer, client=consumer._sync_client())
        private_redis.stop()
        for _ in range(4):
            assert consumer.poll(0.5) == 0
        assert consumer.counters.failures == 4
        assert consumer.counters.dead_lettered == 0
        private_redis.start()
        cache.set("k", 2)
        assert consumer.poll() == 1
        assert cache.get("k") is None
        assert consumer.counters.applied == 1
    finally:
        cache.close()


async def test_cache_methods_publish_events(
    events_cache: CacheFactory, consumers: ConsumerFactory, signer: Signer, verifier: Verifier
) -> None:
    """``cache.publish_invalidation`` and ``await cache.apublish_invalidation`` are the
    functions of cachelayer.events, bound to the Cache."""
    cache = events_cache()
    cache.set("a", 1)
    cache.set("b", 2)
    consumer = consumers(cache, verifier)
    assert consumer.poll() == 0
    first = cache.publish_invalidation(keys=["a"], signer=signer)
    second = await cache.apublish_invalidation(keys=["b"], signer=signer, origin="test")
    assert first < second
    assert consumer.poll(1.0) == 2
    assert cache.get("a") is None
    assert cache.get("b") is None


class FailingGets:
    """A real redis-py client whose first ``failures`` GETs fail as a dropped connection
    would (fault injection around the real client; everything else goes through)."""

    def __init__(self, client: redis.Redis, failures: int) -> None:
        self.client, self.failures = client, failures

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise redis.ConnectionError("connection reset by peer (injected)")
        return self.client.get(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_a_store_failure_at_the_replay_mark_is_retried_not_dead_lettered(
    events_cache: CacheFactory,
    signer: Signer,
    verifier: Verifier,
    redis_client: redis.Redis,
) -> None:
    """The replay mark's GET failing more times than max_attempts is the store failing,
    not a poison event: the event is retried until it applies, never dead-lettered."""
    cache = events_cache()
    cache.set("user:1", "old")
    publish_invalidation(cache, keys=["user:1"], signer=signer)
    consumer = StreamConsumer(
        cache,
        verifier,
        group="g",
        client=FailingGets(redis_client, 6),
        max_attempts=3,
        block=0.05,
    )
    try:
        for _ in range(20):
            consumer.poll(0.05)
            if consumer.counters.applied:
                break
            time.sleep(0.05)
        assert consumer.counters.applied == 1
        assert consumer.counters.dead_lettered == 0
        assert cache.get("user:1") is None
    finally:
        consumer.close()
        redis_client.delete(consumer.stream + ":dead")
