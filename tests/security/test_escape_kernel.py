"""The system call filter and the kernel surface behind it: what no guest needs fails with EPERM
(an OSError the guest can report), programs cannot be run, and the compat ABI is no way around."""
import os

import pytest

from isorun import errors
from isorund.sandbox import seccomp

CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x10000000, 0x00020000, 0x40000000, 0x20000000
CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x02000000, 0x04000000, 0x08000000
SIGCHLD = 17

# name: [x86_64 number, *arguments]; arguments that would do harm if the call went through.
DENIED = {
    "mount": [165, 0, 0, 0, 0, 0],
    "umount2": [166, 0, 2],
    "pivot_root": [155, 0, 0],
    "chroot": [161, 0],
    "unshare(CLONE_NEWUSER)": [272, CLONE_NEWUSER],
    "unshare(CLONE_NEWNS)": [272, CLONE_NEWNS],
    "setns": [308, 0, 0],
    "clone(CLONE_NEWUSER)": [56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0],
    "clone(CLONE_NEWNET)": [56, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0],
    "clone(CLONE_NEWPID)": [56, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0],
    "clone(CLONE_NEWNS)": [56, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0],
    "clone(CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC)": [56, CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD, 0, 0, 0, 0],
    "execve": [59, 0, 0, 0],
    "execveat": [322, 0, 0, 0, 0, 0],
    "ptrace(PTRACE_TRACEME)": [101, 0, 0, 0, 0],
    "process_vm_readv": [310, 1, 0, 0, 0, 0, 0],
    "process_vm_writev": [311, 1, 0, 0, 0, 0, 0],
    "kcmp": [312, 1, 1, 0, 0, 0],
    "pidfd_getfd": [438, 0, 0, 0],
    "bpf": [321, 0, 0, 0],
    "perf_event_open": [298, 0, 0, -1, -1, 0],
    "keyctl": [250, 0, 0, 0, 0, 0],
    "add_key": [248, 0, 0, 0, 0, 0],
    "request_key": [249, 0, 0, 0, 0],
    "userfaultfd": [323, 0],
    "io_uring_setup": [425, 8, 0],
    "io_uring_enter": [426, 0, 0, 0, 0, 0, 0],
    "io_uring_register": [427, 0, 0, 0, 0],
    "init_module": [175, 0, 0, 0],
    "finit_module": [313, 0, 0, 0],
    "delete_module": [176, 0, 0],
    "kexec_load": [246, 0, 0, 0, 0],
    "kexec_file_load": [320, 0, 0, 0, 0, 0],
    "reboot": [169, 0, 0, 0, 0],
    "swapon": [167, 0, 0],
    "swapoff": [168, 0],
    "acct": [163, 0],
    "quotactl": [179, 0, 0, 0, 0],
    "open_tree": [428, -100, 0, 0],
    "fsopen": [430, 0, 0],
    "move_mount": [429, 0, 0, 0, 0, 0],
    "open_by_handle_at": [304, 0, 0, 0],
    "syslog": [103, 3, 0, 0],
    "personality": [135, 0xFFFFFFFF],
    "socket(AF_NETLINK)": [41, 16, 3, 0],
    "socket(AF_ALG)": [41, 38, 5, 0],
    "socket(AF_ALG, high bits set)": [41, (1 << 32) | 38, 5, 0],
    "socket(AF_VSOCK)": [41, 40, 1, 0],
    "socketpair(AF_TIPC)": [53, 30, 5, 0, 0],
    # a Unix socket that could be pointed at a socket file of the host (only connected pairs)
    "socket(AF_UNIX)": [41, 1, 1, 0],
    "socketpair(AF_UNIX, SOCK_DGRAM)": [53, 1, 2, 0, 0],
    "socketpair(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, high bits set)": [53, 1, (1 << 32) | 0o2000000 | 2, 0, 0],
    "socketpair(AF_UNIX, SOCK_RAW)": [53, 1, 3, 0, 0],  # a datagram pair by another name
    "socketpair(AF_UNIX, SOCK_PACKET|SOCK_NONBLOCK)": [53, 1, 10 | 0o4000, 0, 0],
    # memory outside RLIMIT_AS (a guest touching 3 GiB of detached SysV segments was seen)
    "shmget": [29, 0, 1 << 20, 0o1000 | 0o600],
    "shmat": [30, 0, 0, 0],
    "msgget": [68, 0, 0o1000 | 0o600],
    "semget": [64, 0, 1, 0o1000 | 0o600],
    "memfd_create": [319, 0, 0],
    # a pipe slot holding the guest's own page, a whole huge page when that page is part of one
    "vmsplice": [278, 0, 0, 0, 0],
    # a pipe slot or a socket's queue holding a page of the page cache (a whole large folio)
    "splice": [275, 0, 0, 0, 0, 0, 0],
    "tee": [276, 0, 0, 0, 0],
    "sendfile": [40, 0, 0, 0, 0],
    # would show which files other calls and host processes open in the shared folders
    "inotify_init1": [294, 0],
    # the host's load, free memory and thread count, which moves with other calls' threads
    "sysinfo": [99, 0],
    # one host-wide budget of AIO events: a call could take it all from the host's services
    "io_setup(fs.aio-max-nr)": [206, 65536, 0],
    "io_submit": [209, 1, 1, 0],
    "io_getevents": [208, 1, 1, 1, 0, 0],
    "io_pgetevents": [333, 1, 1, 1, 0, 0, 0],
    "sync": [162],
    "syncfs": [306, 0],
    "modify_ldt(read)": [154, 0, 0, 8],
    # interrupts the host's processes registered for it, on every CPU they run on
    "membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)": [324, 2, 0, 0],
    # same-page merging with other processes' memory, where the host runs KSM
    "madvise(MADV_MERGEABLE)": [28, 0, 4096, 12],
    "madvise(MADV_MERGEABLE, high bits set)": [28, 0, 4096, (1 << 32) | 12],
    "prctl(PR_SET_MEMORY_MERGE)": [157, 67, 1, 0, 0, 0],
    "prctl(PR_SET_MEMORY_MERGE, high bits set)": [157, (1 << 32) | 67, 1, 0, 0, 0],
    # RLIMIT_CORE stays 1, which keeps the host's core helper from starting (test_host_budgets.py)
    "prlimit64(RLIMIT_CORE, new)": [302, 0, 4, 1, 0],
    "prlimit64(RLIMIT_CORE, new, high bits set)": [302, 0, (1 << 32) | 4, 1, 0],
    "setrlimit(RLIMIT_CORE)": [160, 4, 1],
    # the host's reserved huge pages (see test_host_budgets.py)
    "mmap(MAP_HUGETLB)": [9, 0, 2 << 20, 3, 0x22 | 0x40000, -1, 0],
    # an IP socket is a TCP socket: no UDP (host-wide udp_mem), no other protocol's kernel code
    "socket(AF_INET, SOCK_DGRAM)": [41, 2, 2, 0],
    "socket(AF_INET6, SOCK_DGRAM|SOCK_NONBLOCK)": [41, 10, 2 | 0o4000, 0],
    "socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)": [41, 2, 2, 1],
    "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)": [41, 2, 1, 132],
    "socket(AF_INET6, SOCK_SEQPACKET, IPPROTO_SCTP)": [41, 10, 5, 132],
    "socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)": [41, 2, 1, 262],
    "socket(AF_INET, SOCK_DCCP)": [41, 2, 6, 33],
    "socket(AF_INET, type 0)": [41, 2, 0, 0],
    "socket(AF_INET, SOCK_STREAM, IPPROTO_TCP, high bits set)": [41, 2, 1, (1 << 32) | 6],
    # kernel memory outside RLIMIT_AS, from host-wide budgets (see test_socket_buffers.py)
    "setsockopt(SO_SNDBUF)": [54, 0, 1, 7, 0, 4],
    "setsockopt(SO_RCVBUF)": [54, 0, 1, 8, 0, 4],
    "setsockopt(SO_SNDBUFFORCE)": [54, 0, 1, 32, 0, 4],
    "setsockopt(SO_RCVBUFFORCE)": [54, 0, 1, 33, 0, 4],
    "setsockopt(SO_RCVBUF, high bits set)": [54, 0, (1 << 32) | 1, (1 << 32) | 8, 0, 4],
    # kTLS and other TCP upper-layer protocols: kernel code reached by naming it
    "setsockopt(TCP_ULP)": [54, 0, 6, 31, 0, 0],
    # programs of the guest's own: the kernel's BPF checker and JIT (an fd that is no socket,
    # a null program: EFAULT or ENOTSOCK if the filter let them through)
    "setsockopt(SO_ATTACH_FILTER)": [54, 0, 1, 26, 0, 16],
    "setsockopt(SO_ATTACH_BPF)": [54, 0, 1, 50, 0, 4],
    "setsockopt(SO_ATTACH_REUSEPORT_CBPF)": [54, 0, 1, 51, 0, 16],
    "setsockopt(SO_ATTACH_REUSEPORT_EBPF)": [54, 0, 1, 52, 0, 4],
    "setsockopt(SO_ATTACH_REUSEPORT_CBPF, high bits set)": [54, 0, (1 << 32) | 1, (1 << 32) | 51, 0, 16],
    "seccomp(SECCOMP_SET_MODE_FILTER)": [317, 1, 0, 0],
    "prctl(PR_SET_SECCOMP)": [157, 22, 2, 0, 0, 0],
    "prctl(PR_SET_SECCOMP, high bits set)": [157, (1 << 32) | 22, 2, 0, 0, 0],
    # Landlock rulesets: kernel memory no limit counts (asking for the ABI version would succeed)
    "landlock_create_ruleset": [444, 0, 0, 1],
    "landlock_add_rule": [445, -1, 1, 0, 0],
    "landlock_restrict_self": [446, -1, 0],
    # the host filesystem's block map and a file's physical extents (test_guest_cannot_map_...)
    "ioctl(FS_IOC_GETFSMAP)": [16, 0, 0xC0C0583B, 0],
    "ioctl(FS_IOC_GETFSMAP, sign-extended)": [16, 0, (0xFFFFFFFF << 32) | 0xC0C0583B, 0],
    "ioctl(FS_IOC_FIEMAP)": [16, 0, 0xC020660B, 0],
    # out-of-band data, CVE-2025-38236's way in (no socket: ENOTSOCK if the filter let it through)
    "sendto(MSG_OOB)": [44, 0, 0, 0, 1, 0, 0],
    "recvfrom(MSG_OOB|MSG_PEEK)": [45, 0, 0, 0, 1 | 2, 0, 0],
    "sendmsg(MSG_OOB)": [46, 0, 0, 1],
    "recvmsg(MSG_OOB, high bits set)": [47, 0, 0, (1 << 32) | 1],
    "sendmmsg(MSG_OOB)": [307, 0, 0, 0, 1],
    "recvmmsg(MSG_OOB)": [299, 0, 0, 0, 1, 0],
    # the host-wide count of IPv6 flow labels (test_guest_cannot_take_the_hosts_flow_labels)
    "setsockopt(IPV6_FLOWLABEL_MGR)": [54, 0, 41, 32, 0, 32],
    "setsockopt(IPV6_FLOWLABEL_MGR, high bits set)": [54, 0, (1 << 32) | 41, (1 << 32) | 32, 0, 32],
}


