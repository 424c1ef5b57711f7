"""How a call whose sandbox sent no outcome ended: the failure its end stands for (a crash, a
limit, the zygote's death, the daemon's own kill), with what the kernel says it used; and the
outcome of a failure the daemon makes itself (a timeout too). Parent-side code; the sandboxes
come from ``isorund.launcher``, their calls run in ``isorund.sandbox_call``."""
from __future__ import annotations

import asyncio
import signal
import time

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb
from isorund.sandbox.limits import cpu_rlimit

from .sandbox_handle import OOM_KILLED, ZYGOTE_LOST, ZYGOTE_LOST_STOPPING, Exit, Sandbox

Failure = pb.Failure
REAPED_WITHIN = 1.0  # seconds to wait for the zygote to say how a sandbox the call lost ended


async def reaped(sandbox: Sandbox) -> Exit:
    """How the sandbox ended, as its zygote reaped it; an unknown ``Exit`` if it does not say
    within ``REAPED_WITHIN`` (a stalled zygote)."""
    try:
        return await asyncio.wait_for(asyncio.shield(sandbox.exited), REAPED_WITHIN)
    except TimeoutError:
        return Exit()


def with_usage(outcome: sb.RelayedOutcome, end: Exit) -> sb.RelayedOutcome:
    """A call the sandbox did not answer has no usage of its own report: the kernel's account,
    as its zygote reaped it, says what it used (a guest spinning to its timeout had cpu 0)."""
    outcome.usage.cpu_seconds = end.cpu_seconds
    outcome.usage.peak_memory_bytes = end.peak_memory_bytes
    return outcome


# RLIMIT_CPU counts whole seconds (limits.cpu_rlimit) of the time the scheduler's ticks charge
# a process (whoever runs at a tick is charged the whole tick), while the CPU time the zygote
# reaps is the time the process really ran: on a busy host the two part, and a guest ended by
# its 2 s limit was reaped at 1.74–1.94 s (its exit on SIGXCPU then read as a sandbox that
# ended without an outcome, 5 times in 10 beside three busy loops). A guest that ends without an
# outcome within this share of its limit is taken to have met it, unless a fault ended it: a
# crash is said as such, whatever CPU it had used (one at 85% read as the limit: a probe).
CPU_SAMPLING_SHARE = 0.2
FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS})


async def died(sandbox: Sandbox, started: float, cpu_limit: float) -> sb.RelayedOutcome:
    """The guest closed its channel without an outcome: say how it ended, if it can be known."""
    end = await reaped(sandbox)
    return with_usage(how_it_died(sandbox, end, started, cpu_limit), end)


def how_it_died(sandbox: Sandbox, end: Exit, started: float, cpu_limit: float) -> sb.RelayedOutcome:
    """The failure that a sandbox's end without an outcome stands for."""
    if sandbox.aborted:  # the daemon killed it on purpose (the end of the shutdown grace)
        return failure_outcome(Failure(kind=Failure.SANDBOX, message=sandbox.aborted), started)
    if end.cause == ZYGOTE_LOST_STOPPING:
        return failure_outcome(Failure(kind=Failure.SANDBOX, message=(
            "the sandbox zygote died while isorund was shutting down and took the call's sandbox with it")),
            started)
    if end.cause == ZYGOTE_LOST:
        return failure_outcome(Failure(kind=Failure.SANDBOX, message=(
            "the sandbox zygote died during the call and took its sandbox with it; a new zygote is "
            "being started, retry the call")), started)
    if end.cause == OOM_KILLED:
        return failure_outcome(Failure(kind=Failure.RESOURCE_LIMIT, limit="memory", message=(
            "the call went over its memory limit and was killed by the kernel")), started)
    how = _how_it_ended(end)
    killed = end.status in (128 + signal.SIGKILL, 128 + signal.SIGXCPU)
    # The CPU rlimit's signals can also come from elsewhere (an operator's kill -9): only a
    # sandbox that used its CPU time was ended by that limit. One that used it and ended
    # otherwise met SIGXCPU where no outcome could follow (the guest's own handler exited, or
    # the runtime was sending): the spent CPU is what ended the call all the same.
    if end.cpu_seconds >= cpu_rlimit(cpu_limit) * (1 - CPU_SAMPLING_SHARE) and end.signal not in FAULTS:
        ended = f"was killed by the kernel for using up its CPU time ({cpu_limit:g} s, cpu_seconds)" if killed \
            else f"used up its CPU time ({cpu_limit:g} s, cpu_seconds) and ended without an outcome"
        return failure_outcome(Failure(kind=Failure.RESOURCE_LIMIT, limit="cpu", message=f"the call {ended}{how}"),
                               started)
    if killed:
        return failure_outcome(Failure(kind=Failure.SANDBOX, message=(
            f"the sandbox was killed from outside the call{how}, after {end.cpu_seconds:.3g} s of "
            f"its {cpu_limit:g} s of CPU")), started)
    return failure_outcome(Failure(kind=Failure.SANDBOX, message=f"the sandbox ended without reporting an outcome{how}"),
                           started)


def _how_it_ended(end: Exit) -> str:
    """" (SIGSEGV, exit status 139)": the signal by name, which the shell's number hid."""
    if end.status is None:
        return ""
    if end.signal:
        try:
            name = signal.Signals(end.signal).name
        except ValueError:
            name = f"signal {end.signal}"
        return f" ({name}, exit status {end.status})"
    return f" (exit status {end.status})"


def failure_outcome(failure: pb.Failure, started: float) -> sb.RelayedOutcome:
    return sb.RelayedOutcome(failure=failure, usage=pb.Usage(wall_seconds=time.monotonic() - started))
