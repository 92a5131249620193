"""``manage.py cachelayer_clear [alias]``: delete one cachelayer cache's entries.

Only the keys of that cache's namespace and cachelayer version are deleted (``SCAN`` +
``UNLINK`` on Redis): other namespaces and other data in the same database stay. It says
what it will delete -- sessions too, when they live in that cache -- and asks before it
does, unless ``--noinput`` is given (as Django's ``flush`` does).
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
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["alias"]
        if alias not in cachelayer_aliases():
            raise CommandError(f"{alias!r} is not a CACHES alias that uses cachelayer")
        cache = get_cache(alias)
        from django.conf import settings

        keys = cache.engine.keys
        what = (
            f"every entry of CACHES[{alias!r}] (namespace {keys.namespace!r}, "
            f"version {keys.version}, keys {keys.prefix}*)"
        )
        engine = getattr(settings, "SESSION_ENGINE", "")
        if engine.endswith(".cache") and getattr(settings, "SESSION_CACHE_ALIAS", "default") == (
            alias
        ):
            what += ", which holds the sessions: every user will be logged out"
        self.stdout.write(f"This deletes {what}.")
        if options.get("interactive", True):
            answer = input("Type 'yes' to go on, anything else to stop: ")
            if answer.strip().lower() != "yes":
                self.stdout.write("Nothing deleted.")
                return
        try:
            count = cache.store.clear(keys.prefix)
        except Exception as exc:
            raise CommandError(f"could not clear {alias!r}: {type(exc).__name__}: {exc}") from exc

        if str(settings.CACHES[alias].get("LOCATION") or "memory://").startswith("memory:"):
            self.stderr.write(
                "memory:// lives in each process: this cleared this process's copy only. "
                "Restart the servers to clear theirs."
            )
        self.stdout.write(
            f"Deleted {count} keys of {alias!r} (namespace {cache.engine.keys.namespace!r}, "
            f"version {cache.engine.keys.version})."
        )
