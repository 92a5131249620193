"""Exceptions raised by cachelayer.

The hierarchy::

    Exception
     ├── CacheError                     base of everything cachelayer raises itself
     │    ├── ConfigurationError        (also a ValueError) a Cache, URL or option is invalid
     │    ├── StoreUnavailable          the store failed and the Cache was built with
     │    │                             on_error="raise" (the store's own error is __cause__)
     │    └── DecodeError               stored bytes are not a valid cachelayer value; never
     │                                  escapes a Cache call, which treats it as a miss
     └── TypeError                      (builtin) a value of an unsupported type was given to
                                        set(), or a decorated function got an argument that
                                        has no stable key rendering

Errors a loader raises are never wrapped: they reach the caller unchanged.
"""

from __future__ import annotations

__all__ = ["CacheError", "ConfigurationError", "DecodeError", "StoreUnavailable"]


class CacheError(Exception):
    """Base class of the errors cachelayer raises itself."""


class ConfigurationError(CacheError, ValueError):
    """A Cache, store URL or option is invalid; the message names the offending setting."""


class StoreUnavailable(CacheError):
    """The store failed while the Cache was built with ``on_error="raise"``.

    The store's own exception (a ``redis.exceptions.ConnectionError``, say) is chained as
    ``__cause__``. With the default ``on_error="ignore"`` this is never raised.
    """


class DecodeError(CacheError):
    """Bytes read from the store are not a valid cachelayer envelope.

    Raised by :func:`cachelayer.codecs.Serializer.loads`; a Cache never lets it reach its
    caller: the entry counts as a miss and is overwritten by the next fill.
    """
