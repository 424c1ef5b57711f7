"""The daemon's side of the sandboxes: the zygote process, the pool and one call's run.

Parent-side code only: nothing here runs in a sandbox. The zygote is a separate, fresh
interpreter (never a fork of this threaded gRPC process); it hands over each prepared sandbox
as its call channel and a pidfd, so the daemon talks to sandboxes directly and can kill a
call's whole pid namespace without racing pid reuse.
"""
from __future__ import annotations

import array
import asyncio
import base64
import collections
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from isorun._proto import runner_pb2 as pb
from isorund.sandbox import channel, filesystem, seccomp
from isorund.sandbox._libc import SandboxSetupError

log = logging.getLogger("isorund")
Failure = pb.Failure
EVENT_SLACK = 64 << 10  # framing and message overhead allowed on top of a size limit
ZYGOTE_LOST = "zygote lost"  # the cause of a sandbox's end when its zygote died before reporting it
OOM_KILLED = "oom killed"  # … when its cgroup's OOM killer ended it (sandbox/cgroup.py)



@dataclass(frozen=True)
class Exit:
    """How a sandbox ended, as its zygote saw it when reaping it."""
    status: int | None = None  # exit code, or 128 + the signal that ended it
    cpu_seconds: float = 0.0   # its CPU time (its own and its reaped children's)
    cause: str = ""            # ZYGOTE_LOST or OOM_KILLED, when known


class ZygoteUnavailable(Exception):
    """The zygote is not running (it died and is being restarted, or the daemon is stopping)."""


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


