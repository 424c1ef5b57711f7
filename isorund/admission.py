"""Admission: at most ``max_concurrency`` sandboxes at once, a bounded queue behind them.

A call past the queue is refused at once (RESOURCE_EXHAUSTED) rather than left to wait for a
deadline it cannot meet; a queued call whose client deadline passes leaves the queue.
"""
from __future__ import annotations

import asyncio
import contextlib


class QueueFull(Exception):
    """Every sandbox is busy and the queue is full."""


class Admission:
    def __init__(self, max_concurrency: int, queue_size: int):
        self._slots = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.waiting = 0
        self.running = 0

    @contextlib.asynccontextmanager
    async def slot(self, wait_seconds: float | None):
        """Holds one sandbox slot for the body; raises QueueFull, or TimeoutError once
        ``wait_seconds`` pass in the queue."""
        if self._slots.locked():
            if self.waiting >= self.queue_size:
                raise QueueFull(f"all {self.max_concurrency} sandboxes are busy and "
                                f"{self.waiting} calls are already queued (queue_size {self.queue_size})")
            self.waiting += 1
            try:
                async with asyncio.timeout(wait_seconds):
                    await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
