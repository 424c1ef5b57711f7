"""The call's channel made anew in the sandbox's own network namespace: the sandbox's side
(``channel.move_into_own_namespace``) and the daemon's (``sandbox_call._take_the_sandboxs_channel``)
on real socket pairs, in this process's namespace (which namespace the new pair lives in is
tests/security/test_host_surfaces.py's)."""
import asyncio
import os
import socket

from isorund.sandbox import channel
from isorund.sandbox_call import _take_the_sandboxs_channel
from isorund.sandbox_handle import Sandbox


def _taken(daemons_end: socket.socket) -> socket.socket:
    """The daemon's channel after it took the sandbox's, from ``daemons_end``."""
    daemons_end.setblocking(False)
    sandbox = Sandbox(0, -1, daemons_end, None)
    asyncio.run(_take_the_sandboxs_channel(sandbox))
    return sandbox.sock


def test_the_daemon_talks_on_the_channel_the_sandbox_made_and_the_old_one_closes():
    daemons, sandboxes = socket.socketpair()
    old_fd = sandboxes.fileno()
    channel.move_into_own_namespace(sandboxes)
    assert sandboxes.fileno() == old_fd  # the sandbox keeps its descriptor: the new pair's end
    taken = _taken(daemons)
    assert taken is not daemons and daemons.fileno() == -1  # the old end closed by the daemon
    taken.setblocking(True)
    taken.sendall(b"plan")
    assert sandboxes.recv(4) == b"plan"
    sandboxes.sendall(b"outcome")
    assert taken.recv(7) == b"outcome"


def test_a_report_sent_before_the_new_channel_is_left_where_it_is():
    """A sandbox that failed before it made its channel reports on the old one: the daemon
    looks at the first byte without reading it, and the report is read whole after."""
    daemons, sandboxes = socket.socketpair()
    report = channel.HEADER.pack(5) + b"fails"
    sandboxes.sendall(report)
    taken = _taken(daemons)
    assert taken is daemons
    taken.setblocking(True)
    assert taken.recv(len(report)) == report


def test_a_sandbox_that_died_before_its_channel_leaves_the_old_one():
    daemons, sandboxes = socket.socketpair()
    sandboxes.close()
    assert _taken(daemons) is daemons


def test_the_daemon_waits_for_a_sandbox_still_preparing():
    daemons, sandboxes = socket.socketpair()

    async def later():
        daemons.setblocking(False)
        sandbox = Sandbox(0, -1, daemons, None)
        task = asyncio.ensure_future(_take_the_sandboxs_channel(sandbox))
        await asyncio.sleep(0.05)
        assert not task.done()
        channel.move_into_own_namespace(sandboxes)
        await asyncio.wait_for(task, 5)
        return sandbox.sock
    taken = asyncio.run(later())
    assert taken is not daemons
    os.close(taken.detach())
