"""The fleet view: every process writes its figures to the store, ``cachelayer stats``
reads them all.

With ``Cache(publish_stats=10)`` a background thread writes, every 10 seconds, this
process's figures for the Cache's namespace (:func:`~cachelayer.collect_stats`: every
open Cache of the namespace, summed) as one small JSON document:

- ``{<namespace>:}fleet:<host>:<pid>``: the snapshot (:func:`compact`), expiring after
  three intervals, so a process that died leaves the view within 30 s;
- ``{<namespace>:}fleet``: the index, ``{"<host>:<pid>": expiry in ms}``, updated by
  compare-and-set (``Store.swap``, so any store will do) about once every 15 intervals
  per process, each update dropping the members that expired.

Both share one hash tag (one Redis Cluster slot, one ``MGET``). They are per namespace,
not per version: a version bump with old and new processes running is one application.
One publisher per namespace per process, whichever Caches asked for it.

It fails open: a store failure skips the round (the runner counts it as a store error of
the Cache); nothing raises into the application. It is bounded: the 50 functions with
the most reads are listed, the rest are summed as ``(other)``. See docs/observability.md.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ._metrics import StatsSnapshot, collect
from ._stats import COUNTERS, RateLimitedLog
from ._steps import FAILED, Delete, Get, Set, StoreStep, Swap
from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = [
    "DEFAULT_INTERVAL",
    "FORMAT",
    "MAX_FUNCTIONS",
    "OTHER",
    "RATES",
    "FleetPublisher",
    "compact",
    "index_key",
    "join_fleet",
    "snapshot_key",
]

log = logging.getLogger("cachelayer.fleet")

#: The version of the snapshot's JSON layout (``"format"``).
FORMAT = 1
DEFAULT_INTERVAL = 10.0
#: Functions listed by name in one snapshot; the rest are summed under :data:`OTHER`.
MAX_FUNCTIONS = 50
OTHER = "(other)"
#: Counters whose per-second rate over the last interval each snapshot carries.
RATES = (
    "hits",
    "misses",
    "local_hits",
    "stale_hits",
    "stale_on_error",
    "loads",
    "load_errors",
    "store_errors",
    "invalidations",
    "invalidation_errors",
    "early_refreshes",
    "lease_timeouts",
)
#: The per-function figures, and those of them that carry a rate.
FUNCTION_FIGURES = ("hits", "misses", "loads", "load_errors", "stale_hits", "stale_on_error")
FUNCTION_RATES = ("hits", "misses", "loads")
#: A snapshot outlives its writer by this many intervals.
SNAPSHOT_ROUNDS = 3
#: An index entry lives this many intervals; its process renews it at half that.
INDEX_ROUNDS = 30
#: The index key itself goes after a day without any update.
INDEX_TTL = 86400.0


def index_key(namespace: str) -> str:
    """The key of a namespace's fleet index: ``{<namespace>:}fleet``."""
    return "{" + namespace + ":}fleet"


def snapshot_key(namespace: str, member: str) -> str:
    """The key of one process's snapshot: ``{<namespace>:}fleet:<host>:<pid>``."""
    return index_key(namespace) + ":" + member


def _delta(now: int, before: int) -> int:
    # A counter that went down was reset (cache.stats.reset(), a Cache closed): count
    # from zero, as Prometheus' rate() does.
    return now - before if now >= before else now


