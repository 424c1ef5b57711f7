"""The zygote: a clean, single-threaded process that forks one sandbox per call.

The daemon starts it (``python -m isorund.zygote``) before gRPC starts any thread, with an
empty environment — what a sandbox's ``/proc/self/environ`` shows is the zygote's — and gives
it the effective config on stdin and one end of a SOCK_SEQPACKET control socket (its fd
number is the only argument).
It imports everything a guest call needs (the runtime, protobuf, the codec, the plugins, the
default externals), so a forked sandbox starts warm.

Control messages, one JSON object per packet:
    daemon → zygote   {"spawn": N}                      prepare N more sandboxes
    zygote → daemon   {"loading": "plugins.… = '…'"}    before each plugin's import, at start
                      {"hello": {...}} or {"fatal": msg}  once, after start
                      {"spawn_failed": {"missing": N, "error": msg, "ids_in_use": B}}  a sandbox
                                                        refused for now (see TRANSIENT), by the kernel
                                                        or for want of a free host id: N of the
                                                        request's were not prepared
                      {"fatal": msg}                      before it dies of any other failed spawn
                      {"log": {...}, "level": L}          a line for the daemon's log
                      {"ready": {"pid": P}} + fds [channel, pidfd]   a prepared sandbox
                      {"exited": {"pid": P, "status": S, "cpu_seconds": C, "peak_memory_bytes": M}}
                                                                      a sandbox exited
                      {"exited": {..., "limit": "memory"}}           … killed by the cgroup's OOM killer
The zygote reaps its sandboxes (it is their parent) and recycles their host ids and cgroups.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import errno
import gc
import glob
import json
import os
import selectors
import signal
import site
import socket
import sys
import sysconfig

# The daemon decides when its zygote ends (it closes the control socket, or kills it). A signal
# meant for the daemon reached the zygote too when it was sent by name (`pkill -f isorund`, a
# log rotation's `pkill -HUP -f`): it died and took every call in flight with it, instead of
# letting them finish within the daemon's grace. SIGTTOU: the zygote has a process group of
# its own (see launcher.py), a background group when the daemon runs in a terminal, and with
# `stty tostop` its first log line stopped it and the daemon's start hung.
IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGTTOU)
# The kernel's refusals of a sandbox that pass: a task limit the calls' processes use up too
# (a pids cgroup such as systemd's TasksMax, RLIMIT_NPROC, threads-max: EAGAIN), memory,
# descriptors, the count of pid namespaces (ENOSPC). One guest's fork bomb made the zygote's
# fork fail with EAGAIN, and the zygote died, taking every call in flight with it (seen).
TRANSIENT = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC})


def main() -> int:
    for number in IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    # ``python -m`` put the folder the zygote was started in ("/") first on the import path:
    # in a sandbox that is its root, through which Python's own import system (a guest's, with
    # importlib allowed) found every guest module as "guest.<name>" (seen).
    if sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]
    config = json.loads(sys.stdin.read())
    control = socket.socket(fileno=int(sys.argv[1]))
    _die_with_the_daemon(control)
    try:
        zygote = Zygote(config, control)
    except Exception as e:  # a plugin that fails to load, a sandbox the kernel refuses, …
        from .config import StartError
        from .plugins import PluginError
        from .sandbox import SandboxSetupError
        # the project's own errors say what went wrong; anything else is named by its class
        what = ("cannot build a sandbox on this host: " if isinstance(e, SandboxSetupError)
                else "" if isinstance(e, (PluginError, StartError)) else f"{type(e).__name__}: ")
        _send(control, {"fatal": f"{what}{e}"})
        return 1
    _send(control, {"hello": {"pid": os.getpid()}})
    zygote.serve()
    return 0


class Zygote:
    def __init__(self, config: dict, control: socket.socket):
        from . import plugins as plugin_loader
        from .config import Config
        from .sandbox import SandboxPlan, cgroup, filesystem

        self.config = Config.load(None, _flatten(config))
        self.control = control
        self.plugins, self.registry = plugin_loader.load(
            self.config, on_load=lambda what: _send(control, {"loading": what}))
        isolated = not self.config.insecure_no_isolation
        python_dirs, package_dirs = _python_folders()
        self.cgroup_root = _cgroup_root(self.config, control) if isolated else None
        lim = self.config.limits
        self.plan = SandboxPlan(
            isolated=isolated, root=filesystem.plan_root(config["_new_root"], python_dirs, package_dirs,
                                                         tmp_bytes=lim.tmp_bytes),
            cgroup_values=cgroup.call_values(lim.memory_bytes, lim.tmp_bytes, lim.max_processes)
            if self.cgroup_root else None)
        if isolated:
            # the binds every sandbox's root holds, made once (see sandbox/filesystem.py)
            self.plan = dataclasses.replace(self.plan, template_ns=filesystem.build_template(self.plan.root))
        # Compiled to BPF by the daemon; each sandbox only hands the programs to the kernel:
        # the pool's part while it waits, the call's part last (see sandbox/seccomp.py).
        self.filters = tuple(base64.b64decode(p) for p in config["_seccomp"]) if isolated else None
        self.own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY) if isolated else -1
        # Sandboxes hold it until their call's set-up is done, to notice a zygote that died
        # while their parent-death signal was being re-armed (see sandbox/__init__.py).
        self.pidfd = os.pidfd_open(os.getpid())
        self.host_ids = HostIds(self.config.sandbox_uid_base, self.config.sandbox_uid_count)
        self.ids_in_use: dict[int, int] = {}
        self.spawned = 0
        self.groups: dict[int, str] = {}   # sandbox pid -> its call's cgroup
        self.stale_groups: list[str] = []  # groups not yet removable (their tasks still leaving)
        _warm_up(self.config, self.registry, control)
        # Everything loaded so far is shared with every sandbox, copy-on-write. A collection in
        # a sandbox would write to each of those objects' headers and copy their pages; frozen,
        # the collector leaves them alone (the advice of the gc module for forking servers).
        gc.freeze()

    def serve(self) -> None:
        """Spawns on request and reaps on SIGCHLD until the daemon closes the control socket."""
        # Preparing sandboxes runs at the guests' own priority, not below it: at nice 19, under
        # a cpu cgroup (systemd's cpu controller, a container) where the kernel weighs
        # processes by their nice, one call's spinning processes starved the pool, and other
        # tenants' calls waited seconds or timed out (seen). Measured against nice 19, it cost
        # nothing at concurrency 1 (bench/PROFILE.md).
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
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
                self.reap()  # sandboxes that have exited give their host ids back first
                self.spawn_many(int(json.loads(packet).get("spawn", 0)))

    def spawn_many(self, count: int) -> None:
        """Prepares ``count`` sandboxes. When the kernel refuses one for now (``TRANSIENT``),
        the daemon is told how many are missing and asks again later; any other refusal of a
        step the zygote itself takes ends it (the daemon logs why and starts another)."""
        for done in range(count):
            try:
                self.spawn()
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
                if getattr(e, "errno", None) in TRANSIENT:
                    _send(self.control, {"spawn_failed": {"missing": count - done, "error": reason,
                                                          "ids_in_use": isinstance(e, IdsInUse)}})
                    return
                _send(self.control, {"fatal": reason})
                os._exit(1)  # its sandboxes die with it (their parent-death signal)

    def spawn(self) -> None:
        """Forks one prepared sandbox and sends it to the daemon; what it took is given back
        when the kernel refuses a step."""
        from .sandbox import namespaces, sandbox_main

        host_id = self.host_ids.take()
        self.spawned += 1
        group = os.path.join(self.cgroup_root, f"call-{os.getpid()}-{self.spawned}") if self.cgroup_root else None
        pair: tuple[socket.socket, ...] = ()
        try:
            pair = ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = namespaces.fork_into_new_pid_ns(self.own_pid_ns) if self.plan.isolated else os.fork()
        except BaseException:
            for end in pair:
                end.close()
            self.host_ids.release(host_id)
            raise
        if pid == 0:
            status = 1
            try:
                ours.close()
                self.control.close()
                signal.set_wakeup_fd(-1)
                for number in (signal.SIGCHLD, *IGNORED_SIGNALS):  # the guest gets the defaults
                    signal.signal(number, signal.SIG_DFL)
                # (SIGINT too, not Python's KeyboardInterrupt handler: as pid 1 of its namespace the
                # sandbox gets a host's signal only for a handler it set, and with one a host's
                # `pkill -INT -f isorund`, meant for the daemon, interrupted every call: seen)
                status = sandbox_main(self.plan, theirs, self.pidfd, host_id, self.filters, self.plugins,
                                      self.registry, group)
            finally:
                os._exit(status)
        theirs.close()
        self.ids_in_use[pid] = host_id
        if group:
            self.groups[pid] = group
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            ours.close()  # the sandbox sees its channel close and exits; reaped as any other
            raise
        try:
            socket.send_fds(self.control, [json.dumps({"ready": {"pid": pid}}).encode()], [ours.fileno(), pidfd])
        finally:
            ours.close()
            os.close(pidfd)

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            host_id = self.ids_in_use.pop(pid, None)
            if host_id is not None:
                self.host_ids.release(host_id)
            exited = {"pid": pid, "status": _exit_status(status),
                      "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 6),
                      "peak_memory_bytes": usage.ru_maxrss * 1024}
            if self.release_group(pid):
                exited["limit"] = "memory"
            _send(self.control, {"exited": exited})

    def release_group(self, pid: int) -> bool:
        """Removes the cgroup of a reaped sandbox; True if the kernel's OOM killer ended its call."""
        from .sandbox import cgroup

        self.stale_groups = [g for g in self.stale_groups if not cgroup.release(g)[1]]
        group = self.groups.pop(pid, None)
        if group is None:
            return False
        kills, removed = cgroup.release(group)
        if not removed:
            self.stale_groups.append(group)
        return kills > 0


