"""What metrics cost a decorated hit: this tree against the tree before metrics.

Usage::

    python bench/bench_metrics.py [--baseline REV] [--current REV] [--quick]
                                  [--rounds N] [--redis-url URL] [--json]

The issue's bound: with metrics on, a decorated hit costs at most 5% more than with
them off. Metrics have no off switch, so "off" is the commit before them
(``--baseline``, by default ``3c64307^``), checked out in a temporary ``git worktree``
(removed at the end). Two worker processes, one per tree (``PYTHONPATH=<tree>/src``),
build the same Caches and time the same decorated hits; the rounds alternate between
them (A B A B ...) so machine noise lands on both alike. Each figure is the median
over rounds of the ns per hit; the ratio is this tree over the baseline.

This tree has every change since the baseline, speed-ups included; to see the metrics
commit alone, compare it with its parent: ``--current 3c64307 --baseline 3c64307^``
(``--current`` checks out a second worktree).

Cases: a decorated hit on ``memory://``, on ``redis://`` (a round trip to the server),
and from the local tier in front of Redis (``local=``; no I/O at all: the case where
any added work shows most). ``--quick`` (under 30 s) is the smoke run.

Redis: ``--redis-url`` or ``REDIS_URL`` when set, otherwise a private server
(:class:`cachelayer.testing.RedisServer`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Runs in each tree: builds the Caches, then times what the driver asks for, one JSON
#: line per request. Uses only the API both trees have.
WORKER = r"""
import gc, json, sys, time
from cachelayer import Cache

url, namespace = sys.argv[1], sys.argv[2]
caches = {
    "memory": Cache("memory://", namespace=namespace),
    "redis": Cache(url, namespace=namespace),
    "local": Cache(url, namespace=namespace + "l", local={"max_entries": 1000}),
}
functions = {}
for name, cache in caches.items():
    @cache.cached(ttl=3600)
    def profile(user_id):
        return {"id": user_id, "name": "Ada Lovelace", "roles": ["admin", "editor"]}
    profile(42)
    profile(42)
    functions[name] = profile

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["case"] == "stop":
        break
    f, n = functions[request["case"]], request["n"]
    gc.collect()
    started = time.perf_counter_ns()
    for _ in range(n):
        f(42)
    took = time.perf_counter_ns() - started
    print(json.dumps(took / n), flush=True)
for cache in caches.values():
    cache.clear()
    cache.close()
"""

#: hits per round (full run; --quick divides them by 4)
CASES = {"memory": 100_000, "redis": 2_000, "local": 200_000}


class Worker:
    def __init__(self, src: Path, url: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, f"bench-{uuid.uuid4().hex[:8]}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),  # not this checkout: only PYTHONPATH says which tree
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        line = self.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker for {src} did not start: {line!r}")

    def time(self, case: str, n: int) -> float:
        self.stdin.write(json.dumps({"case": case, "n": n}) + "\n")
        self.stdin.flush()
        return float(self.stdout.readline())

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stdin.write(json.dumps({"case": "stop"}) + "\n")
            self.stdin.close()
        self.proc.wait(timeout=60)
        self.stdout.close()


@contextlib.contextmanager
def worktree(rev: str | None) -> Iterator[tuple[Path, str]]:
    """A temporary checkout of ``rev`` (and its commit id), removed afterwards; None:
    this working tree as it is."""
    if rev is None:
        yield ROOT, "working tree"
        return
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix="cachelayer-baseline-"))
    path.rmdir()  # git worktree add wants to create it
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path), commit],
        check=True,
    )
    try:
        yield path, commit
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False
        )


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    sys.path.insert(0, str(ROOT / "src"))
    from cachelayer.testing import RedisServer

    with RedisServer() as server:
        yield server.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="3c64307^", metavar="REV")
    parser.add_argument(
        "--current", default=None, metavar="REV", help="a commit instead of this working tree"
    )
    parser.add_argument("--quick", action="store_true", help="the smoke run (< 30 s)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per case (21; 5 quick)")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else 21)
    scale = 4 if args.quick else 1

    started = time.monotonic()
    with (
        redis_url(args.redis_url) as url,
        worktree(args.baseline) as (tree, commit),
        worktree(args.current) as (current_tree, current),
    ):
        workers = {
            "baseline": Worker(tree / "src", url),
            "current": Worker(current_tree / "src", url),
        }
        try:
            times: dict[str, dict[str, list[float]]] = {
                case: {"baseline": [], "current": []} for case in CASES
            }
            for case, n in CASES.items():
                n //= scale
                for side in workers.values():  # warm-up round, not counted
                    side.time(case, n // 4 or 1)
                for i in range(rounds):
                    order = ("baseline", "current") if i % 2 == 0 else ("current", "baseline")
                    for name in order:
                        times[case][name].append(workers[name].time(case, n))
        finally:
            for side in workers.values():
                side.stop()

    results: dict[str, Any] = {
        "baseline": f"{args.baseline} ({commit})",
        "current": current if args.current is None else f"{args.current} ({current})",
        "cases": {},
    }
    for case, sides in times.items():
        base, cur = statistics.median(sides["baseline"]), statistics.median(sides["current"])
        results["cases"][case] = {
            "baseline_ns": base,
            "current_ns": cur,
            "ratio": cur / base,
            "rounds": rounds,
            "hits_per_round": CASES[case] // scale,
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"decorated hit, ns per call (median of {rounds} interleaved rounds); "
        f"baseline {results['baseline']} vs {results['current']}"
    )
    print(f"{'case':<8} {'baseline':>10} {'current':>10} {'ratio':>7}")
    for case, r in results["cases"].items():
        print(
            f"{case:<8} {r['baseline_ns']:>10.0f} {r['current_ns']:>10.0f} {r['ratio']:>7.3f}"
            + ("" if r["ratio"] <= 1.05 else "   above the 5% bound")
        )
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
