"""``manage.py cachelayer_clear [alias]``: delete one cachelayer cache's entries.

Only the keys of that cache's namespace and cachelayer version are deleted (``SCAN`` +
``UNLINK`` on Redis): other namespaces and other data in the same database stay.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ..._shared import get_cache
from ...checks import cachelayer_aliases


class Command(BaseCommand):
    help = "Delete the entries of one cachelayer cache (its namespace and version only)."
    # A diagnostic tool: it must run, and report, when the project's checks fail.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("alias", nargs="?", default="default", help='default: "default"')

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["alias"]
        if alias not in cachelayer_aliases():
            raise CommandError(f"{alias!r} is not a CACHES alias that uses cachelayer")
        cache = get_cache(alias)
        try:
            count = cache.store.clear(cache.engine.keys.prefix)
        except Exception as exc:
            raise CommandError(f"could not clear {alias!r}: {type(exc).__name__}: {exc}") from exc
        from django.conf import settings

        if str(settings.CACHES[alias].get("LOCATION") or "memory://").startswith("memory:"):
            self.stderr.write(
                "memory:// lives in each process: this cleared this process's copy only. "
                "Restart the servers to clear theirs."
            )
        self.stdout.write(
            f"Deleted {count} keys of {alias!r} (namespace {cache.engine.keys.namespace!r}, "
            f"version {cache.engine.keys.version})."
        )
