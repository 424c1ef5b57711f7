"""The daemon's side of the zygote's control socket, over a real socketpair: a prepared sandbox
whose descriptors did not arrive (the daemon out of file descriptors) is not the end of the
event loop's callback, and whoever waits for a sandbox gets the next one."""
import asyncio
import json
import os
import socket

from isorund.config import Config
from isorund.launcher import Zygote


def test_a_sandbox_without_its_descriptors_is_skipped_and_another_asked_for():
    async def scenario():
        ours, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        z = Zygote(Config.load(None, {"socket": "/tmp/unused.sock"}), "/unused")
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
