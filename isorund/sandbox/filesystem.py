"""The guest's root filesystem: a read-only tmpfs holding only what Python needs.

Built in two halves so that the slow half stays off the call's critical path:
- ``prepare_root`` (in the pool, before any call is known): a tmpfs with read-only
  binds of the shared libraries and the stdlib (their site-packages hidden), a fresh ``/proc``
  showing only the call's own processes, and a minimal ``/dev``;
- ``enter_root`` (once the call arrives): the guest folder read-only at
  ``/guest``, the whitelisted folders and the site-packages the call's externals need at
  their host paths, a private size- and inode-capped ``/tmp``, then ``pivot_root`` and the old
  root detached, so no host path outside those binds can be named again.

Binds are not recursive: a mount inside a bound folder is not carried along. Nothing the guest
can write (``/tmp``) or provide (``/guest``) is mapped executable: ``noexec`` there.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from . import _libc
from ._libc import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_PRIVATE

GUEST_DIR = "/guest"
DEVICES = ("null", "zero", "random", "urandom")
_RO = MS_RDONLY | MS_NOSUID | MS_NODEV
# Only the pid folders (no /proc/sys, /proc/kcore, /proc/keys, …), and of those only the
# processes the guest could trace anyway: its own. Linux >= 5.8; older
# kernels get the per-namespace hidepid alone.
PROC_OPTIONS = ("hidepid=invisible,subset=pid", "hidepid=2")
TMP_BYTES_PER_INODE = 4096  # /tmp's inode cap: empty files cost kernel memory, not tmpfs pages


@dataclass(frozen=True)
class RootPlan:
    """What every sandbox's root holds, decided once when the zygote starts."""
    mountpoint: str                  # empty host folder the new root is mounted on
    system_paths: tuple[str, ...]    # host folders bound read-only at their own path
    symlinks: tuple[tuple[str, str], ...]  # (path, target) recreated inside, e.g. /lib -> usr/lib
    hidden: tuple[str, ...] = ()     # folders inside those binds covered by an empty tmpfs


def plan_root(mountpoint: str, python_dirs: list[str], package_dirs: list[str] = ()) -> RootPlan:
    """Lists the library folders and the interpreter's folders to bind, following the host's
    merged-/usr symlinks so that ``/lib/x86_64-linux-gnu/libc.so.6`` resolves inside too.

    ``package_dirs`` (site-packages, dist-packages) that lie inside a bound folder are hidden:
    a call sees installed packages only through the site folders its externals bind."""
    paths, links = [], []
    for path in ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", *python_dirs]:
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path) and not any(_within(path, p) for p in paths):
            paths.append(path)
    hidden = sorted({os.path.realpath(d) for d in package_dirs if os.path.isdir(d)
                     and any(_within(os.path.realpath(d), p) for p in paths)})
    return RootPlan(mountpoint, tuple(paths), tuple(links), tuple(hidden))


def prepare_root(plan: RootPlan) -> None:
    """Builds the call-independent part of the new root, as the real root of the host."""
    step = "filesystem"
    # Nothing done from here on may propagate back to the host's mount table.
    _libc.mount(step, None, "/", None, MS_REC | MS_PRIVATE)
    _libc.mount(step, "tmpfs", plan.mountpoint, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for path in plan.system_paths:
        bind_read_only(plan.mountpoint, path, path)
    for path in plan.hidden:
        _libc.mount(step, "tmpfs", plan.mountpoint + path, "tmpfs", _RO | MS_NOEXEC, "size=4k,nr_inodes=1")
    for path, target in plan.symlinks:
        _ensure_parent(plan.mountpoint + path)
        os.symlink(target, plan.mountpoint + path)
    os.makedirs(plan.mountpoint + "/proc")
    _mount_proc(plan.mountpoint + "/proc")
    os.makedirs(plan.mountpoint + "/dev")
    for device in DEVICES:
        bind_read_only(plan.mountpoint, "/dev/" + device, "/dev/" + device, flags=MS_NOSUID)
    # exist_ok: an interpreter installed under the host's /tmp already made it (see enter_root)
    os.makedirs(plan.mountpoint + "/tmp", exist_ok=True)
    os.makedirs(plan.mountpoint + GUEST_DIR)


def enter_root(plan: RootPlan, guest_root: str, host_paths: list[str], tmp_bytes: int) -> None:
    """Binds this call's folders, makes the root read-only and pivots into it."""
    step = "filesystem"
    new_root = plan.mountpoint
    bind_read_only(new_root, guest_root, GUEST_DIR, flags=_RO | MS_NOEXEC)
    # /tmp first: a whitelisted folder may live under the host's /tmp, and is then bound
    # (read-only, at its host path) on top of the call's private, size-capped /tmp.
    _libc.mount(step, "tmpfs", new_root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                tmp_options(tmp_bytes))
    # The call's /tmp hides whatever the pool bound under the host's /tmp (an interpreter or a
    # virtualenv living there); it is bound again, the same way, on top.
    for path in plan.system_paths:
        if _within(path, "/tmp"):
            bind_read_only(new_root, path, path)
    for path in plan.hidden:
        if _within(path, "/tmp"):
            _libc.mount(step, "tmpfs", new_root + path, "tmpfs", _RO | MS_NOEXEC, "size=4k,nr_inodes=1")
    for path in host_paths:
        bind_read_only(new_root, path, path)
    _libc.mount(step, None, new_root, None, MS_REMOUNT | _RO)
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no path
    # by which the host's tree can be reached.
    os.chdir(new_root)
    _libc.pivot_root(step, ".", ".")
    _libc.umount2(step, ".", _libc.MNT_DETACH)
    os.chdir("/")


def tmp_options(tmp_bytes: int) -> str:
    """Mount options of the call's /tmp: its byte cap, and an inode cap to match."""
    size = max(tmp_bytes, 4096)
    return f"size={size},nr_inodes={max(64, size // TMP_BYTES_PER_INODE)},mode=1777"


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
        _ensure_parent(dest)
        if os.path.isdir(source):
            os.makedirs(dest)
        else:
            os.close(os.open(dest, os.O_CREAT | os.O_WRONLY, 0o644))
    _libc.mount(step, source, dest, None, MS_BIND)
    _libc.mount(step, None, dest, None, MS_REMOUNT | MS_BIND | flags | MS_RDONLY)


def _ensure_parent(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")
