"""Namespaces: each call gets its own pid, mount, network, ipc, uts, cgroup and user namespace.

The order matters (see ``isorund/sandbox/__init__``):
- the zygote puts each new sandbox in a fresh pid namespace as it forks it (``fork_into_new_pid_ns``),
  so the sandbox is pid 1 there;
- in the pool, the sandbox, still the host's root, unshares the other namespaces except the user
  one (``unshare_host_views``; its mount namespace a copy of the zygote's template namespace):
  the mounts of the new root are made as the real root;
- once its call's folders are bound and the root pivoted, it becomes an unprivileged host id and
  enters a user namespace of its own (``become_guest_user``), which owns no other namespace, so
  even the capabilities it briefly holds there command nothing.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct

from . import _libc
from ._libc import SandboxSetupError

GUEST_ID = 1000  # the uid and gid the guest sees inside its user namespace
_CAP_LAST = int(open("/proc/sys/kernel/cap_last_cap").read())  # read while /proc is the host's
HOSTNAME = "sandbox"
DOMAINNAME = "(none)"  # what a kernel with no NIS domain reports
# A guest's TCP sockets buffer at most 32 KiB each way (min, default, max; bytes). A new network
# namespace copies the host's limits, and a TCP socket's buffers grow by themselves up to them
# (4 MiB sent, 32 MiB received on the host this was written on): one process with 28 loopback
# connections it never read held 213 MiB, outside its address-space limit, and 13 processes of
# one call took all of the host-wide tcp_mem, which every TCP socket of the host draws on (seen).
# With these, a socket holds at most 64 KiB; loopback still carries ~700 MiB/s (1.9 GiB/s with
# the host's limits). setsockopt's SO_SNDBUF and SO_RCVBUF are denied (see seccomp.py).
TCP_RMEM, TCP_WMEM = "4096 32768 32768", "4096 16384 32768"
# A connection waiting in a listener's backlog holds its buffers without a descriptor of its
# own, and a new namespace lets each listener hold 4096: one process held 79,000 connections
# and 1.5 GiB of the host's tcp_mem past its pressure mark, from 20 listeners (seen). With 4
# (the kernel keeps one more), a call holds at most ~5 waiting connections per descriptor.
SOMAXCONN = 4


def fork_into_new_pid_ns(own_pid_ns_fd: int) -> int:
    """Forks a child that is pid 1 of a fresh pid namespace; returns like ``os.fork``.

    ``unshare(CLONE_NEWPID)`` only changes where the caller's next child is born, and only
    while that equals the caller's own pid namespace; resetting it with ``setns`` right after
    the fork lets one zygote create a fresh namespace for every sandbox.
    """
    _libc.unshare("pid namespace", _libc.CLONE_NEWPID)
    try:
        pid = os.fork()
    except OSError:  # no child: the next fork's namespace is still a new one; put it back
        _libc.setns("pid namespace", own_pid_ns_fd, _libc.CLONE_NEWPID)
        raise
    if pid != 0:
        _libc.setns("pid namespace", own_pid_ns_fd, _libc.CLONE_NEWPID)
    return pid


def unshare_host_views(template_ns: int, scratch: str) -> None:
    """Leaves the host's mounts (for a copy of ``template_ns``, the zygote's template
    namespace: see ``filesystem.build_template``), network, ipc objects, hostname and cgroup
    view. ``scratch`` is an empty folder of the template."""
    _libc.setns("namespaces", template_ns, _libc.CLONE_NEWNS)
    os.close(template_ns)
    _libc.unshare("namespaces", _libc.CLONE_NEWNS | _libc.CLONE_NEWNET | _libc.CLONE_NEWIPC
                  | _libc.CLONE_NEWUTS | _libc.CLONE_NEWCGROUP)
    socket.sethostname(HOSTNAME)
    _libc.setdomainname("namespaces", DOMAINNAME)  # the new uts namespace starts with the host's
    _bring_loopback_up()
    _limit_tcp_buffers(scratch)


def _bring_loopback_up() -> None:
    """The new network namespace has only ``lo``, down; up, it lets a guest talk to itself."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def _limit_tcp_buffers(scratch: str) -> None:
    """Sets TCP_RMEM, TCP_WMEM and SOMAXCONN in the new network namespace, through a proc instance
    mounted on ``scratch`` for the purpose: the template has no /proc, the sandbox's own shows
    only its processes, and the host's /proc/sys may be read-only (systemd's
    ProtectKernelTunables). /proc/sys/net shows the writer's network namespace: this one."""
    step = "network limits"
    _libc.mount(step, "proc", scratch, "proc", _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)
    try:
        _write(step, scratch + "/sys/net/ipv4/tcp_rmem", TCP_RMEM)
        _write(step, scratch + "/sys/net/ipv4/tcp_wmem", TCP_WMEM)
        _write(step, scratch + "/sys/net/core/somaxconn", str(SOMAXCONN))
    finally:
        _libc.umount2(step, scratch, _libc.MNT_DETACH)


def become_guest_user(host_id: int) -> None:
    """Drops to ``host_id`` on the host and to ``GUEST_ID`` in a new user namespace, with no
    capabilities left anywhere.

    setres[ug]id as root clears the capability sets; the new user namespace then maps only
    that one id (an unprivileged self-mapping, which needs no privilege on the host).
    """
    step = "guest user"
    try:
        os.setgroups([])
        os.setresgid(host_id, host_id, host_id)
        os.setresuid(host_id, host_id, host_id)
    except OSError as e:
        raise SandboxSetupError(step, f"setresuid({host_id})", e.errno) from e
    # Changing uid made the process non-dumpable, which makes its /proc/self files root's and
    # the id maps below unwritable. Dumpable only lets the same host uid ptrace it — a uid no
    # other sandbox has, and ptrace is denied by seccomp anyway.
    _libc.prctl(step, _libc.PR_SET_DUMPABLE, 1)
    _libc.unshare(step, _libc.CLONE_NEWUSER)
    _write(step, "/proc/self/setgroups", "deny")
    _write(step, "/proc/self/uid_map", f"{GUEST_ID} {host_id} 1")
    _write(step, "/proc/self/gid_map", f"{GUEST_ID} {host_id} 1")
    drop_capabilities(step)


def drop_capabilities(step: str) -> None:
    """Empties the bounding, ambient, effective, permitted and inheritable sets."""
    for cap in range(_CAP_LAST + 1):
        _libc.prctl(step, _libc.PR_CAPBSET_DROP, cap)
    _libc.prctl(step, _libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    _libc.set_capabilities(step, 0, 0)


def _write(step: str, path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise SandboxSetupError(step, f"write({path!r}, {text!r})", e.errno) from e
