# Attack: use kernel state that belongs to a file every sandbox shares read-only, not to a
# process — a lock (flock, POSIX and open-file-description locks, a lease), a directory
# notification (dnotify), a futex in a shared mapping of a library file, the file's pages in
# the page cache (evicted, then probed without waiting) — to signal another call, see the
# host's locks or watch which files other calls and the host open.
from escape import os, real_import, syscall

FCNTL, FLOCK, FUTEX, FUTEX_WAKE2, FUTEX_REQUEUE2 = 72, 73, 202, 454, 456
FADVISE, PREADV2, PWRITEV2, CACHESTAT = 221, 327, 328, 451
POSIX_FADV_SEQUENTIAL, POSIX_FADV_DONTNEED, RWF_NOWAIT = 2, 4, 0x8
F_GETFL, F_GETLK, F_SETLK, F_OFD_GETLK, F_OFD_SETLK = 3, 5, 6, 36, 37
F_SETLEASE, F_NOTIFY = 1024, 1026
F_RDLCK, DN_ACCESS, DN_MULTISHOT = 0, 0x1, 0x80000000
LOCK_SH, LOCK_EX, LOCK_NB = 1, 2, 4
FUTEX_WAIT, FUTEX_WAKE, FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 0, 1, 9, 10
FUTEX_WAITV, FUTEX_WAIT2, CLOCK_MONOTONIC = 449, 455, 1
SET_TID_ADDRESS = 218
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
HIGH_BIT = 1 << 32
_kept = []  # what the kernel is handed an address of, alive as long as the call


def _library_file() -> int:
    """A read-only descriptor of a file every sandbox (and the host) shares: the stdlib's os.py."""
    return os.open(os.__file__, os.O_RDONLY)


def _mapped_word(fd: int) -> int:
    """Address of the first word of a shared read-only mapping of ``fd``: a futex keyed by the
    file, the same in every process that maps it."""
    ctypes = real_import("ctypes")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    PROT_READ, MAP_SHARED = 1, 1
    return libc.mmap(None, 4096, PROT_READ, MAP_SHARED, fd, 0)


def _try(number: int, *args: int) -> str:
    """The errno name the call failed with, or "succeeded (its result)"."""
    result, err = syscall(number, *args)
    return err or f"succeeded ({result})"


def _own_file(mode: int = os.O_RDONLY) -> int:
    """A file the guest owns (in its /tmp), where a lease or cachestat needs no other right."""
    path = "/tmp/owned"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    return os.open(path, mode)


def _buffer(size: int) -> int:
    """Address of a zeroed buffer of ``size`` bytes that lives as long as the call."""
    ctypes = real_import("ctypes")
    _kept.append(ctypes.create_string_buffer(size))
    return ctypes.addressof(_kept[-1])


def _iovec() -> int:
    """Address of one struct iovec over a 4 KiB buffer."""
    ctypes = real_import("ctypes")
    _kept.append((ctypes.c_size_t * 2)(_buffer(4096), 4096))
    return ctypes.addressof(_kept[-1])


def _current(address: int) -> int:
    """The 32-bit word at ``address`` (a futex wait must name the value it expects)."""
    return real_import("ctypes").c_uint32.from_address(address).value


def _timeout(seconds: int) -> int:
    """Address of a struct timespec of ``seconds``."""
    ctypes = real_import("ctypes")
    _kept.append((ctypes.c_long * 2)(seconds, 0))
    return ctypes.addressof(_kept[-1])


