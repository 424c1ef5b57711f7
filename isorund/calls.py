"""One call, from a validated request to its outcome: the daemon's logic, without gRPC.

The servicer (``isorund.server``) only translates; this class admits the call, takes a
prepared sandbox, runs it, and writes the call's structured log line. Tests can drive it
without a gRPC server.
"""
from __future__ import annotations

import json
import logging
import time

from isorun._proto import runner_pb2 as pb

from . import plan as plans
from .admission import Admission
from .launcher import Zygote, ZygoteUnavailable, run_call

log = logging.getLogger("isorund")


class Calls:
    def __init__(self, config, zygote: Zygote, metrics=None):
        self.config = config
        self.zygote = zygote
        self.admission = Admission(config.max_concurrency, config.queue_size)
        self.metrics = metrics
        self.isolated = not config.insecure_no_isolation

    async def run(self, request: pb.RunRequest, on_event, *, deadline: float | None, peer: str = "") -> pb.Outcome:
        """Runs one call; raises RequestError, QueueFull, TimeoutError (deadline while queued)
        or ZygoteUnavailable, and otherwise returns its outcome (a guest failure included)."""
        received = time.monotonic()
        plan = plans.build(request, self.config)
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        outcome = None
        try:
            async with self.admission.slot(wait):
                queued = time.monotonic() - received
                if self.metrics:
                    self.metrics.live.inc()
                try:
                    sandbox = await self.zygote.take()
                    outcome = await run_call(sandbox, plan, on_event, self.isolated)
                finally:
                    if self.metrics:
                        self.metrics.live.dec()
            outcome.usage.queue_seconds = queued
            return outcome
        finally:
            self._log(plan, request, peer, outcome, received)

    def _log(self, plan, request, peer: str, outcome, received: float) -> None:
        if outcome is None:
            result = "refused"
        elif outcome.WhichOneof("result") == "value":
            result = "ok"
        else:
            result = pb.Failure.Kind.Name(outcome.failure.kind).lower()
        usage = outcome.usage if outcome is not None else pb.Usage()
        line = {"event": "call", "id": plan.call_id, "peer": peer, "root": plan.root, "file": plan.file,
                "function": request.func_name, "outcome": result,
                "queue_ms": round(usage.queue_seconds * 1000, 3), "run_ms": round(usage.wall_seconds * 1000, 3),
                "total_ms": round((time.monotonic() - received) * 1000, 3),
                "cpu_ms": round(usage.cpu_seconds * 1000, 3), "peak_memory_bytes": usage.peak_memory_bytes}
        if outcome is not None and result == "resource_limit":
            line["limit"] = outcome.failure.limit
        if not self.isolated:
            line["warning"] = "insecure: no kernel isolation"
        log.info(json.dumps(line))
        if self.metrics:
            self.metrics.observe(result, time.monotonic() - received)


__all__ = ["Calls", "ZygoteUnavailable"]
