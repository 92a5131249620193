"""``manage.py cachelayer_stats [alias ...] [--json]``: each cachelayer cache's state.

For each alias: the store (password hidden), namespace, version and codec; a timed
round trip to the store (one ``GET``, past the circuit breaker); the breaker's state;
and the counters of the Cache. Counters belong to one process: in a fresh
``manage.py`` process they are those of that process only (zero, apart from the ping).
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...._cache import Cache
from ...._redact import redact_url
from ..._shared import get_cache
from ...checks import cachelayer_aliases

_SHOWN = ("hits", "misses", "loads", "load_errors", "fills", "stale_hits", "store_errors",
          "invalidation_errors", "decode_errors", "short_circuits", "breaker_opened")  # fmt: skip


def alias_report(alias: str) -> dict[str, Any]:
    """What the command prints for one alias, as a dict."""
    from django.conf import settings

    cache = get_cache(alias)
    keys = cache.engine.keys
    report: dict[str, Any] = {
        "location": redact_url(settings.CACHES[alias].get("LOCATION") or "memory://"),
        "namespace": keys.namespace,
        "version": keys.version,
        "codec": cache.engine.serializer.codec_name,
    }
    report.update(ping(cache))
    report["breaker"] = cache.engine.runner.breaker.state
    report["stats"] = cache.stats.snapshot()
    return report


def ping(cache: Cache) -> dict[str, Any]:
    """One timed ``GET`` round trip to the store: ``ping_ms``, or ``ping_error``."""
    start = time.perf_counter()
    try:
        cache.store.get(cache.engine.keys.full("cachelayer:ping"))
    except Exception as exc:
        return {"ping_ms": None, "ping_error": f"{type(exc).__name__}: {exc}"}
    return {"ping_ms": round((time.perf_counter() - start) * 1000, 3), "ping_error": None}


class Command(BaseCommand):
    help = (
        "Show each cachelayer cache: store, a timed round trip, the circuit breaker and "
        "this process's counters."
    )
    # A diagnostic tool: it must run, and report, when the project's checks fail.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "aliases", nargs="*", help="CACHES aliases (default: every cachelayer one)"
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        ours = cachelayer_aliases()
        aliases = options["aliases"] or ours
        for alias in aliases:
            if alias not in ours:
                raise CommandError(f"{alias!r} is not a CACHES alias that uses cachelayer")
        reports = {alias: alias_report(alias) for alias in aliases}
        if options["json"]:
            self.stdout.write(json.dumps(reports, indent=2))
            return
        if not reports:
            self.stdout.write("No CACHES alias uses cachelayer.django.CacheBackend.")
        for alias, report in reports.items():
            self.stdout.write(self.style.MIGRATE_HEADING(f"{alias}:"))
            self.stdout.write(
                f"  store      {report['location']} (namespace {report['namespace']!r}, "
                f"version {report['version']}, codec {report['codec']})"
            )
            if report["ping_error"] is None:
                self.stdout.write(f"  ping       {report['ping_ms']:.3f} ms")
            else:
                self.stdout.write(self.style.ERROR(f"  ping       failed: {report['ping_error']}"))
            self.stdout.write(f"  breaker    {report['breaker']}")
            stats = report["stats"]
            counters = ", ".join(f"{name} {stats[name]}" for name in _SHOWN)
            self.stdout.write(f"  counters   {counters} (this process)")
            if report["location"].startswith("memory:"):
                self.stdout.write(
                    "  note       memory:// lives in each process: this is this process's own"
                )