def attack():
    fd = _library_file()
    folder = os.open(os.path.dirname(os.__file__), os.O_RDONLY)
    word = _mapped_word(fd)
    lock = _buffer(32)  # a struct flock: a read lock (F_RDLCK is 0) on the whole file
    return {
        "flock LOCK_EX": _try(FLOCK, fd, LOCK_EX | LOCK_NB),
        "flock LOCK_SH": _try(FLOCK, fd, LOCK_SH | LOCK_NB),
        "F_SETLK": _try(FCNTL, fd, F_SETLK, lock),
        "F_GETLK": _try(FCNTL, fd, F_GETLK, lock),
        "F_OFD_SETLK": _try(FCNTL, fd, F_OFD_SETLK, lock),
        "F_OFD_GETLK": _try(FCNTL, fd, F_OFD_GETLK, lock),
        "F_SETLK, high bits set": _try(FCNTL, fd, HIGH_BIT | F_SETLK, lock),
        "F_SETLEASE": _try(FCNTL, _own_file(), F_SETLEASE, F_RDLCK),
        "F_NOTIFY": _try(FCNTL, folder, F_NOTIFY, DN_ACCESS | DN_MULTISHOT),
        "F_NOTIFY, high bits set": _try(FCNTL, folder, HIGH_BIT | F_NOTIFY, DN_ACCESS),
        "FUTEX_WAKE": _try(FUTEX, word, FUTEX_WAKE, 1, 0, 0, 0),
        "FUTEX_WAKE, realtime clock bit": _try(FUTEX, word, FUTEX_WAKE | FUTEX_CLOCK_REALTIME, 1, 0, 0, 0),
        "FUTEX_WAKE, high bits set": _try(FUTEX, word, HIGH_BIT | FUTEX_WAKE, 1, 0, 0, 0),
        "FUTEX_WAKE_BITSET": _try(FUTEX, word, FUTEX_WAKE_BITSET, 1, 0, 0, 0xFFFFFFFF),
        "futex_wake": _try(FUTEX_WAKE2, word, 0xFFFFFFFF, 1, 2),  # flags: FUTEX2_SIZE_U32
        "futex_requeue": _try(FUTEX_REQUEUE2, 0, 0, 1, 1),
        "fadvise DONTNEED": _try(FADVISE, fd, 0, 0, POSIX_FADV_DONTNEED),
        "fadvise DONTNEED, high bits set": _try(FADVISE, fd, 0, 0, HIGH_BIT | POSIX_FADV_DONTNEED),
        "preadv2 RWF_NOWAIT": _try(PREADV2, fd, _iovec(), 1, 0, 0, RWF_NOWAIT),
        "pwritev2 RWF_NOWAIT": _try(PWRITEV2, _own_file(os.O_WRONLY), _iovec(), 1, 0, 0, RWF_NOWAIT),
        # on a file it owns, where this kernel answers (it refuses other readers itself)
        "cachestat": _try(CACHESTAT, _own_file(), _buffer(16), _buffer(64), 0),
        # what the runtime and libc need keeps working
        "F_GETFL": "succeeded" if syscall(FCNTL, fd, F_GETFL)[0] >= 0 else "failed",
        "private FUTEX_WAKE": _try(FUTEX, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, 1, 0, 0, 0),
        "private futex_wake": _try(FUTEX_WAKE2, word, 0xFFFFFFFF, 1, 2 | FUTEX_PRIVATE_FLAG),
        "fadvise SEQUENTIAL": _try(FADVISE, fd, 0, 0, POSIX_FADV_SEQUENTIAL),
        "preadv2": _try(PREADV2, fd, _iovec(), 1, 0, 0, 0).split(" ")[0],
        "thread joined": _thread_joins(),
        "libc's pthread_join": _libc_thread_joins(),
        # a shared wait returns at once, as if the word had changed (a thread's end wakes one)
        "shared FUTEX_WAIT": _try(FUTEX, word, FUTEX_WAIT, _current(word), _timeout(0), 0, 0),
        "shared FUTEX_WAIT_BITSET": _try(FUTEX, word, FUTEX_WAIT_BITSET, _current(word), _timeout(0), 0, 0xFFFFFFFF),
        "shared FUTEX_WAIT, high bits set": _try(FUTEX, word, HIGH_BIT | FUTEX_WAIT, _current(word), _timeout(0), 0, 0),
        "shared futex_wait": _try(FUTEX_WAIT2, word, _current(word), 0xFFFFFFFF, 2, _timeout(0), CLOCK_MONOTONIC),
        "futex_waitv": _try(FUTEX_WAITV, _buffer(24), 1, 0, _timeout(0), CLOCK_MONOTONIC),
        "private FUTEX_WAIT": _try(FUTEX, word, FUTEX_WAIT | FUTEX_PRIVATE_FLAG, _current(word), _timeout(0), 0, 0),
        "private futex_wait": _try(FUTEX_WAIT2, word, _current(word), 0xFFFFFFFF, 2 | FUTEX_PRIVATE_FLAG,
                                   _timeout(0), CLOCK_MONOTONIC),
    }


def _thread_joins() -> str:
    threading = real_import("threading")
    seen = []
    thread = threading.Thread(target=lambda: seen.append(1))
    thread.start()
    thread.join(10)
    return "yes" if seen and not thread.is_alive() else "no"


def _libc_thread_joins() -> str:
    """A thread started and joined by libc itself: pthread_join waits on a shared futex, the
    thread's id, which the kernel clears and wakes when the thread ends."""
    ctypes, time = real_import("ctypes"), real_import("time")
    libc = ctypes.CDLL(None, use_errno=True)
    body = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda _: time.sleep(0.2))
    _kept.append(body)
    thread = ctypes.c_ulong()
    if libc.pthread_create(ctypes.byref(thread), None, body, None) != 0:
        return "not started"
    started = time.monotonic()
    result = libc.pthread_join(thread, None)
    return f"joined ({result}) after the thread's sleep" if time.monotonic() - started >= 0.15 else "joined early"


def waiter(seconds: int):
    """Waits on the futex of os.py's first word: "succeeded (0)" if another process woke it."""
    word = _mapped_word(_library_file())
    print("waiting")
    return _try(FUTEX, word, FUTEX_WAIT, _current(word), _timeout(seconds), 0, 0)


def waker():
    """Wakes whoever waits on the futex of os.py's first word; returns how many it woke."""
    return _try(FUTEX, _mapped_word(_library_file()), FUTEX_WAKE, 1 << 20, 0, 0, 0)


def sweep(fcntl_commands, futex_ops):
    """Every fcntl command and shared futex op the filter lists, on the library file."""
    fd = _library_file()
    word = _mapped_word(fd)
    lock = _buffer(32)
    results = {f"fcntl {command}": _try(FCNTL, fd, command, lock) for command in fcntl_commands}
    results.update({f"futex {op}": _try(FUTEX, word, op, 0, 0, 0, 0) for op in futex_ops})
    return results


def thread_exit_waker():
    """Wakes the same futex past the filter: a thread names os.py's first word as its
    clear-child-tid address (set_tid_address) and ends; the kernel wakes that address, as a
    shared futex, when a thread of a process of many ends."""
    word = _mapped_word(_library_file())
    threading = real_import("threading")
    thread = threading.Thread(target=lambda: syscall(SET_TID_ADDRESS, word))
    thread.start()
    thread.join()
    return "ended"
