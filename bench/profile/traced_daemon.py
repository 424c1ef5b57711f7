"""isorund with timestamps at each step of a call, for profiling; otherwise the real daemon.

    python bench/profile/traced_daemon.py --socket PATH [any isorund option]

Wraps (at run time, without touching isorund's files) the functions a call passes through in
the daemon, and writes one extra log line per Run RPC:

    {"event": "trace", "marks": {"rpc_in": ns, "plan_start": ns, ..., "rpc_out": ns}}

Marks are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process), so the
client can line them up with its own. The wrappers find the current call through a context
variable: gRPC aio runs each RPC in its own task, and everything the call awaits shares it.
Wrapped names are looked up where the caller looks them up (``isorund.calls.run_call``, not
``isorund.sandbox_call.run_call``), so the profile follows the code as it is today; a wrapper
whose target is gone is skipped with a warning rather than failing the daemon.
"""
from __future__ import annotations

import asyncio.selector_events
import contextvars
import functools
import json
import logging
import sys
import time

from isorund import calls, cli, launcher, plan, sandbox_call, sandbox_handle, servicer

CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("isorun_trace", default=None)
log = logging.getLogger("isorund")


def mark(name: str) -> None:
    marks = CURRENT.get()
    if marks is not None:
        marks.setdefault(name, time.monotonic_ns())


def around(owner, name: str, before: str, after: str) -> None:
    """Marks ``before`` on entry and ``after`` on return of ``owner.name`` (sync or async)."""
    real = getattr(owner, name, None)
    if real is None:
        print(f"traced_daemon: {owner.__name__}.{name} not found; not traced", file=sys.stderr)
        return
    if asyncio.iscoroutinefunction(real):
        @functools.wraps(real)
        async def wrapper(*args, **kwargs):
            mark(before)
            try:
                return await real(*args, **kwargs)
            finally:
                mark(after)
    else:
        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            mark(before)
            try:
                return real(*args, **kwargs)
            finally:
                mark(after)
    setattr(owner, name, wrapper)


def trace_rpc(servicer_class, name: str) -> None:
    """Opens a trace for every call of the RPC handler and logs it when the handler returns."""
    real = getattr(servicer_class, name)

    @functools.wraps(real)
    async def handler(self, request, context):
        marks = {"rpc_in": time.monotonic_ns()}
        CURRENT.set(marks)
        try:
            return await real(self, request, context)
        finally:
            marks["rpc_out"] = time.monotonic_ns()
            log.info(json.dumps({"event": "trace", "rpc": name, "function": request.func_name,
                                 "marks": marks}))
    setattr(servicer_class, name, handler)


def trace_frames() -> None:
    """Marks the arrival of the first and of the last frame a sandbox sends."""
    real = sandbox_call._FrameReader.next

    @functools.wraps(real)
    async def next_frame(self, *args, **kwargs):
        frame = await real(self, *args, **kwargs)
        marks = CURRENT.get()
        if marks is not None:
            now = time.monotonic_ns()
            marks.setdefault("first_frame", now)
            marks["last_frame"] = now
        return frame
    sandbox_call._FrameReader.next = next_frame


def install() -> None:
    trace_rpc(servicer.RunnerServicer, "Run")
    around(plan, "build", "plan_start", "plan_end")
    around(launcher.Launcher, "take", "take_start", "take_end")
    around(calls, "run_call", "run_start", "run_end")
    # The daemon's only sock_sendall is the plan going to the sandbox.
    around(asyncio.selector_events.BaseSelectorEventLoop, "sock_sendall", "send_start", "plan_sent")
    around(sandbox_handle.Sandbox, "kill", "kill_start", "kill_end")
    around(sandbox_handle.Sandbox, "close", "close_start", "closed")
    trace_frames()


if __name__ == "__main__":
    install()
    sys.exit(cli.main(sys.argv[1:]))
