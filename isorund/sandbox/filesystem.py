"""The guest's root filesystem: a read-only tmpfs holding only what Python needs.

Built in four places, so that almost nothing of it is on the call's critical path:
- ``build_template`` (in the zygote, once): the read-only binds of the shared libraries and
  the stdlib (their site-packages hidden) and a minimal ``/dev``, made once, then kept in a
  mount namespace that holds nothing else (the *template namespace*);
- ``prepare_root`` (in the sandbox, in the pool, as the host's root): its mount namespace
  starts as a copy of the template namespace; it makes a fresh tmpfs root of its own,
  *moves* the template's binds into it (a move is one system call, where a read-only bind is
  two plus the path lookups), adds a fresh ``/proc`` showing only the call's own processes
  and a private size- and inode-capped ``/tmp``; then ``pivot_root`` and the old root
  detached, so no host path can be named again;
- ``detach_folders`` (in the daemon, when the call arrives): a detached, read-only copy of the
  call's guest folder, of its whitelisted folders and of the site-packages its externals need
  (opened without following symbolic links, then ``open_tree`` + ``mount_setattr``), handed to
  the sandbox as file descriptors;
- ``enter_call`` (in the sandbox): attaches them (``move_mount``) at ``/guest`` and at their
  host paths, and gives ``/tmp`` the call's size if it asked for less.

Each sandbox's root is a tmpfs of its own (the mountpoints a call needs are made in it), and
what it shares with other sandboxes (the binds, the hidden folders' and ``/dev``'s empty
tmpfs) is read-only. Binds are not recursive: a mount inside a bound folder is not carried
along. Nothing the guest can write (``/tmp``) or provide (``/guest``) is mapped executable:
``noexec`` there.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from . import _libc
from ._libc import (MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MS_BIND,
                    MS_MOVE, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT,
                    MS_SLAVE)

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
# In the template namespace, whose root is the zygote's tmpfs: the binds, and where each
# sandbox mounts its own root.
TEMPLATE = "/template"
NEW_ROOT = "/root"


@dataclass(frozen=True)
class RootPlan:
    """What every sandbox's root holds, decided once when the zygote starts."""
    mountpoint: str                  # empty host folder: the zygote builds the template in it
    system_paths: tuple[str, ...]    # host folders bound read-only at their own path
    symlinks: tuple[tuple[str, str], ...]  # (path, target) recreated inside, e.g. /lib -> usr/lib
    hidden: tuple[str, ...] = ()     # folders inside those binds covered by an empty tmpfs
    tmp_bytes: int = 16 << 20        # /tmp's size in the pool: the daemon's limit
    folders: tuple[str, ...] = field(init=False)  # every folder the new root needs, parents first

    def __post_init__(self):
        # worked out once, in the zygote: each sandbox inherits the list
        object.__setattr__(self, "folders", _folders_to_make(self.system_paths, [p for p, _ in self.symlinks]))


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


def _folders_to_make(system_paths: list[str], symlinks: list[str]) -> tuple[str, ...]:
    """The new root's folders, parents before children, so that each sandbox makes them with one
    ``mkdir`` each instead of probing every level of every path."""
    wanted = {"/proc", "/tmp", "/dev", GUEST_DIR}
    for path in [*system_paths, *(os.path.dirname(link) for link in symlinks)]:
        while path != "/":
            wanted.add(path)
            path = os.path.dirname(path)
    return tuple(sorted(wanted, key=lambda path: (path.count("/"), path)))


