"""The test database: tables created once per process, rows deleted after each test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management import call_command

_created = False


@contextmanager
def database() -> Iterator[None]:
    """Use the djapp tables (created on first use); every row is deleted afterwards
    (``flush`` sends no model signals)."""
    global _created
    if not _created:
        call_command("migrate", run_syncdb=True, verbosity=0)
        _created = True
    try:
        yield
    finally:
        call_command("flush", interactive=False, verbosity=0)