def _die_with_the_daemon(control: socket.socket) -> None:
    """The zygote notices the daemon's end when its control socket closes, but only once it
    serves: one still importing a slow plugin outlived a killed daemon. The kernel ends it
    instead, and if the daemon (the control socket's maker) is already gone, it ends now."""
    from .access import peer_credentials
    from .sandbox import _libc

    _libc.prctl("zygote", _libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != peer_credentials(control).pid:
        sys.exit(1)


class IdsInUse(OSError):
    """Every host id of the range is held (``HostIds.take``): a refusal that passes, as EAGAIN."""


class HostIds:
    """The host uids/gids given to sandboxes: each of the ``count`` ids from ``base`` once
    before any is used again, then released ids in the order they were released, so that a
    dying sandbox's id rests longest. The ids never used are a counter, not a list: the
    zygote's heap is copied into every sandbox's page tables, and a list of 65,536 ints was
    2.4 MB of it (and a 512 KB move per call to put an id back at its front)."""

    def __init__(self, base: int, count: int):
        self._next, self._end, self._count = base, base + count, count
        self._released: collections.deque[int] = collections.deque()

    def take(self) -> int:
        """An id no live sandbox has. When all are in use, an OSError EAGAIN (see TRANSIENT):
        a sandbox's id comes back once it is reaped, and with a range near the config's
        minimum the replacements of calls that just ended were asked for while those calls'
        sandboxes were still exiting (an IndexError here ended the zygote and every call in
        flight, again and again under 8 callers: seen)."""
        if self._next < self._end:
            self._next += 1
            return self._next - 1
        if not self._released:
            raise IdsInUse(errno.EAGAIN, f"all {self._count} host ids (sandbox_uid_count) are in use")
        return self._released.popleft()

    def release(self, host_id: int) -> None:
        self._released.append(host_id)


def _exit_status(status: int) -> int:
    """The exit code, or 128 + the signal that ended the sandbox (the shell's convention)."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _python_folders() -> tuple[list[str], list[str]]:
    """The base interpreter's stdlib folders (never a virtualenv's, which holds only packages)
    and its time-zone database, and every folder of installed packages, which the sandbox
    root hides."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
                                     "installed_base": sys.base_prefix,
                                     "installed_platbase": sys.base_exec_prefix})
    python_dirs = sorted({base["stdlib"], base["platstdlib"], os.path.join(base["stdlib"], "lib-dynload"),
                          os.path.join(base["platstdlib"], "lib-dynload")})
    packages = {base["purelib"], base["platlib"], sysconfig.get_paths()["purelib"],
                sysconfig.get_paths()["platlib"], *site.getsitepackages(), site.getusersitepackages()}
    for pattern in ("/usr/lib/python3*/*-packages", "/usr/local/lib/python3*/*-packages",
                    os.path.join(base["stdlib"], "*-packages")):
        packages.update(glob.glob(pattern))
    return python_dirs + _time_zone_folders(), sorted(packages)


