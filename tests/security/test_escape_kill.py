"""Kill semantics: when a call ends — by its outcome or by its timeout — every process it made
is gone, whatever it did to hide: setsid, double fork, ignoring SIGTERM and SIGHUP."""
import time

import pytest

from isorun import errors


def test_orphans_do_not_outlive_their_call(attack, secure_daemon, host_processes):
    report = attack("orphans", "leave", timeout=20)
    assert report.startswith("orphan running in session")
    assert _gone_within(host_processes, 5.0)


def test_orphans_do_not_outlive_a_timeout(attack, secure_daemon, host_processes):
    started = time.monotonic()
    with pytest.raises(errors.RuntimeTimeoutError):
        attack("orphans", "leave_and_hang", timeout=2)
    assert time.monotonic() - started < 10
    assert _gone_within(host_processes, 5.0)


def test_fork_bomb_children_do_not_outlive_their_call(attack, host_processes):
    result = attack("fork_bomb", timeout=20)
    assert result["made"] > 0
    assert _gone_within(host_processes, 5.0)


def _gone_within(host_processes, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while host_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