@pytest.fixture(scope="module")
def denied_results(run_attack):
    """One call tries the whole table; each entry is still its own test below."""
    return run_attack("forbidden_syscalls", args=[DENIED], timeout=20)


@pytest.mark.parametrize("name", sorted(DENIED))
def test_denied_system_call_fails_with_eperm(denied_results, name):
    assert denied_results[name] == "EPERM"


def test_clone3_is_refused_so_namespaces_cannot_be_made_through_it(attack):
    # clone3's flags live in memory the filter cannot read: it is refused whole (ENOSYS, so that
    # libc falls back to clone, whose flags the filter does check).
    results = attack("forbidden_syscalls", args=[{"clone3": [435, 0, 0]}])
    assert results == {"clone3": "ENOSYS"}


def test_threads_and_plain_forks_still_work(attack):
    # Denying namespace flags must not deny clone itself.
    results = attack("forbidden_syscalls", args=[{"getpid": [39]}])
    assert results["getpid"].startswith("succeeded")


def test_tcp_sockets_are_still_allowed(attack):
    SOCK_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000
    results = attack("forbidden_syscalls", args=[{
        "socket(AF_INET, SOCK_STREAM|flags)": [41, 2, 1 | SOCK_NONBLOCK_CLOEXEC, 0],
        "socket(AF_INET6, SOCK_STREAM, IPPROTO_TCP)": [41, 10, 1, 6]}])
    assert all(result.startswith("succeeded") for result in results.values()), results


