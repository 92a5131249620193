"""The ``cachelayer`` command: ``cachelayer demo`` runs the story end to end (docs/demo.md)."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec


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
    args = parser.parse_args(argv)
    missing = [name for name in ("django", "gunicorn", "rich") if find_spec(name) is None]
    if missing:
        print(
            f'cachelayer demo needs {", ".join(missing)}: pip install "cachelayer[demo]"',
            file=sys.stderr,
        )
        return 2
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
