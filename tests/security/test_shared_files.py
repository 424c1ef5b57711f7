"""State that belongs to a file rather than to a process: every sandbox maps and opens the same
read-only files (the stdlib, the libraries, whitelisted folders), and the host opens them too.
A lock, a directory notification, a futex keyed by such a file or its pages evicted from the page
cache and probed would be a line between two calls, or a view of what the host does; the system
call filter denies each (EPERM), and leaves what libc and the runtime need (private futexes, a
shared futex wait, plain fcntl, fadvise and preadv2)."""
import threading
import time

import pytest

from isorun import errors
from isorund.sandbox import seccomp

DENIED = ("flock LOCK_EX", "flock LOCK_SH", "F_SETLK", "F_GETLK", "F_OFD_SETLK", "F_OFD_GETLK",
          "F_SETLK, high bits set", "F_SETLEASE", "F_NOTIFY", "F_NOTIFY, high bits set",
          "FUTEX_WAKE", "FUTEX_WAKE, realtime clock bit", "FUTEX_WAKE, high bits set",
          "FUTEX_WAKE_BITSET", "futex_wake", "futex_requeue", "fadvise DONTNEED",
          "fadvise DONTNEED, high bits set", "preadv2 RWF_NOWAIT", "pwritev2 RWF_NOWAIT", "cachestat")


@pytest.fixture(scope="module")
def shared_file_results(run_attack):
    """One call tries every way in; each is still its own test below."""
    return run_attack("shared_files", timeout=20)


@pytest.mark.parametrize("name", DENIED)
def test_locks_watches_shared_futex_wakes_and_page_cache_probes_are_denied(shared_file_results, name):
    assert shared_file_results[name] == "EPERM"


def test_what_libc_and_the_runtime_need_still_works(shared_file_results):
    assert shared_file_results["F_GETFL"] == "succeeded"
    assert shared_file_results["fadvise SEQUENTIAL"] == "succeeded (0)"
    assert shared_file_results["preadv2"] == "succeeded"
    assert shared_file_results["private FUTEX_WAKE"] == "succeeded (0)"
    assert shared_file_results["private futex_wake"] == "succeeded (0)"
    assert shared_file_results["shared FUTEX_WAIT"] == "ETIMEDOUT"  # what pthread_join does
    assert shared_file_results["thread joined"] == "yes"


def test_two_calls_cannot_wake_each_other_through_a_library_file(attack):
    """Both map the stdlib's os.py; without the filter the second call's wake ends the first
    call's wait (seen: the waker woke 1, the waiter returned after 1.5 s of its 4)."""
    outcome, printed = {}, threading.Event()

    def wait():
        try:
            outcome["waiter"] = attack("shared_files", "waiter", args=[4], timeout=20,
                                       on_console=lambda stream, text: printed.set())
        except errors.IsorunError as e:  # pragma: no cover - reported by the assertion below
            outcome["waiter"] = e
    thread = threading.Thread(target=wait)
    thread.start()
    assert printed.wait(15), "the waiting call never started"
    time.sleep(0.5)  # from "waiting" to the futex wait itself
    assert attack("shared_files", "waker", timeout=20) == "EPERM"
    thread.join()
    assert outcome["waiter"] == "ETIMEDOUT"


def test_every_lock_command_and_shared_futex_op_the_filter_lists_is_denied(attack):
    """The rows above pick the ways in; this sweeps the filter's whole tables (F_SETLKW,
    F_GETLEASE, FUTEX_WAKE_OP, the PI operations, …), so no listed entry goes unexercised."""
    commands, ops = sorted(seccomp.FCNTL_DENIED.values()), sorted(seccomp.FUTEX_SHARED_DENIED.values())
    results = attack("shared_files", "sweep", args=[commands, ops], timeout=20)
    assert results == {**{f"fcntl {c}": "EPERM" for c in commands}, **{f"futex {o}": "EPERM" for o in ops}}
