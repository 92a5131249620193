"""Background refreshes (early refresh, stale-while-revalidate, refresh after write).

Sync code refreshes on a small, bounded thread pool; async code in tasks the Refresher
keeps track of. Either way at most one refresh per key runs in this process at a time,
at most ``max_pending`` are queued (beyond that a refresh is skipped: the caller already
has a value), errors are counted and logged by the refresh itself, and closing the Cache
waits for (sync) or cancels and awaits (async) what is still running: nothing is fired
and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

__all__ = ["Refresher"]

log = logging.getLogger("cachelayer.refresh")


class Refresher:
    """Runs refreshes in the background, one per key at a time.

    Args:
        max_workers: threads for sync refreshes (created on first use).
        max_pending: refreshes queued or running at once, sync and async together.
    """

    def __init__(self, max_workers: int = 4, max_pending: int = 256) -> None:
        self.max_workers = max_workers
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._futures: set[Future[Any]] = set()
        self._closed = False

    def _claim(self, key: str) -> bool:
        with self._lock:
            if self._closed or key in self._running or len(self._running) >= self.max_pending:
                return False
            self._running.add(key)
            return True

    def _release(self, key: str) -> None:
        with self._lock:
            self._running.discard(key)

    def submit(self, key: str, job: Callable[[], Any]) -> bool:
        """Run ``job`` on the thread pool unless ``key`` is already refreshing."""
        if not self._claim(key):
            return False
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="cachelayer-refresh"
                )
            executor = self._executor
        future = executor.submit(job)
        self._futures.add(future)

        def finished(f: Future[Any]) -> None:
            self._futures.discard(f)
            self._done(key, f)

        future.add_done_callback(finished)
        return True

    def spawn(self, key: str, job: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
        """Run ``job()`` as a task of the running loop unless ``key`` is refreshing."""
        if not self._claim(key):
            return False
        task = asyncio.get_running_loop().create_task(job())
        self._tasks.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            self._done(key, t)

        task.add_done_callback(finished)
        return True

    def _done(self, key: str, future: Future[Any] | asyncio.Task[Any]) -> None:
        self._release(key)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # the refresh flow handles loader errors; this is a bug
            log.error("cachelayer: background refresh crashed: %s: %s", type(exc).__name__, exc)

    @property
    def pending(self) -> int:
        """Refreshes queued or running now."""
        return len(self._running)

    def close(self) -> None:
        """Stop taking refreshes and wait for the sync ones in progress."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """Cancel this loop's refresh tasks and wait for them; then close the pool."""
        loop = asyncio.get_running_loop()
        tasks = [t for t in self._tasks if t.get_loop() is loop]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.close)

    async def drain(self) -> None:
        """Wait for this loop's refresh tasks to finish (tests, graceful shutdown)."""
        loop = asyncio.get_running_loop()
        tasks = [t for t in self._tasks if t.get_loop() is loop]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until the sync refreshes submitted so far are done (tests, shutdown)."""
        _, not_done = wait(list(self._futures), timeout=timeout)
        return not not_done
