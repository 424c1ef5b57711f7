"""The daemon's lifecycle and its gRPC server.

``Server.serve()`` is the life of the process, top to bottom: start the zygote → prove a
sandbox can be built → start gRPC (behind the access front when an allowlist is set) →
notify READY → wait for SIGTERM/SIGINT → health NOT_SERVING → notify STOPPING → let in-flight
calls finish within the grace period → kill what is left → remove the socket. The servicer
(``isorund.servicer``) only translates between protobuf and ``Calls``, and maps errors to
status codes.
"""
from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import shutil
import signal
import socket
import stat

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

from . import __version__, descriptors, id_range, logs, privileges, state, systemd
from .access import AccessFront, Allowlist, prepare_private_folder
from .calls import SELF_TEST_PEER, Calls
from .config import resolve_id
from .launcher import Launcher, ZygoteUnavailable
from .metrics import Metrics
from .servicer import SERVICE, RunnerServicer, runner_handler

log = logging.getLogger("isorund")
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The self-test's guest: it also takes PROBE_MIB of fresh memory, so that a memory limit that
# leaves a call nothing beyond what the runtime itself maps fails the start, not every call.
PROBE_MIB = 8
PROBE = "def probe(mib):\n    return len(bytearray(mib << 20)) >> 20\n"
# The config key behind each limit a self-test's failure may name (see Failure.limit).
LIMIT_KEYS = {"result": "result_bytes", "output": "output_bytes", "cpu": "cpu_seconds"}
STATUS_INTERVAL = 1.0  # seconds between checks of the systemd status line
KILL_SLACK = 2.0  # seconds, after the grace, for killed calls to send their answer
# Seconds grpc gets, once every call has answered, to write out the answers; streams that
# never end by themselves (a health Watch) are cut then.
FLUSH_SECONDS = 1.0


class _StartRefused(Exception):
    """A SystemExit of the start, carried out of its task (see ``Server._start``)."""


