"""The Redis Streams consumer: reads a namespace's events in a consumer group and
applies each one to a Cache.

One batch is one generator flow (:meth:`StreamConsumer._batch`) of redis-py calls and
Cache applications, driven by the thread shell or the asyncio shell of ``_apply``. The
order of reads: this consumer's own pending entries first (what it read and did not
acknowledge before a restart), then, every ``claim_interval`` seconds, entries another
consumer has left pending for ``claim_idle`` seconds (``XAUTOCLAIM``), else new entries
(``XREADGROUP ... >``, blocking up to ``block`` seconds). See docs/events.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from .._stats import RateLimitedLog
from ..errors import ConfigurationError
from ._apply import (
    ApplyFailed,
    Command,
    EventCounters,
    Step,
    adrive,
    apply_flow,
    drive,
    mark_ttl_ms,
)
from ._format import DEFAULT_WINDOW, check, dead_letter_for, stream_for
from ._refused import Refused
from ._signing import Verifier

__all__ = ["Lag", "StreamConsumer"]

log = logging.getLogger("cachelayer.events")

#: most entries the computed lag counts (servers without XINFO GROUPS' ``lag``)
LAG_SCAN_LIMIT = 100_000


@dataclass(frozen=True)
class Lag:
    """How far a consumer group is behind its stream.

    Attributes:
        events: entries not yet delivered to the group (None when unknown: Redis < 7
            counts them only after a trim-free history; see docs/events.md).
        seconds: age of the oldest entry not yet delivered (0 when none), from its id's
            milliseconds (the Redis server's clock) to this process's clock.
        pending: entries delivered but not acknowledged (in flight, or of a dead consumer).
        pending_seconds: age of the oldest pending entry (0 when none).
    """

    events: int | None
    seconds: float
    pending: int
    pending_seconds: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: Any) -> int:
    return int(_text(entry_id).partition("-")[0])


def _entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """``[(id, fields)]`` from an XREADGROUP reply (fields ``{}`` for a trimmed entry)."""
    if not reply:
        return []
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for _stream, items in reply:
        entries.extend((_text(entry_id), fields or {}) for entry_id, fields in items)
    return entries


class StreamConsumer:
    """Applies the invalidation events of a Redis stream to a Cache, in a consumer group.

    Every consumer of one group shares the work: each event is applied once per group
    (at least once: a crash between applying and acknowledging applies it again). Run it
    in a thread (``run_in_thread``/``stop``, for WSGI apps), as an asyncio task
    (``await run()``), or with ``cachelayer listen``.

    Args:
        cache: the Cache to apply events to; its namespace must be the events'.
        verifier: the keys events may be signed with.
        group: the consumer group (one per deployment of a namespace).
        consumer: this consumer's name in the group, stable across restarts so that it
            resumes its own pending entries (default ``<host>:<pid>``).
        stream: the stream (default ``{<namespace>:}events``).
        url: the Redis holding the stream (default: the Cache's own, ``cache.store.url``).
        client: a sync redis-py client to use instead (Cluster, Sentinel); its socket
            timeout must exceed ``block``. Not closed by the consumer.
        aclient: an asyncio redis-py client for :meth:`run`, likewise.
        batch: most entries read at once.
        block: seconds a read waits for new entries (and how soon ``stop`` is noticed).
        claim_idle: seconds an entry stays pending with another consumer before this one
            claims it (the other is presumed dead).
        claim_interval: seconds between claim attempts.
        max_attempts: attempts (deliveries plus in-process retries) after which an
            event that cannot be applied goes to the dead-letter stream.
        dead_letter: the dead-letter stream (default ``<stream>:dead``).
        dead_letter_maxlen: it keeps about this many entries.
        window: seconds either side of now an event's timestamp may lie; an event id is
            applied once per window.
        clock: wall-clock seconds (injected by tests).
    """

    def __init__(
        self,
        cache: Any,
        verifier: Verifier,
        *,
        group: str,
        consumer: str | None = None,
        stream: str | None = None,
        url: str | None = None,
        client: Any = None,
        aclient: Any = None,
        batch: int = 100,
        block: float = 1.0,
        claim_idle: float = 60.0,
        claim_interval: float = 10.0,
        max_attempts: int = 5,
        dead_letter: str | None = None,
        dead_letter_maxlen: int = 10_000,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(verifier, Verifier):
            raise ConfigurationError("verifier= takes a cachelayer.events.Verifier")
        if not group or not isinstance(group, str):
            raise ConfigurationError("group= names the consumer group (a non-empty str)")
        if batch < 1 or block <= 0 or claim_idle <= 0 or max_attempts < 1 or window <= 0:
            raise ConfigurationError(
                "batch >= 1, block > 0, claim_idle > 0, max_attempts >= 1, window > 0"
            )
        self.cache = cache
        self.verifier = verifier
        self.namespace: str = cache.engine.keys.namespace
        self.prefix: str = cache.engine.keys.prefix
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.stream = stream or stream_for(self.namespace)
        self.dead_letter = dead_letter or dead_letter_for(self.stream)
        self.dead_letter_maxlen = dead_letter_maxlen
        self.batch, self.block = batch, block
        self.claim_idle, self.claim_interval = claim_idle, claim_interval
        self.max_attempts = max_attempts
        self.window = window
        self.clock = clock
        #: what this consumer did (``counters.snapshot()`` for a dict)
        self.counters = EventCounters()
        self._url = url
        self._client, self._owns_client = client, client is None
        self._aclient = aclient
        self._group_ready = False
        self._own_pending = True  # read this consumer's pending entries first
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        #: entries read but not finished, retried before anything is read: (id, fields,
        #: deliveries); and per entry id, attempts that raised in this process
        self._backlog: list[tuple[str, dict[bytes, bytes], int]] = []
        self._attempts: dict[str, int] = {}
        #: seconds the loops wait before the next batch (grows while batches fail)
        self._delay = 0.0
        self._retry_soon = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: one warning per kind per 10 s (a flood of hostile events is one line)
        self._log = RateLimitedLog(log)

    def __repr__(self) -> str:
        return f"StreamConsumer({self.stream!r}, group={self.group!r}, consumer={self.consumer!r})"

    # -- connections ---------------------------------------------------------------------

    def _redis_url(self) -> str:
        url = self._url or getattr(self.cache.store, "url", "")
        if not isinstance(url, str) or url.partition("://")[0] not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"{self.cache!r}: no Redis URL to read the stream from; pass url= "
                "(redis://...) or client= (a redis-py client, for Cluster or Sentinel)"
            )
        return url

    def _options(self) -> dict[str, Any]:
        return {"socket_timeout": self.block + 10.0, "socket_connect_timeout": 5.0}

    def _sync_client(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self._redis_url(), **self._options())
        return self._client

    # -- one batch, written once -----------------------------------------------------------

    def _batch(self, block_ms: int | None) -> Generator[Step, Any, int]:
        """Read one batch and handle every entry of it; returns how many were handled."""
        import redis

        self._retry_soon = False
        if not self._group_ready:
            try:
                yield Command(
                    "xgroup_create", (self.stream, self.group), {"id": "0", "mkstream": True}
                )
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._group_ready = True
        try:
            entries = self._backlog or (yield from self._read(block_ms))
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted: make the group again
                self._group_ready = False
                return 0
            raise
        self._backlog = []
        acks: list[str] = []
        for position, (entry_id, fields, deliveries) in enumerate(entries):
            outcome = yield from self._handle(entry_id, fields, deliveries)
            if outcome == "retry-later":  # the store failed: keep this one and the rest
                self._backlog += entries[position:]  # (after the retries kept above)
                break
            if outcome == "retry":
                self._backlog.append((entry_id, fields, deliveries))
            else:
                acks.append(entry_id)
        if acks:
            yield Command("xack", (self.stream, self.group, *acks))
        return len(acks)

    def _read(
        self, block_ms: int | None
    ) -> Generator[Step, Any, list[tuple[str, dict[bytes, bytes], int]]]:
        now = time.monotonic()
        if self._own_pending:
            reply = yield Command(
                "xreadgroup",
                (self.group, self.consumer, {self.stream: "0"}),
                {"count": self.batch},
            )
            entries = _entries(reply)
            if len(entries) < self.batch:
                self._own_pending = False
            return (yield from self._with_deliveries(entries))
        if now >= self._next_claim:
            reply = yield Command(
                "xautoclaim",
                (self.stream, self.group, self.consumer, int(self.claim_idle * 1000)),
                {"start_id": self._claim_cursor, "count": self.batch},
            )
            cursor, claimed = _text(reply[0]), reply[1]
            if len(reply) > 2 and reply[2]:  # deleted from the stream while pending
                self.counters.count("trimmed", len(reply[2]))
                self._log.log(
                    logging.WARNING,
                    "trimmed",
                    "cachelayer: %d pending events on %s were trimmed before they were "
                    "applied; raise the stream's maxlen",
                    len(reply[2]),
                    self.stream,
                )
            self._claim_cursor = cursor
            # A full page may have more behind it: go on at once, else wait.
            self._next_claim = now if cursor != "0-0" else now + self.claim_interval
            entries = [(_text(i), f or {}) for i, f in claimed]
            if entries:
                self.counters.count("claimed", len(entries))
                return (yield from self._with_deliveries(entries))
        reply = yield Command(
            "xreadgroup",
            (self.group, self.consumer, {self.stream: ">"}),
            {"count": self.batch, "block": block_ms},
        )
        return [(i, f, 1) for i, f in _entries(reply)]

    def _with_deliveries(
        self, entries: list[tuple[str, dict[bytes, bytes]]]
    ) -> Generator[Step, Any, list[tuple[str, dict[bytes, bytes], int]]]:
        if not entries:
            return []
        pending = yield Command(
            "xpending_range",
            (self.stream, self.group),
            {
                "min": entries[0][0],
                "max": entries[-1][0],
                "count": 2 * max(len(entries), self.batch),
                "consumername": self.consumer,
            },
        )
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return [(i, f, counts.get(i, 1)) for i, f in entries]

    def _handle(
        self, entry_id: str, fields: dict[bytes, bytes], deliveries: int
    ) -> Generator[Step, Any, str]:
        """Handle one entry: ``"done"`` (acknowledge it), ``"retry"`` (it raised; keep it)
        or ``"retry-later"`` (the store failed; stop the batch here)."""
        if not fields:  # trimmed from the stream before this consumer finished it
            self.counters.count("trimmed")
            return "done"
        attempts = deliveries + self._attempts.get(entry_id, 0)
        if attempts > self.max_attempts:
            yield from self._bury(entry_id, fields, attempts - 1)
            return "done"
        now = self.clock()
        window_ms = int(self.window * 1000)
        try:
            event = check(
                fields.get(b"p"),
                _kid(fields.get(b"k")),
                fields.get(b"s"),
                self.verifier,
                self.namespace,
                int(now * 1000),
                window_ms,
            )
            outcome = yield from apply_flow(event, self.prefix, entry_id, mark_ttl_ms(window_ms))
        except Refused as refusal:
            self.counters.count(refusal.reason)
            self._log.log(
                logging.WARNING,
                "refused:" + refusal.reason,
                "cachelayer: refused an event on %s (%s); not applied",
                self.stream,
                refusal.reason,
            )
            return "done"
        except ApplyFailed as exc:
            self.counters.count("failures")
            self._retry_soon = True
            self._log.log(
                logging.WARNING,
                "store",
                "cachelayer: applying events from %s failed (%s); retrying",
                self.stream,
                exc,
            )
            return "retry-later"
        except Exception as exc:
            # Not the store: this event cannot be applied (a key the Cache refuses, a bug).
            self.counters.count("failures")
            self._attempts[entry_id] = self._attempts.get(entry_id, 0) + 1
            self._retry_soon = True
            self._log.log(
                logging.WARNING,
                "apply",
                "cachelayer: an event from %s could not be applied (%s); attempt %d of %d",
                self.stream,
                type(exc).__name__,
                attempts,
                self.max_attempts,
            )
            return "retry"
        self._attempts.pop(entry_id, None)
        self.counters.count("applied" if outcome == "applied" else "duplicates")
        return "done"

    def _bury(
        self, entry_id: str, fields: dict[bytes, bytes], attempts: int
    ) -> Generator[Step, Any, None]:
        """Move an entry to the dead-letter stream (acknowledged by the caller)."""
        letter: dict[Any, Any] = {
            k: v for k, v in fields.items() if k in (b"p", b"k", b"s") and isinstance(v, bytes)
        }
        letter.update(
            {"entry": entry_id, "group": self.group, "consumer": self.consumer, "n": attempts}
        )
        yield Command(
            "xadd",
            (self.dead_letter, letter),
            {"maxlen": self.dead_letter_maxlen, "approximate": True},
        )
        self._attempts.pop(entry_id, None)
        self.counters.count("dead_lettered")
        log.error(
            "cachelayer: an event from %s failed %d times; moved to %s",
            self.stream,
            attempts,
            self.dead_letter,
        )

    # -- the shells ------------------------------------------------------------------------

    def poll(self, block: float | None = None) -> int:
        """Handle one batch in this thread; returns how many entries were acknowledged.

        Args:
            block: seconds to wait for new entries; None returns at once when none.

        Raises:
            redis.RedisError: the stream's Redis failed (the loops of ``run`` and
                ``run_in_thread`` log it and retry; a direct caller decides).
        """
        client = self._sync_client()
        try:
            handled = int(drive(self._batch(_ms(block)), client, self.cache))
        except Exception:
            self._lost()
            raise
        self._settle()
        return handled

    async def apoll(self, client: Any, block: float | None = None) -> int:
        """:meth:`poll` with an asyncio redis-py client (what :meth:`run` calls)."""
        try:
            handled = int(await adrive(self._batch(_ms(block)), client, self.cache))
        except Exception:
            self._lost()
            raise
        self._settle()
        return handled

    def _settle(self) -> None:
        """After a batch: back off while events fail, else go on at once."""
        self._delay = _backoff(self._delay) if self._retry_soon else 0.0

    def _lost(self) -> None:
        """After a failed batch: forget what was in hand and read the pending list again
        (what was applied and not acknowledged comes back as a duplicate)."""
        self._backlog = []
        self._own_pending = True
        self._delay = _backoff(self._delay)

    def _failed(self, exc: BaseException) -> None:
        self._log.log(
            logging.WARNING,
            "stream",
            "cachelayer: reading events from %s failed (%s); retrying",
            self.stream,
            type(exc).__name__,
        )

    def run_in_thread(self) -> threading.Thread:
        """Start a daemon thread that applies events until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self!r} is already running")
        self._sync_client()  # a bad URL fails here, not in the thread
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run_sync, name=f"cachelayer-events {self.stream}", daemon=True
        )
        self._thread.start()
        return self._thread

    def _run_sync(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                self.poll(self.block)
            except (redis.RedisError, OSError) as exc:
                self._failed(exc)
            except Exception:
                log.exception("cachelayer: the events consumer of %s failed", self.stream)
            if self._delay:
                self._stop.wait(self._delay)

    async def run(self) -> None:
        """Apply events until :meth:`stop` is called or the task is cancelled (an
        asyncio redis-py client of its own, the Cache's async methods)."""
        import redis
        import redis.asyncio

        self._stop.clear()
        client = self._aclient or redis.asyncio.Redis.from_url(
            self._redis_url(), **self._options()
        )
        try:
            while not self._stop.is_set():
                try:
                    await self.apoll(client, self.block)
                except (redis.RedisError, OSError) as exc:
                    self._failed(exc)
                except Exception:
                    log.exception("cachelayer: the events consumer of %s failed", self.stream)
                if self._delay:
                    await asyncio.sleep(self._delay)
        finally:
            if self._aclient is None:
                await client.aclose()

    def stop(self, timeout: float | None = None) -> None:
        """Stop :meth:`run` or the thread (within ``block`` seconds); waits for the
        thread. Entries read and not yet applied stay pending for the next start."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Stop, and close the sync client if the consumer made it."""
        self.stop()
        if self._client is not None and self._owns_client:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    # -- lag -------------------------------------------------------------------------------

    def lag(self) -> Lag:
        """How far this consumer's group is behind (see :class:`Lag`).

        Raises:
            redis.RedisError: Redis failed, or the group does not exist yet.
        """
        import redis

        client = self._sync_client()
        groups = client.xinfo_groups(self.stream)
        info = next((g for g in groups if _text(g["name"]) == self.group), None)
        if info is None:
            raise redis.ResponseError(f"NOGROUP no group {self.group!r} on {self.stream!r}")
        last = _text(info["last-delivered-id"])
        events = info.get("lag")
        undelivered = client.xrange(self.stream, "(" + last, "+", count=1)
        if events is None:
            if undelivered:
                after = client.xrange(self.stream, "(" + last, "+", count=LAG_SCAN_LIMIT)
                events = len(after)
            else:
                events = 0
        now_ms = self.clock() * 1000
        seconds = max(0.0, (now_ms - _entry_ms(undelivered[0][0])) / 1000) if undelivered else 0.0
        pending = int(info["pending"])
        pending_seconds = 0.0
        if pending:
            oldest = client.xpending_range(self.stream, self.group, "-", "+", 1)
            if oldest:
                age = now_ms - _entry_ms(oldest[0]["message_id"])
                pending_seconds = max(0.0, age / 1000)
        return Lag(
            events=None if events is None else int(events),
            seconds=seconds,
            pending=pending,
            pending_seconds=pending_seconds,
        )


def _kid(value: Any) -> Any:
    """A kid field as text (a non-UTF-8 one stays bytes, and is an unknown kid)."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


def _backoff(delay: float) -> float:
    """The next wait after a failure: 50 ms, doubling, at most 2 s."""
    return min(max(delay * 2, 0.05), 2.0)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, int(seconds * 1000))
