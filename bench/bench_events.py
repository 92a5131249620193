"""End-to-end latency of invalidation events: from publish to the entry gone everywhere.

    python bench/bench_events.py [--readers 3] [--trials 200] [--rate 2000] [--quick] [--node]

Setup: one Redis (``--redis-url``/``REDIS_URL``, else a private server), N reader
processes each with ``Cache(url, local={...})`` reading a hot key set at a steady rate
(``--rate`` reads/s per reader, spread over 100 keys plus the probe key), and one
``cachelayer listen``-style consumer process (a StreamConsumer thread, as the CLI runs
it) applying the events. Each trial: the writer sets the probe key to a new value, waits
until every reader has it in its local tier, then publishes an invalidation event; each
reader reports (CLOCK_MONOTONIC, shared by every process of the host) the first read that
no longer returns the value. Printed: p50/p99/max of publish -> gone per (reader, trial),
and of publish -> gone in the *last* reader per trial, against the same figures for a plain
``cache.delete()`` in the writer (purge channel only, no stream) measured in the same run.

With ``--node`` a third mode takes turns with the two: the event is published by the Node
package (js/cachelayer-events, ``publishInvalidation`` over ioredis, in a long-running
``node`` process that takes the CLOCK_MONOTONIC time just before each publish). It needs
``npm ci`` run in js/cachelayer-events.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from cachelayer import Cache
from cachelayer.events import Signer, publish_invalidation
from cachelayer.testing import RedisServer

PROBE = "probe"
NODE_PACKAGE = Path(__file__).resolve().parent.parent / "js" / "cachelayer-events"
HOT = [f"hot:{i}" for i in range(100)]


def reader(url: str, namespace: str, rate: float, reports: Any, ready: Any, stop: Any) -> None:
    """Read the hot keys and the probe at ``rate`` reads/s; report each value's first
    sighting and the first read after it that misses."""
    cache = Cache(url, namespace=namespace, local={"max_ttl": 30, "max_entries": 10_000})
    cache.wait_local(10)
    ready.set()
    interval = 1.0 / rate
    last: Any = None
    next_read = time.monotonic()
    i = 0
    while not stop.is_set():
        cache.get(HOT[i % len(HOT)])
        value = cache.get(PROBE)
        now = time.monotonic()
        if value != last:
            if value is None:
                reports.put(("gone", os.getpid(), last, now))
            else:
                reports.put(("seen", os.getpid(), value, now))
            last = value
        i += 1
        next_read += interval
        delay = next_read - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_read = time.monotonic()
    cache.close()


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.2f} ms  p99 {p99 * 1000:6.2f} ms  "
        f"max {ordered[-1] * 1000:6.2f} ms"
    )


def run(url: str, args: argparse.Namespace) -> None:
    namespace = "bench" + secrets.token_hex(4)
    secret = secrets.token_hex(32)
    writer = Cache(url, namespace=namespace, publish_invalidations=True)
    writer.set_many({key: {"hot": key} for key in HOT}, ttl=600)
    signer = Signer("bench", secret)
    ctx = mp.get_context("spawn")
    reports, stop = ctx.Queue(), ctx.Event()
    readies = [ctx.Event() for _ in range(args.readers)]
    procs = [
        ctx.Process(target=reader, args=(url, namespace, args.rate, reports, r, stop))
        for r in readies
    ]
    keyfile = Path(tempfile.mkdtemp()) / "keys.json"
    keyfile.write_text(json.dumps({"bench": secret}), encoding="utf-8")
    listener = subprocess.Popen(
        [sys.executable, "-m", "cachelayer.cli.listen", "--redis", url, "--namespace",
         namespace, "--group", "bench", "--key-file", str(keyfile), "--report", "0"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    publisher = None
    if args.node:
        options = {"namespace": namespace, "kid": "bench", "secretHex": secret.encode().hex()}
        publisher = subprocess.Popen(
            ["node", "tools/cli.mjs", "publisher", url, json.dumps(options)],
            cwd=NODE_PACKAGE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert publisher.stdout is not None
        assert publisher.stdin is not None
        assert publisher.stdout.readline() == "ready\n", "the Node publisher did not start"
    modes = ["event", "delete", *(["node"] if args.node else [])]
    for p in procs:
        p.start()
    try:
        for r in readies:
            assert r.wait(30), "a reader did not start"
        results: dict[str, list[tuple[float, list[float]]]] = {mode: [] for mode in modes}
        warmup = 6  # the listener starting, connections opening: not measured
        for trial in range(args.trials * len(modes) + warmup):
            mode = modes[trial % len(modes)]
            value = f"v{trial}"
            writer.set(PROBE, value, ttl=600)
            seen: set[int] = set()
            while len(seen) < args.readers:  # every reader has read it (and keeps it)
                kind, pid, got, _ = reports.get(timeout=30)
                if kind == "seen" and got == value:
                    seen.add(pid)
            time.sleep(0.01)  # the reads after the first keep it in the local tier
            start = time.monotonic()
            if mode == "event":
                publish_invalidation(writer, keys=[PROBE], signer=signer)
            elif mode == "node":
                assert publisher is not None
                assert publisher.stdin is not None
                assert publisher.stdout is not None
                publisher.stdin.write(json.dumps([PROBE]) + "\n")
                publisher.stdin.flush()
                # Node's process.hrtime is CLOCK_MONOTONIC, like time.monotonic here.
                start = int(publisher.stdout.readline()) / 1e9
            else:
                writer.delete(PROBE)
            gone: dict[int, float] = {}
            while len(gone) < args.readers:
                kind, pid, got, at = reports.get(timeout=30)
                if kind == "gone" and got == value:
                    gone[pid] = at - start
            if trial >= warmup:
                results[mode].append((start, list(gone.values())))
        print(
            f"\n{args.readers} reader processes with local tiers, {args.rate:.0f} reads/s each, "
            f"{args.trials} trials per mode, {os.cpu_count()} CPUs"
        )
        labels = {
            "event": "publish_invalidation -> stream -> consumer -> gone",
            "node": "Node publishInvalidation -> stream -> consumer -> gone",
            "delete": "cache.delete() in the writer (baseline) -> gone",
        }
        for mode in modes:
            label = labels[mode]
            every = [t for _, times in results[mode] for t in times]
            last = [max(times) for _, times in results[mode]]
            print(f"{label}")
            print(f"  any reader : {percentiles(every)}")
            print(f"  last reader: {percentiles(last)}")
        ev = statistics.median(t for _, ts in results["event"] for t in ts)
        de = statistics.median(t for _, ts in results["delete"] for t in ts)
        print(f"median ratio event/delete: {ev / de:.1f}x" if de > 0 else "")
        if args.node:
            no = statistics.median(t for _, ts in results["node"] for t in ts)
            print(f"median ratio node/delete: {no / de:.1f}x" if de > 0 else "")
    finally:
        stop.set()
        if publisher is not None:
            with suppress(OSError):
                publisher.stdin.close()  # type: ignore[union-attr]
            publisher.wait(10)
            publisher.stdout.close()  # type: ignore[union-attr]
        for p in procs:
            p.join(10)
        listener.terminate()
        listener.wait(10)
        keyfile.unlink()
        keyfile.parent.rmdir()
        writer.clear()
        client = writer.store.client  # type: ignore[attr-defined]
        client.delete(*client.keys("{" + namespace + ":*"))
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000.0, help="reads/s per reader")
    parser.add_argument("--quick", action="store_true", help="20 trials (CI smoke run)")
    parser.add_argument(
        "--node", action="store_true", help="also publish from Node (js/cachelayer-events)"
    )
    args = parser.parse_args()
    if args.quick:
        args.trials = 20
    if args.redis_url:
        run(args.redis_url, args)
        return
    with RedisServer() as server:
        run(server.url, args)


if __name__ == "__main__":
    main()
