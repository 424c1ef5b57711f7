"""The daemon's reading of a sandbox's ``compiled`` event (``run_call``), against a stand-in
sandbox on a real socketpair: which event is kept, which ends the call, and that the bound the
first event is read under is the modules', not a licence for a larger result."""
import asyncio
import os
import socket
import subprocess

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb
from isorund.sandbox_handle import Sandbox
from isorund.sandbox import channel
from isorund.sandbox_call import run_call

MODULES = sb.CompiledModules(modules=[sb.CompiledModule(path="/index.py", source_hash=b"h" * 8, code=b"c" * 200_000)])
RESULT = pb.RunEvent(outcome=pb.Outcome(value=pb.Outcome().value))


def call_with(events, report: bool):
    """The outcome of a call whose stand-in sandbox sends ``events`` (messages), and the
    modules handed to ``on_compiled``."""
    kept = []

    async def scenario():
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        stand_in = subprocess.Popen(["sleep", "30"], start_new_session=True)
        sandbox = Sandbox(stand_in.pid, os.pidfd_open(stand_in.pid), ours, asyncio.get_running_loop().create_future())
        plan = sb.CallPlan(call_id="c", timeout_seconds=5, report_compiled=report,
                           limits=pb.Limits(output_bytes=1 << 20, result_bytes=1024))
        for event in events:
            channel.send(theirs, event)
        call = asyncio.ensure_future(run_call(sandbox, plan, b"", _ignore, isolated=False, on_compiled=kept.append))
        outcome = await asyncio.wait_for(call, 10)
        theirs.close()
        stand_in.wait(10)
        return outcome
    return asyncio.run(scenario()), kept


def test_the_first_event_of_a_sandbox_that_was_asked_is_kept():
    outcome, kept = call_with([sb.SandboxEvent(compiled=MODULES), pb.RunEvent(running=pb.Running()), RESULT], True)
    assert outcome.WhichOneof("result") == "value" and kept == [MODULES]


def test_a_compiled_event_that_was_not_asked_for_or_not_first_ends_the_call():
    small = sb.SandboxEvent(compiled=sb.CompiledModules(modules=[sb.CompiledModule(
        path="/index.py", source_hash=b"h" * 8, code=b"c" * 100)]))  # within the result bound too
    for events, report in (([small, RESULT], False), ([pb.RunEvent(running=pb.Running()), small, RESULT], True),
                           ([small, small, RESULT], True)):
        outcome, kept = call_with(events, report)
        assert outcome.failure.kind == pb.Failure.SANDBOX and "a 'compiled' event" in outcome.failure.message
        assert len(kept) == (1 if report and events[0] == small else 0)


def test_a_first_event_that_is_not_the_modules_is_held_to_the_result_bound():
    big = pb.RunEvent(outcome=pb.Outcome(failure=pb.Failure(message="m" * 200_000)))
    outcome, kept = call_with([big], True)
    assert outcome.failure.kind == pb.Failure.RESOURCE_LIMIT and outcome.failure.limit == "result"
    assert "over its 66560-byte limit" in outcome.failure.message and not kept


async def _ignore(event):
    pass
