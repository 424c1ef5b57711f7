"""System V IPC: denied to guests by the system call filter (a segment holds memory that no
address-space limit counts once it is detached), and behind the filter each call has an IPC
namespace of its own, so a segment of the host or of another call could not be found by its key
either."""
import ctypes
import secrets

import pytest

IPC_CREAT, IPC_RMID = 0o1000, 0
libc = ctypes.CDLL(None, use_errno=True)


@pytest.fixture
def host_segment():
    """A segment on the host, readable and writable by every uid, with a random key."""
    key = secrets.randbelow(1 << 30) + 1
    shm_id = libc.shmget(key, 4096, IPC_CREAT | 0o666)
    assert shm_id >= 0, ctypes.get_errno()
    yield key
    libc.shmctl(shm_id, IPC_RMID, None)


def test_a_host_segment_cannot_be_found_from_a_call(attack, host_segment):
    assert libc.shmget(host_segment, 0, 0) >= 0  # the host itself finds it
    assert attack("sysv_ipc", "look", args=[host_segment]) == "EPERM"


def test_a_call_cannot_leave_a_segment_for_the_next_or_on_the_host(attack):
    key = secrets.randbelow(1 << 30) + 1
    assert attack("sysv_ipc", "leave", args=[key]) == "EPERM"
    assert attack("sysv_ipc", "look", args=[key]) == "EPERM"
    assert libc.shmget(key, 0, 0) == -1 and ctypes.get_errno() == 2  # ENOENT on the host
