"""cachelayer.sqlalchemy: committed writes invalidate, rolled back ones do not.

Every test runs against a real Redis and a real database: SQLite (a file per test) and
PostgreSQL (tests/_postgres.py; one schema per test, dropped afterwards). AsyncSession
tests run on PostgreSQL through psycopg's async driver.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, ForeignKey, String, create_engine, delete, insert, select, text
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

from cachelayer import Cache, ConfigurationError
from cachelayer.sqlalchemy import ModelInvalidation, invalidate_on
from cachelayer.testing import RedisServer
from tests._postgres import postgres_server
from tests.conftest import make_cache


class Base(DeclarativeBase):
    pass


class Org(Base):
    __tablename__ = "cl_orgs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class User(Base):
    __tablename__ = "cl_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    org_id: Mapped[int] = mapped_column("organisation", ForeignKey("cl_orgs.id"))
    org: Mapped[Org] = relationship()


class NotMapped:
    pass


# -- databases ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    """A schema of this test's own, with the tables; dropped afterwards."""
    name = "t" + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    yield name
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
    admin.dispose()


def _seed(engine: Engine) -> None:
    Base.metadata.create_all(engine)
    with sessionmaker(engine).begin() as session:
        session.add_all([Org(id=1, name="one"), Org(id=2, name="two"), Org(id=3, name="three")])
        session.flush()
        session.add_all(
            [
                User(id=1, name="Ada", org_id=1),
                User(id=2, name="Grace", org_id=1),
                User(id=3, name="Edsger", org_id=2),
            ]
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A seeded database: orgs 1-3; users 1 (Ada) and 2 (Grace) in org 1, 3 (Edsger) in 2."""
    if request.param == "sqlite":
        made = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    else:
        url = request.getfixturevalue("postgres_url")
        schema = request.getfixturevalue("schema")
        made = create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    _seed(made)
    yield made
    made.dispose()


@pytest.fixture
async def async_engine(postgres_url: str, schema: str) -> AsyncIterator[AsyncEngine]:
    """The seeded database on PostgreSQL, for AsyncSession."""
    options = {"options": f"-csearch_path={schema}"}
    seed = create_engine(postgres_url, connect_args=options)
    _seed(seed)
    seed.dispose()
    made = create_async_engine(postgres_url, connect_args=options)
    yield made
    await made.dispose()


# -- caches, rules, cached readers ----------------------------------------------------------------


@pytest.fixture
def cache(redis_url: str, namespace: str) -> Iterator[Cache]:
    made = make_cache("redis", redis_url, namespace)
    yield made
    made.clear()
    made.close()


@pytest.fixture
def rule(cache: Cache) -> Iterator[ModelInvalidation]:
    made = invalidate_on(
        cache, User, tags=["org:{org_id}"], keys=["user:{id}"], tags_on_bulk=["users"]
    )
    yield made
    made.disconnect()


class Readers:
    """Cached reads of the database, counting the loads per key."""

    def __init__(self, cache: Cache, engine: Engine) -> None:
        self.loads: collections.Counter[str] = collections.Counter()
        make_session = sessionmaker(engine)

        @cache.cached(ttl=300, key="user:{user_id}")
        def user_name(user_id: int) -> str | None:
            self.loads[f"user:{user_id}"] += 1
            with make_session() as session:
                user = session.get(User, user_id)
                return None if user is None else user.name

        @cache.cached(ttl=300, key="members:{org_id}", tags=["org:{org_id}"])
        def members(org_id: int) -> list[str]:
            self.loads[f"members:{org_id}"] += 1
            with make_session() as session:
                query = select(User.name).where(User.org_id == org_id).order_by(User.name)
                return list(session.scalars(query))

        @cache.cached(ttl=300, key="everyone", tags=["users"])
        def everyone() -> list[str]:
            self.loads["everyone"] += 1
            with make_session() as session:
                return list(session.scalars(select(User.name).order_by(User.name)))

        self.user_name = user_name
        self.members = members
        self.everyone = everyone

    def warm(self) -> None:
        for user_id in (1, 2, 3, 4):
            self.user_name(user_id)
        for org_id in (1, 2, 3):
            self.members(org_id)
        self.everyone()


@pytest.fixture
def readers(cache: Cache, engine: Engine) -> Readers:
    made = Readers(cache, engine)
    made.warm()
    return made


def invalidations(cache: Cache) -> int:
    return int(cache.stats().invalidations)


# -- unit-of-work writes --------------------------------------------------------------------------


@pytest.mark.usefixtures("rule")
def test_update_commit_invalidates(engine: Engine, readers: Readers) -> None:
    """A committed update makes the cached read return the new row."""
    with sessionmaker(engine)() as session:
        session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        session.commit()
    assert readers.user_name(1) == "Ada Lovelace"
    assert readers.members(1) == ["Ada Lovelace", "Grace"]
    assert readers.loads["user:2"] == 1  # only the written row's targets


@pytest.mark.usefixtures("rule")
def test_nothing_before_the_commit(engine: Engine, cache: Cache, readers: Readers) -> None:
    """A flushed but uncommitted update invalidates nothing yet."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        session.flush()
        assert invalidations(cache) == before
        assert readers.user_name(1) == "Ada"
        session.commit()
    assert readers.user_name(1) == "Ada Lovelace"


@pytest.mark.usefixtures("rule")
def test_rollback_invalidates_nothing(engine: Engine, cache: Cache, readers: Readers) -> None:
    """A flushed then rolled back update leaves the cache (still right) untouched."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        user = session.get(User, 1)
        assert user is not None
        user.name = "Ada Lovelace"
        user.org_id = 2
        session.add(User(id=9, name="Zed", org_id=3))
        session.flush()
        session.rollback()
        session.commit()  # a new, empty transaction
    assert invalidations(cache) == before
    assert (readers.user_name(1), readers.members(1), readers.members(3)) == (
        "Ada",
        ["Ada", "Grace"],
        [],
    )
    assert readers.loads["user:1"] == readers.loads["members:1"] == 1


@pytest.mark.usefixtures("rule")
def test_close_without_commit_invalidates_nothing(
    engine: Engine, cache: Cache, readers: Readers
) -> None:
    """A session closed with a flushed write pending invalidates nothing, then or later."""
    before = invalidations(cache)
    session = sessionmaker(engine)()
    session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
    session.flush()
    session.close()
    session.commit()  # the reused session's next transaction carries nothing over
    assert invalidations(cache) == before
    assert readers.user_name(1) == "Ada"


@pytest.mark.usefixtures("rule")
def test_insert_invalidates(engine: Engine, readers: Readers) -> None:
    """A committed insert invalidates its row's targets (here, its org's member list)."""
    with sessionmaker(engine).begin() as session:
        session.add(User(id=4, name="Barbara", org_id=2))
    assert readers.members(2) == ["Barbara", "Edsger"]
    assert readers.user_name(4) == "Barbara"  # a cached None for a missing row, too
    assert readers.loads["members:1"] == 1


@pytest.mark.usefixtures("rule")
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "expired"])
def test_moved_row_invalidates_old_and_new(engine: Engine, readers: Readers, loaded: bool) -> None:
    """Moving a user from org 1 to org 2 invalidates both orgs, whether or not the
    instance held the old value (expired by an earlier commit: it is read before the
    UPDATE)."""
    with sessionmaker(engine)() as session:
        user = session.get(User, 1)
        assert user is not None
        if not loaded:
            session.commit()  # expires every attribute
        user.org_id = 2
        session.commit()
    assert readers.members(1) == ["Grace"]
    assert readers.members(2) == ["Ada", "Edsger"]
    assert readers.loads["members:3"] == 1


@pytest.mark.usefixtures("rule")
def test_move_through_the_relationship(engine: Engine, readers: Readers) -> None:
    """A move made by assigning the relationship (the foreign key is synced in the flush)
    invalidates both orgs too."""
    with sessionmaker(engine)() as session:
        user = session.get(User, 3)
        assert user is not None
        user.org = session.get(Org, 3)  # type: ignore[assignment]
        session.commit()
    assert readers.members(2) == []
    assert readers.members(3) == ["Edsger"]


@pytest.mark.usefixtures("rule")
def test_update_of_an_expired_instance(engine: Engine, readers: Readers) -> None:
    """An update of another column of an expired instance reads the unloaded org to
    render its targets."""
    with sessionmaker(engine)() as session:
        user = session.get(User, 2)
        assert user is not None
        session.commit()
        user.name = "Grace Hopper"
        session.commit()
    assert readers.members(1) == ["Ada", "Grace Hopper"]
    assert readers.user_name(2) == "Grace Hopper"


@pytest.mark.usefixtures("rule")
@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "expired"])
def test_delete_invalidates(engine: Engine, readers: Readers, loaded: bool) -> None:
    """A committed delete invalidates the row's key and tags (an expired instance's org is
    read before the DELETE)."""
    with sessionmaker(engine)() as session:
        user = session.get(User, 3)
        if not loaded:
            session.commit()
        session.delete(user)
        session.commit()
    assert readers.user_name(3) is None
    assert readers.members(2) == []


@pytest.mark.usefixtures("rule")
def test_no_net_change_invalidates_nothing(engine: Engine, cache: Cache, readers: Readers) -> None:
    """An instance set to the values it has emits no UPDATE and invalidates nothing."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        user = session.get(User, 1)
        assert user is not None
        user.name = "Ada"
        session.commit()
    assert invalidations(cache) == before