def test_compat_syscall_entry_kills_the_process(attack):
    with pytest.raises(errors.SandboxError) as raised:
        attack("compat_syscall")
    assert "(SIGSYS, exit status 159)" in str(raised.value)  # the filter killed it, nothing ran


def test_x32_syscall_numbers_kill_the_process(attack):
    # x32 calls arrive with the x86_64 architecture tag and bit 30 set in the number, so a
    # deny list compared on plain numbers would miss them: the filter kills instead.
    with pytest.raises(errors.SandboxError) as raised:
        attack("compat_syscall", "x32")
    assert "(SIGSYS, exit status 159)" in str(raised.value)


def test_programs_cannot_be_run(attack):
    results = attack("run_programs")
    assert results["os.system"] != 7 << 8  # the shell never ran "exit 7"
    assert results["os.execv"] == "EPERM"
    assert results["execve missing file"] == "EPERM"  # the filter answers before the path lookup
    assert results["subprocess"] == "EPERM"
    assert results["posix_spawn"] == "EPERM"
    assert results["memfd_create"] == "EPERM"
    assert results["execveat fd"] == "EPERM"


def test_guest_cannot_map_the_host_filesystems_blocks(attack):
    # /usr/lib is a bind of a host filesystem: its free-space map moves with the host's writes
    # (seen over 3 s), and a file's extents are physical offsets on the host's disk
    results = attack("block_maps")
    assert results["getfsmap"] == results["fiemap"] == "EPERM", results
    assert results["fionread"] == f"ok: {results['size']}"  # other ioctls of the same file work


