"""Named pipes in the folders a call is given.

A read-only bind does not make a named pipe (FIFO) read-only: the kernel's read-only check
covers regular files, folders and links, and a pipe opens for writing on a read-only mount. A
guest given a folder holding a host service's pipe could write into it, or read what the
service wrote there for someone else. Device nodes are inert there (``nodev``) and socket files
out of reach (the filter gives Unix sockets only as connected pairs); pipes have no such bar,
so the daemon refuses a folder that holds one before it binds it.

The walk goes folder by folder through descriptors (``openat``), never by a full path: a path
past PATH_MAX could not be looked up, and a pipe at the bottom of such a tree went unseen. A
tenant controls the tree, so one check is bounded in folders, depth, entries read and time, and
runs on a thread of its own, not in the daemon's event loop. A folder's entries are remembered
by its inode, mtime and ctime (adding, removing or renaming an entry changes its folder's
times, and only the clock's owner can set ctime back), so a tree already seen costs an open and
an ``fstat`` per folder. A folder changed in the last second is not remembered: its times come
from a clock that ticks a few milliseconds apart, so a pipe made in the same tick as the read
would leave them unchanged.

A tree the daemon already remembers, unchanged and small, is checked on the event loop instead
(``quick``): a few opens and ``fstat``s cost less than the hop to a thread and back, which took
~0.2 ms of every call (measured: bench/PROFILE.md). A quick check that would have to read a
folder, or open more than ``QUICK_FOLDERS`` (all the call's folders together: ``Quick``), gives
up at once, and the caller checks on a thread.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
import time

MAX_FOLDERS = 10_000
MAX_DEPTH = 64
MAX_ENTRIES = 200_000   # entries read in one check: a folder of a million files is refused, not read
MAX_SECONDS = 2.0
_MAX_REMEMBERED_NAMES = 500_000
QUICK_FOLDERS = 32      # the most folders a quick check opens before it gives up
# A tree refused as too large is refused again, without a walk, for this long: a walk to a
# bound costs tens of milliseconds even remembered, and a refused request costs its client
# nothing, so 16 callers naming /usr again and again held every other call ~0.9 s (seen).
# A tenant who trims its tree waits at most this long for it to be taken.
REFUSAL_REMEMBERED_SECONDS = 10.0
_MAX_REFUSALS = 1024
_SETTLED_NS = 1_000_000_000
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A subfolder that is gone, or no folder any more, since its parent was read: nothing of it is
# bound. One the daemon may not read is skipped only if no other user may pass through it
# either (see _unreachable); any other failure fails the check.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class TooLarge(Exception):
    """The tree is larger than a call's folders may be; the message says by which bound."""


class NotRemembered(Exception):
    """A quick check met a folder it would have to read, or too many folders: check on a thread."""


class Quick:
    """One quick check's allowance of folders, shared by all the trees of one call (counted per
    tree, 250 whitelisted folders of 32 remembered folders each held the event loop 34 ms a
    call: found by a probe)."""

    def __init__(self, folders: int = QUICK_FOLDERS):
        self.folders_left = folders


# (device, inode) -> (mtime, ctime, a pipe in it or None, its subfolders' names)
_seen: dict[tuple[int, int], tuple[int, int, str | None, tuple[str, ...]]] = {}
# (device, inode) of a top folder -> (when it was refused, why)
_refused: dict[tuple[int, int], tuple[float, str]] = {}
_remembered_names = 0
_remembering = threading.Lock()


def find_pipe(top: str, quick: Quick | None = None) -> str | None:
    """The path of a named pipe in the tree under the folder ``top`` (a real path), if any.

    Symbolic links are not followed: one resolves inside the sandbox, to what is bound there,
    and each bound folder is checked itself. Raises TooLarge past a bound, OSError if ``top``
    cannot be opened as a folder, and, given ``quick``, NotRemembered where the tree is not
    remembered as it is now or holds more folders than ``quick`` has left."""
    fd = os.open(top, _OPEN_FOLDER)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        refused = _refused.get(key)
        if refused is not None and (age := time.monotonic() - refused[0]) < REFUSAL_REMEMBERED_SECONDS:
            raise TooLarge(f"{refused[1]} (as found {age:.0f} s ago; looked at again "
                           f"{REFUSAL_REMEMBERED_SECONDS:g} s after)")
        try:
            return _Walk(quick).folder(fd, top, 0)
        except TooLarge as e:
            with _remembering:
                if len(_refused) >= _MAX_REFUSALS:
                    _refused.clear()
                _refused[key] = (time.monotonic(), str(e))
            raise
    finally:
        os.close(fd)


