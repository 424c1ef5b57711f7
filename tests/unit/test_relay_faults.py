"""Whose fault a broken relay is (isorund.sandbox_call.run_call), on a real socket pair and a
real child process standing in for a prepared sandbox (insecure mode: no folders to send)."""
import asyncio
import json
import logging
import os
import socket
import subprocess

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb
from isorund.sandbox_handle import Sandbox
from isorund.sandbox import channel
from isorund.sandbox_call import run_call


def _run(first_event: bytes, on_event) -> tuple[pb.Failure, list[str]]:
    """One call whose sandbox sends ``first_event`` (a frame's payload) and then waits."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    child = subprocess.Popen(["sleep", "30"])
    plan = sb.CallPlan(call_id="c", root="/", file="f.py", timeout_seconds=5,
                       limits=pb.Limits(result_bytes=1 << 20, output_bytes=1 << 20, cpu_seconds=5))
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("isorund").addHandler(handler)

    async def call():
        sandbox = Sandbox(child.pid, os.pidfd_open(child.pid), ours, asyncio.get_running_loop().create_future())
        theirs.sendall(channel.HEADER.pack(len(first_event)) + first_event)
        return await run_call(sandbox, plan, b"", on_event, isolated=False)
    try:
        outcome = asyncio.run(call())
    finally:
        logging.getLogger("isorund").removeHandler(handler)
        theirs.close()
        child.kill()
        child.wait()
    return outcome.failure, logged


def test_garbage_from_the_sandbox_is_its_fault_and_logs_nothing_of_the_daemons():
    async def relayed(event):
        pass
    failure, logged = _run(b"\xff\xff\xff", relayed)
    assert failure.kind == pb.Failure.SANDBOX and "invalid event" in failure.message
    assert not [line for line in logged if "relay_failed" in line]


def test_a_fault_of_the_daemons_own_while_relaying_is_logged_with_its_traceback():
    # (found by review: any exception became "the sandbox sent an invalid event", untraced)
    async def broken(event):
        raise RuntimeError("a bug of the daemon's")
    failure, logged = _run(sb.SandboxEvent(running=pb.Running()).SerializeToString(), broken)
    assert failure.kind == pb.Failure.SANDBOX
    [line] = [json.loads(line) for line in logged if "relay_failed" in line]
    assert line["error"] == "RuntimeError: a bug of the daemon's" and "Traceback" in line["traceback"]


def test_a_sandbox_that_ended_without_an_outcome_near_its_cpu_limit_met_that_limit():
    """The kernel's CPU limit counts the scheduler's ticks, the reaped time what the process
    really ran: on a busy host a guest ended at its 2 s limit was reaped at 1.74 s, and its exit
    on SIGXCPU read as a sandbox that ended without an outcome."""
    from isorund.sandbox_handle import Exit
    from isorund.sandbox_end import how_it_died

    def failure(cpu_seconds: float, status: int = 1, by_signal: int = 0) -> pb.Failure:
        sandbox = Sandbox(0, -1, None, None)
        return how_it_died(sandbox, Exit(status=status, cpu_seconds=cpu_seconds, signal=by_signal), 0.0, 2.0).failure

    assert (failure(1.74).kind, failure(1.74).limit) == (pb.Failure.RESOURCE_LIMIT, "cpu")
    assert (failure(1.2).kind, failure(1.2).limit) == (pb.Failure.SANDBOX, "")
    # a crash is a crash, whatever CPU it had used (the probe: a SIGSEGV at 85% read as the limit)
    crashed = failure(1.9, 139, 11)
    assert crashed.kind == pb.Failure.SANDBOX and "SIGSEGV" in crashed.message