# -- savepoints -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("rule")
def test_savepoint_rollback_drops_only_its_targets(engine: Engine, readers: Readers) -> None:
    """A rolled back savepoint drops its own targets; the enclosing transaction's stay."""
    with sessionmaker(engine)() as session:
        session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        session.flush()
        savepoint = session.begin_nested()
        session.get(User, 3).org_id = 3  # type: ignore[union-attr]
        session.flush()
        savepoint.rollback()
        session.commit()
    assert readers.user_name(1) == "Ada Lovelace"
    assert readers.members(2) == ["Edsger"]
    assert readers.loads["members:2"] == readers.loads["members:3"] == 1  # not invalidated
    assert readers.loads["user:3"] == 1


@pytest.mark.usefixtures("rule")
def test_released_savepoint_invalidates_at_the_commit(
    engine: Engine, cache: Cache, readers: Readers
) -> None:
    """A released savepoint's targets wait for the outer commit, nested ones included."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        with session.begin_nested(), session.begin_nested():
            session.get(User, 3).org_id = 3  # type: ignore[union-attr]
        assert invalidations(cache) == before
        assert readers.members(3) == []
        session.commit()
    assert readers.members(2) == []
    assert readers.members(3) == ["Edsger"]


@pytest.mark.usefixtures("rule")
def test_outer_rollback_drops_released_savepoints(
    engine: Engine, cache: Cache, readers: Readers
) -> None:
    """A savepoint released into a transaction that then rolls back invalidates nothing."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        with session.begin_nested():
            session.get(User, 3).org_id = 3  # type: ignore[union-attr]
        session.rollback()
    assert invalidations(cache) == before