def compact(
    snap: StatsSnapshot,
    *,
    host: str,
    pid: int,
    started: float,
    interval: float,
    now: float,
    previous: Mapping[str, Any] | None = None,
    max_functions: int = MAX_FUNCTIONS,
) -> dict[str, Any]:
    """The JSON-ready snapshot one process publishes (pure: tested step by step).

    ``previous`` is the snapshot published before (its totals give this interval's
    rates); without one the rates run from ``started``.
    """
    totals = {name: getattr(snap, name) for name in COUNTERS}
    if previous is not None:
        since = float(previous["at"])
        before: Mapping[str, Any] = previous["totals"]
        before_fns: Mapping[str, Any] = previous["functions"]
    else:
        since, before, before_fns = started, {}, {}
    elapsed = max(now - since, 1e-9)
    rates = {name: _delta(totals[name], before.get(name, 0)) / elapsed for name in RATES}

    ranked = sorted(snap.functions.items(), key=lambda kv: -(kv[1].hits + kv[1].misses))
    functions: dict[str, dict[str, Any]] = {}
    for name, fn in ranked[:max_functions]:
        functions[name] = {f: getattr(fn, f) for f in FUNCTION_FIGURES}
        functions[name]["load_seconds"] = fn.load_seconds.sum
    rest = ranked[max_functions:]
    if rest:
        other = {f: sum(getattr(fn, f) for _, fn in rest) for f in FUNCTION_FIGURES}
        other["load_seconds"] = sum(fn.load_seconds.sum for _, fn in rest)
        functions[OTHER] = other
    for name, figures in functions.items():
        was = before_fns.get(name, {})
        figures["rates"] = {f: _delta(figures[f], was.get(f, 0)) / elapsed for f in FUNCTION_RATES}

    local = snap.local
    return {
        "format": FORMAT,
        "namespace": snap.namespace,
        "host": host,
        "pid": pid,
        "started": started,
        "at": now,
        "interval": interval,
        "elapsed": elapsed,
        "breaker": snap.breaker,
        "totals": totals,
        "errors_by_kind": dict(snap.errors_by_kind),
        "load_seconds": {"count": snap.load_seconds.count, "sum": snap.load_seconds.sum},
        "rates": rates,
        "local": None
        if local is None
        else {
            "entries": local.entries,
            "bytes": local.bytes,
            "purges": local.purges,
            "lag": local.lag.as_dict(),
        },
        "functions": functions,
        "functions_omitted": len(rest),
    }


