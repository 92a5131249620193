"""The outbox on the real PostgreSQL and Redis: events written in the writer's
transaction, published by the relay after the commit (and never after a rollback), a
relay SIGKILLed between XADD and marking the row, old rows refreshed, pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from cachelayer import Cache
from cachelayer.errors import ConfigurationError
from cachelayer.events import (
    OutboxRelay,
    Signer,
    StreamConsumer,
    Verifier,
    create_outbox_table,
    outbox_ddl,
    outbox_write,
    stream_for,
)
from tests._postgres import postgres_server

ROOT = Path(__file__).resolve().parents[2]
CacheFactory = Callable[..., Cache]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def table(postgres_url: str) -> Iterator[str]:
    """An outbox table of this test's own (made with create_outbox_table), dropped after."""
    name = "outbox_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_url) as conn:
        create_outbox_table(conn, name)
        create_outbox_table(conn, name)  # idempotent
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def relays(postgres_url: str) -> Iterator[Callable[..., OutboxRelay]]:
    made: list[OutboxRelay] = []

    def factory(client: Any, table: str, **options: Any) -> OutboxRelay:
        relay = OutboxRelay(postgres_url, client, table=table, **options)
        made.append(relay)
        return relay

    yield factory
    for relay in made:
        relay.close()


def rows(url: str, table: str) -> list[tuple[str, bool]]:
    """``(event_id, published)`` of every row, oldest first."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            f"SELECT event_id, published_at IS NOT NULL FROM {table} ORDER BY seq"
        ).fetchall()
    return [(str(event_id), bool(published)) for event_id, published in found]


def test_a_committed_write_is_published_and_applied(
    events_cache: CacheFactory,
    consumers: Callable[..., StreamConsumer],
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    table: str,
    signer: Signer,
    verifier: Verifier,
) -> None:
    """The writer's transaction commits the data and the event together; the relay
    publishes the row and marks it; a StreamConsumer applies it."""
    cache = events_cache()
    namespace = cache.engine.keys.namespace
    cache.set("user:42", "old")
    consumer = consumers(cache, verifier)
    consumer.poll()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TEMP TABLE users (id int, name text)")
        conn.execute("INSERT INTO users VALUES (42, 'new')")
        written = outbox_write(
            conn, keys=["user:42"], signer=signer, namespace=namespace, table=table
        )
        assert rows(postgres_url, table) == []  # not visible before the commit
        conn.commit()
    assert rows(postgres_url, table) == [(written.event.id, False)]
    relay = relays(cache, table)
    assert relay.publish_pending() == 1
    assert rows(postgres_url, table) == [(written.event.id, True)]
    assert consumer.poll() == 1
    assert cache.get("user:42") is None
    assert consumer.counters.applied == 1
    assert relay.publish_pending() == 0


def test_a_rolled_back_write_publishes_nothing(
    events_cache: CacheFactory,
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    table: str,
    signer: Signer,
    redis_client: redis.Redis,
) -> None:
    """An event written in a transaction that rolls back never reaches the stream."""
    cache = events_cache()
    with psycopg.connect(postgres_url) as conn:
        outbox_write(
            conn, keys=["a"], signer=signer, namespace=cache.engine.keys.namespace, table=table
        )
        conn.rollback()
    assert relays(cache, table).publish_pending() == 0
    assert rows(postgres_url, table) == []
    assert redis_client.xlen(stream_for(cache.engine.keys.namespace)) == 0


def test_writers_through_a_cursor_and_a_sqlalchemy_session(
    events_cache: CacheFactory,
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    table: str,
    signer: Signer,
    redis_client: redis.Redis,
) -> None:
    """``outbox_write`` takes a DB-API cursor and a SQLAlchemy Session as well as a
    connection; each writes in the caller's transaction."""
    cache = events_cache()
    ns = cache.engine.keys.namespace
    with psycopg.connect(postgres_url) as conn, conn.cursor() as cursor:
        outbox_write(cursor, tags=["t1"], signer=signer, namespace=ns, table=table)
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session:
            outbox_write(session, keys=["k2"], signer=signer, namespace=ns, table=table)
            session.commit()
        with Session(engine) as session:
            outbox_write(session, keys=["k3"], signer=signer, namespace=ns, table=table)
            session.rollback()
    finally:
        engine.dispose()
    assert relays(redis_client, table).publish_pending() == 2
    payloads = [json.loads(f[b"p"]) for _, f in redis_client.xrange(stream_for(ns))]
    assert [(p["keys"], p["tags"]) for p in payloads] == [([], ["t1"]), (["k2"], [])]


