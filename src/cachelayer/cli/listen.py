"""``cachelayer listen``: apply a namespace's invalidation events from its Redis stream.

One process in a consumer group (start several for availability; each event is applied
once per group). It runs until SIGINT or SIGTERM, logging a line of counters every
``--report`` seconds. Also runnable as ``python -m cachelayer.cli.listen``. See
docs/events.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "load_keys", "main"]

log = logging.getLogger("cachelayer.listen")

#: the environment variable read when there is no --key-file
KEYS_ENV = "CACHELAYER_EVENT_KEYS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``listen`` subcommand's options."""
    a = parser.add_argument
    a("--redis", required=True, help="the Redis holding the cache and the stream (redis://...)")
    a("--namespace", required=True, help="the Cache namespace whose events to apply")
    a("--version", default="1", help="the Cache version to apply them to (default 1)")
    a("--group", required=True, help="the consumer group (one per deployment)")
    a("--consumer", help="this consumer's name, stable across restarts (default host:pid)")
    a("--stream", help="the stream (default {<namespace>:}events)")
    a(
        "--key-file",
        type=Path,
        help='a JSON file {"<kid>": "<secret>", ...} of the keys events may be signed with '
        f"(default: the JSON in ${KEYS_ENV})",
    )
    a("--window", type=float, default=300.0, help="replay window in seconds (default 300)")
    a("--max-attempts", type=int, default=5, help="attempts before dead-lettering (5)")
    a("--claim-idle", type=float, default=60.0, help="claim others' entries idle this long (60)")
    a("--block", type=float, default=1.0, help="seconds each read waits for entries (1)")
    a("--report", type=float, default=60.0, help="log the counters every N seconds (60; 0: off)")


def load_keys(path: Path | None) -> dict[str, str]:
    """The verification keys from ``path`` or ``$CACHELAYER_EVENT_KEYS``.

    Raises:
        ValueError: neither is set, or it is not a JSON object of strings.
    """
    if path is not None:
        text = path.read_text(encoding="utf-8")
    elif os.environ.get(KEYS_ENV):
        text = os.environ[KEYS_ENV]
    else:
        raise ValueError(f"give --key-file or set {KEYS_ENV} to a JSON object {{kid: secret}}")
    keys: Any = json.loads(text)
    if not isinstance(keys, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in keys.items()
    ):
        raise ValueError('the keys are a JSON object {"<kid>": "<secret>", ...}')
    return keys


def main(args: argparse.Namespace) -> int:
    """Run the consumer until SIGINT or SIGTERM; 0 when stopped, 2 on bad settings."""
    from .. import Cache
    from ..events import StreamConsumer, Verifier

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        verifier = Verifier(load_keys(args.key_file))
        cache = Cache(
            args.redis,
            namespace=args.namespace,
            version=args.version,
            publish_invalidations=True,  # other processes' local tiers drop what we delete
        )
    except (ValueError, OSError) as exc:  # ConfigurationError is a ValueError
        print(f"cachelayer listen: {exc}", file=sys.stderr)
        return 2
    servers = None
    try:
        if "+" in args.redis.partition("://")[0]:  # redis+sentinel://, redis+cluster://
            from ._connect import connect

            servers = connect(args.redis, timeout=5)
        consumer = StreamConsumer(
            cache,
            verifier,
            group=args.group,
            consumer=args.consumer,
            stream=args.stream,
            url=None if servers else args.redis,
            client=servers.client if servers else None,
            block=args.block,
            claim_idle=args.claim_idle,
            max_attempts=args.max_attempts,
            window=args.window,
        )
    except Exception as exc:  # a bad setting, or a Sentinel/Cluster that cannot be reached
        print(f"cachelayer listen: {type(exc).__name__}: {exc}", file=sys.stderr)
        cache.close()
        if servers is not None:
            servers.close()
        return 2
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    consumer.run_in_thread()
    log.info("listening on %s as %s/%s", consumer.stream, consumer.group, consumer.consumer)
    try:
        while not stopping.wait(args.report if args.report > 0 else None):
            log.info("counters %s", json.dumps(consumer.counters.snapshot()))
    finally:
        consumer.close()
        log.info("stopped; counters %s", json.dumps(consumer.counters.snapshot()))
        cache.close()
        if servers is not None:
            servers.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="cachelayer listen", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
