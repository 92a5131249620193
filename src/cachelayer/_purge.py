"""Purges: the messages that keep every process's local tier coherent, and the thread
that listens for them.

Every invalidation (``delete``, ``set``, ``invalidate_tags``, ``clear`` and their
``many`` and async forms, a decorated function's ``invalidate``) publishes, after its
store step, what it touched on one channel per namespace and version,
``{<namespace>:v<version>:}purge`` (docs/local.md). Each process with a local tier runs
one :class:`Subscriber` thread that drops what the messages name. A message is JSON,
``["k", [store keys], origin, sent]``, ``["t", [tag keys], origin, sent]`` or
``["*", [], origin, sent]`` (everything), so any Python ``str`` key travels intact;
``sent`` is the sender's wall clock in milliseconds, from which the receiver measures the
invalidation lag (a message without it, from an older version, is applied all the same).
``origin`` names the Cache that sent it: a Cache purges its own tier within the call, so
it skips its own messages (handling them late would only refuse the reads that followed
its own write).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterable

from ._local import LocalTier
from ._metrics import LAG_BUCKETS
from ._runner import store_failures
from ._stats import Histogram
from .backends.base import Publisher

__all__ = [
    "EVERYTHING",
    "KEYS",
    "TAGS",
    "Subscriber",
    "apply",
    "channel_for",
    "message",
    "parse",
]

log = logging.getLogger("cachelayer.purge")

KEYS, TAGS, EVERYTHING = "k", "t", "*"
#: the largest send time a message may carry (ms; a JSON integer JavaScript reads exactly)
_MAX_SENT = 2**53 - 1


def channel_for(prefix: str) -> str:
    """The purge channel of a key prefix (``ns:v1:`` -> ``{ns:v1:}purge``)."""
    return "{" + prefix + "}purge"


def message(kind: str, names: Iterable[str] = (), origin: str = "") -> bytes:
    """A purge message naming ``names`` (store keys or tag keys) or everything."""
    sent = int(time.time() * 1000)
    return json.dumps([kind, list(names), origin, sent], separators=(",", ":")).encode()


def parse(raw: bytes) -> tuple[str, list[str], str, int]:
    """``(kind, names, origin, sent ms)`` (``sent`` 0 when absent); anything malformed
    reads as a purge of everything."""
    # Anything that does not parse -- RecursionError for deep nesting included -- is
    # malformed, and a malformed message is a purge of everything.
    with contextlib.suppress(Exception):
        kind, names, origin, *rest = json.loads(raw)
        sent = rest[0] if len(rest) == 1 else 0
        if (
            kind in (KEYS, TAGS, EVERYTHING)
            and isinstance(names, list)
            and all(isinstance(n, str) for n in names)
            and isinstance(origin, str)
            and type(sent) is int
            and len(rest) <= 1
        ):
            # A send time out of range (hostile, or a broken clock) is no send time.
            return kind, names, origin, sent if 0 <= sent <= _MAX_SENT else 0
    return EVERYTHING, [], "", 0


def apply(tier: LocalTier, raw: bytes, origin: str = "") -> int | None:
    """Drop from ``tier`` what the message ``raw`` names, unless ``origin`` sent it.
    Returns when the sender sent it (wall-clock ms, 0 if unknown), None if skipped."""
    kind, names, sender, sent = parse(raw)
    if origin and sender == origin:
        return None
    if kind == KEYS:
        tier.invalidate(keys=names)
    elif kind == TAGS:
        tier.invalidate(tags=names)
    else:
        tier.flush()
    return sent


class Subscriber:
    """The thread that keeps one local tier subscribed to its purge channel.

    The tier is enabled once the subscription is confirmed, and flushed and disabled
    whenever it is lost (then subscribed again, backing off from 50 ms to 2 s) or
    stopped. An unexpected exception (a bug) disables the tier for good and is logged:
    a tier that cannot hear purges must not serve.

    Args:
        store: the store to subscribe through.
        channel: the purge channel.
        tier: the tier to keep.
        origin: the id of the Cache that owns the tier (its own messages are skipped).
        poll: seconds each wait for a message lasts (how soon ``stop`` is noticed).
    """

    def __init__(
        self, store: Publisher, channel: str, tier: LocalTier, origin: str, poll: float = 0.1
    ) -> None:
        self.store, self.channel, self.tier, self.poll = store, channel, tier, poll
        self.origin = origin
        self.failures = store_failures(store)
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.losses = 0
        #: purges applied from other processes, and their lag (sent to dropped, seconds)
        self.purges = 0
        self.lag = Histogram(LAG_BUCKETS)
        self._thread = threading.Thread(
            target=self._run, name=f"cachelayer-purge {channel}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (the tier serves once subscribed)."""
        self._thread.start()

    def halt(self) -> None:
        """Ask the thread to stop, without waiting (for a Cache collected unclosed: the
        thread ends within ``poll`` seconds and closes its connection)."""
        self._stop.set()

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the tier is subscribed and serving; False on timeout."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        """Stop the thread and wait for it; the tier is flushed and disabled."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self.tier.disable()

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                subscription = self.store.subscribe(self.channel)
            except self.failures as exc:
                log.warning("cachelayer: purge channel unavailable (%s); retrying", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            except Exception:
                log.exception("cachelayer: the local tier is off: subscribing failed")
                return
            delay = 0.05
            try:
                self.tier.enable()
                self._subscribed.set()
                while not self._stop.is_set():
                    raw = subscription.receive(self.poll)
                    if raw is not None:
                        sent = apply(self.tier, raw, self.origin)
                        if sent is not None:
                            self.purges += 1
                            if sent:
                                self.lag.observe(max(0.0, time.time() - sent / 1000))
            except self.failures as exc:
                self.losses += 1
                log.warning(
                    "cachelayer: purge channel lost (%s); local tier flushed until it is back",
                    exc,
                )
            except Exception:
                # A message we could not apply: flush (the safe reading of any message)
                # and listen again; never stop serving purges over one message.
                log.exception("cachelayer: a purge message failed; local tier flushed")
            finally:
                self._subscribed.clear()
                self.tier.disable()
                with contextlib.suppress(*self.failures):
                    subscription.close()
