"""System V IPC: denied to guests by the system call filter (a segment holds memory that no
address-space limit counts once it is detached), and behind the filter each call has an IPC
namespace of its own, so a segment of the host or of another call could not be found by its key
either. The same namespace keeps the host's POSIX message queues out of reach, and every other
namespace of a call (cgroup, uts, net, mount, pid, user) is its own as well."""
import ctypes
import os
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


# POSIX message queues live in the IPC namespace too (docs/security.md: "Private SysV IPC and
# POSIX mqueues"); RLIMIT_MSGQUEUE 0 only stops a call making one, not opening the host's.
librt = ctypes.CDLL("librt.so.1", use_errno=True)
O_RDWR, O_CREAT = 2, 0o100


@pytest.fixture
def host_queue():
    """A POSIX message queue on the host, readable and writable by every uid; yields its name."""
    name = f"isorun-test-{secrets.token_hex(6)}"
    old_mask = os.umask(0)
    try:
        fd = librt.mq_open(f"/{name}".encode(), O_CREAT | O_RDWR, 0o666, None)
    finally:
        os.umask(old_mask)
    assert fd >= 0, ctypes.get_errno()
    os.close(fd)
    yield name
    librt.mq_unlink(f"/{name}".encode())


def test_a_host_message_queue_cannot_be_opened_from_a_call(attack, host_queue):
    fd = librt.mq_open(f"/{host_queue}".encode(), O_RDWR)
    assert fd >= 0  # the host itself opens it, with the same flags
    os.close(fd)
    assert attack("host_namespaces", "open_queue", args=[host_queue]) == "ENOENT"


# The namespaces docs/security.md lists for a sandbox (pid_for_children is the guest's own pid
# namespace too); there is no time namespace.
NAMESPACES = ("ipc", "cgroup", "uts", "net", "mnt", "pid", "user")


def test_every_namespace_of_a_call_is_its_own_not_the_hosts(attack, secure_daemon):
    inside = attack("host_namespaces", "namespaces", args=[list(NAMESPACES)])
    for host_pid in ("self", secure_daemon.pid):  # the test's own, and the daemon's
        host = {name: os.stat(f"/proc/{host_pid}/ns/{name}").st_ino for name in NAMESPACES}
        shared = sorted(name for name in NAMESPACES if inside[name] == host[name])
        assert shared == [], (host_pid, inside, host)