class Server:
    def __init__(self, config):
        self.config = config
        self.isolated = not config.insecure_no_isolation
        self.stopping = False
        self.state_dir = ""
        self._state_lock = -1  # held while the daemon lives: see isorund/state.py
        self.zygote: Launcher | None = None
        self.calls: Calls | None = None
        self.grpc: grpc.aio.Server | None = None
        self.front: AccessFront | None = None
        self._owns_socket = False  # set once our listener exists: only then is the socket ours to remove
        self._runs = 0  # Run/RunStream handlers in progress
        self._no_runs = asyncio.Event()
        self._no_runs.set()
        self.health = health.aio.HealthServicer()
        self._serving = False  # the health status last decided; see _set_health
        self.metrics = Metrics()

    async def serve(self, stopped_before: list[int] = ()) -> int:
        """Runs the daemon until a stop signal; ``stopped_before`` holds those that came before
        this was called (``cli``), each obeyed as if it came now."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if stopped_before:
            stop.set()
        # Their default would end the daemon at once, without draining its calls (a log rotation
        # sending SIGHUP or SIGUSR1 did); there is nothing to reload and no log file to reopen.
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            loop.add_signal_handler(sig, lambda name=sig.name: log.warning(json.dumps({
                "event": "signal_ignored", "signal": name,
                "note": "isorund has no reload and writes no log file; restart it to apply a new config"})))
        starting = loop.create_task(self._start())
        signalled = loop.create_task(stop.wait())
        try:
            # a stop asked for during the start (a plugin slow to import, a stuck self-test)
            # is obeyed at once, not after the start
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                await self.cleanup()
                log.info(json.dumps({"event": "stopped", "note": "stopped during start-up"}))
                return 0
            try:
                starting.result()
            except _StartRefused as e:
                raise SystemExit(e.args[0]) from None
        except BaseException:
            signalled.cancel()
            await self.cleanup()
            raise
        signalled.cancel()
        systemd.notify("READY=1", f"STATUS={self.status()}")
        log.info(json.dumps({"event": "ready", "socket": self.config.socket, "isolation": self.isolation_name(),
                             "access": "allowlist" if self.front else "socket permissions",
                             "version": __version__, "pid": os.getpid()}))
        reporter = loop.create_task(self._report_status())
        watchdog = loop.create_task(self._feed_watchdog(systemd.watchdog_interval()))
        await stop.wait()
        reporter.cancel()
        await self.shutdown()
        watchdog.cancel()
        return 0

    async def _start(self) -> None:
        """``startup`` as a task: a SystemExit raised inside a task escapes the event loop at
        once and leaves the task's exception unretrieved (a traceback at exit), so it travels
        as an ordinary exception until ``serve`` raises it again."""
        try:
            await self.startup()
        except SystemExit as e:
            raise _StartRefused(e.code) from None

    async def startup(self) -> None:
        if not self.isolated:
            log.warning(json.dumps({"event": "insecure", "warning":
                "running WITHOUT kernel isolation (--insecure-no-isolation): guests can reach this host"}))
        elif os.geteuid() != 0:
            raise SystemExit("isorund needs root to build sandboxes (namespaces, mounts, per-call uids); "
                             "run it as root (systemd does) or, for development only, with --insecure-no-isolation")
        else:
            privileges.keep_only_needed()  # before any thread or the zygote starts
            if why := id_range.refusal(self.config.sandbox_uid_base, self.config.sandbox_uid_count):
                raise SystemExit(why)
        logs.start_writing()  # (a thread: only now that the capabilities are dropped)
        descriptors.raise_limit(self.config.max_connections, self.config.max_concurrency + self.config.pool_size,
                                allowlist=bool(self.config.allowed_uids or self.config.allowed_gids))
        # Before anything is started: a second daemon on a live socket (or a typo naming a file)
        # is refused at once, not after a zygote and a self-test call it cannot use. Checked
        # again when listening, in case one appeared meanwhile.
        _claim_socket(self.config.socket)
        if self.config.metrics_address:
            self.metrics.serve(self.config.metrics_address)
        # Under systemd the state lives in RuntimeDirectory (/run/isorund), else under $TMPDIR.
        self.state_dir, self._state_lock = state.create(os.environ.get("RUNTIME_DIRECTORY") or None)
        os.mkdir(os.path.join(self.state_dir, "root"))
        self.zygote = Launcher(self.config, os.path.join(self.state_dir, "root"),
                             on_restart=self._on_zygote_restart, on_down=self._on_zygote_down,
                             on_stall=self._on_zygote_stall)
        await self.zygote.start()
        self.calls = Calls(self.config, self.zygote, self.metrics)
        self.metrics.watch(self.calls, self.zygote)
        await self._probe()
        self.zygote.wait_through_refusals = True  # (see Launcher._on_spawn_failed)
        await self._listen()
        await self._set_health(True)

    async def _listen(self) -> None:
        """Starts gRPC on the public socket, or behind the access front on a private one."""
        # HTTP/2 lets a connection open streams without end, and gRPC holds each one from its
        # first bytes, before any handler (or the queue) sees it: 20,000 streams that never sent
        # their request took the daemon 410 MiB (seen). gRPC refuses past max_open_rpcs.
        self.grpc = grpc.aio.server(maximum_concurrent_rpcs=self.config.max_open_rpcs, options=[
            ("grpc.max_receive_message_length", self.config.max_request_bytes),
            ("grpc.max_send_message_length", self.config.max_request_bytes),
            # past it grpc closes a new connection at once: idle ones cannot use up the
            # daemon's descriptors (behind the allowlist front, the front's relay is closed
            # and the front closes its client)
            ("grpc.max_allowed_incoming_connections", self.config.max_connections),
            # Calls that arrive faster than the event loop takes them wait in a queue of gRPC's
            # own, which by default cancels some past 1,000 and all past 3,000 (CANCELLED, seen
            # in a burst of 2,000): up to max_open_rpcs they must reach the daemon's own queue.
            ("grpc.server.max_pending_requests", self.config.max_open_rpcs),
            ("grpc.server.max_pending_requests_hard_limit", self.config.max_open_rpcs),
        ])
        self.grpc.add_generic_rpc_handlers([runner_handler(RunnerServicer(self))])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection((SERVICE, HEALTH, reflection.SERVICE_NAME), self.grpc)
        _claim_socket(self.config.socket)
        uids, gids = self.config.access_ids()
        if uids or gids:
            private = prepare_private_folder(self.state_dir)
            self.front = AccessFront(self.config.socket, private, Allowlist(uids, gids))
            self.grpc.add_insecure_port("unix:" + private)
            await self.grpc.start()
            await self.front.start()
        else:
            self.grpc.add_insecure_port("unix:" + self.config.socket)
            await self.grpc.start()
        self._owns_socket = True
        _restrict_socket(self.config)

    async def _probe(self) -> None:
        """Runs one real call through a real sandbox: if the kernel refuses any step, the
        daemon must not start (fail closed), and the message says which step."""
        folder = os.path.join(self.state_dir, "probe")
        os.mkdir(folder)
        with open(os.path.join(folder, "probe.py"), "w") as f:
            f.write(PROBE)
        # Explicit modes: the guest reads these as an unprivileged uid, whatever our umask.
        os.chmod(folder, 0o755)
        os.chmod(os.path.join(folder, "probe.py"), 0o644)
        request = sb.RelayedRunRequest(root=folder, file="probe.py", func_name="probe",
                                       args=[_codec.encode(PROBE_MIB).SerializeToString()])

        async def ignore(event):
            pass
        try:
            outcome = await self.calls.run(request, ignore, deadline=None, peer=SELF_TEST_PEER)
        except ZygoteUnavailable as e:
            why = str(e) if self.zygote.alive else \
                f"the zygote died preparing it: {self.zygote.last_fatal or 'see its lines above'}"
            raise SystemExit(f"isorund cannot build a sandbox on this host: {why}") from None
        if outcome.WhichOneof("result") != "value" or _codec.decode(struct_pb2.Value.FromString(outcome.value)) != PROBE_MIB:
            raise SystemExit(self._probe_failed(outcome.failure))

    def _probe_failed(self, failure: pb.Failure) -> str:
        """Why the daemon will not start, naming the config key when the self-test failed by a
        limit of the config rather than by the host."""
        if failure.kind == pb.Failure.RESOURCE_LIMIT and failure.limit == "memory":
            return (f"config key 'limits.memory_bytes' ({self.config.limits.memory_bytes}) leaves a call no memory: "
                    f"the self-test call could not take {PROBE_MIB} MiB beyond what the runtime itself maps "
                    "(tens of MiB of address space, more with large plugins); raise it")
        key = LIMIT_KEYS.get(failure.limit) if failure.kind == pb.Failure.RESOURCE_LIMIT else None
        if key:  # every call would fail the same way: the config's limit, not the host
            return (f"config key 'limits.{key}' ({getattr(self.config.limits, key)}) is too small for even the "
                    f"self-test call, which returns the number {PROBE_MIB}: {failure.message}")
        if failure.kind == pb.Failure.TIMEOUT:
            return (f"the self-test call did not finish within default_timeout ({self.config.default_timeout:g} s), "
                    "the timeout of every call that names none; raise it if it is that short, else "
                    f"the host is too slow or busy: {failure.message}")
        return f"isorund cannot build a sandbox on this host: {failure.message}"

    async def shutdown(self) -> None:
        """Stops accepting, gives in-flight and queued calls ``shutdown_grace`` seconds, then
        kills their sandboxes so that each still gets an answer saying why."""
        self.stopping = True
        self.zygote.draining = True
        grace = self.config.shutdown_grace
        await self._set_health(False)
        systemd.notify("STOPPING=1", f"STATUS=stopping: {self.status()}")
        log.info(json.dumps({"event": "stopping", "grace_seconds": grace, "running": self.calls.admission.running,
                             "queued": self.calls.admission.waiting}))
        # The socket stays open while calls drain: health checks see NOT_SERVING and new calls
        # are answered UNAVAILABLE (and logged), instead of finding no daemon. The drain waits
        # for the calls only: a health Watch stream never ends by itself.
        try:
            await asyncio.wait_for(self._no_runs.wait(), grace)
        except TimeoutError:
            left = len(self.calls.in_flight)
            self.calls.abort_all(f"isorund is shutting down and the call did not finish within its "
                                 f"shutdown_grace of {grace:g} s; its sandbox was killed")
            log.warning(json.dumps({"event": "grace_expired", "killed_calls": left}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._no_runs.wait(), KILL_SLACK)
        if self.front is not None:
            self.front.stop_accepting()
        await self.grpc.stop(FLUSH_SECONDS)
        await self.cleanup()
        log.info(json.dumps({"event": "stopped"}))

    async def cleanup(self) -> None:
        if self.grpc is not None and not self.stopping:
            await self.grpc.stop(0)  # start-up failed after gRPC started
        if self.front is not None:
            self.front.close()
        if self.zygote is not None:
            await self.zygote.stop()
        if self._owns_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.socket)
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._state_lock >= 0:
            os.close(self._state_lock)
            self._state_lock = -1
        self.metrics.stop()

    @contextlib.contextmanager
    def rpc_in_flight(self):
        """Counts a Run or RunStream in progress, for the shutdown's drain."""
        self._runs += 1
        self._no_runs.clear()
        try:
            yield
        finally:
            self._runs -= 1
            if not self._runs:
                self._no_runs.set()

    def status(self) -> str:
        """The one-line state systemd shows in ``systemctl status``."""
        if self.calls is None:
            return "starting"
        a = self.calls.admission
        zygote = ("ZYGOTE DOWN, restarting" if not self.zygote.alive else
                  "ZYGOTE STALLED, no sandbox for calls" if self.zygote.stalled_since is not None else "zygote up")
        return (f"{a.running}/{a.max_concurrency} sandboxes busy, {a.waiting} calls queued, {zygote}, "
                f"{self.zygote.restarts} zygote restarts")

    async def _report_status(self) -> None:
        """Keeps STATUS= current, sending only changes, while $NOTIFY_SOCKET exists."""
        last = None
        while systemd.enabled():
            text = self.status()
            if text != last:
                systemd.notify(f"STATUS={text}")
                last = text
            await asyncio.sleep(STATUS_INTERVAL)

    @staticmethod
    async def _feed_watchdog(interval: float | None) -> None:
        """Pings systemd's watchdog (WatchdogSec=) from the event loop, so a loop that stops
        turning (a deadlock, a call that blocks it) stops the pings, and systemd restarts the
        daemon instead of leaving it up and answering nothing."""
        while interval:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _set_health(self, serving: bool) -> None:
        """Each name gets the status last decided, not this call's: two changes in quick
        succession (a stall and its end) may run interleaved, and must end as the later one."""
        self._serving = serving
        for name in ("", SERVICE):
            status = health_pb2.HealthCheckResponse.SERVING if self._serving else health_pb2.HealthCheckResponse.NOT_SERVING
            await self.health.set(name, status)

    def _on_zygote_restart(self) -> None:
        if not self.stopping:
            log.info(json.dumps({"event": "zygote_restarted", "restarts": self.zygote.restarts}))
            asyncio.get_running_loop().create_task(self._set_health(True))

    def _on_zygote_down(self) -> None:
        asyncio.get_running_loop().create_task(self._set_health(False))

    def _on_zygote_stall(self, stalled: bool) -> None:
        """A stalled zygote serves no call, as a dead one does not; it is not restarted (that
        would kill the calls running in its sandboxes), so health says it until it delivers."""
        if not self.stopping:
            asyncio.get_running_loop().create_task(self._set_health(not stalled))

    def isolation_name(self) -> str:
        return "kernel" if self.isolated else "none (insecure)"

    def capabilities(self) -> pb.Capabilities:
        c = self.config
        limits = pb.Limits(**{f.name: getattr(c.limits, f.name) for f in pb.Limits.DESCRIPTOR.fields})
        return pb.Capabilities(
            version=__version__,
            isolation=pb.Capabilities.KERNEL if self.isolated else pb.Capabilities.NONE,
            type_names=sorted(_codec.BUILTIN_NAMES | set(c.types)),
            compilers=sorted(c.plugins.compilers), resolvers=sorted(c.plugins.resolvers),
            args_resolvers=sorted(c.plugins.args_resolvers), limits=limits,
            default_timeout_seconds=c.default_timeout, max_timeout_seconds=c.max_timeout,
            default_external=sorted(c.default_external), max_concurrency=c.max_concurrency)