# -- statements -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("rule")
def test_bulk_update_with_where(engine: Engine, readers: Readers) -> None:
    """update(User).where(...) invalidates each affected row, before and after."""
    with sessionmaker(engine).begin() as session:
        session.execute(sql_update(User).where(User.org_id == 1).values(org_id=3))
    assert readers.members(1) == []
    assert readers.members(3) == ["Ada", "Grace"]
    assert readers.loads["members:2"] == readers.loads["user:3"] == 1


@pytest.mark.usefixtures("rule")
def test_bulk_update_with_bound_parameters(engine: Engine, readers: Readers) -> None:
    """A WHERE with parameters given to execute() is read with the same parameters."""
    from sqlalchemy import bindparam

    with sessionmaker(engine).begin() as session:
        statement = sql_update(User).where(User.id == bindparam("uid")).values(name="Ed")
        session.execute(statement, {"uid": 3})
    assert readers.user_name(3) == "Ed"
    assert readers.loads["user:1"] == 1


@pytest.mark.usefixtures("rule")
def test_bulk_delete_with_where(engine: Engine, readers: Readers) -> None:
    """delete(User).where(...) invalidates each deleted row."""
    with sessionmaker(engine).begin() as session:
        session.execute(delete(User).where(User.name.startswith("E")))
    assert readers.members(2) == []
    assert readers.user_name(3) is None
    assert readers.loads["members:1"] == 1


