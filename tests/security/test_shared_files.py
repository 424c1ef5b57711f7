"""State that belongs to a file rather than to a process: every sandbox maps and opens the same
read-only files (the stdlib, the libraries, whitelisted folders), and the host opens them too.
A lock, a directory notification, a futex keyed by such a file or its pages evicted from the page
cache and probed would be a line between two calls, or a view of what the host does; the system
call filter denies each (EPERM), and leaves what libc and the runtime need (private futexes,
plain fcntl, fadvise and preadv2). A shared futex wait returns at once, as if its word had
changed: the kernel itself wakes one at a thread's end, which no filter can stop."""
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
    assert shared_file_results["private FUTEX_WAIT"] == "ETIMEDOUT"
    assert shared_file_results["private futex_wait"] == "ETIMEDOUT"
    assert shared_file_results["thread joined"] == "yes"
    # libc's pthread_join waits on a shared futex: it spins on EAGAIN until the thread ends
    assert shared_file_results["libc's pthread_join"] == "joined (0) after the thread's sleep"


@pytest.mark.parametrize("name", ["shared FUTEX_WAIT", "shared FUTEX_WAIT_BITSET",
                                  "shared FUTEX_WAIT, high bits set", "shared futex_wait"])
def test_a_shared_futex_wait_returns_at_once_as_if_its_word_had_changed(shared_file_results, name):
    assert shared_file_results[name] == "EAGAIN"


def test_futex_waitv_reads_as_missing(shared_file_results):
    assert shared_file_results["futex_waitv"] == "ENOSYS"


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
    assert outcome["waiter"] == "EAGAIN"  # it does not sleep: see the next test


def test_a_thread_that_ends_wakes_no_other_call(attack):
    """The kernel wakes a thread's clear-child-tid address as a shared futex when the thread
    ends, and a guest may name any address with set_tid_address: the filter cannot deny that
    wake, so it keeps shared waits from blocking at all (seen before: the waiter woke, "succeeded
    (0)", at the waker's thread end, 0.5 s into its 4)."""
    outcome, printed = {}, threading.Event()

    def wait():
        started = time.monotonic()
        try:
            outcome["waiter"] = attack("shared_files", "waiter", args=[4], timeout=20,
                                       on_console=lambda stream, text: printed.set())
        except errors.IsorunError as e:  # pragma: no cover - reported by the assertion below
            outcome["waiter"] = e
        outcome["seconds"] = time.monotonic() - started
    thread = threading.Thread(target=wait)
    thread.start()
    assert printed.wait(15), "the waiting call never started"
    time.sleep(0.5)
    assert attack("shared_files", "thread_exit_waker", timeout=20) == "ended"
    thread.join()
    assert outcome["waiter"] == "EAGAIN" and outcome["seconds"] < 4


def test_every_lock_command_and_shared_futex_op_the_filter_lists_is_denied(attack):
    """The rows above pick the ways in; this sweeps the filter's whole tables (F_SETLKW,
    F_GETLEASE, FUTEX_WAKE_OP, the PI operations, …), so no listed entry goes unexercised."""
    commands, ops = sorted(seccomp.FCNTL_DENIED.values()), sorted(seccomp.FUTEX_SHARED_DENIED.values())
    results = attack("shared_files", "sweep", args=[commands, ops], timeout=20)
    assert results == {**{f"fcntl {c}": "EPERM" for c in commands}, **{f"futex {o}": "EPERM" for o in ops}}