def test_guest_cannot_send_or_receive_out_of_band_data(attack):
    results = attack("out_of_band")
    refused = {name: result for name, result in results.items() if "MSG_OOB" in name}
    assert len(refused) == 14 and set(refused.values()) == {"EPERM"}, results
    assert results["unix plain"] == results["tcp plain"] == "ok: (None, b'ping', b'ping', 1, b'x', 1, b'y')"


def test_guest_cannot_take_the_hosts_flow_labels(attack):
    results = attack("flow_labels")
    assert results == {"create": "EPERM", "put back": "EPERM", "IPV6_V6ONLY": "ok: None"}, results



# Every name of seccomp.DENIED and DENIED_BY_NUMBER, tried by the guest with arguments that do
# no harm should the filter let the call through, chosen so that they then succeed or fail
# otherwise than with EPERM. Not all can: the kernel refuses some with EPERM for want of a
# capability before it looks at any argument (sethostname, setdomainname, reboot, swapon,
# swapoff, acct, vhangup, pivot_root, fsopen, fsmount, fspick; syslog under dmesg_restrict;
# setsid, since the guest leads its process group), and test_every_denied_system_call_has_
# arguments_here catches those dropped from the module. The table at the top holds the calls
# whose arguments the filter reads.
NO_FD = -1
ARGUMENTS = {
    "execve": [0, 0, 0], "execveat": [NO_FD, 0, 0, 0, 0], "uselib": [0],
    "ptrace": [16, 0, 0, 0],  # PTRACE_ATTACH to pid 0: ESRCH
    "process_vm_readv": [1, 0, 0, 0, 0, 0], "process_vm_writev": [1, 0, 0, 0, 0, 0],
    "process_madvise": [NO_FD, 0, 0, 0, 0], "kcmp": [1, 1, 0, 0, 0], "pidfd_getfd": [NO_FD, 0, 0],
    "umount2": [0, 0], "setns": [NO_FD, 0], "unshare": [0],  # unsharing nothing: 0 if let through
    "fsmount": [NO_FD, 0, 0], "fsconfig": [NO_FD, 0, 0, 0, 0], "fspick": [NO_FD, 0, 0],
    "move_mount": [NO_FD, 0, NO_FD, 0, 0], "open_tree": [NO_FD, 0, 0],
    "mount_setattr": [NO_FD, 0, 0, 0, 0], "open_by_handle_at": [NO_FD, 0, 0],
    "name_to_handle_at": [NO_FD, 0, 0, 0, 0],
    "fanotify_init": [0x200, 0],  # FAN_REPORT_FID, which needs no privilege
    "userfaultfd": [1],  # UFFD_USER_MODE_ONLY, which needs no privilege
    "io_uring_enter": [NO_FD, 0, 0, 0, 0, 0], "io_uring_register": [NO_FD, 0, 0, 0],
    "finit_module": [NO_FD, 0, 0], "quotactl_fd": [NO_FD, 0, 0, 0],
    "syslog": [10, 0, 0],  # SYSLOG_ACTION_SIZE_BUFFER
    "personality": [0xFFFFFFFF],  # asks, changes nothing
    "settimeofday": [1, 0],  # a time at an unreadable address: EFAULT if let through
    "iopl": [0], "ioperm": [0, 0, 0],  # dropping what it does not hold: 0 if let through
    "shmget": [0, 4096, 0o1000 | 0o600], "msgget": [0, 0o1000 | 0o600], "semget": [0, 1, 0o1000 | 0o600],
    "vmsplice": [NO_FD, 0, 0, 0], "splice": [NO_FD, 0, NO_FD, 0, 0, 0], "tee": [NO_FD, NO_FD, 0, 0],
    "sendfile": [NO_FD, NO_FD, 0, 0], "flock": [NO_FD, 0], "syncfs": [NO_FD],
    "io_setup": [1, 0], "modify_ldt": [0, 0, 0],  # reading 0 bytes of the LDT
    "membarrier": [0, 0, 0],  # MEMBARRIER_CMD_QUERY
    "cachestat": [NO_FD, 0, 0, 0], "sysinfo": [0],
    "seccomp": [2, 0, 0],  # SECCOMP_GET_ACTION_AVAIL of a null action: EFAULT
    "landlock_create_ruleset": [0, 0, 1],  # the ABI version, which needs no privilege
    "landlock_add_rule": [NO_FD, 1, 0, 0], "landlock_restrict_self": [NO_FD, 0],
    "open_tree_attr": [NO_FD, 0, 0, 0, 0], "futex_requeue": [0, 0, 1, 1],
    # null pointers, descriptor or id 0 (/dev/null, or nothing in the call's IPC namespace), no flags
    **{name: [0] * 6 for name in (
        "mount", "pivot_root", "chroot", "fsopen", "bpf", "perf_event_open",
        "keyctl", "add_key", "request_key", "io_uring_setup", "init_module", "delete_module",
        "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
        "lookup_dcookie", "vhangup", "nfsservctl", "sysfs", "ustat", "_sysctl", "clock_settime",
        "adjtimex", "clock_adjtime", "sethostname", "setdomainname", "shmat", "shmctl", "shmdt",
        "msgsnd", "msgrcv", "msgctl", "semop", "semtimedop", "semctl", "memfd_create",
        "memfd_secret", "setsid", "inotify_init", "inotify_init1", "io_destroy", "io_submit",
        "io_cancel", "io_getevents", "io_pgetevents", "sync")},
}
MACHINE = os.uname().machine


