"""The engine: what every face of a Cache shares, behind one typed interface.

A :class:`~cachelayer.Cache` builds one :class:`Engine` and hands it to everything that
works on its entries: the read path (``_readpath``), the decorator, the Django backend and
the FastAPI middleware. The engine holds the entry format (serializer and codecs), the
clock and the random source, the TTL policy, the key builder, the lease settings, the
counters, and the runner that performs store steps (breaker, fail-open, both shells).
Nothing reaches into another module's private names; what a face may do is what this
class offers. The import graph goes one way: faces -> engine -> runner -> stores.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

from ._envelope import Entry, Serializer
from ._keys import KeyBuilder, derived_key
from ._local import LocalTier
from ._metrics import Metrics
from ._options import ErrorPolicy
from ._policy import TtlPolicy
from ._purge import KEYS, TAGS, message
from ._runner import StoreRunner
from ._stats import RateLimitedLog, Stats
from ._steps import Broadcast, Delete, SetMany, StoreStep
from .errors import DecodeError

__all__ = ["LEASE_SUFFIX", "Engine", "lease_key"]

log = logging.getLogger("cachelayer.cache")

LEASE_SUFFIX = "lease"
#: keys ``Engine.gave_up`` remembers before starting over
_GAVE_UP_LIMIT = 10_000


def lease_key(key: str) -> str:
    """The lease key of a value key (same Redis Cluster slot)."""
    return derived_key(key, LEASE_SUFFIX)


class Engine:
    """The shared internals of one Cache.

    Attributes (read them; the Cache owns their configuration):
        serializer: the entry format (codec, compression, signing, type registry).
        keys: turns caller keys and tags into store keys.
        ttl: TTL classes and jitter.
        stats: the counters this engine's calls count in (the Cache's own block, or a
            decorated function's: see :meth:`scoped`).
        metrics: every counter block of the Cache.
        runner: performs store steps and drives flows (``call``/``acall``,
            ``drive``/``adrive`` are its methods, re-exported here).
        lease_ttl: seconds a miss may take to load before its fill is refused.
        lease_wait: seconds a miss waits for another process's fill.
        tag_ttl: seconds a tag's token is kept.
        raise_errors: plain calls raise ``StoreUnavailable`` (``on_error="raise"``).
        clock: wall-clock seconds, as written into entries.
        random: uniform ``[0, 1)`` draws for jitter and early refresh.
        local: the local tier (``Cache(local=...)``), or None.
        purge_channel: the channel invalidations are published on, or None when this
            Cache does not publish them.
        name: the decorated function (``module.qualname``) whose block ``stats`` is, or
            ``""`` for the Cache's own.
    """

    def __init__(
        self,
        *,
        runner: StoreRunner,
        serializer: Serializer,
        keys: KeyBuilder,
        ttl: TtlPolicy,
        stats: Stats,
        clock: Callable[[], float],
        random: Callable[[], float],
        lease_ttl: float,
        lease_wait: float,
        tag_ttl: float,
        raise_errors: bool,
        local: LocalTier | None = None,
        purge_channel: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.runner = runner
        self.serializer = serializer
        self.keys = keys
        self.ttl = ttl
        self.stats = stats
        self.metrics = Metrics(stats) if metrics is None else metrics
        self.clock = clock
        self.random = random
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self.tag_ttl = tag_ttl
        self.raise_errors = raise_errors
        self.local = local
        self.purge_channel = purge_channel
        #: the function whose block this engine counts in ("": the Cache's own calls)
        self.name = ""
        #: invalidations are purged: from a local tier, or published to other processes
        self.purges = local is not None or purge_channel is not None
        #: names this Cache's purge messages (its own subscriber skips them)
        self.origin = os.urandom(8).hex()
        runner.local = local
        self.call = runner.call
        self.acall = runner.acall
        self.drive = runner.drive
        self.adrive = runner.adrive
        self._log = RateLimitedLog(log)
        #: keys whose lease a caller just waited out, until when (``gave_up``)
        self._gave_up: dict[str, float] = {}

    def scoped(self, name: str) -> Engine:
        """This engine counting in the block of the function named ``name``: the same
        store, runner, format and settings (the Cache's own block keeps the runner's store
        events)."""
        view = copy.copy(self)
        view.stats = self.metrics.group(name)
        view.name = name
        return view

    # -- leases nobody fills ---------------------------------------------------------------

    def gave_up(self, key: str) -> None:
        """A caller waited out ``key``'s lease (``lease_wait``) and got no fill: for the
        next ``lease_wait``, this process's callers load the key without waiting on that
        lease again (an in-process follower of the caller would otherwise wait as long
        once more)."""
        if len(self._gave_up) >= _GAVE_UP_LIMIT:
            self._gave_up.clear()
        self._gave_up[key] = time.monotonic() + self.lease_wait

    def gave_up_recently(self, key: str) -> bool:
        until = self._gave_up.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        self._gave_up.pop(key, None)
        return False

    # -- entries ---------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The clock in milliseconds, as entries record it."""
        return int(self.clock() * 1000)

    def encode(
        self,
        value: Any,
        seconds: float | None,
        duration_ms: int = 0,
        negative: bool = False,
        tags: Sequence[tuple[str, bytes]] = (),
        *,
        key: str,
    ) -> bytes:
        """An entry's bytes for the store key ``key``: ``value`` fresh for ``seconds`` from
        now (None: forever). A signed entry verifies only when read under ``key``.

        Raises:
            TypeError: the value holds a type the codec cannot store exactly.
            ValueError: the encoded value is larger than ``max_value_size``.
        """
        now = self.now_ms()
        fresh_until = 0 if seconds is None else now + max(1, int(seconds * 1000))
        raw = self.serializer.dumps(
            value,
            written_ms=now,
            fresh_until_ms=fresh_until,
            duration_ms=duration_ms,
            negative=negative,
            tags=tags,
            key=key,
        )
        self.stats.bytes_written += len(raw)
        return raw

    def encode_error(
        self,
        exc_type: type[BaseException],
        exc: BaseException,
        seconds: float | None,
        tags: Sequence[tuple[str, bytes]] = (),
        *,
        key: str,
    ) -> bytes:
        """A negative entry standing for ``exc`` (cached as ``exc_type``) at ``key``."""
        stored = {"error": ErrorPolicy.name(exc_type), "args": list(exc.args)}
        try:
            return self.encode(stored, seconds, negative=True, tags=tags, key=key)
        except (TypeError, ValueError):  # args the codec cannot store: keep only the type
            stored["args"] = []
            return self.encode(stored, seconds, negative=True, tags=tags, key=key)

    def decode(self, raw: bytes, *, key: str) -> Entry | None:
        """The entry ``raw`` holds, read from the store key ``key``, or None (counted and
        logged) when it does not decode, or is a negative entry of the wrong shape."""
        self.stats.bytes_read += len(raw)
        try:
            entry = self.serializer.loads(raw, key=key)
            if entry.negative and not ErrorPolicy.well_formed(entry.value):
                raise DecodeError("negative entry is not {'error': str, 'args': list}")
            return entry
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self._log.log(
                logging.WARNING,
                "decode",
                "cachelayer: an entry did not decode (%s); treated as a miss",
                exc,
            )
            return None

    def log_oversized(self) -> None:
        """Log a loaded value too large to store (rate-limited; no key, no value)."""
        self._log.log(
            logging.WARNING,
            "oversized",
            "cachelayer: a loaded value is over max_value_size=%d bytes encoded; it was "
            "returned but not stored",
            self.serializer.max_value_size,
        )

    def log_refresh_error(self, exc: BaseException) -> None:
        """Log a failed background refresh (rate-limited; no key, no value)."""
        self._log.log(
            logging.WARNING,
            "refresh",
            "cachelayer: a background refresh failed (%s); the current value stays",
            type(exc).__name__,
        )

    # -- steps the faces share ---------------------------------------------------------------

    @staticmethod
    def delete_step(store_keys: Iterable[str]) -> Delete:
        """Delete these store keys and void the fills in flight for them (their leases)."""
        doomed: list[str] = []
        for key in store_keys:
            doomed += (key, lease_key(key))
        return Delete(doomed)

    def invalidate_tags_step(self, tags: Iterable[str]) -> SetMany:
        """Give each tag a new token: every entry stamped with the old one is a miss."""
        return SetMany([(self.keys.tag(tag), os.urandom(8), self.tag_ttl) for tag in tags])

    # -- purges (docs/local.md) ------------------------------------------------------------

    def _purge_step(self, kind: str, names: Sequence[str]) -> Broadcast | None:
        local = self.local
        if local is not None:
            if kind == KEYS:
                local.invalidate(keys=names)
            elif kind == TAGS:
                local.invalidate(tags=names)
            else:
                local.flush()
        if self.purge_channel is None:
            return None
        return Broadcast(self.purge_channel, message(kind, names, self.origin))

    def write(
        self, step: StoreStep, kind: str, names: Sequence[str], invalidating: bool = False
    ) -> Any:
        """Run a write or invalidation step, then purge what it touched -- also when the
        step raised (``on_error="raise"``): a timeout does not mean the write did not land,
        and this process must not keep serving what it may have replaced."""
        if invalidating:
            self.stats.invalidations += 1
        try:
            result = self.call(step, self.raise_errors, invalidating)
        except BaseException:
            if self.purges:
                with contextlib.suppress(Exception):  # the step's own error goes first
                    self.purge(kind, names)
            raise
        if self.purges:
            self.purge(kind, names)
        return result

    async def awrite(
        self, step: StoreStep, kind: str, names: Sequence[str], invalidating: bool = False
    ) -> Any:
        """``write`` for asyncio code."""
        if invalidating:
            self.stats.invalidations += 1
        try:
            result = await self.acall(step, self.raise_errors, invalidating)
        except BaseException:
            if self.purges:
                with contextlib.suppress(Exception):
                    await self.apurge(kind, names)
            raise
        if self.purges:
            await self.apurge(kind, names)
        return result

    def purged(self, kind: str, names: Sequence[str]) -> Generator[Broadcast, Any, None]:
        """``purge`` as steps of a flow (a compare-and-set write's, say): drop the names
        from the local tier now, and yield the broadcast to other processes, if any."""
        step = self._purge_step(kind, names)
        if step is not None:
            yield step

    def purge(self, kind: str, names: Sequence[str] = ()) -> None:
        """After an invalidation's store step: drop what it touched from this process's
        local tier and publish it to the others (a failure counts as an invalidation
        error). ``kind`` is ``"k"`` (store keys), ``"t"`` (tag keys) or ``"*"``."""
        step = self._purge_step(kind, names)
        if step is not None:
            self.call(step, self.raise_errors, True)

    async def apurge(self, kind: str, names: Sequence[str] = ()) -> None:
        """``purge`` for asyncio code."""
        step = self._purge_step(kind, names)
        if step is not None:
            await self.acall(step, self.raise_errors, True)
