"""The seccomp filter: system calls no guest needs fail with EPERM.

EPERM rather than a kill, so a guest sees an ``OSError`` it can report instead of vanishing.
The filter is built and compiled to BPF once by the daemon, and loaded by each sandbox in two
parts: the pool's part (everything but ``CALL_STEPS``) while the sandbox waits for its call,
and the call's part (``CALL_STEPS``: a handful of instructions) as the very last set-up step,
after the call's folders are bound. Filters stack, so from then on the guest meets exactly the
whole filter; loading the long part off the call's path saves the kernel's check and JIT of
it there (about 0.3 ms).

It is a deny list on top of the other layers, not the only wall: what it lets through still
meets an unprivileged uid with no capabilities, in namespaces of its own. Two exceptions to
"EPERM, not a kill":
- a system call made through another ABI than the native one (``int 0x80``, i386 numbers on
  x86_64) kills the whole process: the deny list is written for native numbers only, and no
  Python program makes such calls by accident;
- ``clone3`` fails with ENOSYS, because its flags live in memory seccomp cannot read; libc
  then falls back to ``clone``, whose flags are checked.
"""
from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from . import _libc
from ._libc import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID,
                    CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, SandboxSetupError)

DENIED = (
    # running programs
    "execve", "execveat", "uselib",
    # looking into or steering other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    # changing the filesystem view or the namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    # kernel attack surface a pure computation never needs
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "lookup_dcookie",
    "personality", "vhangup", "nfsservctl", "sysfs", "ustat", "_sysctl",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "iopl", "ioperm",
    # memory no address-space limit sees: a System V segment or a memfd holds its pages while
    # nothing maps it, so one call could fill the host's RAM past RLIMIT_AS (and, without a
    # per-call cgroup, past anything else); no Python computation needs either
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "memfd_create", "memfd_secret",
    # watching the shared read-only folders would show, live, which files other calls and the
    # host's processes open (the stdlib, the libraries, whitelisted folders)
    "inotify_init", "inotify_init1",
)
# Denied to the guest, but made by the sandbox itself once its call is known (attaching the
# call's folders, resizing /tmp, its user namespace): denied by the call's part of the filter,
# last. (pivot_root and umount2 are done before the pool's part is loaded.)
CALL_STEPS = ("mount", "move_mount", "unshare")
# System calls younger than the libseccomp this may run with, by their native number.
DENIED_BY_NUMBER = {"x86_64": {"open_tree_attr": 467}, "aarch64": {"open_tree_attr": 467}}
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                   CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)
# socket() and socketpair() may only make Unix, IPv4 and IPv6 sockets (all of them local: the
# network namespace has only loopback). Rare families (AF_ALG, AF_VSOCK, AF_TIPC, AF_RDS,
# AF_NETLINK, …) are kernel code any unprivileged process could otherwise reach.
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
BPF_INSTRUCTION_BYTES = 8  # struct sock_filter

if TYPE_CHECKING:  # loaded only where filters are built: the daemon, never the zygote
    import pyseccomp as seccomp


def build(defer: tuple[str, ...] = ()) -> seccomp.SyscallFilter:
    """Returns the filter, ready to load; names this libseccomp does not know are skipped.
    ``defer`` leaves those names out (the pool's part: ``build(defer=CALL_STEPS)``)."""
    import pyseccomp as seccomp

    f = _deny_filter([name for name in DENIED if name not in defer])
    deny = seccomp.ERRNO(errno.EPERM)
    for number in DENIED_BY_NUMBER.get(os.uname().machine, {}).values():
        try:
            f.add_rule(deny, number)
        except (ValueError, OSError):
            pass
    # clone may make threads and processes, but not namespaces.
    for flag in NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # Compared as 64-bit values: anything >= 11, upper bits set included, is denied.
    for call in ("socket", "socketpair"):
        for family in (0, *range(AF_INET + 1, AF_INET6)):
            f.add_rule(deny, call, seccomp.Arg(0, seccomp.EQ, family))
        f.add_rule(deny, call, seccomp.Arg(0, seccomp.GE, AF_INET6 + 1))
    return f


def build_last() -> seccomp.SyscallFilter:
    """The call's part of the filter: the system calls ``build(defer=CALL_STEPS)`` left out."""
    return _deny_filter(CALL_STEPS)


def _deny_filter(names) -> seccomp.SyscallFilter:
    import pyseccomp as seccomp

    f = seccomp.SyscallFilter(seccomp.ALLOW)
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in names:
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError):
            pass  # a syscall this architecture does not have cannot be called either
    return f


def programs() -> tuple[bytes, bytes]:
    """The pool's and the call's parts, compiled. The daemon compiles them once and hands
    them to the zygote, which never loads libseccomp (one library less in every sandbox)."""
    return compile_filter(build(defer=CALL_STEPS)), compile_filter(build_last())


def compile_filter(f: seccomp.SyscallFilter) -> bytes:
    """The filter as the BPF program libseccomp would load, so a sandbox does not pay for
    libseccomp's compilation on every call."""
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb", closefd=False) as pipe:
            f.export_bpf(pipe)
        os.close(write)
        write = -1
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read)
        if write != -1:
            os.close(write)


def apply(program: bytes) -> None:
    """Loads a compiled filter into this process; requires no_new_privs or CAP_SYS_ADMIN."""
    if not program or len(program) % BPF_INSTRUCTION_BYTES:
        raise SandboxSetupError("seccomp", f"prctl(PR_SET_SECCOMP) with a {len(program)}-byte program",
                                errno.EINVAL)
    _libc.load_seccomp_program(program, len(program) // BPF_INSTRUCTION_BYTES)
