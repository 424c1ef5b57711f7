"""The guest's root filesystem: a read-only tmpfs holding only what Python needs.

Built in three places, so that almost nothing of it is on the call's critical path:
- ``prepare_root`` (in the sandbox, in the pool, as the host's root): a tmpfs with read-only
  binds of the shared libraries and the stdlib (their site-packages hidden), a fresh ``/proc``
  showing only the call's own processes, a minimal ``/dev``, a private size- and inode-capped
  ``/tmp``; then ``pivot_root`` and the old root detached, so no host path can be named again;
- ``detach_folders`` (in the daemon, when the call arrives): a detached, read-only copy of the
  call's guest folder, of its whitelisted folders and of the site-packages its externals need
  (opened without following symbolic links, then ``open_tree`` + ``mount_setattr``), handed to
  the sandbox as file descriptors;
- ``enter_call`` (in the sandbox): attaches them (``move_mount``) at ``/guest`` and at their
  host paths, and gives ``/tmp`` the call's size if it asked for less.

Binds are not recursive: a mount inside a bound folder is not carried along. Nothing the guest
can write (``/tmp``) or provide (``/guest``) is mapped executable: ``noexec`` there.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from . import _libc
from ._libc import (MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MS_BIND,
                    MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT)

GUEST_DIR = "/guest"
DEVICES = ("null", "zero", "random", "urandom")
_RO = MS_RDONLY | MS_NOSUID | MS_NODEV
# Only the pid folders (no /proc/sys, /proc/kcore, /proc/keys, …), and of those only the
# processes the guest could trace anyway: its own. Linux >= 5.8; older
# kernels get the per-namespace hidepid alone.
PROC_OPTIONS = ("hidepid=invisible,subset=pid", "hidepid=2")
TMP_BYTES_PER_INODE = 4096  # /tmp's inode cap: empty files cost kernel memory, not tmpfs pages
_TMP_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
# How the daemon's detached copies are mounted: like the binds above; the guest folder noexec too.
GUEST_ATTRIBUTES = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
HOST_PATH_ATTRIBUTES = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
# The call's folders reach the sandbox as file descriptors in one message (SCM_MAX_FD is 253):
# the guest folder and at most this many host paths.
MAX_HOST_PATHS = 250


@dataclass(frozen=True)
class RootPlan:
    """What every sandbox's root holds, decided once when the zygote starts."""
    mountpoint: str                  # empty host folder the new root is mounted on
    system_paths: tuple[str, ...]    # host folders bound read-only at their own path
    symlinks: tuple[tuple[str, str], ...]  # (path, target) recreated inside, e.g. /lib -> usr/lib
    hidden: tuple[str, ...] = ()     # folders inside those binds covered by an empty tmpfs
    tmp_bytes: int = 16 << 20        # /tmp's size in the pool: the daemon's limit


def plan_root(mountpoint: str, python_dirs: list[str], package_dirs: list[str] = (),
              tmp_bytes: int = 16 << 20) -> RootPlan:
    """Lists the library folders and the interpreter's folders to bind, following the host's
    merged-/usr symlinks so that ``/lib/x86_64-linux-gnu/libc.so.6`` resolves inside too.

    ``package_dirs`` (site-packages, dist-packages) that lie inside a bound folder are hidden:
    a call sees installed packages only through the site folders its externals bind."""
    paths, links = [], []
    for path in ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", *python_dirs]:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path) and not any(within(path, p) for p in paths):
            paths.append(path)
    hidden = sorted({os.path.realpath(d) for d in package_dirs if os.path.isdir(d)
                     and any(within(os.path.realpath(d), p) for p in paths)})
    return RootPlan(mountpoint, tuple(paths), tuple(links), tuple(hidden), tmp_bytes)