def test_the_relay_thread_publishes_at_start_on_notify_and_prunes(
    events_cache: CacheFactory,
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    table: str,
    signer: Signer,
    redis_client: redis.Redis,
) -> None:
    """A relay thread publishes rows committed before it started, then each row soon
    after notify(); rows published longer than ``retention`` ago are pruned."""
    cache = events_cache()
    ns = cache.engine.keys.namespace
    with psycopg.connect(postgres_url) as conn:
        outbox_write(conn, keys=["before"], signer=signer, namespace=ns, table=table)
    relay = relays(cache, table, interval=30.0, retention=0.0)
    relay.run_in_thread()
    deadline = time.monotonic() + 10
    while redis_client.xlen(stream_for(ns)) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with psycopg.connect(postgres_url) as conn:
        outbox_write(conn, keys=["after"], signer=signer, namespace=ns, table=table)
    relay.notify()
    while redis_client.xlen(stream_for(ns)) < 2:
        assert time.monotonic() < deadline, "notify() did not wake the relay"
        time.sleep(0.01)
    relay.stop()
    assert relay.prune() >= 1
    assert rows(postgres_url, table) == []


def test_old_rows_are_refreshed_with_the_same_id(
    events_cache: CacheFactory,
    consumers: Callable[..., StreamConsumer],
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    table: str,
    signer: Signer,
    verifier: Verifier,
) -> None:
    """A row older than ``refresh_after`` (the relay was down) is re-signed with a fresh
    ts and its own id, so consumers still apply it; without a signer it is sent as it is
    and counted stale (consumers refuse it as expired)."""
    cache = events_cache()
    ns = cache.engine.keys.namespace
    cache.set("k", 1)
    consumer = consumers(cache, verifier)
    consumer.poll()
    long_ago = time.time() - 3600
    with psycopg.connect(postgres_url) as conn:
        written = outbox_write(
            conn, keys=["k"], signer=signer, namespace=ns, table=table, clock=lambda: long_ago
        )
    assert relays(cache, table, signer=signer).publish_pending() == 1
    consumer.poll()
    assert consumer.counters.applied == 1
    assert cache.get("k") is None
    with psycopg.connect(postgres_url) as conn:
        outbox_write(
            conn, keys=["k"], signer=signer, namespace=ns, table=table, clock=lambda: long_ago
        )
    stale = relays(cache, table)
    assert stale.publish_pending() == 1
    assert stale.counters.stale == 1
    consumer.poll()
    assert consumer.counters.refused["expired"] == 1
    assert written.event.id in {e for e, _ in rows(postgres_url, table)}


