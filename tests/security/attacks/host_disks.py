# Attack: make the host's disks work on demand from a read-only folder: fsync a file the guest
# only reads (ext4 flushes the device's cache for every one), and read past the page cache with
# O_DIRECT (every read a read of the disk).
from escape import os, outcome, real_import, syscall

OPEN, FCNTL, OPENAT2, F_SETFL = 2, 72, 437, 4


def attack(times):
    """``times`` fsyncs and fdatasyncs of the guest's own read-only source, then every way to
    an uncached read; and a file of its /tmp, which it may sync as ever."""
    here = __file__
    mine = os.open(here, os.O_RDONLY)
    synced = [os.fsync(mine) or os.fdatasync(mine) for _ in range(times)]
    scratch = os.open("/tmp/scratch", os.O_CREAT | os.O_RDWR, 0o600)
    os.write(scratch, b"kept")
    return {
        "fsync": f"ok: {len(synced)}",
        "open O_DIRECT": outcome(lambda: os.open(here, os.O_RDONLY | os.O_DIRECT)),  # (openat)
        "open(2) O_DIRECT": syscall(OPEN, _path_address(here), os.O_RDONLY | os.O_DIRECT)[1] or "succeeded",
        "fcntl F_SETFL O_DIRECT": syscall(FCNTL, mine, F_SETFL, os.O_DIRECT)[1] or "succeeded",
        "openat2": syscall(OPENAT2, -100, 0, 0, 0)[1],
        "fsync of /tmp": outcome(lambda: os.fsync(scratch)),
        "read back": outcome(lambda: os.pread(scratch, 4, 0).decode()),
    }


_kept = []


def _path_address(path: str) -> int:
    """Address of ``path`` as a C string that lives as long as the call."""
    ctypes = real_import("ctypes")
    _kept.append(ctypes.create_string_buffer(path.encode()))
    return ctypes.addressof(_kept[-1])
