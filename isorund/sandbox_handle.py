"""A prepared sandbox as the daemon holds it (its pid, a pidfd, its call channel), and how one
ended as its zygote saw it. Parent-side code: the daemon's handles on the processes
``isorund.launcher`` gets from the zygote."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
from dataclasses import dataclass

ZYGOTE_LOST = "zygote lost"  # the cause of a sandbox's end when its zygote died before reporting it
ZYGOTE_LOST_STOPPING = "zygote lost while stopping"  # … while the daemon was shutting down
OOM_KILLED = "oom killed"  # … when its cgroup's OOM killer ended it (sandbox/cgroup.py)


@dataclass(frozen=True)
class Exit:
    """How a sandbox ended, as its zygote saw it when reaping it."""
    status: int | None = None  # exit code, or 128 + the signal that ended it
    cpu_seconds: float = 0.0   # its CPU time (its own and its reaped children's)
    peak_memory_bytes: int = 0  # its peak RSS (or its largest reaped child's)
    cause: str = ""            # ZYGOTE_LOST or OOM_KILLED, when known
    signal: int = 0            # the signal that ended it, or 0 (an exit code of 139 is not SIGSEGV)


@dataclass(eq=False)  # identity: the daemon keeps the running ones in a set
class Sandbox:
    """A prepared sandbox waiting for its one call."""
    pid: int
    pidfd: int
    sock: socket.socket
    exited: asyncio.Future
    aborted: str = ""  # why the daemon killed the call, when it did so on purpose

    def abort(self, reason: str) -> None:
        """Kills the call on the daemon's behalf; its outcome then says ``reason``."""
        self.aborted = reason
        self.kill()

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_group(self) -> None:
        """Without a pid namespace (insecure mode) the sandbox's process group is the call."""
        self.kill()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.sock.close()
        os.close(self.pidfd)
