"""The outbox: invalidation events written in the writer's own database transaction,
published to the stream by a relay after the commit.

A process that commits and then publishes loses the invalidation when it dies between
the two. With the outbox the signed event is a row of the same transaction as the data
(:func:`outbox_write`), so it exists exactly when the data change does; the relay
(:class:`OutboxRelay`) reads unpublished rows ``FOR UPDATE SKIP LOCKED``, ``XADD``\\ s them and
marks them published. A relay that dies after the ``XADD`` and before the mark publishes
the row again: the event id is the row's, so consumers refuse the second copy as a replay
(nothing is applied twice). At least once, duplicates harmless (docs/events.md).

The table and the relay's SQL are PostgreSQL's (``bytea``, ``timestamptz``, ``SKIP
LOCKED``); the writer goes through any PostgreSQL driver: a DB-API connection or cursor
(psycopg 3 or 2), Django's ``connection``, or a SQLAlchemy ``Session``/``Connection``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, StoreUnavailable
from ._format import DEFAULT_WINDOW, parse, stream_for
from ._publish import DEFAULT_MAXLEN, SignedEvent, make_event, sign_event
from ._refused import Refused
from ._signing import Signer

__all__ = [
    "OUTBOX_TABLE",
    "OutboxCounters",
    "OutboxRelay",
    "create_outbox_table",
    "outbox_ddl",
    "outbox_write",
]

log = logging.getLogger("cachelayer.events")

#: the default table name
OUTBOX_TABLE = "cachelayer_outbox"
_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?")


def _table(name: str) -> str:
    if not isinstance(name, str) or not _TABLE_RE.fullmatch(name):
        raise ConfigurationError(
            f"outbox table {name!r:.80}: a plain SQL name, [A-Za-z_][A-Za-z0-9_]*, "
            "optionally schema-qualified"
        )
    return name


def outbox_ddl(table: str = OUTBOX_TABLE) -> list[str]:
    """The statements that make the outbox table and its indexes (PostgreSQL), each
    idempotent (``IF NOT EXISTS``)."""
    t = _table(table)
    index = t.replace(".", "_")
    return [
        f"""CREATE TABLE IF NOT EXISTS {t} (
    seq          bigserial   PRIMARY KEY,
    event_id     text        NOT NULL UNIQUE,
    stream       text        NOT NULL,
    payload      bytea       NOT NULL,
    kid          text        NOT NULL,
    sig          text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
)""",
        f"CREATE INDEX IF NOT EXISTS {index}_unpublished ON {t} (seq) WHERE published_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {index}_published ON {t} (published_at) "
        "WHERE published_at IS NOT NULL",
    ]


def create_outbox_table(connection: Any, table: str = OUTBOX_TABLE) -> None:
    """Make the outbox table (see :func:`outbox_ddl`) through a DB-API connection, and
    commit. Run it from a migration or at deploy time."""
    cursor = connection.cursor()
    try:
        for statement in outbox_ddl(table):
            cursor.execute(statement)
    finally:
        cursor.close()
    connection.commit()


# -- writing, in the caller's transaction ------------------------------------------------


def _paramstyle(db: Any) -> str:
    module = type(db).__module__
    if module.startswith("django."):
        return "format"  # Django's cursors take %s on every backend
    driver = sys.modules.get(module.partition(".")[0])
    return str(getattr(driver, "paramstyle", "format"))


def _execute(db: Any, sql: str, params: tuple[Any, ...]) -> None:
    """Run one statement with ``%s`` placeholders through whatever ``db`` is, in its
    current transaction (nothing is committed here)."""
    module = type(db).__module__
    if module.startswith("sqlalchemy."):
        import sqlalchemy

        names = [f"p{i}" for i in range(len(params))]
        db.execute(
            sqlalchemy.text(sql % tuple(":" + n for n in names)),
            dict(zip(names, params, strict=True)),
        )
        return
    style = _paramstyle(db)
    if style in ("qmark",):
        sql = sql.replace("%s", "?")
    elif style not in ("format", "pyformat"):
        raise ConfigurationError(
            f"outbox_write: the {style!r} paramstyle of {module} is not supported; pass a "
            "psycopg connection, a Django connection or a SQLAlchemy Session"
        )
    if callable(getattr(db, "cursor", None)):
        cursor = db.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()
    elif callable(getattr(db, "execute", None)):
        db.execute(sql, params)  # a DB-API cursor
    else:
        raise TypeError(
            f"outbox_write takes a DB-API connection or cursor, a Django connection or a "
            f"SQLAlchemy Session, not a {type(db).__name__}"
        )


def outbox_write(
    db: Any,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    *,
    signer: Signer,
    namespace: str,
    stream: str | None = None,
    origin: str | None = None,
    table: str = OUTBOX_TABLE,
    clock: Callable[[], float] = time.time,
) -> SignedEvent:
    """Add a signed invalidation event to the outbox, in ``db``'s current transaction.

    Commit (or roll back) as usual: the event is published by an :class:`OutboxRelay`
    once the transaction has committed, and never if it rolls back.

    Args:
        db: a DB-API connection or cursor (psycopg), Django's ``connection`` (or
            ``connections[alias]``), or a SQLAlchemy ``Session`` or ``Connection``.
        keys: logical keys, as passed to ``cache.delete``.
        tags: tags, as passed to ``cache.invalidate_tags``.
        signer: the key to sign with.
        namespace: the Cache's namespace.
        stream: the stream it goes to (default ``{<namespace>:}events``).
        origin: who sends it (default ``<host>:<pid>``).
        table: the outbox table.
        clock: wall-clock seconds (the event's ``ts``).

    Returns:
        The signed event (its ``event.id`` is the row's ``event_id``).

    Raises:
        TypeError, ValueError: the event breaks the format's rules or limits.
        ConfigurationError: a bad signer or table name.
    """
    if not isinstance(signer, Signer):
        raise ConfigurationError("signer= takes a cachelayer.events.Signer")
    event = make_event(namespace, keys, tags, ts=int(clock() * 1000), origin=origin)
    signed = sign_event(event, signer)
    _execute(
        db,
        # The table name is checked by _table (a plain SQL name); values are parameters.
        f"INSERT INTO {_table(table)} (event_id, stream, payload, kid, sig) "  # noqa: S608
        "VALUES (%s, %s, %s, %s, %s)",
        (event.id, stream or stream_for(namespace), signed.payload, signed.kid, signed.signature),
    )
    return signed


# -- the relay ------------------------------------------------------------------------------


@dataclass
class OutboxCounters:
    """What a relay did.

    Attributes:
        published: rows added to their stream and marked published.
        refreshed: rows older than ``refresh_after`` re-signed with a fresh ``ts`` (same
            event id) before publishing, so consumers do not refuse them as expired.
        stale: rows published as they were although consumers will refuse them as
            ``expired`` (older than the window and no ``signer`` to refresh them).
        pruned: published rows deleted after ``retention``.
        failures: passes that failed (the database or Redis); retried.
    """

    published: int = 0
    refreshed: int = 0
    stale: int = 0
    pruned: int = 0
    failures: int = 0
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to a counter."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


def _redis_client(target: Any) -> Any:
    if callable(getattr(target, "xadd", None)):
        return target
    client = getattr(getattr(target, "store", None), "client", None)
    if client is None or not callable(getattr(client, "xadd", None)):
        raise ConfigurationError(
            "OutboxRelay needs a redis-py client, or a Cache on Redis, to publish through"
        )
    return client


class OutboxRelay:
    """Publishes the outbox's committed rows to their streams, and prunes old ones.

    Call :meth:`publish_pending` after a commit (or :meth:`notify` a running relay), and
    run the relay (:meth:`run_in_thread`, or ``publish_pending`` from a scheduler) so that
    rows of processes that died after their commit are published too: at start, then
    every ``interval`` seconds. Several relays may run at once (``SKIP LOCKED``: each row
    is taken by one).

    Args:
        connect: a PostgreSQL URL (psycopg 3 connects) or a function returning a new
            DB-API connection (PostgreSQL, ``%s`` placeholders). The relay keeps one, and
            makes a new one after a failure.
        redis: a redis-py client, or a Cache whose Redis client to publish through.
        table: the outbox table.
        batch: rows per transaction.
        interval: seconds between passes of :meth:`run_in_thread`.
        retention: published rows are deleted this many seconds after publication.
        maxlen: streams keep about this many entries (``MAXLEN ~``).
        signer: re-signs rows older than ``refresh_after`` with a fresh ``ts`` (same event
            id), so that an outage of the relay longer than the consumers' window still
            invalidates; without it such rows are published as they are (and refused as
            ``expired``), counted in ``stale``.
        refresh_after: seconds; keep it below the consumers' window (default 300 s).
        clock: wall-clock seconds (the age of a row's event, by its ``ts``).
    """

    def __init__(
        self,
        connect: str | Callable[[], Any],
        redis: Any,
        *,
        table: str = OUTBOX_TABLE,
        batch: int = 100,
        interval: float = 1.0,
        retention: float = 3600.0,
        maxlen: int | None = DEFAULT_MAXLEN,
        signer: Signer | None = None,
        refresh_after: float = DEFAULT_WINDOW - 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch < 1 or interval <= 0 or retention < 0 or refresh_after <= 0:
            raise ConfigurationError("batch >= 1, interval > 0, retention >= 0, refresh_after > 0")
        if signer is not None and not isinstance(signer, Signer):
            raise ConfigurationError("signer= takes a cachelayer.events.Signer")
        self._connect = _connector(connect)
        self.client = _redis_client(redis)
        self.table = _table(table)  # a plain SQL name: the statements below spell it
        self.batch, self.interval, self.retention = batch, interval, retention
        self.maxlen, self.signer = maxlen, signer
        self.refresh_after, self.clock = refresh_after, clock
        #: what this relay did
        self.counters = OutboxCounters()
        self._connection: Any = None
        self._lock = threading.Lock()  # one pass at a time on the one connection
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0

    def __repr__(self) -> str:
        return f"OutboxRelay(table={self.table!r})"

    def _db(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def publish_pending(self) -> int:
        """Publish every committed, unpublished row (in batches, oldest first, skipping
        rows another relay holds); returns how many were published.

        Raises:
            StoreUnavailable: Redis failed (the rows added before it are marked; the rest
                stay for the next pass).
            Exception: what the database driver raises (the connection is dropped and
                made again next time).
        """
        total = 0
        with self._lock:
            try:
                while True:
                    done = self._one_batch()
                    total += done
                    if done < self.batch:
                        break
            except Exception:
                self._drop_connection()
                raise
        return total

    def _one_batch(self) -> int:
        db = self._db()
        cursor = db.cursor()
        try:
            cursor.execute(
                f"SELECT seq, event_id, stream, payload, kid, sig FROM {self.table} "  # noqa: S608
                "WHERE published_at IS NULL ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.batch,),
            )
            rows = cursor.fetchall()
            added: list[int] = []
            failure: BaseException | None = None
            for seq, _event_id, stream, payload, kid, sig in rows:
                fields = self._fields(bytes(payload), kid, sig)
                try:
                    self.client.xadd(
                        stream, fields, maxlen=self.maxlen, approximate=self.maxlen is not None
                    )
                except Exception as exc:
                    failure = exc
                    break
                added.append(seq)
            if added:
                marks = ", ".join(["%s"] * len(added))
                cursor.execute(
                    f"UPDATE {self.table} SET published_at = now() WHERE seq IN ({marks})",  # noqa: S608
                    tuple(added),
                )
            db.commit()
        except Exception:
            with contextlib.suppress(Exception):
                db.rollback()
            raise
        finally:
            with contextlib.suppress(Exception):
                cursor.close()
        self.counters.count("published", len(added))
        if failure is not None:
            raise StoreUnavailable(
                f"publishing outbox rows failed: {type(failure).__name__}"
            ) from failure
        return len(rows)

    def _fields(self, payload: bytes, kid: str, sig: str) -> dict[str, bytes | str]:
        """The stream fields of a row: as written, or re-signed when too old to be
        accepted by the time consumers read it."""
        try:
            event = parse(payload)
        except Refused:
            return {"p": payload, "k": kid, "s": sig}  # consumers refuse it, counted there
        age = self.clock() - event.ts / 1000
        if age <= self.refresh_after:
            return {"p": payload, "k": kid, "s": sig}
        if self.signer is None:
            self.counters.count("stale")
            log.warning(
                "cachelayer: an outbox event is %.0f s old; consumers will refuse it as "
                "expired (give the relay signer= to refresh old rows)",
                age,
            )
            return {"p": payload, "k": kid, "s": sig}
        fresh = make_event(
            event.ns,
            event.keys,
            event.tags,
            ts=int(self.clock() * 1000),
            origin=event.origin,
            event_id=event.id,
        )
        self.counters.count("refreshed")
        return sign_event(fresh, self.signer).stream_fields()

    def prune(self) -> int:
        """Delete rows published more than ``retention`` seconds ago; returns how many."""
        with self._lock:
            db = self._db()
            cursor = db.cursor()
            try:
                cursor.execute(
                    f"DELETE FROM {self.table} WHERE published_at IS NOT NULL "  # noqa: S608
                    "AND published_at < now() - %s * interval '1 second'",
                    (float(self.retention),),
                )
                pruned = max(int(cursor.rowcount), 0)
                db.commit()
            except Exception:
                with contextlib.suppress(Exception):
                    db.rollback()
                self._drop_connection()
                raise
            finally:
                with contextlib.suppress(Exception):
                    cursor.close()
        self.counters.count("pruned", pruned)
        return pruned

    # -- running ---------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake a running relay now (call it after a commit that wrote outbox rows)."""
        self._wake.set()

    def run_in_thread(self) -> threading.Thread:
        """Start a daemon thread: a pass at once, then one per ``interval`` or
        :meth:`notify`, pruning every minute, until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self!r} is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"cachelayer-outbox {self.table}", daemon=True
        )
        self._thread.start()
        return self._thread

    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                self.publish_pending()
                if time.monotonic() >= self._next_prune:
                    self.prune()
                    self._next_prune = time.monotonic() + 60.0
                delay = 0.0
            except Exception as exc:
                self.counters.count("failures")
                delay = min(max(delay * 2, 0.05), 5.0)
                log.warning(
                    "cachelayer: the outbox relay of %s failed (%s); retrying",
                    self.table,
                    type(exc).__name__,
                )
            self._wake.wait(delay or self.interval)
            self._wake.clear()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread (after its current pass) and wait for it."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop, and close the database connection."""
        self.stop()
        with self._lock:
            self._drop_connection()


def _connector(connect: str | Callable[[], Any]) -> Callable[[], Any]:
    if callable(connect):
        return connect
    if not isinstance(connect, str):
        raise ConfigurationError("connect= takes a PostgreSQL URL or a connection factory")
    url = connect

    def psycopg_connect() -> Any:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError(
                "OutboxRelay with a URL needs psycopg 3 (pip install psycopg); or pass a "
                "function that returns a DB-API connection"
            ) from None
        return psycopg.connect(url)

    return psycopg_connect