class Zygote:
    """Starts, feeds and restarts the zygote process; hands out prepared sandboxes."""

    def __init__(self, config, new_root: str, on_restart=None, on_down=None):
        self.config = config
        self.new_root = new_root
        self._programs: list[str] | None = None
        self.ready: collections.deque[Sandbox] = collections.deque()  # prepared, waiting for a call
        self._takers: collections.deque[asyncio.Future] = collections.deque()  # calls waiting for one
        self._owed = 0  # sandboxes taken from the pool whose replacement waits for their call to end
        self.exits: dict[int, asyncio.Future] = {}
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.alive = False
        self.stopping = False
        self.restarts = 0
        self.on_restart = on_restart
        self.on_down = on_down
        self._hello: asyncio.Future | None = None
        self._loading = ""  # the plugin the starting zygote said it was importing

    async def start(self) -> None:
        """Starts the zygote and waits for it to say it can build sandboxes."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        config = dict(dataclasses.asdict(self.config), _new_root=self.new_root, _seccomp=self._seccomp())
        # An empty environment: the zygote's is what every sandbox would inherit. subprocess
        # forks and execs in C, which is safe even once gRPC has started its threads. The
        # umask is the zygote's own: folders it makes in a sandbox's root must be readable
        # by the guest even when the daemon runs with UMask=0077 (as the systemd unit does).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "isorund.zygote", str(theirs.fileno())], stdin=subprocess.PIPE,
            env={}, pass_fds=[theirs.fileno()], cwd="/", umask=0o022)
        theirs.close()
        self.process.stdin.write(json.dumps(config).encode())
        self.process.stdin.close()
        self.control = ours
        self._hello = loop.create_future()
        self._loading = ""
        loop.add_reader(ours.fileno(), self._on_control)
        # A plugin whose import never returns would otherwise hold the daemon's start (or a
        # restart) for ever; the default is inside systemd's TimeoutStartSec (90 s), so the log
        # names the plugin before systemd gives up.
        timeout = self.config.start_timeout
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        except TimeoutError:
            self.process.kill()  # its control socket closes: _on_zygote_exit cleans up
            await self._hello
            raise RuntimeError(f"the zygote did not start within {timeout:g} s (start_timeout)"
                               + (f"; it was still importing {self._loading}" if self._loading else "")) from None
        if "fatal" in hello:
            raise RuntimeError(hello["fatal"])
        self.alive = True
        self._owed = 0  # a new zygote starts with a full pool
        self._request(self.config.pool_size)

    def _seccomp(self) -> list[str]:
        """The sandboxes' seccomp programs (base64), compiled here once: the zygote never
        loads libseccomp, so neither does any sandbox."""
        if self.config.insecure_no_isolation:
            return []
        if self._programs is None:
            self._programs = [base64.b64encode(p).decode() for p in seccomp.programs()]
        return self._programs

    async def take(self) -> Sandbox:
        """A prepared sandbox for one call. Its replacement is asked for when the call ends
        (``replace``), so that preparing it does not compete with the call for the CPU; only
        when none is waiting is one asked for at once.
        Raises ZygoteUnavailable if the zygote is down, or dies before a sandbox arrives."""
        if not self.alive:
            raise ZygoteUnavailable("the sandbox zygote is restarting; retry the call")
        if self.ready:
            self._owed += 1
            return self.ready.popleft()
        self._request(1)
        taker = asyncio.get_running_loop().create_future()
        self._takers.append(taker)
        try:
            return await taker
        except asyncio.CancelledError:
            if taker.done() and not taker.cancelled():
                self._hand_over(taker.result())  # it arrived as the caller left: not wasted
            raise

    def replace(self) -> None:
        """Asks for the sandboxes owed to the pool by calls that have ended."""
        if self._owed and self.alive:
            self._request(self._owed)
        self._owed = 0

    def _hand_over(self, sandbox: Sandbox) -> None:
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result(sandbox)
                return
        if len(self.ready) >= self.config.pool_size:
            # asked for by a call that left before it arrived, with the pool refilled
            # meanwhile: kept, it would grow the pool past pool_size for good
            sandbox.kill()
            sandbox.close()
            return
        self.ready.append(sandbox)

    def _fail_takers(self, message: str) -> None:
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_exception(ZygoteUnavailable(message))

    def _request(self, count: int) -> None:
        try:
            self.control.send(json.dumps({"spawn": count}).encode())
        except OSError:
            pass

    def _on_control(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 2)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._on_zygote_exit()
                return
            message = json.loads(data)
            if "ready" in message and len(fds) != 2:
                # Out of descriptors, the kernel dropped the sandbox's channel and pidfd from the
                # message; that sandbox sees its channel close and exits. Whoever waits for one
                # gets the next.
                for fd in fds:
                    os.close(fd)
                log.error(json.dumps({"event": "sandbox_lost", "pid": message["ready"]["pid"],
                                      "reason": "its descriptors did not arrive (is the daemon out of file descriptors?)"}))
                if self._takers:
                    self._request(1)
            elif "ready" in message:
                pid = message["ready"]["pid"]
                future = self.exits.setdefault(pid, asyncio.get_running_loop().create_future())
                sock = socket.socket(fileno=fds[0])
                sock.setblocking(False)
                self._hand_over(Sandbox(pid, fds[1], sock, future))
            elif "exited" in message:
                pid = message["exited"]["pid"]
                future = self.exits.pop(pid, None)
                if future is not None and not future.done():
                    exited = message["exited"]
                    future.set_result(Exit(exited["status"], exited.get("cpu_seconds", 0.0),
                                           OOM_KILLED if exited.get("limit") == "memory" else ""))
            elif "loading" in message:
                self._loading = str(message["loading"])
            elif self._hello is not None and not self._hello.done():
                self._hello.set_result(message)

    def _on_zygote_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.control.fileno())
        self.control.close()
        was_alive, self.alive = self.alive, False
        if self._hello is not None and not self._hello.done():
            self._hello.set_result({"fatal": "the zygote exited during start-up"})
        while self.ready:
            self.ready.popleft().close()  # they died with the zygote (PDEATHSIG)
        self._fail_takers("the sandbox zygote died before this call got a sandbox; it is being "
                          "restarted, retry the call")
        for future in self.exits.values():
            if not future.done():
                future.set_result(Exit(cause=ZYGOTE_LOST))  # in-flight calls: their sandboxes died with it
        self.exits.clear()
        status = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()  # it closed its control socket: it can serve no one any more
            status = self.process.wait()
        if was_alive and not self.stopping:
            log.error(json.dumps({"event": "zygote_died", "exit_status": status, "restarts": self.restarts}))
            if self.on_down:
                self.on_down()
            loop.create_task(self._restart())

    async def _restart(self) -> None:
        delay = 0.05
        while not self.stopping:
            try:
                await self.start()
                self.restarts += 1
                if self.on_restart:
                    self.on_restart()
                return
            except Exception as e:  # keep trying: a transient failure must not end the daemon
                log.error(json.dumps({"event": "zygote_restart_failed", "error": str(e)}))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        self.stopping = True
        self.alive = False
        self._fail_takers("isorund is shutting down")
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            for _ in range(100):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                self.process.kill()
        while self.ready:
            self.ready.popleft().close()


async def run_call(sandbox: Sandbox, plan, on_event, isolated: bool, deadline: float | None = None) -> pb.Outcome:
    """Sends ``plan`` to ``sandbox`` and relays its events to ``on_event`` until the outcome.

    Enforces what an untrusted guest cannot be trusted to enforce itself: the wall-clock
    timeout (cut short by the client's ``deadline``, a ``time.monotonic()`` value, so that no
    call runs for a client that stopped waiting), the console byte cap and the result size
    cap. Whatever happens, the sandbox is killed on return — after an outcome that kill just
    collects what the guest left behind."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    limits = plan.limits
    console_left = limits.output_bytes
    budget = plan.timeout_seconds
    if deadline is not None:
        budget = max(0.0, min(budget, deadline - started))
    try:
        async with asyncio.timeout(budget):
            try:
                folders = filesystem.detach_folders(plan.root, list(plan.host_paths)) if isolated else []
            except SandboxSetupError as e:
                return _failure(Failure(kind=Failure.SANDBOX, message=str(e)), started)
            payload = plan.SerializeToString()
            try:
                _send_folders(sandbox.sock, folders)
                await loop.sock_sendall(sandbox.sock, channel.HEADER.pack(len(payload)) + payload)
            except OSError:
                pass  # the sandbox may have failed set-up already; its report is in the channel
            finally:
                for fd in folders:
                    os.close(fd)
            reader = _FrameReader(loop, sandbox.sock)
            max_frame = limits.result_bytes + EVENT_SLACK
            event, running_seen = None, False
            while True:
                if event is None:
                    frame = await reader.next(max_frame)
                    if frame is None:
                        return await _died(sandbox, started, limits.cpu_seconds)
                    event = _parse_event(frame)
                kind = event.WhichOneof("event")
                if kind == "outcome":
                    outcome = event.outcome
                    outcome.usage.wall_seconds = time.monotonic() - started
                    return outcome
                if kind == "running" and not running_seen:
                    running_seen = True
                    await on_event(event)
                    event = None
                    continue
                if kind != "console":
                    # The guest can write to this socket itself: anything the sandbox's runtime
                    # never sends (a console batch no cap would count, a second 'running', an
                    # empty event) ends the call rather than reaching the client.
                    raise _UnexpectedEvent(kind)
                # A burst of lines already received goes out as one message, not one per line.
                # Each line costs the bytes it took on the channel, so that no line is free:
                # not an empty one, not one padded with fields the schema does not know.
                lines, event = [event.console], None
                console_left -= channel.HEADER.size + len(frame)  # (read just above: only other kinds carry over)
                while (frame := reader.buffered(max_frame)) is not None:
                    following = _parse_event(frame)
                    if following.WhichOneof("event") != "console":
                        event = following
                        break
                    lines.append(following.console)
                    console_left -= channel.HEADER.size + len(frame)
                if console_left < 0:
                    return _failure(Failure(kind=Failure.RESOURCE_LIMIT, limit="output", message=(
                        f"the call printed more than its {limits.output_bytes} console bytes")), started)
                await on_event(pb.RunEvent(console=lines[0]) if len(lines) == 1
                               else pb.RunEvent(console_batch=pb.ConsoleBatch(lines=lines)))
                # A guest that keeps its channel full would otherwise keep this loop from ever
                # waiting: its timeout, and every other call, need the event loop to run.
                await asyncio.sleep(0)
    except TimeoutError:
        if budget < plan.timeout_seconds:
            return _failure(Failure(kind=Failure.TIMEOUT, message=(
                f"the client's deadline passed after {budget:.3g} s of the call's {plan.timeout_seconds:g} s "
                "timeout; its sandbox was killed")), started)
        return _failure(Failure(kind=Failure.TIMEOUT, message=(
            f"the call did not finish within its {plan.timeout_seconds:g} s timeout; its sandbox was killed")), started)
    except _FrameTooLarge as e:
        return _failure(Failure(kind=Failure.RESOURCE_LIMIT, limit="result", message=str(e)), started)
    except _UnexpectedEvent as e:
        kind = e.args[0]
        what = "a second 'running' event" if kind == "running" else f"a {kind!r} event" if kind else "an empty event"
        return _failure(Failure(kind=Failure.SANDBOX, message=(
            f"the sandbox sent {what}, which its runtime never sends (one 'running', console "
            "lines, one outcome): something in the call wrote to its channel; the call was ended")), started)
    except ConnectionError:
        # The sandbox went away with bytes of ours unread (killed mid-plan, say by the end of
        # the shutdown grace): the same as a channel closed without an outcome.
        return await _died(sandbox, started, limits.cpu_seconds)
    except Exception as e:  # a guest that sends garbage must not take the daemon with it
        return _failure(Failure(kind=Failure.SANDBOX, message=f"the sandbox sent an invalid event: {e}"), started)
    finally:
        sandbox.kill_group() if not isolated else sandbox.kill()
        sandbox.close()


