"""Named pipes in the folders a call is given.

A read-only bind does not make a named pipe (FIFO) read-only: the kernel's read-only check
covers regular files, folders and links, and a pipe opens for writing on a read-only mount. A
guest given a folder holding a host service's pipe could write into it, or read what the
service wrote there for someone else. Device nodes are inert there (``nodev``) and socket files
out of reach (the filter gives Unix sockets only as connected pairs); pipes have no such bar,
so the daemon refuses a folder that holds one before it binds it.

A folder's entries are read once: a folder whose inode, mtime and ctime are unchanged holds the
same entries (adding, removing or renaming one changes its folder's times, and only the clock's
owner can set ctime back), so a call on a tree already seen costs one ``lstat`` per folder. A
folder changed in the last second is not remembered: its times come from a clock that ticks a
few milliseconds apart, so a pipe made in the same tick as the read would leave them unchanged.
"""
from __future__ import annotations

import os
import stat
import time

# Folders in one checked tree: each costs a system call a call, in the daemon's event loop.
MAX_FOLDERS = 10_000
_MAX_REMEMBERED = 65_536
_SETTLED_NS = 1_000_000_000


class TooManyFolders(Exception):
    """The tree is larger than a call's folders may be."""


# folder path -> (its identity and times, a pipe in it or None, its subfolders' names)
_seen: dict[str, tuple[tuple[int, int, int, int], str | None, tuple[str, ...]]] = {}


def find_pipe(top: str) -> str | None:
    """The path of a named pipe in the tree under the folder ``top`` (a real path), if any.

    Symbolic links are not followed: one resolves inside the sandbox, to what is bound there,
    and each bound folder is checked itself. Raises TooManyFolders past MAX_FOLDERS."""
    pending, walked = [top], 0
    while pending:
        folder = pending.pop()
        walked += 1
        if walked > MAX_FOLDERS:
            raise TooManyFolders(f"more than {MAX_FOLDERS} folders")
        entry = _entries(folder)
        if entry is None:
            continue
        pipe, subfolders = entry
        if pipe is not None:
            return os.path.join(folder, pipe)
        pending.extend(os.path.join(folder, name) for name in subfolders)
    return None


def _entries(folder: str) -> tuple[str | None, tuple[str, ...]] | None:
    """A folder's first pipe and its subfolders, read again only if the folder changed; None
    for a folder that vanished or stopped being one since its parent was read."""
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    known = _seen.get(folder)
    if known is not None and known[0] == key:
        return known[1], known[2]
    try:
        pipe, subfolders = _read(folder)
    except OSError:
        return None
    if time.time_ns() - st.st_ctime_ns > _SETTLED_NS:
        if len(_seen) >= _MAX_REMEMBERED:
            _seen.clear()
        _seen[folder] = (key, pipe, subfolders)
    return pipe, subfolders


def _read(folder: str) -> tuple[str | None, tuple[str, ...]]:
    subfolders = []
    with os.scandir(folder) as entries:
        for entry in entries:
            # the entry's type from the folder listing (d_type); a stat only where it gives none
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.name)
            elif not (entry.is_file(follow_symlinks=False) or entry.is_symlink()) and _is_pipe(entry):
                return entry.name, ()
    return None, tuple(subfolders)


def _is_pipe(entry: os.DirEntry) -> bool:
    try:
        return stat.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode)
    except OSError:
        return False