@pytest.mark.usefixtures("rule")
def test_bulk_update_by_primary_key(engine: Engine, readers: Readers) -> None:
    """update(User) with a list of rows by primary key invalidates those rows."""
    with sessionmaker(engine).begin() as session:
        session.execute(sql_update(User), [{"id": 1, "org_id": 2}, {"id": 3, "name": "Ed"}])
    assert readers.members(1) == ["Grace"]
    assert readers.members(2) == ["Ada", "Ed"]


@pytest.mark.usefixtures("rule")
def test_bulk_insert_with_every_field(engine: Engine, readers: Readers) -> None:
    """insert(User) with rows that carry every templated field renders them."""
    with sessionmaker(engine).begin() as session:
        session.execute(insert(User), [{"id": 7, "name": "Kay", "org_id": 3}])
    assert readers.members(3) == ["Kay"]
    assert readers.user_name(7) == "Kay"
    assert readers.loads["everyone"] == 1  # resolved: no fallback


@pytest.mark.usefixtures("rule")
def test_bulk_rollback_invalidates_nothing(engine: Engine, cache: Cache, readers: Readers) -> None:
    """A bulk statement in a rolled back transaction invalidates nothing."""
    before = invalidations(cache)
    with sessionmaker(engine)() as session:
        session.execute(delete(User))
        session.rollback()
    assert invalidations(cache) == before


def test_unresolved_statement_invalidates_tags_on_bulk(
    engine: Engine, cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """Past max_bulk_rows (and for an insert whose rows lack a templated field) the rule's
    tags_on_bulk are invalidated, with one WARNING per rule and reason."""
    rule = invalidate_on(
        cache, User, tags=["org:{org_id}"], tags_on_bulk=["users"], max_bulk_rows=1
    )
    readers = Readers(cache, engine)
    readers.warm()
    try:
        with caplog.at_level(logging.WARNING, "cachelayer.sqlalchemy"):
            for name in ("A", "B"):
                with sessionmaker(engine).begin() as session:
                    session.execute(sql_update(User).values(name=name))
                assert readers.everyone() == [name] * 3
            with sessionmaker(engine).begin() as session:
                session.execute(insert(User).values(id=10, name="Kay", org_id=3))
    finally:
        rule.disconnect()
    assert readers.everyone() == ["B", "B", "B", "Kay"]
    assert readers.loads["members:1"] == 1  # rows past the limit are not rendered
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "more than 1 rows" in warnings[0]
    assert "tags_on_bulk ['users']" in warnings[0]


# -- declaration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tags": ["org:{organization_id}"]}, "'organization_id', which is not a column"),
        ({"keys": ["user:{org.name}"]}, "'org', which is not a column"),
        ({"tags": ["user:{}"]}, "must start with an attribute name"),
        ({"tags": ["user:{id"]}, "does not parse"),
        ({"tags_on_bulk": ["org:{org_id}"]}, "tags_on_bulk are plain tags"),
        ({"max_bulk_rows": -1}, "max_bulk_rows=-1"),
    ],
)
def test_bad_rule_is_refused(cache: Cache, options: dict[str, Any], message: str) -> None:
    """A rule naming what is not a column attribute (or malformed) is refused at once,
    with a message naming it."""
    with pytest.raises(ConfigurationError, match=message):
        invalidate_on(cache, User, **options)


