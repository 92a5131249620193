"""Invalidation from anywhere: signed invalidation events and the consumers that apply
them (docs/events.md).

    from cachelayer.events import Signer, Verifier, StreamConsumer, publish_invalidation

    publish_invalidation(cache, keys=["user:42"], tags=["team:7"], signer=signer)
    consumer = StreamConsumer(cache, verifier, group="web")
    consumer.run_in_thread()

Never imported by ``import cachelayer``; it needs redis-py (``cachelayer[redis]``).
"""

from __future__ import annotations

from ._apply import EventCounters
from ._format import (
    DEFAULT_WINDOW,
    MAX_ITEMS,
    MAX_PAYLOAD_BYTES,
    Event,
    check,
    dead_letter_for,
    parse,
    stream_for,
)
from ._publish import (
    DEFAULT_MAXLEN,
    HEADER_KID,
    HEADER_SIGNATURE,
    SignedEvent,
    apublish_invalidation,
    make_event,
    publish_invalidation,
    sign_event,
)
from ._refused import REASONS, Refused
from ._signing import MIN_SECRET_BYTES, Signer, Verifier
from ._stream import Lag, StreamConsumer

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_WINDOW",
    "HEADER_KID",
    "HEADER_SIGNATURE",
    "MAX_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "MIN_SECRET_BYTES",
    "REASONS",
    "Event",
    "EventCounters",
    "Lag",
    "Refused",
    "SignedEvent",
    "Signer",
    "StreamConsumer",
    "Verifier",
    "apublish_invalidation",
    "check",
    "dead_letter_for",
    "make_event",
    "parse",
    "publish_invalidation",
    "sign_event",
    "stream_for",
]
