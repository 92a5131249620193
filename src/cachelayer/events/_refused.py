"""Why an event is not applied: the reasons a reader refuses one."""

from __future__ import annotations

__all__ = ["REASONS", "Refused"]

#: Why a reader refuses an event (the counters are named after these).
REASONS = (
    "oversized",  # payload over MAX_PAYLOAD_BYTES
    "malformed",  # transport fields or payload do not follow the format
    "unknown_kid",  # no key with that id
    "bad_signature",  # the MAC does not verify
    "version",  # a payload version this reader does not know
    "namespace",  # for another namespace than the reader's
    "expired",  # ts outside the window (too old, or too far in the future)
    "replayed",  # an event id already applied within the window
)


class Refused(Exception):
    """An event a reader does not apply; ``reason`` is one of :data:`REASONS`.

    The message never holds the event's content (keys and tags may hold user data).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
