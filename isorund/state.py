"""The daemon's state folder: where the zygote builds the sandboxes' root template (the
template namespace no longer needs it once built), the start-up probe's guest file and, with an
allowlist, gRPC's private socket.

Under systemd it lives in ``RuntimeDirectory``, which systemd removes however the daemon ends.
Elsewhere it is ``$TMPDIR/isorund-XXXXXXXX``, and a daemon killed with SIGKILL cannot remove
its own. So every daemon holds an exclusive ``flock`` on its folder's ``lock`` file for its whole
life — the kernel lets go of it when the process ends, however it ends — and a daemon starting
under the same parent removes the folders whose lock it can take: their daemon is gone. A
folder whose lock is held (another daemon on another socket), or that has no lock file, is
left alone: removing a live daemon's folder would take gRPC's private socket (with an
allowlist) from under it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile

log = logging.getLogger("isorund")

PREFIX = "isorund-"
LOCK = "lock"


def create(parent: str | None) -> tuple[str, int]:
    """Removes stale state folders under ``parent`` (default: ``$TMPDIR``, else ``/tmp``), then
    makes this daemon's; returns its path and the lock's descriptor, to keep open until the end.
    Not ``tempfile.gettempdir()``: it passes over a ``$TMPDIR`` it cannot write to (full, say)
    for ``/tmp`` without a word, and the daemon then kept its state, and removed stale folders,
    where no one had said (seen); a folder that cannot be made stops the start, naming it."""
    parent = os.path.abspath(parent or os.environ.get("TMPDIR") or "/tmp")  # (a relative one: the start failed)
    remove_stale(parent)
    folder = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
    # Locked under another name first: a folder's "lock" exists only once it is held, so a
    # daemon starting at the same moment never takes a folder that is being made for dead.
    pending = os.path.join(folder, ".lock-pending")
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(pending, os.path.join(folder, LOCK))
    return folder, fd


def remove_stale(parent: str) -> list[str]:
    """Removes the state folders under ``parent`` that a dead daemon of this user left;
    returns their paths."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(PREFIX) and _is_own_folder(entry) and _remove_if_unlocked(entry.path):
            removed.append(entry.path)
            log.info(json.dumps({"event": "stale_state_removed", "folder": entry.path,
                                 "note": "left by an isorund that was killed"}))
    return removed


def _is_own_folder(entry: os.DirEntry) -> bool:
    """A real folder (not a link to one) of this user: another user's is never ours to remove."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()


def _remove_if_unlocked(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: not a folder this daemon made
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its daemon is alive
        # removed while locked, so that no other starting daemon decides on it at the same time
        shutil.rmtree(folder, ignore_errors=True)
        return not os.path.lexists(folder)
    finally:
        os.close(fd)
