"""The child side: one sandbox per call, one process, set up as an ordered list of steps.

The zygote forks each sandbox into a fresh pid namespace, so the sandbox is that namespace's
pid 1 and when it exits (or the daemon kills it) the kernel kills whatever it started:
nothing of a call outlives it. Its steps, in order:

    in the pool, before any call        host root: the call's cgroup (if delegated), its own
                                        mount (a copy of the zygote's template namespace),
                                        net, ipc, uts and cgroup namespaces, the new root
                                        built and pivoted into (``prepare_root``), an empty
                                        environment, only the channel open, the runtime
                                        warmed up, RLIMIT_CORE at 1, the pool's part of the
                                        seccomp filter;
                                        then it waits for its plan
    when the call arrives               the call's folders (the daemon's detached copies)
                                        attached (``enter_call``),
                                        an unprivileged host uid in a user namespace of its
                                        own with no capabilities, no_new_privs, the call's
                                        rlimits, the call's part of the seccomp filter; then
                                        the guest's code runs

Every privileged step is done before the first line of guest code and none after it; the
plan, read while still root, is the daemon's own message. One process per call, not an init
and a guest: a sandbox costs one fork of the zygote, not two (about a fifth of a call's CPU).
As pid 1 the guest's own default-action signals sent from inside (``os.kill(os.getpid(),
SIGTERM)``) are ignored by the kernel; faults, the CPU and memory limits and the daemon's
kills still end it.
"""
from __future__ import annotations

import errno
import math
import os
import resource
import select
import socket
from dataclasses import dataclass

from isorun._proto import runner_pb2, sandbox_pb2
from isorund.config import MAX_MESSAGE_BYTES

from . import _libc, cgroup, channel, filesystem, guest, limits, namespaces, seccomp
from ._libc import SandboxSetupError

__all__ = ["SandboxPlan", "SandboxSetupError", "sandbox_main"]

MAX_PLAN_BYTES = 4 << 20  # the plan's own fields: names and paths, each list bounded by isorund.plan
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES
MAX_FD = 2**31 - 1
MAX_FOLDERS = 1 + filesystem.MAX_HOST_PATHS  # the guest folder and the host paths


@dataclass(frozen=True)
class SandboxPlan:
    """What every sandbox of this daemon shares; built and validated in the zygote."""
    isolated: bool            # False only with --insecure-no-isolation
    root: filesystem.RootPlan
    cgroup_values: dict | None = None  # the daemon's limits for a new call group; None: no cgroup
    template_ns: int = -1              # the zygote's template mount namespace (a descriptor); -1: none


def sandbox_main(plan: SandboxPlan, chan: socket.socket, zygote_pidfd: int, host_id: int, syscall_filters,
                 plugins, registry, cgroup_path: str | None = None) -> int:
    """Runs in the forked sandbox; returns its exit status."""
    # The sandbox must die with the zygote, which takes the whole call with it.
    _libc.prctl("sandbox", _libc.PR_SET_PDEATHSIG, 9)
    # Only the call's channel stays open (and the zygote's pidfd, until the set-up is done,
    # and the template namespace, until it is entered); 0-2 lead nowhere.
    _close_fds_except(tuple(fd for fd in (chan.fileno(), zygote_pidfd, plan.template_ns) if fd >= 0))
    try:
        cgroup_fd = _prepare(plan, cgroup_path, chan, registry, syscall_filters)
        folder_fds = _receive_folders(chan)
        call = sandbox_pb2.CallPlan.FromString(channel.receive(chan, MAX_PLAN_BYTES))
        request = channel.receive(chan, MAX_REQUEST_BYTES)  # parsed by the guest's runtime, confined
        _confine(plan, call, folder_fds, host_id, syscall_filters, cgroup_fd)
        _rearm_parent_death_signal(zygote_pidfd)
    except Exception as e:  # any failure here is the sandbox's, and must be reported as such
        _report_setup_failure(chan, e)
        return 1
    guest.run(call, request, plugins, registry, guest_dir=filesystem.GUEST_DIR if plan.isolated else call.root)
    return 0


