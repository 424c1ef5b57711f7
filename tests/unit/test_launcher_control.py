"""The daemon's side of its sockets, over real socketpairs: a prepared sandbox whose
descriptors did not arrive on the zygote's control socket (the daemon out of file descriptors)
is not the end of the event loop's callback, and a call channel reset by a sandbox killed
mid-plan is reported as that sandbox's end."""
import asyncio
import json
import os
import select
import socket
import subprocess

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2
from isorund.config import Config
from isorund import launcher
from isorund.launcher import Launcher
from isorund.sandbox_handle import Sandbox
from isorund.sandbox_call import run_call


def test_a_sandbox_without_its_descriptors_is_skipped_and_another_asked_for():
    async def scenario():
        ours, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        z = Launcher(Config.load(None, {"socket": "/tmp/unused.sock"}), "/unused")
        z.control, z.alive = ours, True
        taker = asyncio.ensure_future(z.take())
        await asyncio.sleep(0)
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}
        zygote_end.send(json.dumps({"ready": {"pid": 41}}).encode())  # no fds
        z._on_control()
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}  # asked again for the taker
        assert not taker.done()
        channel, peer = socket.socketpair()
        pidfd = os.pidfd_open(os.getpid())
        socket.send_fds(zygote_end, [json.dumps({"ready": {"pid": 42}}).encode()], [channel.fileno(), pidfd])
        z._on_control()
        sandbox = await asyncio.wait_for(taker, 5)
        assert sandbox.pid == 42
        sandbox.close()
        for s in (channel, peer, ours, zygote_end):
            s.close()
        os.close(pidfd)
    asyncio.run(scenario())


def test_a_pooled_sandbox_without_its_descriptors_is_asked_for_again_when_a_call_ends():
    """With no call waiting, the lost sandbox was never replaced: each one shrank the pool
    for the daemon's life. Asked for at once it would be lost again while the daemon is out
    of descriptors, so it waits for the next call's end or LOST_RETRY_SECONDS[0]."""
    async def scenario():
        z, ours, zygote_end = lost_sandbox()
        assert select.select([zygote_end], [], [], 0)[0] == []  # not asked for at once
        z.replace()  # a call ended
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}
        await asyncio.sleep(launcher.LOST_RETRY_SECONDS[0] + 0.2)
        assert select.select([zygote_end], [], [], 0)[0] == []  # asked for once, not twice
        ours.close()
        zygote_end.close()
    asyncio.run(scenario())


def test_a_pooled_sandbox_without_its_descriptors_is_asked_for_again_a_little_later():
    async def scenario():
        z, ours, zygote_end = lost_sandbox()
        assert select.select([zygote_end], [], [], 0)[0] == []  # not asked for at once
        await asyncio.sleep(launcher.LOST_RETRY_SECONDS[0] + 0.2)  # and no call ends
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}
        ours.close()
        zygote_end.close()
    asyncio.run(scenario())


def test_sandboxes_lost_one_after_another_are_asked_for_again_later_and_later():
    """Asked for at once (or always after the same second), sandboxes that a host kills as soon
    as they are made had the zygote fork in a loop; one that lives to be taken resets it."""
    async def scenario():
        first = launcher.LOST_RETRY_SECONDS[0]
        z, ours, zygote_end = lost_sandbox()
        await asyncio.sleep(first + 0.2)
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}
        zygote_end.send(json.dumps({"ready": {"pid": 43}}).encode())  # lost again
        z._on_control()
        await asyncio.sleep(first + 0.2)
        assert select.select([zygote_end], [], [], 0)[0] == []  # not after the same delay
        await asyncio.sleep(first)
        assert json.loads(zygote_end.recv(100)) == {"spawn": 1}  # but after twice it
        channel, peer = socket.socketpair()
        pidfd = os.pidfd_open(os.getpid())
        socket.send_fds(zygote_end, [json.dumps({"ready": {"pid": 44}}).encode()], [channel.fileno(), pidfd])
        z._on_control()
        (await z.take()).close()  # one lived to be taken
        zygote_end.send(json.dumps({"ready": {"pid": 45}}).encode())  # lost
        z._on_control()
        await asyncio.sleep(first + 0.2)
        assert json.loads(zygote_end.recv(100)) == {"spawn": 2}  # the taken one's and the lost one's
        for s in (channel, peer, ours, zygote_end):
            s.close()
        os.close(pidfd)
    asyncio.run(scenario())


def lost_sandbox():
    """(zygote, its control socket, the zygote's end): the pool just lost a sandbox whose
    descriptors did not arrive, with no call waiting."""
    ours, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    zygote_end.setblocking(False)
    z = Launcher(Config.load(None, {"socket": "/tmp/unused.sock"}), "/unused")
    z.control, z.alive = ours, True
    zygote_end.send(json.dumps({"ready": {"pid": 41}}).encode())  # no fds
    z._on_control()
    return z, ours, zygote_end


def test_a_sandbox_gone_with_the_plan_unread_is_reported_as_its_end_not_as_garbage():
    # Killed before it read its plan (the end of the shutdown grace, say), a sandbox leaves the
    # daemon's next read with ECONNRESET; that was reported as "the sandbox sent an invalid
    # event: [Errno 104]" instead of the reason the daemon killed it.
    async def scenario():
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        # a real process for the sandbox's pidfd, in a group of its own (insecure mode kills the group)
        stand_in = subprocess.Popen(["sleep", "30"], start_new_session=True)
        sandbox = Sandbox(stand_in.pid, os.pidfd_open(stand_in.pid), ours, asyncio.get_running_loop().create_future())
        sandbox.aborted = "isorund is shutting down; the call was killed"
        plan = sandbox_pb2.CallPlan(call_id="c", timeout_seconds=5, limits=pb.Limits(output_bytes=1 << 20,
                                                                                       result_bytes=1 << 20))
        call = asyncio.ensure_future(run_call(sandbox, plan, b"", _ignore, isolated=False))
        while not select.select([theirs], [], [], 0)[0]:
            await asyncio.sleep(0.01)
        theirs.close()  # with the plan unread: the daemon's next read gets ECONNRESET
        outcome = await asyncio.wait_for(call, 10)
        stand_in.wait(10)
        return outcome
    outcome = asyncio.run(scenario())
    assert outcome.failure.kind == pb.Failure.SANDBOX
    assert outcome.failure.message == "isorund is shutting down; the call was killed"


async def _ignore(event):
    pass
