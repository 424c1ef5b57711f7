"""The few libc calls Python 3.11 does not expose (unshare, setns, mount, pivot_root, capset, …).

Every wrapper raises ``SandboxSetupError`` naming the call and its arguments, so a failed step
reads like nsjail's logs: ``mount('/usr', '/r/usr', MS_BIND|MS_RDONLY): EPERM``.
"""
from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.syscall.restype = ctypes.c_long
_libc.capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
# Every function and type above is resolved here, at import, in the zygote: a sandbox inherits
# them instead of paying ctypes' first-use lookups (about 0.3 ms) on its call's path.

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_MOUNT_FLAG_NAMES = [(MS_RDONLY, "MS_RDONLY"), (MS_NOSUID, "MS_NOSUID"), (MS_NODEV, "MS_NODEV"),
                     (MS_NOEXEC, "MS_NOEXEC"), (MS_REMOUNT, "MS_REMOUNT"), (MS_BIND, "MS_BIND"),
                     (MS_MOVE, "MS_MOVE"), (MS_REC, "MS_REC"), (MS_PRIVATE, "MS_PRIVATE"),
                     (MS_SLAVE, "MS_SLAVE")]


class SandboxSetupError(Exception):
    """One step of building a sandbox failed; ``call`` is the syscall as it was made."""

    def __init__(self, step: str, call: str, err: int):
        self.step, self.call, self.errno = step, call, err
        super().__init__(f"sandbox set-up failed at step '{step}': {call}: "
                         f"{errno.errorcode.get(err, err)} ({os.strerror(err)})")


def _check(result: int, step: str, call: str) -> int:
    if result < 0:
        raise SandboxSetupError(step, call, ctypes.get_errno())
    return result


def _flags(flags: int) -> str:
    names = [name for bit, name in _MOUNT_FLAG_NAMES if flags & bit]
    return "|".join(names) or "0"


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def mount(step: str, source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    call = f"mount({source!r}, {target!r}, {fstype!r}, {_flags(flags)}, {data!r})"
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), step, call)


def umount2(step: str, target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), step, f"umount2({target!r}, {flags})")


def unshare(step: str, flags: int) -> None:
    _check(_libc.unshare(flags), step, f"unshare({flags:#x})")


def setns(step: str, fd: int, flags: int) -> None:
    _check(_libc.setns(fd, flags), step, f"setns({fd}, {flags:#x})")


def setdomainname(step: str, name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), step, f"setdomainname({name!r})")


def pivot_root(step: str, new_root: str, put_old: str) -> None:
    # glibc has no wrapper; 155 is pivot_root on x86_64 and 41 on aarch64.
    number = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
    _check(_libc.syscall(number, _b(new_root), _b(put_old)), step, f"pivot_root({new_root!r}, {put_old!r})")


def prctl(step: str, option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, 0, 0), step, f"prctl({option}, {arg2}, {arg3})")


# The new mount API (Linux >= 5.12 for mount_setattr). These numbers are the same on every
# architecture: system calls added after 5.1 share one table.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x1, 0x2, 0x4, 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def open_tree_clone(step: str, fd: int) -> int:
    """A detached copy of the mount at the folder ``fd`` (not its submounts), as a descriptor."""
    return _check(_libc.syscall(SYS_OPEN_TREE, fd, b"", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH),
                  step, f"open_tree({fd}, OPEN_TREE_CLONE)")


def mount_setattr(step: str, fd: int, attributes: int, propagation: int = 0) -> None:
    """Sets mount attributes (MOUNT_ATTR_*) and, if given, the propagation type (MS_PRIVATE, …)
    of the mount ``fd`` refers to."""
    attr = _MountAttr(attributes, 0, propagation, 0)
    _check(_libc.syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), step, f"mount_setattr({fd}, {attributes:#x})")


def move_mount(step: str, fd: int, target: str) -> None:
    """Attaches the detached mount ``fd`` at ``target``."""
    _check(_libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
           step, f"move_mount({fd}, {target!r})")


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_seccomp_program(program: bytes, instructions: int) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &{instructions, program})."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(instructions, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
           "seccomp", f"prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, <{instructions} instructions>)")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CapDataV3 = _CapData * 2  # version 3 takes two (64 capabilities)


def set_capabilities(step: str, effective: int, permitted: int) -> None:
    """Sets this thread's effective and permitted capability sets (bit masks) and empties its
    inheritable set."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = _CapDataV3()
    for half in (0, 1):
        data[half].effective = effective >> 32 * half & 0xFFFFFFFF
        data[half].permitted = permitted >> 32 * half & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), step,
           f"capset(v3, effective={effective:#x}, permitted={permitted:#x}, inheritable=0)")