def _parse_event(frame: bytes) -> pb.RunEvent:
    """A sandbox's event, without fields the schema does not declare: those would be relayed
    to the client (and held by the daemon) uncounted."""
    event = pb.RunEvent.FromString(frame)
    event.DiscardUnknownFields()
    return event


def _send_folders(sock: socket.socket, fds: list[int]) -> None:
    """The call's folders as file descriptors, in one byte's ancillary data, ahead of the plan
    (an empty socket buffer takes one byte at once, so this never blocks)."""
    if sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []) != 1:
        raise BlockingIOError("the call's folders could not be sent")


async def _died(sandbox: Sandbox, started: float, cpu_limit: float) -> pb.Outcome:
    """The guest closed its channel without an outcome: say how it ended, if it can be known."""
    if sandbox.aborted:
        return _failure(Failure(kind=Failure.SANDBOX, message=sandbox.aborted), started)
    try:
        end = await asyncio.wait_for(asyncio.shield(sandbox.exited), 1.0)
    except TimeoutError:
        end = Exit()
    if end.cause == ZYGOTE_LOST:
        return _failure(Failure(kind=Failure.SANDBOX, message=(
            "the sandbox zygote died during the call and took its sandbox with it; a new zygote is "
            "being started, retry the call")), started)
    if end.cause == OOM_KILLED:
        return _failure(Failure(kind=Failure.RESOURCE_LIMIT, limit="memory", message=(
            "the call went over its memory limit and was killed by the kernel")), started)
    how = "" if end.status is None else f" (exit status {end.status})"
    killed = end.status in (128 + signal.SIGKILL, 128 + signal.SIGXCPU)
    # The CPU rlimit's signals can also come from elsewhere (an operator's kill -9): only a
    # sandbox that used its CPU time was ended by that limit.
    if killed and end.cpu_seconds >= cpu_limit:
        return _failure(Failure(kind=Failure.RESOURCE_LIMIT, limit="cpu",
                                message=f"the call was killed by the kernel for using up its CPU time{how}"), started)
    if killed:
        return _failure(Failure(kind=Failure.SANDBOX, message=(
            f"the sandbox was killed from outside the call{how}, after {end.cpu_seconds:.3g} s of "
            f"its {cpu_limit:g} s of CPU")), started)
    return _failure(Failure(kind=Failure.SANDBOX, message=f"the sandbox ended without reporting an outcome{how}"), started)


