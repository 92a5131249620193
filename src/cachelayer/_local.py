"""The local tier: decoded values held in process memory in front of the store.

A :class:`LocalTier` answers a hit with a dictionary lookup and one clock read, with no
store round trip and no decoding. It is kept coherent with the store by purges: every
invalidation in any process publishes the keys or tags it touched (``_purge.py``), and
each process's subscriber drops them here. What keeps it safe:

- **Nothing stale is inserted.** A reader takes ``tier.seq`` *before* its store read and
  hands it to :meth:`LocalTier.keep`; the value is kept only if no invalidation of that
  key (or of one of its tags, or of everything) was recorded since. The last
  ``RECENT`` invalidated names are remembered; a reader older than the oldest forgotten
  one is refused (``floor``).
- **No channel, no tier.** The tier starts disabled and is enabled only once the
  subscription is confirmed; a lost subscription flushes it and disables it until the
  subscription is back, so an invalidation published meanwhile cannot be missed.
- **A backstop.** Every entry lives at most ``max_ttl`` seconds, and never past its own
  freshness deadline.

Eviction is S3-FIFO (Yang et al., SOSP 2023): new keys enter a small FIFO (10% of the
entries); a key read again before it leaves moves to the main FIFO, a one-hit wonder
leaves through a ghost list that remembers its key, and the main FIFO gives each entry
a second chance per read (up to 3). A hit only bumps a small counter on the entry, so
hits take no lock. bench/bench_local.py compares its hit ratio with plain LRU.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .backends.memory import parse_size
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._envelope import Entry

__all__ = ["MISSING", "RECENT", "LocalTier", "S3Fifo"]

#: What :meth:`LocalTier.get` returns for a miss (``None`` is a value).
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()

#: Invalidated names remembered to refuse a concurrent reader's insert.
RECENT = 4096

# Every tier of the process, to turn off in a forked child.
_TIERS: weakref.WeakSet[LocalTier] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tier in list(_TIERS):
        tier.forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
#: Bookkeeping per entry charged against ``max_bytes`` (slot, dict entry, key object).
SLOT_OVERHEAD = 200
_SMALL_SHARE = 0.1
_MAX_FREQ = 3


class _Slot:
    __slots__ = ("deadline", "freq", "key", "main", "size", "tags", "value")

    def __init__(
        self, key: str, value: Any, deadline: float, size: int, tags: tuple[str, ...]
    ) -> None:
        self.key, self.value, self.deadline, self.size, self.tags = (
            key,
            value,
            deadline,
            size,
            tags,
        )
        self.freq = 0
        self.main = False


class S3Fifo:
    """A bounded ``key -> value`` map evicting by S3-FIFO; not thread-safe by itself.

    Args:
        max_entries: most entries held.
        max_bytes: most bytes held (the sizes given to :meth:`put`).
        on_remove: called with every slot that leaves (evicted, replaced or removed).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        on_remove: Callable[[_Slot], None] | None = None,
    ) -> None:
        self.max_entries = max_entries
        self._on_remove = on_remove
        self.max_bytes = max_bytes
        self.data: dict[str, _Slot] = {}
        self.bytes = 0
        self._small: deque[_Slot] = deque()
        self._main: deque[_Slot] = deque()
        self._ghost: dict[str, None] = {}
        self._n_small = 0
        self._n_main = 0
        self._small_target = max(1, int(max_entries * _SMALL_SHARE))
        self.evictions = 0

    def get(self, key: str) -> _Slot | None:
        """The slot for ``key`` (its read counted), or None."""
        slot = self.data.get(key)
        if slot is not None and slot.freq < _MAX_FREQ:
            slot.freq += 1
        return slot

    def put(self, slot: _Slot) -> bool:
        """Insert ``slot`` (replacing its key's); False if it can never fit."""
        if slot.size > self.max_bytes:
            self.remove(slot.key)
            return False
        old = self.data.get(slot.key)
        if old is not None:
            self._unlink(old)
        if self._ghost.pop(slot.key, 0) is None:  # seen recently: straight to main
            slot.main = True
            self._main.append(slot)
            self._n_main += 1
        else:
            self._small.append(slot)
            self._n_small += 1
        self.data[slot.key] = slot
        self.bytes += slot.size
        while len(self.data) > self.max_entries or self.bytes > self.max_bytes:
            if not self._evict():
                break
        if len(self._small) + len(self._main) > 2 * len(self.data) + 1024:
            self._compact()
        return slot.key in self.data

    def remove(self, key: str) -> _Slot | None:
        """Drop ``key``; its slot, or None if it was not held."""
        slot = self.data.get(key)
        if slot is not None:
            self._unlink(slot)
        return slot

    def clear(self) -> None:
        """Drop everything (the ghost list too)."""
        self.data.clear()
        self._small.clear()
        self._main.clear()
        self._ghost.clear()
        self.bytes = self._n_small = self._n_main = 0

    # -- eviction --------------------------------------------------------------------------

    def _unlink(self, slot: _Slot) -> None:
        # Queues keep dead slots; they are skipped when they reach the tail.
        del self.data[slot.key]
        self.bytes -= slot.size
        if slot.main:
            self._n_main -= 1
        else:
            self._n_small -= 1
        if self._on_remove is not None:
            self._on_remove(slot)

    def _live(self, slot: _Slot) -> bool:
        return self.data.get(slot.key) is slot

    def _evict(self) -> bool:
        if self._n_small > self._small_target or not self._n_main:
            return self._evict_small()
        return self._evict_main()

    def _evict_small(self) -> bool:
        small = self._small
        while small:
            slot = small.popleft()
            if not self._live(slot) or slot.main:
                continue
            if slot.freq > 1:  # read again while in the small queue: keep it
                self._n_small -= 1
                self._n_main += 1
                slot.main, slot.freq = True, 0
                self._main.append(slot)
                return True
            self._unlink(slot)
            self.evictions += 1
            ghost = self._ghost
            ghost[slot.key] = None
            if len(ghost) > self.max_entries:
                del ghost[next(iter(ghost))]
            return True
        return self._evict_main() if self._n_main else False

    def _evict_main(self) -> bool:
        main = self._main
        while main:
            slot = main.popleft()
            if not self._live(slot) or not slot.main:
                continue
            if slot.freq > 0:
                slot.freq -= 1
                main.append(slot)
                continue
            self._unlink(slot)
            self.evictions += 1
            return True
        return False

    def _compact(self) -> None:
        self._small = deque(s for s in self._small if self._live(s) and not s.main)
        self._main = deque(s for s in self._main if self._live(s) and s.main)