def _restrict_socket(config) -> None:
    """Mode, then group. Until then the socket has the umask's mode, which lets no other user
    connect (connecting needs write permission), so there is no window of wider access."""
    os.chmod(config.socket, config.socket_mode)
    if config.socket_group:
        try:
            os.chown(config.socket, -1, resolve_id(config.socket_group, grp.getgrnam))
        except PermissionError:
            raise SystemExit(f"cannot give the socket to group {config.socket_group!r} (config key "
                             "'socket_group'): the daemon needs CAP_CHOWN for that") from None


def _make_folders(folder: str) -> None:
    """Makes the socket's missing folders 0755, whatever the umask: under the unit's UMask=0077
    they were 0700, and the members of ``socket_group`` could not reach the socket. Folders
    that exist are left as they are."""
    if os.path.isdir(folder):
        return
    _make_folders(os.path.dirname(folder))
    try:
        os.mkdir(folder)
    except FileExistsError:  # made meanwhile, or not a folder: the bind will say so
        return
    os.chmod(folder, 0o755)  # mkdir's mode is masked by the umask


def _claim_socket(path: str) -> None:
    """Removes a stale socket left by a crashed daemon; refuses to steal a live one."""
    folder = os.path.dirname(path)
    _make_folders(folder)
    if not os.access(folder, os.W_OK | os.X_OK):
        # gRPC's own refusal said only "Failed to bind to address" (found by a probe)
        owner = os.stat(folder)
        raise SystemExit(f"isorund may not make its socket in {folder} (config key 'socket'): the folder "
                         f"belongs to uid {owner.st_uid} with mode {stat.S_IMODE(owner.st_mode):04o}, and the "
                         "daemon keeps no capability to write in others' folders (docs/security.md, "
                         "Requirements); use a folder root may write in, such as /run/isorund")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        # a typo in the socket path must not cost someone a file: only a socket is removed
        raise SystemExit(f"{path} exists and is not a socket; isorund will not replace it "
                         "(config key 'socket')")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise SystemExit(f"another isorund is already serving on {path}")