def test_wrong_types_are_refused(cache: Cache) -> None:
    """One string instead of a list, a callable, or an unmapped class is refused."""
    with pytest.raises(TypeError, match="not one string"):
        invalidate_on(cache, User, tags="user:{id}")
    with pytest.raises(TypeError, match="is not a str template"):
        invalidate_on(cache, User, tags=[lambda user: [f"user:{user.id}"]])  # type: ignore[list-item]
    with pytest.raises(
        ConfigurationError, match=r"invalidate_on\(NotMapped\): not a mapped class"
    ):
        invalidate_on(cache, NotMapped, tags=["x"])


def test_disconnect_stops_invalidating(engine: Engine, cache: Cache) -> None:
    """After disconnect(), commits invalidate nothing (and disconnect is idempotent)."""
    rule = invalidate_on(cache, User, tags=["org:{org_id}"])
    rule.disconnect()
    rule.disconnect()
    before = invalidations(cache)
    with sessionmaker(engine).begin() as session:
        session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        session.execute(delete(User).where(User.id == 3))
    assert invalidations(cache) == before


def test_import_cachelayer_does_not_import_sqlalchemy() -> None:
    """``import cachelayer`` stays free of SQLAlchemy."""
    code = "import sys, cachelayer; assert 'sqlalchemy' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- a failing store ------------------------------------------------------------------------------


