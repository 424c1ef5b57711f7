"""The child side: one sandbox per call, set up as an ordered list of steps.

Process tree of one call (pids as seen inside the call's pid namespace):

    zygote ──fork into a new pid ns──▶ init (pid 1, host root) ──fork──▶ guest (pid 2)
    in the pool, before any call:      cgroup.enter() (if delegated)     pre_confine(): becomes
                                       unshare_host_views()              an unprivileged uid in
                                       prepare_root()                    a user ns of its own,
                                                                         rlimits, seccomp; warms
                                                                         up; waits for its plan
    when the call arrives:             reads the plan, enter_root():     reads the plan from the
                                       binds the call's folders and      init, lowers its limits
                                       pivot_root()s the namespace,      to the call's, runs it
                                       hands the plan to the guest,
                                       reaps; exits when the guest does

Only the steps that need the call (its folders, its limits) are on the call's path; the guest
is already confined when it waits, and it cannot run a line of guest code before the init has
pivoted the shared mount namespace into the new root (``pivot_root`` moves the root and working
folder of every process of the namespace that was at the old root, the waiting guest's
included) and handed it the plan. When the init exits or is killed, the kernel kills every
process left in the pid namespace: nothing of a call outlives it.
"""
from __future__ import annotations

import os
import resource
import socket
from dataclasses import dataclass

from isorun._proto import runner_pb2, sandbox_pb2

from . import _libc, cgroup, channel, filesystem, guest, limits, namespaces, seccomp
from ._libc import SandboxSetupError

__all__ = ["SandboxPlan", "SandboxSetupError", "init_main", "pre_confine"]

MAX_PLAN_BYTES = 256 << 20
MAX_FD = 2**31 - 1
GUEST_READY = b"R"  # guest → init: confined, waiting for the plan


@dataclass(frozen=True)
class SandboxPlan:
    """What every sandbox of this daemon shares; built and validated in the zygote."""
    isolated: bool            # False only with --insecure-no-isolation
    root: filesystem.RootPlan
    pool_limits: limits.Limits        # the daemon's limits, set while a sandbox waits in the pool
    cgroup_values: dict | None = None  # the daemon's limits for a new call group; None: no cgroup
    pool_nice: int = 0                 # priority sandboxes are prepared at; 0 when it can't be undone


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
    handoff, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            handoff.close()
            _guest_main(plan, chan, guest_end, host_id, syscall_filter, plugins, registry)
        finally:
            os._exit(0)
    guest_end.close()
    try:
        # The guest confines itself first (a user namespace cannot be made mid-pivot_root);
        # on EOF it failed, and has reported why on the channel.
        if handoff.recv(1) != GUEST_READY:
            return 1
        _enter_call(plan, chan, handoff, cgroup_path, pid)
    except Exception as e:  # any failure here is the sandbox's, and must be reported as such
        _report_setup_failure(chan, e)
        return 1
    finally:
        handoff.close()
        chan.close()
    return _reap_until(pid)


def _enter_call(plan: SandboxPlan, chan: socket.socket, handoff: socket.socket,
                cgroup_path: str | None, guest_pid: int) -> None:
    """The init's per-call steps: the call's limits and folders, then the plan to the guest."""
    frame = channel.receive(chan, MAX_PLAN_BYTES)
    # The pool prepared this sandbox at the lowest priority; its call runs at the normal one
    # (the init, root on the host, may raise it; the guest, with RLIMIT_NICE 0, may not).
    if plan.pool_nice:
        for pid in (0, guest_pid):
            os.setpriority(os.PRIO_PROCESS, pid, 0)
    call = sandbox_pb2.CallPlan.FromString(frame)
    lim = call.limits
    if plan.isolated:
        if cgroup_path:
            # the call's own limits on its group, while the host's cgroupfs can still be named.
            cgroup.lower(cgroup_path, cgroup.call_values(lim.memory_bytes, lim.tmp_bytes, lim.max_processes))
        # this call's folders, then pivot_root: after it no host path can be named, by the
        # init or by the guest waiting in the same mount namespace.
        filesystem.enter_root(plan.root, call.root, list(call.host_paths), lim.tmp_bytes)
    # Only now may the guest have its plan and run guest code.
    handoff.sendall(channel.HEADER.pack(len(frame)) + frame)


def _guest_main(plan: SandboxPlan, chan: socket.socket, handoff: socket.socket, host_id: int,
                syscall_filter, plugins, registry) -> None:
    _libc.prctl("guest", _libc.PR_SET_PDEATHSIG, 9)
    try:
        pre_confine(plan, (chan.fileno(), handoff.fileno()), host_id, syscall_filter)
        guest.prepare(chan, registry)
        handoff.sendall(GUEST_READY)
        call = sandbox_pb2.CallPlan.FromString(channel.receive(handoff, MAX_PLAN_BYTES))
        handoff.close()
        # 0-2 pointed at the host's /dev/null until the root was pivoted; now at the sandbox's.
        _redirect_std_fds("/dev/null")
        # The pool's limits were the daemon's; the call may have asked for less.
        limits.apply(_call_limits(call.limits))
    except Exception as e:  # any failure here is the sandbox's, and must be reported as such
        _report_setup_failure(chan, e)
        return
    guest.run(call, chan, plugins, registry, guest_dir=filesystem.GUEST_DIR if plan.isolated else call.root)


def pre_confine(plan: SandboxPlan, keep_fds: tuple[int, ...], host_id: int, syscall_filter) -> None:
    """The guest's own steps, in order, done in the pool before its call is known; no guest
    code runs before all of them are done (and the init has pivoted the root)."""
    # 1. nothing of the daemon's environment (secrets included) reaches the guest.
    os.environ.clear()
    # 2. only the call's channel (and the init's hand-off) stay open; 0-2 lead nowhere.
    _close_fds_except(keep_fds)
    if plan.isolated:
        # 3. an unprivileged host id, a user namespace of its own, no capabilities anywhere.
        namespaces.become_guest_user(host_id)
    # 4. no_new_privs: nothing executed later could gain privileges; seccomp requires it.
    _libc.prctl("limits", _libc.PR_SET_NO_NEW_PRIVS, 1)
    # 5. rlimits at the daemon's values, after the privileged steps; lowered per call later.
    limits.apply(plan.pool_limits)
    # 6. seccomp last: it denies mount, unshare and friends, which the steps above needed.
    if plan.isolated:
        seccomp.apply(syscall_filter)


def _call_limits(lim) -> limits.Limits:
    """The call's limits; its CPU seconds count from now, not from when the pool made it."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return limits.Limits(memory_bytes=lim.memory_bytes, max_processes=lim.max_processes,
                         max_open_files=lim.max_open_files, max_file_bytes=lim.max_file_bytes,
                         cpu_seconds=lim.cpu_seconds + used.ru_utime + used.ru_stime)


def _redirect_std_fds(path: str) -> None:
    null = os.open(path, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _close_fds_except(keep: tuple[int, ...]) -> None:
    _redirect_std_fds("/dev/null")
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)  # close_range(2): one system call, whatever the fd limit


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
