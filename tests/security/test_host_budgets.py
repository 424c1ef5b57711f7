"""What the host shares with every process: socket memory (tcp_mem, udp_mem), the reserved
huge pages and its core dump helper. A guest's socket buffers are kernel memory outside its
address-space limit: TCP's self-tuning buffers are capped in the call's network namespace,
enlarging any socket's buffers is denied, and so are UDP sockets. Huge pages from the host's
pool are denied. A crash starts no helper on the host (Linux AIO's budget is in
test_escape_kernel.py's table). Its disks do no work on a guest's demand."""
import glob
import os
import time

import pytest

from isorund.sandbox import namespaces

# Each end of a connection holds at most its send buffer, and its peer's receive buffer holds
# what it sent: both capped by the call's namespace (namespaces.TCP_RMEM, TCP_WMEM).
PER_END = int(namespaces.TCP_RMEM.split()[2]) + int(namespaces.TCP_WMEM.split()[2])
PAIRS = 28  # 56 sockets and the listener, within the guest's 64 descriptors


def host_tcp_limits() -> tuple[str, str]:
    with open("/proc/sys/net/ipv4/tcp_rmem") as rmem, open("/proc/sys/net/ipv4/tcp_wmem") as wmem:
        return rmem.read(), wmem.read()


def test_loopback_connections_never_read_hold_little_memory(attack):
    """Seen before the cap: 209 MiB queued by one process in 28 connections (the host's own
    limits, 4 MiB sent and 32 MiB received a socket); 13 such processes of one call took the
    host's whole tcp_mem. Capped, the same connections hold at most 64 KiB an end. The cap is
    the call's namespace's own: the host's limits stay as they were."""
    before = host_tcp_limits()
    result = attack("socket_buffers", "hoard", args=[PAIRS], timeout=20)
    assert result["pairs"] == PAIRS
    assert 0 < result["queued"] <= 2 * PAIRS * PER_END, result
    assert host_tcp_limits() == before


def test_a_listener_holds_few_connections_waiting_in_its_backlog(attack):
    """Seen before the cap: a new network namespace let each listener keep 4096 connections
    waiting (with their buffers, and no descriptor): one process held 79,000 of them and
    1.5 GiB of the host's tcp_mem. The kernel completes SOMAXCONN + 1 and leaves the rest to
    retry their SYN."""
    completed = attack("socket_buffers", "backlog", args=[40], timeout=20)
    assert 1 <= completed <= namespaces.SOMAXCONN + 1, completed


def test_socket_buffers_cannot_be_enlarged_and_udp_is_refused(attack):
    """Unrefused, SO_RCVBUF takes up to twice the host's rmem_max for one socket (8 MiB here);
    UDP was refused after 60 sockets of one guest held 11 MiB of the host's udp_mem."""
    results = attack("socket_buffers", "enlarge", timeout=20)
    for kind in ("tcp", "unix"):
        for name in ("SO_SNDBUF", "SO_RCVBUF", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE"):
            assert results.pop(f"{kind} {name}") == "EPERM", (kind, name)
    assert results == {"read SO_RCVBUF": "ok: True", "SO_REUSEADDR": "ok: None", "TCP_NODELAY": "ok: None",
                       "udp": "EPERM", "udp v6": "EPERM"}


@pytest.fixture
def reserved_huge_pages():
    """The host sets 4 huge pages aside, as a host running a database might; put back after."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        before = int(f.read())
    try:
        with open(path, "w") as f:
            f.write(str(before + 4))
    except OSError as e:
        pytest.skip(f"this kernel keeps no huge page pool ({e})")
    try:
        with open(path) as f:
            reserved = int(f.read()) - before
        if reserved < 4:  # memory too fragmented for 4 more 2 MiB pages right now
            pytest.skip(f"the kernel set aside only {reserved} of 4 huge pages")
        yield
    finally:
        with open(path, "w") as f:
            f.write(str(before))


def free_huge_pages() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("HugePages_Free:"))


def test_the_hosts_reserved_huge_pages_are_out_of_reach(attack, reserved_huge_pages):
    """Seen before the rule: a guest took all 32 reserved pages, and a host process's own
    MAP_HUGETLB mapping failed with ENOMEM until the call ended."""
    free = free_huge_pages()
    assert free >= 4
    assert attack("huge_pages", args=[free], timeout=20) == "EPERM"


@pytest.fixture
def core_helper(tmp_path_factory):
    """The host pipes core dumps to a helper, as hosts running systemd-coredump or apport do;
    each run of this one adds a line to ``runs``. The host's own pattern is put back after."""
    folder = tmp_path_factory.mktemp("core")
    script, runs = folder / "helper.sh", folder / "runs"
    script.write_text(f'echo "$1" >> {runs}\ncat > /dev/null\n')
    path = "/proc/sys/kernel/core_pattern"
    with open(path) as f:
        before = f.read()
    with open(path, "w") as f:
        f.write(f"|/bin/sh {script} %p")
    try:
        yield runs
    finally:
        with open(path, "w") as f:
            f.write(before)


def test_a_crashing_guest_starts_no_helper_on_the_host(attack, core_helper):
    """Seen with RLIMIT_CORE at 0: 10 crashed children started the host's helper 10 times (the
    kernel ignores the limit for pipes, except a limit of exactly 1)."""
    results = attack("core_dumps", args=[10], timeout=20)
    time.sleep(0.5)
    assert not core_helper.exists(), f"the host's helper ran for pids {core_helper.read_text().split()}"
    # Python reports setrlimit's EPERM as a ValueError ("not allowed to raise maximum limit")
    assert results == {"setrlimit": "ValueError", "prlimit": "EPERM", "limit": [1, 1], "crashed": 10}


def _flushes_of_the_host_disks() -> int:
    """Cache flushes the host's block devices completed (the 16th field of their stat; absent
    on kernels before 5.5, counted as 0)."""
    total = 0
    for path in glob.glob("/sys/block/*/stat"):
        with open(path) as f:
            fields = f.read().split()
        total += int(fields[15]) if len(fields) > 15 else 0
    return total


def test_a_guest_makes_the_host_disks_neither_flush_nor_read_on_demand(attack):
    """fsync of a file it only reads made ext4 flush the device's cache, every time (69,068
    flushes in 3 s were seen), and O_DIRECT read the disk past the page cache: syncing is
    answered without being made (what it does for the guest's own files in its tmpfs /tmp),
    direct I/O refused as a filesystem without it refuses it. The guest's folder here is on
    the test's temporary folder's filesystem: a disk on the machines this was written on."""
    before = _flushes_of_the_host_disks()
    result = attack("host_disks", args=[2000], timeout=30)
    flushes = _flushes_of_the_host_disks() - before
    assert flushes < 500, f"{flushes} cache flushes of the host's disks during 4,000 syncs"
    assert result == {"fsync": "ok: 2000", "open O_DIRECT": "EINVAL", "open(2) O_DIRECT": "EINVAL",
                      "fcntl F_SETFL O_DIRECT": "EINVAL",
                      "openat2": "ENOSYS", "fsync of /tmp": "ok: None", "read back": "ok: 'kept'"}