def denied_numbers() -> dict:
    """{name: native number, or None where this architecture has no such call} for every name
    of seccomp.DENIED and DENIED_BY_NUMBER, and of ARGUMENTS (a name dropped from the module is
    still tried)."""
    import pyseccomp

    by_number = seccomp.DENIED_BY_NUMBER.get(MACHINE, {})
    numbers = {}
    for name in sorted({*seccomp.DENIED, *by_number, *ARGUMENTS}):
        try:
            number = by_number.get(name, pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
        except (ValueError, OSError):
            number = -1
        numbers[name] = number if number >= 0 else None
    return numbers


DENIED_NUMBERS = denied_numbers()


@pytest.fixture(scope="module")
def every_denied_result(run_attack):
    """One call tries them all (a name without ARGUMENTS is not tried: its test says so)."""
    table = {name: [number, *ARGUMENTS[name]] for name, number in DENIED_NUMBERS.items()
             if number is not None and name in ARGUMENTS}
    return run_attack("forbidden_syscalls", args=[table], timeout=20)


@pytest.mark.parametrize("name", [
    pytest.param(name, id=name if number is not None else f"{name}-absent-on-{MACHINE}",
                 marks=() if number is not None else pytest.mark.skip(reason=f"{MACHINE} has no {name}"))
    for name, number in DENIED_NUMBERS.items()])
def test_every_denied_system_call_fails_with_eperm(every_denied_result, name):
    assert name in ARGUMENTS, f"{name} is denied but ARGUMENTS has no harmless arguments for it"
    assert every_denied_result[name] == "EPERM"


def test_every_denied_system_call_has_arguments_here():
    # ARGUMENTS is this test's own copy of the deny list: a name dropped from the module, which
    # the kernel would refuse with EPERM anyway for want of a capability, is caught here.
    denied = {*seccomp.DENIED, *(name for names in seccomp.DENIED_BY_NUMBER.values() for name in names)}
    assert set(ARGUMENTS) == denied, {"dropped from the module": sorted(set(ARGUMENTS) - denied),
                                      "without arguments here": sorted(denied - set(ARGUMENTS))}
