"""Invalidation from anywhere: signed invalidation events and the consumers that apply
them (docs/events.md).

    from cachelayer.events import Signer, Verifier, StreamConsumer, publish_invalidation
    from cachelayer.events import ASGIEventReceiver, outbox_write

    publish_invalidation(cache, keys=["user:42"], tags=["team:7"], signer=signer)
    consumer = StreamConsumer(cache, verifier, group="web")
    consumer.run_in_thread()

    app = ASGIEventReceiver(cache, verifier)          # or WSGIEventReceiver: HTTP delivery
    outbox_write(db, keys=["user:42"], signer=signer, namespace="shop")   # in a transaction

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
from ._outbox import (
    OUTBOX_TABLE,
    OutboxCounters,
    OutboxRelay,
    create_outbox_table,
    outbox_ddl,
    outbox_write,
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
from ._webhook import ASGIEventReceiver, EventReceiver, WebhookResponse, WSGIEventReceiver

__all__ = [
    "DEFAULT_MAXLEN",
    "DEFAULT_WINDOW",
    "HEADER_KID",
    "HEADER_SIGNATURE",
    "MAX_ITEMS",
    "MAX_PAYLOAD_BYTES",
    "MIN_SECRET_BYTES",
    "OUTBOX_TABLE",
    "REASONS",
    "ASGIEventReceiver",
    "Event",
    "EventCounters",
    "EventReceiver",
    "Lag",
    "OutboxCounters",
    "OutboxRelay",
    "Refused",
    "SignedEvent",
    "Signer",
    "StreamConsumer",
    "Verifier",
    "WSGIEventReceiver",
    "WebhookResponse",
    "apublish_invalidation",
    "check",
    "create_outbox_table",
    "dead_letter_for",
    "make_event",
    "outbox_ddl",
    "outbox_write",
    "parse",
    "publish_invalidation",
    "sign_event",
    "stream_for",
]
