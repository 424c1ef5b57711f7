"""The zygote: a clean, single-threaded process that forks one sandbox per call.

The daemon starts it (``python -m isorund.zygote``) before gRPC starts any thread, with an
empty environment — what a sandbox's ``/proc/self/environ`` shows is the zygote's — and gives
it the effective config on stdin and one end of a SOCK_SEQPACKET control socket (its fd
number is the only argument).
It imports everything a guest call needs (the runtime, protobuf, the codec, the plugins, the
default externals), so a forked sandbox starts warm.

Control messages, one JSON object per packet:
    daemon → zygote   {"spawn": N}                      prepare N more sandboxes
    zygote → daemon   {"hello": {...}} or {"fatal": msg}  once, after start
                      {"ready": {"pid": P}} + fds [channel, pidfd]   a prepared sandbox
                      {"exited": {"pid": P, "status": S}}            a sandbox's init exited
The zygote reaps its sandboxes (it is their parent) and recycles their host ids.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import sysconfig

def main() -> int:
    config = json.loads(sys.stdin.read())
    control = socket.socket(fileno=int(sys.argv[1]))
    try:
        zygote = Zygote(config, control)
    except Exception as e:  # a plugin that fails to load, a sandbox the kernel refuses, …
        _send(control, {"fatal": f"{type(e).__name__}: {e}"})
        return 1
    _send(control, {"hello": {"pid": os.getpid()}})
    zygote.serve()
    return 0


class Zygote:
    def __init__(self, config: dict, control: socket.socket):
        from . import plugins as plugin_loader
        from .config import Config
        from .sandbox import SandboxPlan, filesystem, seccomp

        self.config = Config.load(None, _flatten(config))
        self.control = control
        self.plugins, self.registry = plugin_loader.load(self.config)
        isolated = not self.config.insecure_no_isolation
        python_dirs = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
                              os.path.dirname(sysconfig.get_paths()["stdlib"]) + "/lib-dynload",
                              os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload")})
        self.plan = SandboxPlan(isolated=isolated, root=filesystem.plan_root(config["_new_root"], python_dirs))
        self.filter = seccomp.build() if isolated else None
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if isolated else -1
        self.free_ids = list(range(self.config.sandbox_uid_base + self.config.sandbox_uid_count - 1,
                                   self.config.sandbox_uid_base - 1, -1))
        self.ids_in_use: dict[int, int] = {}
        _warm_up(self.config, self.registry)

    def serve(self) -> None:
        """Spawns on request and reaps on SIGCHLD until the daemon closes the control socket."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        while True:
            for key, _ in selector.select():
                if key.data == "signal":
                    while _drain(wake_r):
                        pass
                    self.reap()
                    continue
                packet = self.control.recv(65536)
                if not packet:
                    return
                for _ in range(int(json.loads(packet).get("spawn", 0))):
                    self.spawn()

    def spawn(self) -> None:
        from .sandbox import init_main, namespaces

        host_id = self.free_ids.pop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = namespaces.fork_into_new_pid_ns(self.own_pid_ns) if self.plan.isolated else os.fork()
        if pid == 0:
            status = 1
            try:
                ours.close()
                self.control.close()
                os.closerange(3, theirs.fileno())
                os.closerange(theirs.fileno() + 1, 65536)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                status = init_main(self.plan, theirs, host_id, self.filter, self.plugins, self.registry)
            finally:
                os._exit(status)
        theirs.close()
        self.ids_in_use[pid] = host_id
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(self.control, [json.dumps({"ready": {"pid": pid}}).encode()], [ours.fileno(), pidfd])
        finally:
            ours.close()
            os.close(pidfd)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            host_id = self.ids_in_use.pop(pid, None)
            if host_id is not None:
                self.free_ids.insert(0, host_id)  # reused last: a dying id rests longest
            _send(self.control, {"exited": {"pid": pid, "status": os.waitstatus_to_exitcode(status)}})


def _warm_up(config, registry) -> None:
    """Imports what every call uses, so each sandbox inherits it instead of loading it."""
    import asyncio  # noqa: F401  (async guest functions)
    import importlib
    import linecache  # noqa: F401
    import traceback  # noqa: F401

    from isorun import _codec
    for name in config.default_external:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # Lazy imports inside protobuf and the codec happen now, not after pivot_root.
    import datetime, decimal, uuid  # noqa: E401
    sample = [1, 2.5, 2**70, float("nan"), b"x", (1,), {1}, frozenset(), {"a": None}, {1: 2},
              datetime.datetime.now(datetime.timezone.utc), datetime.date.today(), datetime.time(1),
              datetime.timedelta(1), decimal.Decimal("1.5"), uuid.uuid4(), 1j, bytearray(b"y")]
    _codec.decode(_codec.encode(sample, registry), registry).__class__
    _codec.encode(sample, registry).SerializeToString()


def _flatten(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _send(control: socket.socket, message: dict) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:
        pass


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


if __name__ == "__main__":
    sys.exit(main())
