"""The child side: one sandbox per call, set up as an ordered list of steps.

Process tree of one call (pids as seen inside the call's pid namespace):

    zygote ──fork into a new pid ns──▶ init (pid 1, host root)  ──fork──▶ guest (pid 2)
                                       cgroup.enter() (if delegated)       waits for its call
                                       unshare_host_views()                confine(), run()
                                       prepare_root()
                                       reaps; exits when the guest does

Everything that does not depend on the call (namespaces, the library binds, /proc, /dev) is
done before the call arrives, while the sandbox waits in the daemon's pool; ``confine`` does
the rest once the call is known. When the init exits or is killed, the kernel kills every
process left in the namespace: nothing of a call outlives it.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from isorun._proto import runner_pb2, sandbox_pb2

from . import _libc, cgroup, channel, filesystem, guest, limits, namespaces, seccomp
from ._libc import SandboxSetupError

__all__ = ["SandboxPlan", "SandboxSetupError", "init_main", "confine"]

MAX_PLAN_BYTES = 256 << 20
MAX_FD = 2**31 - 1


@dataclass(frozen=True)
class SandboxPlan:
    """What every sandbox of this daemon shares; built and validated in the zygote."""
    isolated: bool            # False only with --insecure-no-isolation
    root: filesystem.RootPlan
    cgroup_values: dict | None = None  # the daemon's limits for a new call group; None: no cgroup


def init_main(plan: SandboxPlan, chan: socket.socket, host_id: int, syscall_filter, plugins, registry,
              cgroup_path: str | None = None) -> int:
    """Runs in the call's init; returns the exit status of the guest (128+signal if killed)."""
    # The init must die with the zygote, which takes the whole call with it.
    _libc.prctl("init", _libc.PR_SET_PDEATHSIG, 9)
    try:
        if plan.isolated:
            # 1. the call's own cgroup, joined before the cgroup namespace is made, so that
            #    the namespace's root is this group and every process of the call is in it;
            if cgroup_path:
                cgroup.enter(cgroup_path, plan.cgroup_values)
            # 2. leave the host's mounts, network, ipc, hostname and cgroup view, so every
            #    mount below is private to this call;
            namespaces.unshare_host_views()
            # 3. the call-independent half of the root, while the sandbox waits in the pool.
            filesystem.prepare_root(plan.root)
        else:
            os.setsid()  # without a pid namespace, the process group is what gets killed
    except (SandboxSetupError, OSError) as e:
        _report_setup_failure(chan, e)
        return 1
    pid = os.fork()
    if pid == 0:
        try:
            _guest_main(plan, chan, host_id, syscall_filter, plugins, registry, cgroup_path)
        finally:
            os._exit(0)
    chan.close()
    return _reap_until(pid)


def _guest_main(plan: SandboxPlan, chan: socket.socket, host_id: int, syscall_filter, plugins, registry,
                cgroup_path: str | None) -> None:
    _libc.prctl("guest", _libc.PR_SET_PDEATHSIG, 9)
    call = sandbox_pb2.CallPlan.FromString(channel.receive(chan, MAX_PLAN_BYTES))
    try:
        confine(plan, call, chan.fileno(), host_id, syscall_filter, cgroup_path)
    except (SandboxSetupError, OSError) as e:
        _report_setup_failure(chan, e)
        return
    guest.run(call, chan, plugins, registry, guest_dir=filesystem.GUEST_DIR if plan.isolated else call.root)


def confine(plan: SandboxPlan, call, keep_fd: int, host_id: int, syscall_filter,
            cgroup_path: str | None = None) -> None:
    """The per-call steps, in order; the guest's code runs only after the last one."""
    # 1. nothing of the daemon's environment (secrets included) reaches the guest.
    os.environ.clear()
    lim = call.limits
    if plan.isolated and cgroup_path:
        # 2. the call's own limits on its group, while the host's cgroupfs can still be named.
        cgroup.lower(cgroup_path, cgroup.call_values(lim.memory_bytes, lim.tmp_bytes, lim.max_processes))
    if plan.isolated:
        # 3. this call's folders, then pivot_root: after it no other host path can be named.
        filesystem.enter_root(plan.root, call.root, list(call.host_paths), lim.tmp_bytes)
    # 4. only the call's channel stays open; stdin/stdout/stderr lead nowhere.
    _close_fds_except(keep_fd)
    if plan.isolated:
        # 5. an unprivileged host id, a user namespace of its own, no capabilities anywhere.
        namespaces.become_guest_user(host_id)
    # 6. no_new_privs: nothing executed later could gain privileges; seccomp requires it.
    _libc.prctl("limits", _libc.PR_SET_NO_NEW_PRIVS, 1)
    # 7. rlimits, after the privileged steps (which they could otherwise get in the way of).
    limits.apply(limits.Limits(memory_bytes=lim.memory_bytes, max_processes=lim.max_processes,
                               max_open_files=lim.max_open_files, max_file_bytes=lim.max_file_bytes,
                               cpu_seconds=lim.cpu_seconds))
    # 8. seccomp last: it denies mount, unshare and friends, which the steps above needed.
    if plan.isolated:
        seccomp.apply(syscall_filter)


def _close_fds_except(keep: int) -> None:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, MAX_FD)  # close_range(2): one system call, whatever the fd limit


def _report_setup_failure(chan: socket.socket, e: BaseException) -> None:
    failure = runner_pb2.Failure(kind=runner_pb2.Failure.SANDBOX, message=str(e), type_name=type(e).__name__)
    try:
        channel.send(chan, runner_pb2.RunEvent(outcome=runner_pb2.Outcome(failure=failure)))
    except OSError:
        pass


def _reap_until(guest_pid: int) -> int:
    """Reaps every child (orphans are re-parented to pid 1) until the guest has exited."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == guest_pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