class FleetPublisher:
    """Publishes one namespace's figures of this process every ``interval`` seconds.

    ``call`` runs a store step the way the Cache's runner does (breaker, fail-open:
    :data:`FAILED` on a store failure). :meth:`publish_once` is one round, for tests and
    for the thread :meth:`start` runs.
    """

    def __init__(
        self,
        namespace: str,
        interval: float,
        call: Callable[[StoreStep], Any],
        *,
        host: str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        figures: Callable[[], StatsSnapshot | None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.interval = interval
        self.call = call
        self.host = socket.gethostname() if host is None else host
        self.pid = os.getpid() if pid is None else pid
        self.member = f"{self.host}:{self.pid}"
        self.key = snapshot_key(namespace, self.member)
        self.index = index_key(namespace)
        self._clock = clock
        self._figures = figures or (lambda: collect().get(namespace))
        self.started = clock()
        self._previous: dict[str, Any] | None = None
        self._index_due = 0.0
        self._stop = threading.Event()
        self._round = threading.Lock()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(log, interval=60.0)
        #: rounds written, and rounds skipped because the store failed
        self.published = 0
        self.skipped = 0

    def publish_once(self) -> bool:
        """Write this process's snapshot (and renew its index entry when due); False when
        the store failed or there is nothing to publish. Never raises a store error."""
        with self._round:  # one round at a time: a later round never writes older figures
            return self._publish(self._figures())

    def _publish(self, snap: StatsSnapshot | None) -> bool:
        if snap is None:
            return False
        now = self._clock()
        doc = compact(
            snap,
            host=self.host,
            pid=self.pid,
            started=self.started,
            interval=self.interval,
            now=now,
            previous=self._previous,
        )
        written = self.call(
            Set(self.key, orjson.dumps(doc), SNAPSHOT_ROUNDS * self.interval, None)
        )
        if written is FAILED:
            self.skipped += 1
            return False
        self._previous = doc
        self.published += 1
        if now >= self._index_due and self._join_index(now):
            self._index_due = now + self.interval * INDEX_ROUNDS / 2
        return True

    def _join_index(self, now: float) -> bool:
        """Put this process in the index until ``INDEX_ROUNDS`` intervals from now,
        dropping expired members; compare-and-set, a few tries (the next round retries)."""
        now_ms = int(now * 1000)
        for _ in range(3):
            raw = self.call(Get(self.index))
            if raw is FAILED:
                return False
            members = _members(raw)
            live = {m: exp for m, exp in members.items() if exp > now_ms}
            live[self.member] = now_ms + int(self.interval * INDEX_ROUNDS * 1000)
            swapped = self.call(Swap(self.index, raw, orjson.dumps(live), INDEX_TTL))
            if swapped is FAILED:
                return False
            if swapped:
                return True
        return False

    def _run(self) -> None:
        while True:
            try:
                self.publish_once()
            except Exception as exc:  # a bug: keep the thread, say so (rate-limited)
                self._log.log(logging.ERROR, "bug", "cachelayer: fleet publishing failed: %r", exc)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        """Publish now and then every ``interval`` seconds, from a daemon thread."""
        self._thread = threading.Thread(
            target=self._run, name=f"cachelayer-fleet-{self.namespace}", daemon=True
        )
        self._thread.start()

    def stop(self, call: Callable[[StoreStep], Any] | None = None) -> None:
        """Stop publishing and delete this process's snapshot (fail-open), through
        ``call`` when given (the runner of the last Cache still open)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10.0)
        (call or self.call)(Delete([self.key]))


def _members(raw: Any) -> dict[str, int]:
    if not isinstance(raw, bytes):
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(m): int(exp) for m, exp in data.items() if isinstance(exp, (int, float))}


# -- one publisher per namespace per process -------------------------------------------------

_lock = threading.Lock()
#: namespace -> (publisher, the runners' ``call`` of the Caches that asked for it)
_publishers: dict[str, tuple[FleetPublisher, list[Callable[..., Any]]]] = {}


def interval_of(option: float | bool) -> float | None:
    """The interval ``publish_stats=`` asks for: None for off.

    Raises:
        ConfigurationError: not a bool and not a number > 0.
    """
    if option is False:
        return None
    if option is True:
        return DEFAULT_INTERVAL
    if isinstance(option, (int, float)) and option > 0:
        return float(option)
    raise ConfigurationError(
        f"publish_stats={option!r} must be True, False or an interval in seconds > 0"
    )


def join_fleet(cache: Cache, option: float | bool) -> Callable[[], None] | None:
    """Make ``cache`` one of the Caches its namespace's publisher runs for (the first one
    starts it); returns the function that takes it back (the last one stops it), or None
    when ``option`` is off. A Cache dropped without ``close()`` is taken back when it is
    collected.

    Raises:
        ConfigurationError: ``option`` is not a valid ``publish_stats``.
    """
    interval = interval_of(option)
    if interval is None:
        return None
    engine = cache.engine
    namespace = engine.keys.namespace
    call = engine.call

    def route(step: StoreStep) -> Any:
        # Through the first Cache of the namespace still open: its breaker, fail-open.
        with _lock:
            entry = _publishers.get(namespace)
            runner = entry[1][0] if entry and entry[1] else call
        return runner(step)

    with _lock:
        entry = _publishers.get(namespace)
        if entry is None:
            publisher = FleetPublisher(namespace, interval, route)
            _publishers[namespace] = entry = (publisher, [])
            start = True
        else:
            start = False
        entry[1].append(call)
    if start:
        entry[0].start()

    done = threading.Event()

    def unpublish() -> None:
        if done.is_set():
            return
        done.set()
        with _lock:
            current = _publishers.get(namespace)
            if current is None or call not in current[1]:
                return
            current[1].remove(call)
            last = not current[1]
            if last:
                del _publishers[namespace]
        if last:
            current[0].stop(call)

    weakref.finalize(cache, unpublish)
    return unpublish


def _after_fork() -> None:
    # A forked child (a pre-forking server's worker) inherits the table but not the
    # threads: each namespace gets a publisher of its own, under the child's pid.
    global _lock
    _lock = threading.Lock()
    for namespace, (old, calls) in list(_publishers.items()):
        fresh = FleetPublisher(namespace, old.interval, old.call)
        _publishers[namespace] = (fresh, calls)
        fresh.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