def prepare_root(plan: RootPlan) -> None:
    """Builds the new root and pivots into it, as the real root of the host, in the pool."""
    step = "filesystem"
    new_root = plan.mountpoint
    # Nothing done from here on may propagate back to the host's mount table.
    _libc.mount(step, None, "/", None, MS_REC | MS_PRIVATE)
    _libc.mount(step, "tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for path in plan.system_paths:
        bind_read_only(new_root, path, path)
    for path in plan.hidden:
        _hide(new_root + path)
    for path, target in plan.symlinks:
        _ensure_parent(new_root + path)
        os.symlink(target, new_root + path)
    os.makedirs(new_root + "/proc")
    _mount_proc(new_root + "/proc")
    os.makedirs(new_root + "/dev")
    for device in DEVICES:
        bind_read_only(new_root, "/dev/" + device, "/dev/" + device, flags=MS_NOSUID)
    os.makedirs(new_root + GUEST_DIR)
    # exist_ok: an interpreter installed under the host's /tmp already made it.
    os.makedirs(new_root + "/tmp", exist_ok=True)
    _libc.mount(step, "tmpfs", new_root + "/tmp", "tmpfs", _TMP_FLAGS, tmp_options(plan.tmp_bytes))
    # The private /tmp hides whatever was bound under the host's /tmp (an interpreter or a
    # virtualenv living there); it is bound again, the same way, on top.
    for path in plan.system_paths:
        if within(path, "/tmp"):
            bind_read_only(new_root, path, path)
    for path in plan.hidden:
        if within(path, "/tmp"):
            _hide(new_root + path)
    _libc.mount(step, None, new_root, None, MS_REMOUNT | _RO)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no path
    # by which the host's tree can be reached.
    os.chdir(new_root)
    _libc.pivot_root(step, ".", ".")
    _libc.umount2(step, ".", _libc.MNT_DETACH)
    os.chdir("/")


def detach_folders(guest_root: str, host_paths: list[str]) -> list[int]:
    """In the daemon: detached, read-only copies of the call's folders (the guest folder first,
    then ``host_paths`` in order), as file descriptors for the sandbox's ``enter_call``.

    The paths are the real paths the request was checked against, so none of their components
    is a symbolic link. One that is by now was put there since (a tenant who can write in a
    folder may swap a checked subfolder for a link to ``/`` while the call waits in the queue):
    such a folder is refused, never followed."""
    step = "call folders"
    fds: list[int] = []
    try:
        for path, attributes in [(guest_root, GUEST_ATTRIBUTES), *((p, HOST_PATH_ATTRIBUTES) for p in host_paths)]:
            fds.append(_clone_unchanged(step, path))
            # private: a copy of a shared host mount would otherwise stay its peer, and mount
            # events would travel between the host and the sandbox in either direction.
            _libc.mount_setattr(step, fds[-1], attributes, propagation=MS_PRIVATE)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _clone_unchanged(step: str, path: str) -> int:
    folder = _open_without_symlinks(step, path)
    try:
        return _libc.open_tree_clone(step, folder)
    finally:
        os.close(folder)


def _open_without_symlinks(step: str, path: str) -> int:
    """An O_PATH descriptor of the folder at the real path ``path``, opened one component at
    a time with O_NOFOLLOW: a component that is a symbolic link (or no folder) is refused.
    (``openat2``'s RESOLVE_NO_SYMLINKS would do it in one call, but systemd's system call
    filter for the unit does not know it.)"""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in filter(None, path.split("/")):
            parent, fd = fd, -1
            try:
                fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            finally:
                os.close(parent)
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        raise _libc.SandboxSetupError(step, f"{path!r} changed after the request was checked (a symbolic "
                                      "link, a file or nothing stands in its path now); not bound", e.errno) from None
    return fd


def enter_call(plan: RootPlan, folder_fds: list[int], host_paths: list[str], tmp_bytes: int) -> None:
    """In the sandbox, when its call arrives: attaches the call's folders (from
    ``detach_folders``) at ``/guest`` and at their host paths; /tmp gets the call's size."""
    step = "filesystem"
    if len(folder_fds) != 1 + len(host_paths):
        raise _libc.SandboxSetupError(step, f"{len(folder_fds)} folders for {1 + len(host_paths)} mounts", errno.EINVAL)
    _libc.move_mount(step, folder_fds[0], GUEST_DIR)
    if tmp_bytes != plan.tmp_bytes:
        _libc.mount(step, None, "/tmp", None, MS_REMOUNT | _TMP_FLAGS, tmp_options(tmp_bytes, mode=False))
    missing = [(path, fd) for path, fd in zip(host_paths, folder_fds[1:]) if not os.path.lexists(path)]
    if missing:
        # mountpoints for them: the root is read-only, and this sandbox's alone
        _libc.mount(step, None, "/", None, MS_REMOUNT | MS_NOSUID | MS_NODEV)
        for path, fd in missing:
            _make_mountpoint(path, is_folder=stat.S_ISDIR(os.fstat(fd).st_mode))
        _libc.mount(step, None, "/", None, MS_REMOUNT | _RO)
    for path, fd in zip(host_paths, folder_fds[1:]):
        _libc.move_mount(step, fd, path)


def _hide(path: str) -> None:
    _libc.mount("filesystem", "tmpfs", path, "tmpfs", _RO | MS_NOEXEC, "size=4k,nr_inodes=1")


def tmp_options(tmp_bytes: int, mode: bool = True) -> str:
    """Mount options of the call's /tmp: its byte cap, and an inode cap to match."""
    size = max(tmp_bytes, 4096)
    return f"size={size},nr_inodes={max(64, size // TMP_BYTES_PER_INODE)}" + (",mode=1777" if mode else "")


def _mount_proc(target: str) -> None:
    for options in PROC_OPTIONS:
        try:
            _libc.mount("filesystem", "proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)
            return
        except _libc.SandboxSetupError as e:
            if e.errno != errno.EINVAL or options == PROC_OPTIONS[-1]:
                raise


def bind_read_only(new_root: str, source: str, target: str, flags: int = _RO) -> None:
    """Bind-mounts ``source`` at ``new_root + target``; read-only needs a second remount."""
    step = "filesystem"
    dest = new_root + target
    if not os.path.exists(dest):
        _make_mountpoint(dest, os.path.isdir(source))
    _libc.mount(step, source, dest, None, MS_BIND)
    _libc.mount(step, None, dest, None, MS_REMOUNT | MS_BIND | flags | MS_RDONLY)


def _make_mountpoint(path: str, is_folder: bool) -> None:
    _ensure_parent(path)
    if is_folder:
        os.makedirs(path)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))


def _ensure_parent(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
