"""PerLoop: one resource per live event loop, ended with its loop, bounded in number."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from cachelayer.backends._perloop import PerLoop


class Resource:
    """Records how it ended: closed in its own loop, or discarded without one."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed_in: asyncio.AbstractEventLoop | None = None
        self.discarded = False

    async def aclose(self) -> None:
        self.closed_in = asyncio.get_running_loop()

    def discard(self) -> None:
        self.discarded = True


class Tracker:
    """A PerLoop of Resources, keeping every resource it built."""

    def __init__(self, max_loops: int = 8) -> None:
        self.made: list[Resource] = []
        self.per_loop: PerLoop[Resource] = PerLoop(
            self.make, aclose=Resource.aclose, discard=Resource.discard, max_loops=max_loops
        )

    def make(self) -> Resource:
        resource = Resource()
        self.made.append(resource)
        return resource

    async def get(self) -> Resource:
        return self.per_loop.get()


def test_one_resource_per_loop_across_threads() -> None:
    """Two threads each running asyncio.run get one resource each, closed in its loop."""
    tracker = Tracker()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    async def work() -> None:
        barrier.wait()
        for _ in range(500):
            resource = await tracker.get()
            assert resource.loop is asyncio.get_running_loop()
            await asyncio.sleep(0)

    def thread() -> None:
        try:
            asyncio.run(work())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert tracker.per_loop.built == 2
    assert [r.closed_in is r.loop for r in tracker.made] == [True, True]
    assert not any(r.discarded for r in tracker.made)
    assert len(tracker.per_loop) == 0


def test_loop_closed_without_shutdown_is_discarded_at_next_build() -> None:
    """A loop closed without shutting down its async generators has its resource
    discarded (not awaited) when another loop builds one."""
    tracker = Tracker()
    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(tracker.get())
    loop.close()
    asyncio.run(tracker.get())
    assert first.discarded is True
    assert first.closed_in is None
    assert tracker.made[1].closed_in is tracker.made[1].loop


def test_collected_loop_is_discarded_at_once() -> None:
    """When a closed loop is garbage-collected, its resource is discarded right away."""
    tracker = Tracker()
    loop = asyncio.new_event_loop()
    first = loop.run_until_complete(tracker.get())
    loop.close()
    first.loop = None  # type: ignore[assignment]  # drop the test's own reference
    del loop
    gc.collect()
    assert first.discarded is True
    assert len(tracker.per_loop) == 0


def test_number_of_loops_is_bounded() -> None:
    """Past max_loops live loops, the least recently built resource is discarded."""
    tracker = Tracker(max_loops=2)
    loops = [asyncio.new_event_loop() for _ in range(3)]
    try:
        for loop in loops:
            loop.run_until_complete(tracker.get())
        assert [r.discarded for r in tracker.made] == [True, False, False]
        assert len(tracker.per_loop) == 2
        assert loops[0].run_until_complete(tracker.get()) is tracker.made[3]  # rebuilt
        assert tracker.made[1].discarded is True
    finally:
        for loop in loops:
            loop.close()


def test_close_closes_this_loop_and_leaves_open_loops_alone() -> None:
    """close() awaits the calling loop's resource's close, discards those of closed
    loops, and leaves an open loop's resource to it (another thread may be using it)."""
    tracker = Tracker()
    gone, other = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        dead = gone.run_until_complete(tracker.get())
        gone.close()
        theirs = other.run_until_complete(tracker.get())

        async def main() -> tuple[Resource, Resource]:
            mine = await tracker.get()
            await tracker.per_loop.close()
            return mine, await tracker.get()

        mine, again = asyncio.run(main())
        assert other.run_until_complete(tracker.get()) is theirs
    finally:
        other.close()
    assert mine.closed_in is mine.loop
    assert again is not mine
    assert again.closed_in is again.loop  # asyncio.run closed it
    assert dead.discarded is True
    assert theirs.discarded is False
    assert theirs.closed_in is None


def test_get_outside_a_loop_raises() -> None:
    """get() needs a running loop (it is the key)."""
    with pytest.raises(RuntimeError):
        Tracker().per_loop.get()
