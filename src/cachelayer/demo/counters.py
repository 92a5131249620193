"""The demo server's request counters, shared by its worker processes through a file."""

from __future__ import annotations

import fcntl
import mmap
import threading

KINDS = ("ping", "hit", "miss", "write")
FIELDS = (
    "requests", "queries", "reads", "loads", "warmed",
    *(f"{prefix}_{kind}" for kind in KINDS for prefix in ("n", "cpu_us")),
)  # fmt: skip
_INDEX = {name: i for i, name in enumerate(FIELDS)}
#: Worker processes that can share one counters file (slot 0 holds the next free slot).
SLOTS = 64


class Counters:
    """Request counters, read by the load driver through ``/_demo/stats``.

    Besides totals, each request's server CPU time (``time.thread_time``: this thread's
    own, not time spent waiting for the GIL) is summed by kind: ``ping`` (the floor),
    ``hit`` and ``miss`` (profile reads that did not / did run the queries), ``write``.

    With ``path`` (a zeroed file the demo creates for each server), every gunicorn worker
    maps the file and writes to a slot of its own, and ``snapshot`` adds up all slots, so
    whichever worker answers ``/_demo/stats`` reports the whole server. Without it the
    counters are this process's only.
    """

    def __init__(self, path: str | None = None) -> None:
        self.lock = threading.Lock()
        size = SLOTS * len(FIELDS) * 8
        self._buffer: mmap.mmap | bytearray
        if path:
            with open(path, "r+b") as file:
                fcntl.flock(file, fcntl.LOCK_EX)  # claim a slot: one worker at a time
                self._buffer = mmap.mmap(file.fileno(), size)
                counters = memoryview(self._buffer).cast("q")
                counters[0] += 1
                slot = counters[0]
                fcntl.flock(file, fcntl.LOCK_UN)
            if slot >= SLOTS:
                raise RuntimeError(f"the demo's counters hold {SLOTS - 1} workers at most")
        else:
            self._buffer, slot = bytearray(size), 1
        self._all = memoryview(self._buffer).cast("q")
        if not path:
            self._all[0] = 1  # this process, the only one
        self._mine = self._all[slot * len(FIELDS) : (slot + 1) * len(FIELDS)]

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                self._mine[_INDEX[name]] += delta

    def snapshot(self) -> dict[str, int]:
        width = len(FIELDS)
        totals = [0] * width
        for slot in range(1, SLOTS):
            row = self._all[slot * width : (slot + 1) * width]
            for i in range(width):
                totals[i] += row[i]
        counts = dict(zip(FIELDS, totals, strict=True))
        counts["workers"] = self._all[0]  # worker processes that have started
        return counts


def file_size() -> int:
    """The bytes a counters file holds: ``SLOTS`` rows of ``FIELDS``."""
    return SLOTS * len(FIELDS) * 8
