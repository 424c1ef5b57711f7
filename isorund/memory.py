"""The daemon's heap: freed memory kept for the next large call, and given back when idle.

glibc's allocator keeps what Python frees in per-thread heaps. Between calls with large values
that is what we want (their pages are not faulted in again); after a burst it is memory the
daemon holds while it does nothing: 8 concurrent 40 MiB requests left an idle daemon at 200 to
360 MiB instead of 44, creeping upwards burst after burst.
Other C libraries have neither function: nothing to do there.
"""
from __future__ import annotations

import ctypes

# glibc's mallopt parameters, and the values the daemon runs with (see keep_freed_memory).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 16 << 20
TRIM_THRESHOLD = 32 << 20
# A call whose request or outcome was this large asks for a trim once the daemon is idle.
LARGE_BYTES = 1 << 20

_libc = ctypes.CDLL(None)


def keep_freed_memory() -> None:
    """Has glibc keep the memory of large requests for the next ones, before any thread starts.

    By default a block over 128 KiB is its own mmap, and free memory at the top of a heap
    goes back to the kernel past 128 KiB; each call with a large value then faults its pages
    in afresh, several times over (the request as received, its bytes relayed to the sandbox).
    On one VM that was ~2 ms of a 1 MiB argument's call alone. Blocks up to 16 MiB
    now come from the heaps, which keep up to 32 MiB free at their top."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def give_back_freed_memory() -> None:
    """Returns the free memory of every heap to the kernel (``malloc_trim``). A few
    milliseconds after a burst; called when no call is running, so no call waits for it."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
