"""The ``cachelayer`` command: ``cachelayer demo`` runs the story end to end (docs/demo.md);
``cachelayer profile`` and ``cachelayer doctor`` look at a Redis (docs/operations.md);
``cachelayer stats`` sums what the fleet's caches publish (docs/observability.md);
``cachelayer listen`` applies a namespace's invalidation events (docs/events.md)."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cachelayer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="measure a Django API uncached, with the naive cache, and with cachelayer",
        description="Measure a Django profile endpoint with no cache, the story's naive "
        "cache-aside code, and cachelayer, on the same workload (docs/demo.md).",
    )
    from .demo import cli

    cli.add_arguments(demo)
    ops = _add_operations(commands)
    from .cli import add_listen

    listen = add_listen(commands)
    args = parser.parse_args(argv)
    if args.command == listen:
        if find_spec("redis") is None:
            print('cachelayer listen needs redis-py: pip install "cachelayer[redis]"',
                  file=sys.stderr)  # fmt: skip
            return 2
        code: int = args.run(args)
        return code
    if args.command in ops:
        return _run_operation(args)
    missing = [name for name in ("django", "gunicorn", "rich") if find_spec(name) is None]
    if missing:
        print(
            f'cachelayer demo needs {", ".join(missing)}: pip install "cachelayer[demo]"',
            file=sys.stderr,
        )
        return 2
    return cli.main(args)


def _add_operations(commands: Any) -> set[str]:
    from .cli import doctor, profile_output, stats

    profile = commands.add_parser(
        "profile",
        help="memory by key group, TTL spread, biggest keys, compression savings",
        description="Walk a Redis keyspace with SCAN (bounded, throttled, read-only) and "
        "report memory by key group (docs/operations.md).",
    )
    profile_output.add_arguments(profile)
    profile.set_defaults(run=profile_output.main)
    check = commands.add_parser(
        "doctor",
        help="check a Redis used as a cache: memory limits, eviction, persistence, ...",
        description="Check what commonly goes wrong with a Redis used as a cache; exit 1 "
        "on an error-level finding (docs/operations.md).",
    )
    doctor.add_arguments(check)
    check.set_defaults(run=doctor.main)
    fleet = commands.add_parser(
        "stats",
        help="the figures every process publishes: hit ratio, loads, reads avoided, cost",
        description="Sum the figures the processes of a namespace publish "
        "(Cache(publish_stats=10)): hit ratio, loads/s, database reads avoided, stale "
        "serves, errors, invalidation lag, per function; cost estimates "
        "(docs/observability.md).",
    )
    stats.add_arguments(fleet)
    fleet.set_defaults(run=stats.main)
    return {"profile", "doctor", "stats"}


def _run_operation(args: argparse.Namespace) -> int:
    missing = [name for name in ("redis", "rich") if find_spec(name) is None]
    if missing:
        print(
            f'cachelayer {args.command} needs {", ".join(missing)}: pip install "cachelayer[cli]"',
            file=sys.stderr,
        )
        return 2
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