def _time_zone_folders() -> list[str]:
    """The host's time-zone database, where ``zoneinfo`` looks for it (the interpreter's
    TZPATH): public data, and without it ``ZoneInfo("Europe/Paris")`` fails in every guest.
    The first that exists, as zoneinfo would use it."""
    for folder in (sysconfig.get_config_var("TZPATH") or "").split(os.pathsep):
        if folder and os.path.isdir(folder):
            return [folder]
    return []


def _cgroup_root(config, control: socket.socket) -> str | None:
    """The delegated cgroup v2 folder for per-call limits, or None; says which, once, in the log."""
    from .config import StartError
    from .sandbox import cgroup

    try:
        with open("/proc/self/cgroup") as f, open("/proc/self/mountinfo") as g:
            root = cgroup.locate(config.cgroup_root, f.read(), g.read())
        cgroup.setup(root, {os.getpid(), os.getppid()})
    except (cgroup.Unavailable, OSError) as e:
        if config.cgroup_root not in ("", "off"):
            # The operator asked for these limits: running without them would be a surprise.
            raise StartError(f"cgroup_root {config.cgroup_root!r} cannot be used: {e}") from e
        _log(control, "warning", {"event": "cgroup", "enabled": False, "reason": str(e),
                                 "note": "per-call memory/pids/cpu limits are off; rlimits still apply per process"})
        return None
    _log(control, "info", {"event": "cgroup", "enabled": True, "root": root})
    return root


def _log(control: socket.socket, level: str, line: dict) -> None:
    """One line of the daemon's log, sent to the daemon, which writes it with its own (from a
    thread of its own, at its log level). Printed on the stderr the zygote shares with it, a
    zygote started while stderr was not read blocked there for good, and the daemon served no
    call until the reader came back (found by a probe)."""
    _send(control, {"log": line, "level": level})


def _warm_up(config, registry, control: socket.socket) -> None:
    """Imports what every call uses, so each sandbox inherits it instead of loading it."""
    import asyncio  # noqa: F401  (async guest functions)
    import importlib
    import linecache  # noqa: F401
    import traceback  # noqa: F401

    from isorun import _codec
    for name in config.default_external:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a typo, or not installed: said once, not found by guests one by one
            _log(control, "warning", {"event": "default_external_missing", "module": name, "error": str(e),
                                     "note": "config key 'default_external' names it; guests importing it "
                                             "get ModuleNotFound"})
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
