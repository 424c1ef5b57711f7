"""Admission: at most ``max_concurrency`` sandboxes at once, a bounded FIFO queue behind them,
and a bound on the bytes of the requests held meanwhile.

A call past the queue is refused at once (RESOURCE_EXHAUSTED) rather than left to wait for a
deadline it cannot meet; a queued call leaves the queue when its wait budget runs out (the
caller derives it from the client's deadline) or when its client goes away; on shutdown every
queued call is answered. A freed slot is handed straight to the oldest waiter, so a burst of
new calls cannot overtake the queue.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque

MiB = 1 << 20


class QueueFull(Exception):
    """Every sandbox is busy and the queue is full."""


class OutOfDescriptors(QueueFull):
    """The daemon has no file descriptor left for this call's checks: its own limit, not the
    caller's fault (see isorund/descriptors.py); answered as a full queue, retry later."""


class RequestsTooLarge(QueueFull):
    """The requests held already, with this one, would pass ``max_held_request_bytes``."""


class QueueTimeout(TimeoutError):
    """The call's wait budget ran out while it was queued."""


class Admission:
    def __init__(self, max_concurrency: int, queue_size: int, max_held_bytes: int):
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.max_held_bytes = max_held_bytes
        self.held_bytes = 0  # the requests of calls queued or running, by their size on the socket
        self.free = max_concurrency
        self._queue: deque[asyncio.Future] = deque()
        self._closed: Exception | None = None

    @property
    def waiting(self) -> int:
        """Calls in the queue now (read by metrics and the systemd status line)."""
        return len(self._queue)

    @property
    def running(self) -> int:
        return self.max_concurrency - self.free

    @contextlib.asynccontextmanager
    async def slot(self, wait_seconds: float | None, request_bytes: int = 0):
        """Holds one sandbox slot for the body, and counts the call's request while it waits and
        runs. Raises RequestsTooLarge or QueueFull at once, QueueTimeout once ``wait_seconds``
        pass in the queue, or the exception given to ``close``."""
        with self._holding(request_bytes):
            await self._acquire(wait_seconds)
            try:
                yield
            finally:
                self._release()

    @contextlib.contextmanager
    def _holding(self, request_bytes: int):
        """The daemon keeps a few copies of each request it holds (24 requests of 40 MiB at
        once took it to 3.1 GiB): past the bound a call is refused rather than queued."""
        if self.held_bytes + request_bytes > self.max_held_bytes:
            raise RequestsTooLarge(
                f"isorund already holds {self.held_bytes / MiB:.1f} MiB of requests and this one is "
                f"{request_bytes / MiB:.1f} MiB (max_held_request_bytes {self.max_held_bytes / MiB:.0f} MiB); "
                "retry once calls finish")
        self.held_bytes += request_bytes
        try:
            yield
        finally:
            self.held_bytes -= request_bytes

    def close(self, error: Exception) -> None:
        """Answers every queued call with ``error`` and refuses later ones with it."""
        self._closed = error
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    async def _acquire(self, wait_seconds: float | None) -> None:
        if self._closed is not None:
            raise self._closed
        if self.free > 0 and not self._queue:
            self.free -= 1
            return
        if len(self._queue) >= self.queue_size:
            raise QueueFull(f"all {self.max_concurrency} sandboxes are busy and {len(self._queue)} calls "
                            f"are already queued (queue_size {self.queue_size})")
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(wait_seconds):
                await waiter
        except TimeoutError:
            self._leave(waiter)
            raise QueueTimeout(f"the call waited {wait_seconds:.3g} s in the queue, all the time its "
                               "deadline left on top of its timeout; it was not started") from None
        except asyncio.CancelledError:
            self._leave(waiter)
            raise

    def _leave(self, waiter: asyncio.Future) -> None:
        """A waiter gives up; a slot handed to it in the same instant goes to the next one."""
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._release()

    def _release(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on without becoming free
                return
        self.free += 1