RELAY_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import redis
    from cachelayer.events import OutboxRelay

    class PausingAfterXadd:
        # A real client that stops for good right after its first XADD: the relay is
        # then killed between XADD and marking the row published.
        def __init__(self, client):
            self.client = client

        def xadd(self, *args, **kwargs):
            entry = self.client.xadd(*args, **kwargs)
            print("xadded", flush=True)
            time.sleep(3600)
            return entry

    client = redis.Redis.from_url(sys.argv[2])
    OutboxRelay(sys.argv[1], PausingAfterXadd(client), table=sys.argv[3]).publish_pending()
    """
)


def test_a_relay_killed_between_xadd_and_mark_loses_nothing(
    events_cache: CacheFactory,
    consumers: Callable[..., StreamConsumer],
    relays: Callable[..., OutboxRelay],
    postgres_url: str,
    redis_url: str,
    table: str,
    signer: Signer,
    verifier: Verifier,
    redis_client: redis.Redis,
) -> None:
    """A relay SIGKILLed after its XADD and before marking the row: the next relay
    publishes the row again; the consumers apply the event once and refuse the second
    copy as a replay (its id is the row's). Nothing is lost, nothing applied twice."""
    cache = events_cache()
    ns = cache.engine.keys.namespace
    cache.set("user:1", "old")
    consumer = consumers(cache, verifier)
    consumer.poll()
    with psycopg.connect(postgres_url) as conn:
        written = outbox_write(conn, keys=["user:1"], signer=signer, namespace=ns, table=table)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY_SCRIPT, postgres_url, redis_url, table],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"xadded\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert redis_client.xlen(stream_for(ns)) == 1
    assert rows(postgres_url, table) == [(written.event.id, False)]
    consumer.poll()
    assert cache.get("user:1") is None
    cache.set("user:1", "newer")  # written after the invalidation: must survive the copy
    relay = relays(cache, table)
    deadline = time.monotonic() + 10
    while relay.publish_pending() == 0:  # the killed session's row lock goes with it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rows(postgres_url, table) == [(written.event.id, True)]
    assert redis_client.xlen(stream_for(ns)) == 2
    consumer.poll()
    assert consumer.counters.applied == 1
    assert consumer.counters.refused["replayed"] == 1
    assert cache.get("user:1") == "newer"


def test_names_and_arguments_are_checked(postgres_url: str, redis_client: redis.Redis) -> None:
    """Table names are plain SQL names (they are spelt into the statements); the writer
    needs a Signer; the DDL is idempotent PostgreSQL."""
    with pytest.raises(ConfigurationError):
        outbox_ddl("x; DROP TABLE users")
    with pytest.raises(ConfigurationError):
        OutboxRelay(postgres_url, redis_client, table="a b")
    with pytest.raises(ConfigurationError), psycopg.connect(postgres_url) as conn:
        outbox_write(conn, keys=["k"], signer="k1", namespace="shop")  # type: ignore[arg-type]
    assert all("IF NOT EXISTS" in statement for statement in outbox_ddl())


SQLITE_TABLE = """CREATE TABLE {name} (
    seq integer PRIMARY KEY, event_id text NOT NULL UNIQUE, stream text NOT NULL,
    payload blob NOT NULL, kid text NOT NULL, sig text NOT NULL,
    created_at text NOT NULL DEFAULT CURRENT_TIMESTAMP, published_at text)"""


def test_writers_through_sqlite3_and_django_connections(signer: Signer) -> None:
    """The writer speaks each driver's placeholders: sqlite3's ``?`` and Django's ``%s``
    (the relay needs PostgreSQL; the writer's INSERT is plain SQL)."""
    import sqlite3

    from django.db import connection, transaction

    import tests.integrations.conftest  # noqa: F401  (configures Django: in-memory SQLite)

    with sqlite3.connect(":memory:") as conn:
        conn.execute(SQLITE_TABLE.format(name="outbox"))
        written = outbox_write(conn, keys=["k"], signer=signer, namespace="shop", table="outbox")
        ((event_id, payload),) = conn.execute("SELECT event_id, payload FROM outbox").fetchall()
    conn.close()
    assert (event_id, payload) == (written.event.id, written.payload)
    name = "outbox_" + uuid.uuid4().hex[:8]
    with connection.cursor() as cursor:
        cursor.execute(SQLITE_TABLE.format(name=name))
    try:
        with transaction.atomic():
            outbox_write(connection, tags=["t"], signer=signer, namespace="shop", table=name)
            transaction.set_rollback(True)
        with transaction.atomic():
            written = outbox_write(
                connection, tags=["t"], signer=signer, namespace="shop", table=name
            )
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT event_id, stream FROM {name}")
            assert cursor.fetchall() == [(written.event.id, "{shop:}events")]
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {name}")
