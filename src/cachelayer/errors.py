"""Exceptions raised by cachelayer.

The hierarchy::

    Exception
     ├── CacheError                     base of everything cachelayer raises itself
     │    ├── ConfigurationError        (also a ValueError) a Cache, URL or option is invalid
     │    ├── StoreUnavailable          the store failed and the Cache was built with
     │    │                             on_error="raise" (the store's own error is __cause__)
     │    ├── LockError                 a Lock released by an object that does not hold it,
     │    │                             acquired twice, or not obtained in time by ``with``
     │    ├── ValueTooLarge             (also a ValueError) a value over max_value_size: set()
     │    │                             raises it; a load returns it unstored, counted
     │    ├── StoreBusy                 raised by a store, never seen by callers: this process
     │    │                             has too many calls in flight; the call was not sent
     │    └── DecodeError               stored bytes are not a valid cachelayer value; never
     │                                  escapes a Cache call, which treats it as a miss
     └── TypeError                      (builtin) a value of an unsupported type was given to
                                        set(), or a decorated function got an argument that
                                        has no stable key rendering

Errors a loader raises are never wrapped: they reach the caller unchanged.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ConfigurationError",
    "DecodeError",
    "LockError",
    "StoreBusy",
    "StoreUnavailable",
    "ValueTooLarge",
]


class CacheError(Exception):
    """Base class of the errors cachelayer raises itself."""


class ConfigurationError(CacheError, ValueError):
    """A Cache, store URL or option is invalid; the message names the offending setting."""


class StoreUnavailable(CacheError):
    """The store failed while the Cache was built with ``on_error="raise"``.

    The store's own exception (a ``redis.exceptions.ConnectionError``, say) is chained as
    ``__cause__``. With the default ``on_error="ignore"`` this is never raised.
    """


class LockError(CacheError):
    """A lock was used wrongly or not obtained: released when this Lock object does not
    hold it (never acquired, already released, or expired and maybe taken by another
    holder), acquired again while this object holds it, or not obtained within
    ``blocking_timeout`` by ``with`` / ``async with``."""


class ValueTooLarge(CacheError, ValueError):
    """A value encodes to more than the Cache's ``max_value_size``: no reader would accept
    it. ``set()`` raises it; a load (``get_or_load``, a decorated function) returns its
    value without storing it, counted as ``oversized`` and logged."""


class StoreBusy(CacheError):
    """The client side is congested: every connection is in use and none came free in
    time, or too many commands already wait on the connection. The call was not sent.

    A store raises it; the Cache treats the call as a miss (fails open) and counts it as
    ``store_busy``, but not as a store failure: a busy process is not a sick server, so it
    never opens the circuit breaker.
    """


class DecodeError(CacheError):
    """Bytes read from the store are not a valid cachelayer envelope.

    Raised when a stored entry is decoded (the private ``Serializer.loads`` in
    ``cachelayer/_envelope.py``): bad magic, an unknown format version, codec or flag, a
    signature that does not verify, or a payload its codec cannot read. A Cache never lets
    it reach its caller: the entry counts as a miss and is overwritten by the next fill.
    """