def _prepare(plan: SandboxPlan, cgroup_path: str | None, chan: socket.socket, registry,
             syscall_filters) -> int | None:
    """The pool's steps: everything that does not depend on the call. Returns the call's
    cgroup folder, opened (its host path cannot be named after pivot_root), or None."""
    cgroup_fd = None
    if plan.isolated:
        # 1. the call's own cgroup, joined before the cgroup namespace is made, so that
        #    the namespace's root is this group and every process of the call is in it;
        if cgroup_path:
            cgroup.enter(cgroup_path, plan.cgroup_values)
            cgroup_fd = os.open(cgroup_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        # 2. leave the host's mounts (for a copy of the template namespace), network, ipc,
        #    hostname and cgroup view, so every mount below is private to this call;
        namespaces.unshare_host_views(plan.template_ns, scratch=filesystem.NEW_ROOT)
        #    and the call's channel, made anew inside the network namespace;
        channel.move_into_own_namespace(chan)
        # 3. the new root, and pivot_root into it: from here no host path can be named;
        filesystem.prepare_root(plan.root)
        # 0-2 pointed at the host's /dev/null; now at the sandbox's.
        _redirect_std_fds("/dev/null")
    # A session of its own: sharing the zygote's would let a guest send SIGCONT to every
    # process of the session (other calls' guests, the daemon), which the kernel allows within
    # a session whatever the uids; without a pid namespace, the group is also what gets killed.
    os.setsid()
    # 4. nothing of the daemon's environment (secrets included) reaches the guest;
    os.environ.clear()
    # 5. the runtime's first-touch work (copy-on-write faults) done now, off the call's path;
    guest.prepare(chan, registry)
    # 6. no core dump, and no host core helper, for a crash (the filter then keeps it so),
    #    and the first to go when the host runs out of memory;
    limits.keep_crashes_to_the_sandbox()
    limits.first_for_the_oom_killer()
    # 7. the pool's part of the seccomp filter: all of it but what the call's steps need.
    if plan.isolated:
        seccomp.apply(syscall_filters[0])
    return cgroup_fd


def _receive_folders(chan: socket.socket) -> list[int]:
    """The daemon's detached copies of the call's folders, sent ahead of the plan."""
    data, fds, _flags, _address = socket.recv_fds(chan, 1, MAX_FOLDERS)
    if not data:
        raise EOFError("channel closed")
    return fds


def _confine(plan: SandboxPlan, call, folder_fds: list[int], host_id: int, syscall_filters,
             cgroup_fd: int | None) -> None:
    """The call's steps, in order; no guest code runs before all of them are done."""
    lim = call.limits
    if plan.isolated:
        if cgroup_fd is not None:
            # the call's own limits on its group (which was opened before pivot_root).
            cgroup.lower(cgroup_fd, cgroup.call_values(lim.memory_bytes, lim.tmp_bytes, lim.max_processes))
            os.close(cgroup_fd)
        # this call's folders, attached from the daemon's detached copies.
        filesystem.enter_call(plan.root, folder_fds, list(call.host_paths), lim.tmp_bytes)
        # an unprivileged host id, a user namespace of its own, no capabilities anywhere.
        namespaces.become_guest_user(host_id)
    # no_new_privs: nothing executed later could gain privileges; seccomp requires it.
    _libc.prctl("limits", _libc.PR_SET_NO_NEW_PRIVS, 1)
    # the call's rlimits, after the privileged steps (RLIMIT_NPROC would stop none of them).
    limits.apply(_call_limits(lim))
    for fd in folder_fds:
        os.close(fd)  # attached now (or never: insecure mode sends none)
    # the call's part of the seccomp filter last: it denies mount, move_mount and unshare,
    # which the steps above needed, and loading a filter, which this very step needs; from
    # here the whole filter applies.
    if plan.isolated:
        seccomp.apply(syscall_filters[1])


def _rearm_parent_death_signal(zygote_pidfd: int) -> None:
    """Changing credentials cleared the parent-death signal; set it again, then make sure the
    zygote did not die before it was (its pidfd turns readable when it exits)."""
    _libc.prctl("sandbox", _libc.PR_SET_PDEATHSIG, 9)
    if select.select([zygote_pidfd], [], [], 0)[0]:
        raise SandboxSetupError("sandbox", "the zygote exited during the set-up", errno.ESRCH)
    os.close(zygote_pidfd)


def _call_limits(lim) -> limits.Limits:
    """The call's limits; its CPU seconds count from now, not from when the pool made it.

    RLIMIT_CPU counts whole seconds of the process's life, so only the whole seconds the pool
    used are added: adding its few milliseconds too rounded a limit of N seconds up to N + 1.
    The guest gets N seconds less those milliseconds."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return limits.Limits(memory_bytes=lim.memory_bytes, max_processes=lim.max_processes,
                         max_open_files=lim.max_open_files, max_file_bytes=lim.max_file_bytes,
                         cpu_seconds=lim.cpu_seconds + math.floor(used.ru_utime + used.ru_stime))


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
