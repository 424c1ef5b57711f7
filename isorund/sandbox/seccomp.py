"""The seccomp filter: system calls no guest needs fail with EPERM.

EPERM rather than a kill, so a guest sees an ``OSError`` it can report instead of vanishing.
The filter is built once in the zygote (libseccomp compiles it on load) and loaded as the very
last set-up step of each guest: after it, nothing that it denies could be set up any more.
"""
from __future__ import annotations

import errno

import pyseccomp as seccomp

from ._libc import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID,
                    CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, SandboxSetupError)

DENIED = (
    # running programs
    "execve", "execveat",
    # looking into or steering other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # changing the filesystem view or the namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree", "mount_setattr",
    # kernel attack surface a pure computation never needs
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "personality",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "iopl", "ioperm", "vhangup", "nfsservctl", "uselib",
)
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                   CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)


def build() -> seccomp.SyscallFilter:
    """Returns the filter, ready to load; names this kernel does not know are skipped."""
    f = seccomp.SyscallFilter(seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in DENIED:
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError):
            pass  # a syscall this architecture does not have cannot be called either
    # clone may make threads and processes, but not namespaces. clone3 passes its flags in
    # memory, which seccomp cannot read: ENOSYS makes libc fall back to clone.
    for flag in NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    return f


def apply(f: seccomp.SyscallFilter) -> None:
    """Loads the filter into this process; requires no_new_privs (set by the caller)."""
    try:
        f.load()
    except OSError as e:
        raise SandboxSetupError("seccomp", "seccomp_load()", e.errno or errno.EINVAL) from e