def build_template(plan: RootPlan) -> int:
    """In the zygote, once: leaves the host's mount namespace (following its later mounts and
    unmounts, so that a host filesystem is never held busy by it), makes the binds every
    sandbox's root holds under ``plan.mountpoint`` (which stays empty on the host), and moves
    them to the template namespace; returns that namespace, as a file descriptor."""
    step = "filesystem template"
    _libc.unshare(step, _libc.CLONE_NEWNS)
    _libc.mount(step, None, "/", None, MS_REC | MS_SLAVE)
    # Needed only until the template namespace is made; made again if a /tmp cleaner removed
    # the daemon's state folder before this zygote (a restarted one) started.
    os.makedirs(plan.mountpoint, mode=0o700, exist_ok=True)
    _libc.mount(step, "tmpfs", plan.mountpoint, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=1m,mode=0700")
    template = plan.mountpoint + TEMPLATE
    os.makedirs(template)
    os.mkdir(plan.mountpoint + NEW_ROOT)
    for path in plan.system_paths:
        bind_read_only(template, path, path)
    for path in plan.hidden:
        _hide(template + path)
    # /dev as a mount of its own, so that a sandbox takes it, device binds included, in one move.
    os.mkdir(template + "/dev")
    _libc.mount(step, "tmpfs", template + "/dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=4k,mode=0755")
    for device in DEVICES:
        bind_read_only(template, "/dev/" + device, "/dev/" + device, flags=MS_NOSUID)
    _libc.mount(step, None, template + "/dev", None, MS_REMOUNT | _RO | MS_NOEXEC)
    _libc.mount(step, None, plan.mountpoint, None, MS_REMOUNT | _RO | MS_NOEXEC)
    return _template_namespace(plan.mountpoint)


def _template_namespace(mountpoint: str) -> int:
    """A mount namespace whose root is the template's tmpfs: the template and nothing else.

    Each sandbox's mount namespace is a copy of one it is in, made mount by mount, and torn
    down mount by mount when it exits. A copy of the zygote's would hold the host's whole
    mount table (hundreds of mounts on a container host: 1,000 of them cost ~7 ms of CPU a
    call here), only to detach it at ``pivot_root``. The zygote enters a copy of its own
    namespace, pivots it onto the template, keeps a descriptor of it, comes back and drops
    its own copy of the template. The binds stay slaves of the host's mounts, as they were."""
    step = "filesystem template"
    own = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _libc.unshare(step, _libc.CLONE_NEWNS)
        template_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        os.chdir(mountpoint)
        _libc.pivot_root(step, ".", ".")
        _libc.umount2(step, ".", _libc.MNT_DETACH)
        try:
            _libc.setns(step, own, _libc.CLONE_NEWNS)
        except _libc.SandboxSetupError as e:
            if e.errno != errno.EPERM:
                raise
            raise _libc.SandboxSetupError(step, "setns() into a mount namespace (it needs CAP_SYS_CHROOT "
                                          "besides CAP_SYS_ADMIN)", e.errno) from None
        os.fchdir(cwd)
    finally:
        os.close(own)
        os.close(cwd)
    _libc.umount2(step, mountpoint, _libc.MNT_DETACH)
    return template_ns


def prepare_root(plan: RootPlan) -> None:
    """Builds the new root and pivots into it, as the real root of the host, in the pool, in
    a copy of the template namespace (``namespaces.unshare_host_views``)."""
    step = "filesystem"
    # Nothing done from here on may propagate back to the template's or the host's mounts.
    _libc.mount(step, None, "/", None, MS_REC | MS_PRIVATE)
    _libc.mount(step, "tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for folder in plan.folders:
        os.mkdir(NEW_ROOT + folder)
        if folder == "/proc":
            _mount_proc(NEW_ROOT + folder)
        elif folder == "/tmp":
            # mounted before anything under it is made: an interpreter or a virtualenv living
            # under the host's /tmp is then moved onto the call's private /tmp, not hidden by it.
            _libc.mount(step, "tmpfs", NEW_ROOT + folder, "tmpfs", _TMP_FLAGS, tmp_options(plan.tmp_bytes))
    for path in (*plan.system_paths, "/dev"):
        # a move keeps the mount's read-only flags and carries its submounts (hidden folders, devices)
        _libc.mount(step, TEMPLATE + path, NEW_ROOT + path, None, MS_MOVE)
    for path, target in plan.symlinks:
        os.symlink(target, NEW_ROOT + path)
    _libc.mount(step, None, NEW_ROOT, None, MS_REMOUNT | _RO)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no path
    # by which the host's tree (or the template's remains) can be reached.
    os.chdir(NEW_ROOT)
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
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise _libc.SandboxSetupError(step, f"isorund has no file descriptor left to bind {path!r}; "
                                          "retry later", e.errno) from None
        raise _libc.SandboxSetupError(step, f"{path!r} changed after the request was checked (a symbolic "
                                      "link, a file or nothing stands in its path now); not bound", e.errno) from None
    return fd


def enter_call(plan: RootPlan, folder_fds: list[int], host_paths: list[str], tmp_bytes: int) -> None:
    """In the sandbox, when its call arrives: attaches the call's folders (from
    ``detach_folders``) at ``/guest``, the working folder, and at their host paths; /tmp gets
    the call's size."""
    step = "filesystem"
    if len(folder_fds) != 1 + len(host_paths):
        raise _libc.SandboxSetupError(step, f"{len(folder_fds)} folders for {1 + len(host_paths)} mounts", errno.EINVAL)
    _libc.move_mount(step, folder_fds[0], GUEST_DIR)
    os.chdir(GUEST_DIR)  # (relative paths name the guest's files, as beside a script)
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