def _failure(failure: pb.Failure, started: float) -> pb.Outcome:
    return pb.Outcome(failure=failure, usage=pb.Usage(wall_seconds=time.monotonic() - started))


class _FrameTooLarge(Exception):
    pass


class _UnexpectedEvent(Exception):
    """An event kind the sandbox's runtime never sends at that point (args[0]: the kind, or None)."""


class _FrameReader:
    """Reads length-prefixed frames from a non-blocking socket with the event loop."""

    def __init__(self, loop, sock):
        self.loop, self.sock, self.buf = loop, sock, bytearray()

    async def next(self, max_bytes: int) -> bytes | None:
        header = await self._exactly(channel.HEADER.size)
        if header is None:
            return None
        (size,) = channel.HEADER.unpack(header)
        if size > max_bytes:
            raise _FrameTooLarge(f"the call sent an event of {size} bytes, over its {max_bytes}-byte limit")
        return await self._exactly(size)

    def buffered(self, max_bytes: int) -> bytes | None:
        """The next frame if it has been received whole already, else None (never waits)."""
        if len(self.buf) < channel.HEADER.size:
            return None
        (size,) = channel.HEADER.unpack_from(self.buf)
        if size > max_bytes:
            raise _FrameTooLarge(f"the call sent an event of {size} bytes, over its {max_bytes}-byte limit")
        end = channel.HEADER.size + size
        if len(self.buf) < end:
            return None
        data = bytes(self.buf[channel.HEADER.size:end])
        del self.buf[:end]
        return data

    async def _exactly(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            chunk = await self.loop.sock_recv(self.sock, max(65536, size - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data
