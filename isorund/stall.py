"""Whether the zygote is stalled: a call that waits for a sandbox starts a clock, an arrival
stops it, and past ``STALL_SECONDS`` with none the zygote is stalled (stopped, starved of CPU,
stuck in the kernel; a sandbox takes ~10 ms). Parent-side code, for ``isorund.launcher``."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

log = logging.getLogger("isorund")
STALL_SECONDS = 3.0


class StallWatch:
    """The stall's clock. ``on_stall`` (may be None) is told True when a stall is seen and
    False when a sandbox comes again; ``since`` is the loop time it was seen from, or None."""

    def __init__(self, on_stall: Callable[[bool], None] | None, waiting: Callable[[], int],
                 alive: Callable[[], bool]):
        self.on_stall = on_stall
        self._waiting = waiting  # calls waiting for a sandbox now
        self._alive = alive      # a zygote that died is no stall (it is reported as down)
        self.since: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Starts the clock when a call waits for a sandbox, unless it runs already; an arrival
        stops it, and the launcher starts it again while calls still wait. It is not stopped
        when the waiting calls leave: a call whose wait ran out (SANDBOX_WAIT_FLOOR) asked for
        a sandbox, and a zygote that does not deliver it is stalled all the same."""
        if self._timer is None and self.since is None:
            self._timer = asyncio.get_running_loop().call_later(STALL_SECONDS, self._seen)

    def _seen(self) -> None:
        self._timer = None
        if self._alive():
            self.since = asyncio.get_running_loop().time() - STALL_SECONDS
            log.warning(json.dumps({"event": "zygote_stalled", "waiting_calls": self._waiting(),
                                    "note": f"no sandbox arrived within {STALL_SECONDS:g} s of a call asking "
                                            "for one; is the zygote stopped or starved of CPU?"}))
            if self.on_stall:
                self.on_stall(True)

    def end(self, recovered: bool = True) -> None:
        """Stops the clock; a stall seen ends, logged as recovered unless the zygote died."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.since is None:
            return
        seconds = asyncio.get_running_loop().time() - self.since
        self.since = None
        if recovered:
            log.info(json.dumps({"event": "zygote_recovered", "stalled_seconds": round(seconds, 3)}))
            if self.on_stall:
                self.on_stall(False)
