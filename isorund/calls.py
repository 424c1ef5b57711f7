"""One call, from a request to its outcome: the daemon's logic, without gRPC.

The servicer (``isorund.servicer``) only translates; this class validates the request, admits
the call, takes a prepared sandbox, runs it, and writes the call's one structured log line —
also for calls that were refused or abandoned, so every call leaves exactly one line and one
count in the metrics (a call the allowlist refuses never reaches this class: it leaves a
``denied`` line and no count, see docs/operations.md). Tests can drive it without gRPC.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

from . import memory, named_pipes
from . import plan as plans
from .admission import Admission, OutOfDescriptors, QueueFull, QueueTimeout, RequestsTooLarge
from .code_cache import CodeCache
from .launcher import Launcher, ZygoteUnavailable
from .plan import RequestError
from .sandbox_call import run_call
from .sandbox_handle import Sandbox

log = logging.getLogger("isorund")

# How long the daemon must have been idle after a large call before its heap is trimmed.
TRIM_AFTER_SECONDS = 0.5
# The peer of the daemon's own call at start (server.py): logged like any call, not counted in
# the metrics, which are the clients' calls (a fresh daemon showed one "ok" call).
SELF_TEST_PEER = "self-test"
SANDBOX_WAIT_FLOOR = 1.0  # seconds a call may always wait for a prepared sandbox (see _sandbox)
# What the log line and the metrics call a call that ended without an outcome, by exception.
REFUSALS = ((RequestError, "invalid_argument"), (RequestsTooLarge, "requests_too_large"),
            (OutOfDescriptors, "out_of_descriptors"), (QueueFull, "queue_full"),
            (QueueTimeout, "deadline_in_queue"), (ZygoteUnavailable, "unavailable"),
            (asyncio.CancelledError, "cancelled"))


class ShuttingDown(ZygoteUnavailable):
    """The daemon is stopping; the call is answered UNAVAILABLE."""


class Calls:
    def __init__(self, config, zygote: Launcher, metrics):
        self.config = config
        self.zygote = zygote
        self.admission = Admission(config.max_concurrency, config.queue_size, config.max_held_request_bytes)
        self.metrics = metrics
        self.isolated = not config.insecure_no_isolation
        self.in_flight: set[Sandbox] = set()
        self.code_cache = CodeCache(config.code_cache_bytes)
        self._trim_wanted = False
        self._trim_timer: asyncio.TimerHandle | None = None

    async def run(self, request: sb.RelayedRunRequest, on_event, *, deadline: float | None,
                  peer: str = "", caller=None) -> sb.RelayedOutcome:
        """Runs one call; raises RequestError, QueueFull, QueueTimeout or ZygoteUnavailable, and
        otherwise returns its outcome (a guest failure included).

        ``deadline`` is the client's, as a ``time.monotonic()`` value. The call may wait in the
        queue only as long as that leaves its whole timeout to run in, and never runs past it."""
        received = time.monotonic()
        # Serialized once: its size is what admission counts, and its bytes what the sandbox
        # gets (upb's ByteSize serializes as well: ~90 ms for 40 MiB here).
        payload = request.SerializeToString()
        entry = {"id": secrets.token_hex(8), "peer": peer, "root": request.root[:200], "file": request.file[:200],
                 "function": request.func_name[:200]}
        outcome, queued = None, 0.0  # seconds to a sandbox; none for a call refused before the queue
        reached_queue = False
        ran_from = None  # when its sandbox was taken: a call cut short still shows how long it ran
        try:
            plan = plans.build(request, self.config)
            if caller is not None:  # (known through the allowlist's front)
                plans.check_reachable(plan, caller)
            try:
                plans.check_folders(plan, quick=True)  # folders seen before: no hop to a thread
            except named_pipes.NotRemembered:
                await asyncio.to_thread(plans.check_folders, plan)
            if not request.compiler:  # a compiler plugin's output is compiled in each call
                self.code_cache.fill(plan)
            entry.update(id=plan.call_id, root=plan.root, file=plan.file)
            wait = None if deadline is None else max(0.0, deadline - received - plan.timeout_seconds)
            queued, reached_queue = None, True  # in the queue from here until a sandbox is taken
            async with self.admission.slot(wait, len(payload)):
                sandbox = await self._sandbox(None if wait is None else wait - (time.monotonic() - received))
                entry["sandbox_pid"] = sandbox.pid  # the call's sandbox on the host, killed after it
                ran_from = time.monotonic()
                queued = ran_from - received
                self.in_flight.add(sandbox)
                try:
                    outcome = await run_call(sandbox, plan, payload, on_event, self.isolated,
                                             deadline, on_compiled=lambda m: self.code_cache.store(plan.root, m))
                finally:
                    self.in_flight.discard(sandbox)
                    self.zygote.replace()
            # Whoever made the outcome (the guest's runtime, or the daemon for a timeout, a
            # limit or a sandbox that died), its id is the daemon's, to match the log line.
            outcome.call_id = plan.call_id
            outcome.usage.queue_seconds = queued
            return outcome
        except BaseException as e:
            entry["outcome"] = next((name for kind, name in REFUSALS if isinstance(e, kind)), "error")
            if entry["outcome"] == "error":
                entry["error"] = f"{type(e).__name__}: {e}"
            elif isinstance(e, (RequestError, RequestsTooLarge, OutOfDescriptors)):
                entry["error"] = str(e)[:500]  # the operator's only trace of what was wrong
            raise
        finally:
            if queued is None:  # it left while waiting for a sandbox
                queued = time.monotonic() - received
            self._log(entry, outcome, received, queued, ran_from, reached_queue)
            self._after(len(payload), outcome)

    async def _sandbox(self, wait: float | None):
        """A prepared sandbox, waited for within what is left of the call's wait budget, but
        at least ``SANDBOX_WAIT_FLOOR``: a zygote that is stalled (stopped) or starved of CPU
        must not hold the call until its client gives up, yet waiting a few milliseconds for
        the next sandbox when the pool is empty is normal, also for a client whose deadline
        leaves no room to wait (its call then runs for what the deadline leaves)."""
        try:
            return await self.zygote.take(None if wait is None else max(SANDBOX_WAIT_FLOOR, wait))
        except TimeoutError:
            raise QueueTimeout("no sandbox was ready while the call's deadline left room for its "
                               "timeout (the sandbox zygote is slow or stalled); it was not started") from None

    def refused(self, peer: str, outcome: str, error: str) -> None:
        """A Run refused before it was a call (its bytes are not a RunRequest, the daemon is
        stopping): it too leaves one log line and one count."""
        entry = {"id": secrets.token_hex(8), "peer": peer, "root": "", "file": "", "function": "",
                 "outcome": outcome, "error": error[:500]}
        self._log(entry, None, time.monotonic(), 0.0)

    def abort_all(self, reason: str) -> None:
        """Kills every running call's sandbox (their outcome says ``reason``) and answers
        every queued call: the end of the shutdown grace period."""
        self.admission.close(ShuttingDown("isorund is shutting down; the call was not started"))
        for sandbox in list(self.in_flight):
            sandbox.abort(reason)

    def _after(self, request_bytes: int, outcome: sb.RelayedOutcome | None) -> None:
        """After a call with a large value, gives the heap's free memory back once the daemon
        is idle (see isorund.memory); the call's own messages are gone by then."""
        # the result's own bytes: ByteSize would serialize the whole outcome again to say so
        sizes = (request_bytes, len(outcome.value) if outcome is not None else 0)
        if max(sizes) >= memory.LARGE_BYTES:
            self._trim_wanted = True
        if self._trim_wanted and self._trim_timer is None:
            self._trim_timer = asyncio.get_running_loop().call_later(TRIM_AFTER_SECONDS, self._trim_if_idle)

    def _trim_if_idle(self) -> None:
        self._trim_timer = None
        if self.admission.running or self.admission.waiting:
            return  # the end of a later call tries again
        self._trim_wanted = False
        memory.give_back_freed_memory()

    def _log(self, entry: dict, outcome: sb.RelayedOutcome | None, received: float, queued: float,
             ran_from: float | None = None, reached_queue: bool = False) -> None:
        """The call's one log line, and its counts: the queue's wait only of a call that was
        queued (refused ones were counted as waits of 0 s, pulling the histogram down)."""
        total = time.monotonic() - received
        if outcome is not None:
            usage = outcome.usage
            if outcome.WhichOneof("result") == "value":
                entry["outcome"] = "ok"
            else:
                entry["outcome"] = pb.Failure.Kind.Name(outcome.failure.kind).lower()
                if outcome.failure.limit:
                    entry["limit"] = outcome.failure.limit
            entry.update(queue_ms=_ms(usage.queue_seconds), run_ms=_ms(usage.wall_seconds),
                         cpu_ms=_ms(usage.cpu_seconds), peak_memory_bytes=usage.peak_memory_bytes)
        else:
            ran = 0.0 if ran_from is None else time.monotonic() - ran_from
            entry.update(queue_ms=_ms(queued), run_ms=_ms(ran), cpu_ms=0.0, peak_memory_bytes=0)
        entry["total_ms"] = _ms(total)
        if not self.isolated:
            entry["warning"] = "insecure: no kernel isolation"
        log.info(json.dumps({"event": "call", **entry}))
        if entry["peer"] != SELF_TEST_PEER:
            self.metrics.observe_call(entry["outcome"], total, entry["queue_ms"] / 1000 if reached_queue else None)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


__all__ = ["Calls", "ShuttingDown", "ZygoteUnavailable"]