@pytest.fixture
def doomed_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which the test stops (by its pid)."""
    with RedisServer() as server:
        yield server


def test_redis_down_commit_succeeds(
    engine: Engine, doomed_redis: RedisServer, namespace: str
) -> None:
    """With Redis gone the commit succeeds; the failed invalidation is counted."""
    cache = make_cache("redis", doomed_redis.url, namespace)
    rule = invalidate_on(cache, User, tags=["org:{org_id}"], keys=["user:{id}"])
    try:
        doomed_redis.stop()
        with sessionmaker(engine).begin() as session:
            session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        with sessionmaker(engine)() as session:
            assert session.get(User, 1).name == "Ada Lovelace"  # type: ignore[union-attr]
        assert cache.stats().invalidation_errors >= 1
    finally:
        rule.disconnect()
        cache.close()


def test_redis_down_commit_succeeds_with_on_error_raise(
    engine: Engine, doomed_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """on_error="raise" does not make a done commit look failed: the error is logged."""
    cache = make_cache("redis", doomed_redis.url, namespace, on_error="raise")
    rule = invalidate_on(cache, User, tags=["org:{org_id}"])
    try:
        doomed_redis.stop()
        with (
            caplog.at_level(logging.ERROR, "cachelayer.sqlalchemy"),
            sessionmaker(engine).begin() as session,
        ):
            session.get(User, 1).name = "Ada Lovelace"  # type: ignore[union-attr]
        assert any("after a SQLAlchemy commit failed" in r.getMessage() for r in caplog.records)
    finally:
        rule.disconnect()
        cache.close()


# -- AsyncSession ---------------------------------------------------------------------------------


@pytest.fixture
async def acache(redis_url: str, namespace: str) -> AsyncIterator[Cache]:
    made = make_cache("redis", redis_url, namespace)
    yield made
    await made.aclear()
    await made.aclose()
    made.close()


def _async_readers(
    cache: Cache, engine: AsyncEngine, loads: collections.Counter[str]
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    make_session = async_sessionmaker(engine)

    @cache.cached(ttl=300, key="user:{user_id}")
    async def user_name(user_id: int) -> str | None:
        loads[f"user:{user_id}"] += 1
        async with make_session() as session:
            user = await session.get(User, user_id)
            return None if user is None else user.name

    @cache.cached(ttl=300, key="members:{org_id}", tags=["org:{org_id}"])
    async def members(org_id: int) -> list[str]:
        loads[f"members:{org_id}"] += 1
        async with make_session() as session:
            query = select(User.name).where(User.org_id == org_id).order_by(User.name)
            return list(await session.scalars(query))

    return user_name, members


async def test_async_session_commit_invalidates(acache: Cache, async_engine: AsyncEngine) -> None:
    """An AsyncSession's committed update, move, bulk update and delete invalidate; a
    rolled back one does not."""
    rule = invalidate_on(acache, User, tags=["org:{org_id}"], keys=["user:{id}"])
    loads: collections.Counter[str] = collections.Counter()
    user_name, members = _async_readers(acache, async_engine, loads)
    make_session = async_sessionmaker(async_engine, expire_on_commit=True)
    try:
        assert await user_name(1) == "Ada"
        assert await members(1) == ["Ada", "Grace"]
        async with make_session() as session:
            user = await session.get(User, 1)
            assert user is not None
            user.name = "Ada Lovelace"
            await session.flush()
            await session.rollback()
        assert acache.stats().invalidations == 0
        assert await user_name(1) == "Ada"
        async with make_session() as session:
            user = await session.get(User, 1)
            assert user is not None
            await session.commit()  # expired: the old org is read before the UPDATE
            user.org_id = 2
            await session.commit()
        assert await members(1) == ["Grace"]
        assert await members(2) == ["Ada", "Edsger"]
        async with make_session() as session:
            await session.execute(sql_update(User).where(User.org_id == 2).values(name="X"))
            await session.execute(delete(User).where(User.id == 2))
            await session.commit()
        assert await members(2) == ["X", "X"]
        assert await members(1) == []
        assert await user_name(2) is None
    finally:
        rule.disconnect()


async def test_async_invalidation_does_not_block_the_loop(
    async_engine: AsyncEngine, namespace: str
) -> None:
    """An AsyncSession's commit awaits the invalidation on the loop: other coroutines run
    while a slow Redis answers, and the commit returns once it is done."""
    with RedisServer(args=("--enable-debug-command", "yes")) as server:
        cache = make_cache("redis", server.url, namespace)
        rule = invalidate_on(cache, User, tags=["org:{org_id}"])
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        try:
            await cache.aget("warm")  # the async client's connection, made now
            async with async_sessionmaker(async_engine)() as session:
                user = await session.get(User, 1)
                assert user is not None
                user.name = "Ada Lovelace"
                await session.flush()
                admin = redis.Redis.from_url(server.url)
                sleeper = threading.Thread(
                    target=admin.execute_command, args=("DEBUG", "SLEEP", "0.6")
                )
                sleeper.start()
                await asyncio.sleep(0.1)  # the server is asleep now
                ticker = asyncio.create_task(tick())
                started = time.monotonic()
                await session.commit()
                took = time.monotonic() - started
                ticker.cancel()
                sleeper.join()
                admin.close()
            assert took >= 0.2, took  # the commit waited for the invalidation
            assert ticks >= 10, ticks  # ... without blocking the loop
            assert cache.stats().invalidations == 1
            assert cache.stats().invalidation_errors == 0
        finally:
            rule.disconnect()
            await cache.aclose()
            cache.close()


async def test_async_redis_down_commit_succeeds(
    async_engine: AsyncEngine, doomed_redis: RedisServer, namespace: str
) -> None:
    """With Redis gone an AsyncSession's commit succeeds; the failure is counted."""
    cache = make_cache("redis", doomed_redis.url, namespace)
    rule = invalidate_on(cache, User, keys=["user:{id}"])
    try:
        doomed_redis.stop()
        async with async_sessionmaker(async_engine).begin() as session:
            user = await session.get(User, 1)
            assert user is not None
            user.name = "Ada Lovelace"
        async with async_sessionmaker(async_engine)() as session:
            user = await session.get(User, 1)
            assert user is not None
            assert user.name == "Ada Lovelace"
        assert cache.stats().invalidation_errors >= 1
    finally:
        rule.disconnect()
        await cache.aclose()
        cache.close()


