"""The daemon's side of the sandboxes: the zygote process and the pool of prepared sandboxes.

Parent-side code only: nothing here runs in a sandbox. The zygote is a separate, fresh
interpreter (never a fork of this threaded gRPC process); it hands over each prepared sandbox
as its call channel and a pidfd, so the daemon talks to sandboxes directly and can kill a
call's whole pid namespace without racing pid reuse. One call's run on a sandbox is
``isorund.sandbox_call``.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys

from isorund.config import StartError
from isorund.sandbox import seccomp

from .sandbox_handle import OOM_KILLED, ZYGOTE_LOST, ZYGOTE_LOST_STOPPING, Exit, Sandbox
from .stall import StallWatch

log = logging.getLogger("isorund")
# A sandbox lost from the pool (dead before its call, or its descriptors dropped) is asked for
# again after this long, doubled at each loss until one lives to be taken, up to the longest;
# or when a call ends, if that comes first. At once, a host that kills every sandbox (or a
# daemon out of descriptors) had the zygote fork in a loop, 350 sandboxes and log lines a
# second; only at a call's end, an idle daemon's pool would stay short.
LOST_RETRY_SECONDS = (1.0, 30.0)
# A zygote that dies within this long of its start is restarted after a delay, doubled at each
# such death up to the last: one that dies as soon as it serves (its spawns failing) was
# restarted at once, four times a second, each a new interpreter importing everything.
STABLE_SECONDS = 10.0
RESTART_DELAYS = (0.05, 5.0)  # the first delay and the longest


class ZygoteUnavailable(Exception):
    """The zygote is not running (it died and is being restarted, or the daemon is stopping)."""


class Launcher:
    """Starts, feeds and restarts the zygote process; hands out prepared sandboxes. The daemon's
    side (named apart from ``isorund.zygote.Zygote``, which runs in the zygote process)."""

    def __init__(self, config, new_root: str, on_restart=None, on_down=None, on_stall=None):
        self.config = config
        self.new_root = new_root
        self._programs: list[str] | None = None
        self.ready: collections.deque[Sandbox] = collections.deque()  # prepared, waiting for a call
        self._takers: collections.deque[asyncio.Future] = collections.deque()  # calls waiting for one
        self._owed = 0  # sandboxes taken from the pool (or lost from it) not yet asked for again
        self._asked = 0  # sandboxes asked for by waiting calls (see take) that have not arrived
        self.prepared = 0   # sandboxes received from the zygote
        self.discarded = 0  # … of them killed unused: asked for by calls that left, pool full
        self._lost_retry: asyncio.TimerHandle | None = None
        self._lost_delay = LOST_RETRY_SECONDS[0]
        self.exits: dict[int, asyncio.Future] = {}
        self.process: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.alive = False
        self.stopping = False
        self.restarts = 0
        self._started_at = 0.0  # loop time the running zygote said hello
        self._quick_deaths = 0  # deaths in a row, each within STABLE_SECONDS of its start
        self.on_restart = on_restart
        self.on_down = on_down
        self.stall = StallWatch(on_stall, self._waiting, lambda: self.alive)
        self._hello: asyncio.Future | None = None
        self._loading = ""  # the plugin the starting zygote said it was importing
        self.last_fatal = ""  # why the zygote last said it was dying, if it said so
        # Before the daemon's self-test has passed, a sandbox the kernel refuses fails the start
        # at once (see _on_spawn_failed); after, calls wait for the sandbox asked for again.
        self.wait_through_refusals = False
        # The daemon is shutting down (its grace period): a zygote that dies now is not started
        # again, and the calls it takes with it are told so, not to retry (seen: "a new zygote
        # is being started", then a restart the stopping daemon never used).
        self.draining = False

    @property
    def stalled_since(self) -> float | None:
        """Loop time a stall of the zygote was seen from, or None (see isorund.stall)."""
        return self.stall.since

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
        # A process group of its own: a stop signalled to the daemon's group (`kill -- -PGID`,
        # `timeout`, dumb-init, supervisord's killasgroup) reached the zygote too, which died
        # and took every call in flight with it instead of letting them finish within the
        # grace; the daemon stops the zygote itself, and it dies with the daemon (PDEATHSIG).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "isorund.zygote", str(theirs.fileno())], stdin=subprocess.PIPE,
            env={}, pass_fds=[theirs.fileno()], cwd="/", umask=0o022, process_group=0)
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
            raise StartError(f"the zygote did not start within {timeout:g} s (start_timeout)"
                               + (f"; it was still importing {self._loading}" if self._loading else "")) from None
        if "fatal" in hello:
            raise StartError(hello["fatal"])
        self.alive = True
        self._started_at = loop.time()
        self._owed = self._asked = 0  # a new zygote starts with a full pool, owing no one
        self._lost_delay = LOST_RETRY_SECONDS[0]
        self._request(self.config.pool_size)

    def _seccomp(self) -> list[str]:
        """The sandboxes' seccomp programs (base64), compiled here once: the zygote never
        loads libseccomp, so neither does any sandbox."""
        if self.config.insecure_no_isolation:
            return []
        if self._programs is None:
            self._programs = [base64.b64encode(p).decode() for p in seccomp.programs()]
        return self._programs

    async def take(self, timeout: float | None = None) -> Sandbox:
        """A prepared sandbox for one call. Its replacement is asked for when the call ends
        (``replace``), so that preparing it does not compete with the call for the CPU; only
        when none is waiting is one asked for at once.
        Raises ZygoteUnavailable if the zygote is down, or dies before a sandbox arrives, and
        TimeoutError when none has arrived within ``timeout`` seconds (a pooled one never waits)."""
        if not self.alive:
            raise ZygoteUnavailable("the sandbox zygote is restarting; retry the call")
        if self.ready:
            self._owed += 1
            self._lost_delay = LOST_RETRY_SECONDS[0]  # sandboxes live again
            return self.ready.popleft()
        while self._takers and self._takers[0].done():
            self._takers.popleft()  # calls that left (their wait ran out, their client went)
        taker = asyncio.get_running_loop().create_future()
        self._takers.append(taker)
        self._ask_for_waiting()
        self.stall.watch()
        try:
            async with asyncio.timeout(timeout):
                return await taker
        except (asyncio.CancelledError, TimeoutError):  # the caller left, or its wait ran out
            if taker.done() and not taker.cancelled():
                self._hand_over(taker.result())  # it arrived as the caller left: not wasted
            raise

    def replace(self) -> None:
        """Asks for the sandboxes owed to the pool by calls that have ended (and lost ones)."""
        if self._lost_retry is not None:
            self._lost_retry.cancel()
            self._lost_retry = None
        owed, self._owed = self._owed, 0
        if owed and self.alive and not self._request(owed):
            self._owe_later(owed)  # the zygote is not reading its requests (stalled): later

    def _waiting(self) -> int:
        return sum(not taker.done() for taker in self._takers)

    def _ask_for_waiting(self) -> None:
        """Keeps one sandbox on its way for each waiting call. Those asked for by calls that
        have left still arrive, and serve the calls waiting then: asking again for every call
        (a zygote stalled while calls came and left) had it prepare a sandbox for each of them
        once it ran again, only for the pool to kill it."""
        if self._asked < self._waiting() and self._request(1):
            self._asked += 1

    def _arrived(self) -> None:
        """A sandbox came from the zygote (or was lost on the way): one fewer on its way, and
        the zygote is not stalled."""
        self._asked = max(0, self._asked - 1)
        self.stall.end()

    def _hand_over(self, sandbox: Sandbox) -> None:
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result(sandbox)
                return
        if len(self.ready) >= self.config.pool_size:
            # asked for by a call that left before it arrived, with the pool refilled
            # meanwhile: kept, it would grow the pool past pool_size for good
            self.discarded += 1
            sandbox.kill()
            sandbox.close()
            return
        self.ready.append(sandbox)

    def _forget_if_pooled(self, pid: int, status: int) -> None:
        """A prepared sandbox that died before its call (the host's OOM killer, an operator's
        kill) leaves the pool, and another is asked for: handed out, it would fail a call in
        which no guest code ran."""
        for sandbox in self.ready:
            if sandbox.pid == pid:
                self.ready.remove(sandbox)
                sandbox.close()
                log.warning(json.dumps({"event": "sandbox_lost", "pid": pid,
                                        "reason": f"it died in the pool before its call (exit status {status})"}))
                self._owe_later()
                return

    def _fail_takers(self, message: str) -> None:
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_exception(ZygoteUnavailable(message))

    def _request(self, count: int) -> bool:
        """Asks the zygote for ``count`` sandboxes; False if the request could not be sent."""
        try:
            self.control.send(json.dumps({"spawn": count}).encode())
        except OSError:
            return False
        return True

    def _on_control(self) -> None:
        """Reads what the zygote sent until nothing is left; an empty read is its death."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 65536, 2)
            except BlockingIOError:
                return
            except ConnectionResetError:
                # The zygote exited with requests of ours unread: the kernel reports that once,
                # ahead of the messages it sent before (a "fatal" saying why); read on.
                continue
            except OSError:
                data, fds = b"", []
            if not data:
                self._on_zygote_exit()
                return
            self._on_message(json.loads(data), fds)

    def _on_message(self, message: dict, fds: list[int]) -> None:
        if "ready" in message and len(fds) == 2:
            self._on_ready(message["ready"]["pid"], fds)
        elif "ready" in message:
            self._on_lost_on_the_way(message["ready"]["pid"], fds)
        elif "exited" in message:
            self._on_exited(message["exited"])
        elif "spawn_failed" in message:
            failed = message["spawn_failed"]
            self._on_spawn_failed(int(failed["missing"]), str(failed["error"]), bool(failed.get("ids_in_use")))
        elif "loading" in message:
            self._loading = str(message["loading"])
        elif "log" in message:  # the zygote's own lines (zygote._log)
            level = {"warning": logging.WARNING, "error": logging.ERROR}.get(message.get("level"), logging.INFO)
            log.log(level, json.dumps(message["log"]))
        elif self._hello is not None and not self._hello.done():
            self._hello.set_result(message)
        elif "fatal" in message:
            self.last_fatal = str(message["fatal"])
            log.error(json.dumps({"event": "zygote_failed", "error": self.last_fatal}))

    def _on_ready(self, pid: int, fds: list[int]) -> None:
        """A prepared sandbox: its call channel and pidfd."""
        future = self.exits.setdefault(pid, asyncio.get_running_loop().create_future())
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        self.prepared += 1
        self._arrived()
        self._hand_over(Sandbox(pid, fds[1], sock, future))
        if self._waiting():
            self.stall.watch()

    def _on_lost_on_the_way(self, pid: int, fds: list[int]) -> None:
        """Out of descriptors, the kernel dropped the sandbox's channel and pidfd from the
        message; that sandbox sees its channel close and exits. Whoever waits for one gets the
        next; with no one waiting, the pool is owed one (``_owe_later``)."""
        for fd in fds:
            os.close(fd)
        log.error(json.dumps({"event": "sandbox_lost", "pid": pid,
                              "reason": "its descriptors did not arrive (is the daemon out of file descriptors?)"}))
        self._arrived()
        if self._waiting():
            self._ask_for_waiting()
        else:
            self._owe_later()

    def _on_spawn_failed(self, missing: int, error: str, ids_in_use: bool) -> None:
        """The kernel refused the zygote ``missing`` of the sandboxes asked for, for now (a
        task limit that calls' processes use up as well, memory, descriptors): they are owed,
        and asked for again after the delay, as lost ones are. Calls waiting for a sandbox get
        one of those, or their wait runs out; before the daemon's self-test has passed, the
        call waiting (the self-test's) fails at once, and with it the start."""
        if self._waiting():
            # calls wait for it: asked again each second, not after the growing delay (once the
            # limit cleared, waiting calls waited up to 30 s more: found by a probe)
            self._lost_delay = LOST_RETRY_SECONDS[0]
            if self._lost_retry is not None:
                self._lost_retry.cancel()
                self._lost_retry = None
        log.warning(json.dumps({"event": "sandbox_spawn_failed", "missing": missing, "error": error,
                                "retry_in_seconds": self._lost_delay,
                                "note": "every host id of sandbox_uid_count is held by sandboxes still exiting; "
                                        "a larger range avoids the wait" if ids_in_use else
                                        "the kernel refused a new sandbox; is a tasks or memory limit reached?"}))
        self._asked = max(0, self._asked - missing)
        self._owe_later(missing)
        if not self.wait_through_refusals:
            self._fail_takers(f"the kernel refused the zygote a sandbox: {error}")

    def _owe_later(self, count: int = 1) -> None:
        """The pool is owed ``count`` more sandboxes, asked for after the delay (see LOST_RETRY_SECONDS)."""
        self._owed += count
        if self._lost_retry is None:
            self._lost_retry = asyncio.get_running_loop().call_later(self._lost_delay, self.replace)
            self._lost_delay = min(self._lost_delay * 2, LOST_RETRY_SECONDS[1])

    def _on_exited(self, exited: dict) -> None:
        """A sandbox's end as its zygote reaped it: for its call's outcome, or the pool's loss."""
        future = self.exits.pop(exited["pid"], None)
        if future is not None and not future.done():
            future.set_result(Exit(exited["status"], exited.get("cpu_seconds", 0.0),
                                   exited.get("peak_memory_bytes", 0),
                                   OOM_KILLED if exited.get("limit") == "memory" else "",
                                   exited.get("signal", 0)))
        self._forget_if_pooled(exited["pid"], exited["status"])

    def _on_zygote_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.control.fileno())
        self.control.close()
        was_alive, self.alive = self.alive, False
        self.stall.end(recovered=False)  # a dead zygote is reported as such (on_down)
        if self._hello is not None and not self._hello.done():
            self._hello.set_result({"fatal": "the zygote exited during start-up"})
        while self.ready:
            self.ready.popleft().close()  # they died with the zygote (PDEATHSIG)
        self._fail_takers("isorund is shutting down; the call was not started" if self.draining else
                          "the sandbox zygote died before this call got a sandbox; it is being restarted, retry the call")
        for future in self.exits.values():
            if not future.done():  # in-flight calls: their sandboxes died with it
                future.set_result(Exit(cause=ZYGOTE_LOST_STOPPING if self.draining else ZYGOTE_LOST))
        self.exits.clear()
        if was_alive and self.draining and not self.stopping:
            log.error(json.dumps({"event": "zygote_died", "restarts": self.restarts, "restart_in_seconds": None,
                                  "note": "while isorund was shutting down: not started again"}))
        if was_alive and not self.stopping and not self.draining:
            if self.on_down:
                self.on_down()
            loop.create_task(self._after_death(self.process))

    async def _after_death(self, process: subprocess.Popen | None) -> None:
        """Logs how the zygote ended and starts another. Its control socket closes a moment
        before it has exited: it is given that moment (waiting on the event loop would hold
        every call), then killed, as one that closed it can serve no one any more."""
        status = None
        if process is not None:
            for _ in range(50):
                if (status := process.poll()) is not None:
                    break
                await asyncio.sleep(0.01)
            else:
                process.kill()
                while (status := process.poll()) is None:
                    await asyncio.sleep(0.01)
        wait = self._restart_delay()
        log.error(json.dumps({"event": "zygote_died", "exit_status": status, "restarts": self.restarts,
                              "restart_in_seconds": wait}))
        await self._restart(wait)

    def _restart_delay(self) -> float:
        """No delay after a zygote that lived ``STABLE_SECONDS``; else doubling from the first of
        ``RESTART_DELAYS`` to the last, death after quick death."""
        quick = asyncio.get_running_loop().time() - self._started_at < STABLE_SECONDS
        self._quick_deaths = self._quick_deaths + 1 if quick else 0
        if not self._quick_deaths:
            return 0.0
        first, longest = RESTART_DELAYS
        return min(first * 2 ** (self._quick_deaths - 1), longest)

    async def _restart(self, wait: float = 0.0) -> None:
        await asyncio.sleep(wait)
        delay = RESTART_DELAYS[0]
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
                delay = min(delay * 2, RESTART_DELAYS[1])

    async def stop(self) -> None:
        serving = self.alive
        self.stopping = True
        self.alive = False
        self.stall.end(recovered=False)
        self._fail_takers("isorund is shutting down")
        if self.process is not None and self.process.poll() is None:
            # It ignores SIGTERM (zygote.IGNORED_SIGNALS): a serving zygote ends when its
            # control socket closes; one still starting is not reading it.
            if serving:
                self.control.shutdown(socket.SHUT_WR)
            else:
                self.process.kill()
            for _ in range(100):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                log.warning(json.dumps({"event": "zygote_killed", "note": "it did not exit within 2 s "
                                        "of the daemon closing its control socket"}))
                self.process.kill()
        while self.ready:
            self.ready.popleft().close()
