"""The operations commands ``cachelayer profile``, ``cachelayer doctor`` and
``cachelayer stats``.

See docs/operations.md.

Never imported by ``import cachelayer``: they need redis-py (and rich for their tables).
"""

from __future__ import annotations

from typing import Any


def add_listen(commands: Any) -> str:
    """Register ``cachelayer listen`` (docs/events.md) on the ``cachelayer`` command's
    subparsers; returns its name. It needs redis-py only (not rich)."""
    from . import listen

    parser = commands.add_parser(
        "listen",
        help="apply a namespace's signed invalidation events from its Redis stream",
        description="Apply a namespace's invalidation events from its Redis stream, in a "
        "consumer group, until SIGINT or SIGTERM (docs/events.md).",
    )
    listen.add_arguments(parser)
    parser.set_defaults(run=listen.main)
    return "listen"