# -- inheritance, threads -------------------------------------------------------------------------


class Staff(DeclarativeBase):
    pass


class Employee(Staff):
    __tablename__ = "cl_employees"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    team: Mapped[int]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}  # noqa: RUF012


class Manager(Employee):
    __mapper_args__ = {"polymorphic_identity": "manager"}  # noqa: RUF012


def test_subclasses_are_covered(tmp_path: Path, cache: Cache) -> None:
    """A rule on a class covers its subclasses' writes; a statement on the superclass
    invalidates a subclass rule's tags_on_bulk (its rows may be the subclass's)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'staff.sqlite'}")
    Staff.metadata.create_all(engine)
    loads: collections.Counter[str] = collections.Counter()

    @cache.cached(ttl=300, key="team:{team}", tags=["team:{team}"])
    def team_size(team: int) -> int:
        loads[f"team:{team}"] += 1
        with sessionmaker(engine)() as session:
            return len(session.scalars(select(Employee).where(Employee.team == team)).all())

    @cache.cached(ttl=300, key="managers", tags=["managers"])
    def managers() -> int:
        loads["managers"] += 1
        with sessionmaker(engine)() as session:
            return len(session.scalars(select(Manager)).all())

    everyone = invalidate_on(cache, Employee, tags=["team:{team}"])
    bosses = invalidate_on(cache, Manager, tags=["managers"], tags_on_bulk=["managers"])
    try:
        assert (team_size(1), managers()) == (0, 0)
        with sessionmaker(engine).begin() as session:
            session.add(Manager(id=1, team=1))
        assert (team_size(1), managers()) == (1, 1)
        with sessionmaker(engine).begin() as session:
            session.execute(sql_update(Employee).values(kind="manager"))
        assert managers() == 1
        assert loads["managers"] == 3
    finally:
        everyone.disconnect()
        bosses.disconnect()
        engine.dispose()


def test_concurrent_sessions(postgres_url: str, schema: str, cache: Cache) -> None:
    """32 threads each move their own row and commit at once: every move invalidates
    both of its sides, and no thread's targets leak into another's."""
    engine = create_engine(
        postgres_url, connect_args={"options": f"-csearch_path={schema}"}, pool_size=33
    )
    _seed(engine)
    with sessionmaker(engine).begin() as session:
        session.add_all([User(id=100 + i, name=f"u{i}", org_id=1) for i in range(32)])
    rule = invalidate_on(cache, User, tags=["org:{org_id}"], keys=["user:{id}"])
    readers = Readers(cache, engine)
    readers.warm()
    barrier = threading.Barrier(32)
    errors: list[BaseException] = []

    def move(i: int) -> None:
        try:
            with sessionmaker(engine)() as session:
                user = session.get(User, 100 + i)
                assert user is not None
                user.org_id = 2 + i % 2
                barrier.wait(10)
                session.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(i,)) for i in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert readers.members(1) == ["Ada", "Grace"]
        assert len(readers.members(2)) == 17
        assert len(readers.members(3)) == 16
    finally:
        rule.disconnect()
        engine.dispose()


def test_a_template_that_does_not_format_logs_no_row_values(
    engine: Engine, cache: Cache, caplog: pytest.LogCaptureFixture
) -> None:
    """A template that cannot format a row (a format spec for another type) falls back
    to tags_on_bulk; the log names the template and the columns, never the row's values
    (user data)."""
    rule = invalidate_on(cache, User, tags=["who:{name:04d}"], tags_on_bulk=["users"])
    try:
        with (
            caplog.at_level(logging.DEBUG, "cachelayer.sqlalchemy"),
            sessionmaker(engine).begin() as session,
        ):
            session.get(User, 1).name = "secret-name-of-a-user"  # type: ignore[union-attr]
    finally:
        rule.disconnect()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "who:{name:04d}" in text
    assert "secret-name-of-a-user" not in text