class LocalTier:
    """Decoded values of one Cache in this process, kept coherent by purges.

    Pass one to ``Cache(url, local=LocalTier(...))`` or give its settings as a dict
    (``local={"max_entries": 10_000, "max_ttl": 30}``). Every caller of the process gets
    *the same object* for a local hit: treat cached values as read-only.

    Args:
        max_entries: most entries held.
        max_bytes: most bytes held, or a size string (``"64MB"``). An entry is charged
            its encoded size plus its key and ~200 bytes of bookkeeping; a decoded
            object usually takes a few times its encoded size, so leave headroom.
        max_ttl: seconds an entry is served locally at most (also never past its own
            freshness): the backstop if an invalidation is ever lost.
        clock: monotonic seconds; tests inject a fake one.
    """

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int | str = "64MB",
        max_ttl: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        max_entries, size = int(max_entries), parse_size(max_bytes)
        if max_entries < 1 or size < 1:
            raise ConfigurationError("local tier needs max_entries >= 1 and max_bytes >= 1")
        if not max_ttl > 0:
            raise ConfigurationError(f"local tier max_ttl={max_ttl!r} must be > 0")
        self.max_ttl = float(max_ttl)
        self.clock = clock
        self._entries = S3Fifo(max_entries, size, self._unindex)
        self._data = self._entries.data
        self._tags: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        #: bumped by every invalidation; read it before a store read, pass it to keep()
        self.seq = 0
        self._floor = 0
        # Names purged lately, oldest first (an OrderedDict: popping its front is O(1),
        # where a dict's front fills with dead slots and each pop scans further).
        self._recent: OrderedDict[str, int] = OrderedDict()
        #: serving and keeping values (only while the purge channel is subscribed)
        self.enabled = False
        self.refused = 0
        self.purged = 0
        #: used by a Cache already (a tier follows one Cache's purge channel)
        self.attached = False
        #: this process was forked from the one that made the tier: it never serves
        self._forked = False
        _TIERS.add(self)

    @classmethod
    def from_option(cls, option: LocalTier | Mapping[str, Any]) -> LocalTier:
        """A tier from ``Cache(local=...)``: a LocalTier, or a dict of its settings.

        Raises:
            ConfigurationError: an unknown setting or a bad value.
        """
        if isinstance(option, LocalTier):
            if option.attached:
                raise ConfigurationError(
                    "this LocalTier already serves another Cache: give each Cache its own "
                    "(a tier follows one purge channel; closing one Cache turns it off)"
                )
            option.attached = True
            return option
        if not isinstance(option, Mapping):
            raise ConfigurationError(f"local= takes a LocalTier or a dict, not {option!r}")
        unknown = set(option) - {"max_entries", "max_bytes", "max_ttl"}
        if unknown:
            raise ConfigurationError(
                f"unknown local tier setting(s) {', '.join(sorted(unknown))} "
                "(known: max_entries, max_bytes, max_ttl)"
            )
        tier = cls(**option)
        tier.attached = True
        return tier

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes_used(self) -> int:
        """Bytes charged against ``max_bytes`` now."""
        return self._entries.bytes

    @property
    def evictions(self) -> int:
        """Entries evicted to stay within the bounds so far."""
        return self._entries.evictions

    # -- the hit path ----------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value held for the store key ``key``, or :data:`MISSING`."""
        slot = self._data.get(key)
        if slot is None:
            return MISSING
        if slot.deadline <= self.clock():
            with self._lock:
                if self._data.get(key) is slot:
                    self._entries.remove(key)
            return MISSING
        if slot.freq < _MAX_FREQ:
            slot.freq += 1  # racy under threads: a lost bump costs nothing
        return slot.value

    def keep(
        self,
        key: str,
        value: Any,
        *,
        since: int,
        fresh_until_ms: int,
        now_ms: int,
        size: int,
        tags: Sequence[str] = (),
    ) -> bool:
        """Hold ``value`` for ``key`` unless an invalidation came after ``since``.

        Args:
            key: the store key.
            value: the decoded value.
            since: ``self.seq`` taken before the store read that found ``value``.
            fresh_until_ms: the entry's freshness deadline on the Cache's clock (0: none).
            now_ms: the Cache's clock now, in ms.
            size: the entry's encoded size in bytes.
            tags: the tag keys the entry carries.

        Returns:
            True if the value is held.
        """
        remaining = self.max_ttl
        if fresh_until_ms:
            remaining = min(remaining, (fresh_until_ms - now_ms) / 1000.0)
        if remaining <= 0 or not self.enabled:
            return False
        recent = self._recent
        with self._lock:
            if (
                not self.enabled
                or since < self._floor
                or recent.get(key, 0) > since
                or any(recent.get(t, 0) > since for t in tags)
            ):
                self.refused += 1
                return False
            slot = _Slot(
                key, value, self.clock() + remaining, size + len(key) + SLOT_OVERHEAD, tuple(tags)
            )
            if not self._entries.put(slot):
                return False
            index = self._tags
            for tag in slot.tags:
                index.setdefault(tag, set()).add(key)
            return True

    def keep_entry(self, key: str, entry: Entry, now_ms: int, since: int) -> bool:
        """:meth:`keep` for a decoded entry read at ``key`` (positive entries only)."""
        if entry.negative:
            return False
        return self.keep(
            key,
            entry.value,
            since=since,
            fresh_until_ms=entry.fresh_until_ms,
            now_ms=now_ms,
            size=len(entry.raw),
            tags=[tag for tag, _ in entry.tags] if entry.tags else (),
        )

    def _unindex(self, slot: _Slot) -> None:
        for tag in slot.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(slot.key)
                if not keys:
                    del self._tags[tag]

    # -- purges ----------------------------------------------------------------------------

    def invalidate(self, keys: Iterable[str] = (), tags: Iterable[str] = ()) -> None:
        """Drop ``keys`` and every entry carrying one of the tag keys ``tags``; refuse
        the inserts of reads that began before this call. A purge naming more names than
        the tier remembers is a flush (cheaper, and just as safe)."""
        keys, tags = list(keys), list(tags)
        if len(keys) + len(tags) > RECENT:
            self.flush()
            return
        with self._lock:
            self.seq += 1
            seq = self.seq
            recent = self._recent
            entries = self._entries
            for key in keys:
                self.purged += entries.remove(key) is not None
                recent.pop(key, None)
                recent[key] = seq
            for tag in tags:
                for key in list(self._tags.get(tag, ())):
                    self.purged += entries.remove(key) is not None
                recent.pop(tag, None)
                recent[tag] = seq
            while len(recent) > RECENT:
                self._floor = max(self._floor, recent.popitem(last=False)[1])

    def flush(self) -> None:
        """Drop everything; refuse the inserts of reads that began before this call."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        self.purged += len(self._data)
        self._entries.clear()
        self._tags.clear()
        self._recent.clear()
        self.seq += 1
        self._floor = self.seq

    def enable(self) -> None:
        """Start serving and keeping values (the purge channel is subscribed)."""
        with self._lock:
            self._reset()
            self.enabled = not self._forked

    def forked(self) -> None:
        """In a forked child: the parent's subscriber thread did not come along, so no
        purge would reach this copy; it is flushed and never serves again."""
        self._forked = True
        self._lock = threading.Lock()  # the parent's may have been held at the fork
        self.enabled = False
        self._reset()

    def disable(self) -> None:
        """Flush and stop keeping values (the purge channel is lost or closed)."""
        with self._lock:
            self.enabled = False
            self._reset()