class _Walk:
    def __init__(self, quick: Quick | None = None):
        self.quick = quick
        self.folders = self.entries = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def folder(self, fd: int, path: str, depth: int) -> str | None:
        self.folders += 1
        if self.quick is not None:
            self.quick.folders_left -= 1
            if self.quick.folders_left < 0:
                raise NotRemembered(f"more than {QUICK_FOLDERS} folders")
        if self.folders > MAX_FOLDERS:
            raise TooLarge(f"more than {MAX_FOLDERS} folders")
        if depth > MAX_DEPTH:
            raise TooLarge(f"folders nested more than {MAX_DEPTH} deep")
        if time.monotonic() > self.deadline:
            raise TooLarge(f"more than its {MAX_SECONDS:g} s of checking could read")
        pipe, subfolders = self.entries_of(fd)
        if pipe is not None:
            return os.path.join(path, pipe)
        for name in subfolders:
            try:
                child = os.open(name, _OPEN_FOLDER, dir_fd=fd)
            except OSError as e:
                if e.errno in _GONE or (e.errno == errno.EACCES and _unreachable(fd, name)):
                    continue
                # out of descriptors above all: a subfolder skipped for that was a pipe unseen,
                # and the call then bound the folder with the pipe in it (seen)
                raise
            try:
                found = self.folder(child, os.path.join(path, name), depth + 1)
            finally:
                os.close(child)
            if found is not None:
                return found
        return None

    def entries_of(self, fd: int) -> tuple[str | None, tuple[str, ...]]:
        """The folder's first pipe and its subfolders, read again only if the folder changed."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        known = _seen.get(key)
        if known is not None and known[:2] == (st.st_mtime_ns, st.st_ctime_ns):
            self.count(len(known[3]))
            return known[2], known[3]
        if self.quick is not None:
            raise NotRemembered("a folder not remembered as it is now")
        pipe, subfolders = self.read(fd)
        if time.time_ns() - st.st_ctime_ns > _SETTLED_NS:
            _remember(key, (st.st_mtime_ns, st.st_ctime_ns, pipe, subfolders))
        return pipe, subfolders

    def read(self, fd: int) -> tuple[str | None, tuple[str, ...]]:
        subfolders = []
        with os.scandir(fd) as entries:
            for entry in entries:
                self.count(1)
                # the entry's type from the folder listing (d_type); a stat only where it gives none
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.name)
                elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()) and _is_pipe(entry):
                    return entry.name, ()
        return None, tuple(subfolders)

    def count(self, entries: int) -> None:
        self.entries += entries
        if self.entries > MAX_ENTRIES:
            raise TooLarge(f"more than {MAX_ENTRIES} entries")


def _remember(key, entry) -> None:
    """Bounded by the names held, not by folders: one folder may hold 100,000 subfolders.
    Under a lock: checks of concurrent calls run on threads of their own."""
    global _remembered_names
    with _remembering:
        replaced = _seen.pop(key, None)
        if replaced is not None:
            _remembered_names -= len(replaced[3])
        if _remembered_names + len(entry[3]) > _MAX_REMEMBERED_NAMES:
            _seen.clear()
            _remembered_names = 0
        _seen[key] = entry
        _remembered_names += len(entry[3])


def _unreachable(parent: int, name: str) -> bool:
    """Whether a subfolder the daemon may not read is closed to the guest too. Without
    CAP_DAC_OVERRIDE (the systemd unit has none) the daemon cannot list another user's folder
    of mode 0711, through which a guest can still reach a pipe by its name: such a folder
    fails the check; one that others may not pass through (0700, 0750) hides nothing."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except OSError:
        return False
    return not mode & stat.S_IXOTH


def _is_pipe(entry: os.DirEntry) -> bool:
    try:
        return stat.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        return False
