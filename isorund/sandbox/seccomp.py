"""The seccomp filter: system calls no guest needs fail with EPERM.

EPERM rather than a kill, so a guest sees an ``OSError`` it can report instead of vanishing.
The filter is built and compiled to BPF once by the daemon, and loaded by each sandbox in two
parts: the pool's part (everything but ``CALL_STEPS`` and ``prctl(PR_SET_SECCOMP)``) while the
sandbox waits for its call, and the call's part (those: a handful of instructions) as the very
last set-up step, after the call's folders are bound. Filters stack, so from then on the guest
meets exactly the whole filter; loading the long part off the call's path saves the kernel's
check and JIT of it there (about 0.3 ms).

It is a deny list on top of the other layers, not the only wall: what it lets through still
meets an unprivileged uid with no capabilities, in namespaces of its own. Three exceptions to
"EPERM, not a kill":
- a system call made through another ABI than the native one (``int 0x80``, i386 numbers on
  x86_64) kills the whole process: the deny list is written for native numbers only, and no
  Python program makes such calls by accident;
- ``clone3`` fails with ENOSYS, because its flags live in memory seccomp cannot read; libc
  then falls back to ``clone``, whose flags are checked; so does ``futex_waitv``;
- a futex wait on a shared futex fails with EAGAIN, which its callers retry (see
  ``FUTEX_SHARED_WAITS``).
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import resource
import socket
from typing import TYPE_CHECKING

from . import _libc
from ._libc import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID,
                    CLONE_NEWTIME, CLONE_NEWUSER, CLONE_NEWUTS, SandboxSetupError)

DENIED = (
    # running programs
    "execve", "execveat", "uselib",
    # looking into or steering other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp", "pidfd_getfd",
    # changing the filesystem view or the namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init",
    # kernel attack surface a pure computation never needs
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "lookup_dcookie",
    "personality", "vhangup", "nfsservctl", "sysfs", "ustat", "_sysctl",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname", "setdomainname",
    "iopl", "ioperm",
    # memory no address-space limit sees: a System V segment or a memfd holds its pages while
    # nothing maps it, so one call could fill the host's RAM past RLIMIT_AS (and, without a
    # per-call cgroup, past anything else); no Python computation needs either
    "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl", "memfd_create", "memfd_secret",
    # nor a page the guest unmapped but a pipe still references: a pipe slot filled by
    # vmsplice holds the guest's page itself, counted as 4 KiB by the pipe's quota even when it
    # is part of a 2 MiB transparent huge page (one process held 6 GiB of host memory in 12
    # pipes with 36 MiB mapped); write() copies into pages the quota counts
    "vmsplice",
    # nor a page of the page cache: splice and tee move references to a file's cached pages
    # into a pipe, and sendfile into a socket's queue, each counted by its quota as the bytes
    # moved, while the whole page (a large folio of a library file: up to 2 MiB) stays
    # pinned; 1,594 pipe slots (6 MiB of pipe quota) held 1 GiB of the host's page cache that
    # drop_caches could not free (seen). Python's users of sendfile (shutil, socket.sendfile,
    # asyncio) fall back to read and write when it fails before sending anything
    "splice", "tee", "sendfile",
    # a session of its own is an autogroup of its own where the kernel groups CPU time by
    # session (the root cpu cgroup): each process of a call in a new session would take as
    # much CPU as the whole daemon (seen: 30 such processes held trivial calls 2 s); a call
    # keeps the one session its sandbox made, and with execve denied there is no job control
    "setsid",
    # watching the shared read-only folders would show, live, which files other calls and the
    # host's processes open (the stdlib, the libraries, whitelisted folders)
    "inotify_init", "inotify_init1",
    # a lock on a file is state of the file, shared with everyone who opens it (see FCNTL_DENIED)
    "flock",
    # Linux AIO: every context reserves events against one host-wide budget (fs.aio-max-nr), so
    # one call could take it all and fail the host's io_setup with EAGAIN (seen); libc's POSIX
    # AIO uses threads, not these
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # write-back of every host filesystem (sync) or of one the guest only reads (syncfs): host
    # I/O on demand, nothing a guest's own files need (fsync stays)
    "sync", "syncfs",
    # the x86 local descriptor table: kernel surface with a history, no Python program uses it
    "modify_ldt",
    # membarrier's global expedited command interrupts every CPU that runs a process registered
    # for it, the host's included: 20,000 calls of a guest sent 19,989 IPIs to a host process
    # on the other CPU (seen). Python never calls it; the private commands go with it
    "membarrier",
    # the page cache's state of a file (some kernels answer any reader; see POSIX_FADV_DONTNEED)
    "cachestat",
    # the host's load, free memory and number of threads (what /proc/loadavg and /proc/meminfo,
    # absent from the sandbox's /proc, would show); the count moves with every other call's
    # threads, so two calls could signal each other through it
    "sysinfo",
    # a filter of the guest's own: the kernel's BPF checker and JIT, reached with no privilege
    # (see PROGRAM_OPTIONS); the sandbox loads its own with prctl, denied by the call's part
    "seccomp",
    # Landlock: a ruleset and its rules are kernel memory no limit counts (8 processes of one
    # call held ~197 MB of slab the host could not reclaim); the sandbox confines the guest
    # already, and no Python program restricts itself with it
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
)
# Denied to the guest, but made by the sandbox itself once its call is known (attaching the
# call's folders, resizing /tmp, its user namespace): denied by the call's part of the filter,
# last, with prctl(PR_SET_SECCOMP), which loads that part. (pivot_root and umount2 are done
# before the pool's part is loaded.)
CALL_STEPS = ("mount", "move_mount", "unshare")
# RLIMIT_CORE stays at 1, set in the pool before this filter (see limits.py): setting it is
# denied; reading it (prlimit64 with no new limit) stays allowed.
RLIMIT_CORE = resource.RLIMIT_CORE
# System calls younger than the libseccomp this may run with, by their native number.
# futex_requeue takes its futexes' flags from memory the filter cannot read, so it may move
# waiters of a shared futex (see FUTEX_SHARED_DENIED); no libc uses it.
DENIED_BY_NUMBER = {"x86_64": {"open_tree_attr": 467, "futex_requeue": 456},
                    "aarch64": {"open_tree_attr": 467, "futex_requeue": 456}}
# the futex2 calls, the same on x86_64 and aarch64: futex_waitv(waiters, nr, flags, timeout,
# clockid), futex_wake(uaddr, mask, nr, flags), futex_wait(uaddr, val, mask, flags, timeout, clockid)
FUTEX_WAITV_NUMBER, FUTEX_WAKE_NUMBER, FUTEX_WAIT_NUMBER = 449, 454, 455
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                   CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)
# socket() and socketpair() may only make IPv4 and IPv6 sockets (all of them local: the
# network namespace has only loopback; TCP only, below) and Unix pairs (below). Rare families
# (AF_ALG, AF_VSOCK, AF_TIPC, AF_RDS, AF_NETLINK, …) are kernel code any unprivileged process
# could otherwise reach.
AF_UNIX, AF_INET, AF_INET6 = socket.AF_UNIX, socket.AF_INET, socket.AF_INET6
# A Unix socket only comes connected to its pair (socketpair, stream or seqpacket): a socket()
# of its own, or a datagram pair (sendto takes any address), could reach a socket file of a
# host service in a folder the call was given, through the read-only bind (connect() needs no
# write access to the mount, only to the socket file, and a 0666 socket gives that).
# Every other type is denied, not only SOCK_DGRAM: the kernel makes a Unix SOCK_RAW pair a
# datagram pair (a guest sent datagrams and a descriptor to a host service's 0666 socket in its
# root that way).
SOCK_TYPE_MASK = 0xF
UNIX_PAIR_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
# An IP socket is a TCP socket: SOCK_STREAM, protocol 0 or IPPROTO_TCP. A UDP socket's queue
# draws on the host-wide udp_mem every UDP socket of the host shares (60 sockets of one guest
# held 11 MiB of it: a few calls of many processes could starve the host's DNS), and other
# protocols (SCTP, MPTCP, ICMP, L2TP, …) are kernel code, often a module the kernel would load
# on the guest's behalf. The type's low four bits are denied when 0 or when any of bits 1-3 is
# set: everything but SOCK_STREAM (1), whatever flags ride above them.
IPPROTO_TCP = socket.IPPROTO_TCP
NOT_STREAM_BITS = (2, 4, 8)
# A socket's buffers may not be enlarged: SO_SNDBUF and SO_RCVBUF take up to twice the host's
# net.core.wmem_max / rmem_max (8 MiB each on the host this was written on) for every socket,
# kernel memory outside the call's address-space limit, drawn for TCP from the host-wide
# tcp_mem every TCP socket of the host shares. TCP's own growth is capped in the call's network
# namespace (namespaces.TCP_RMEM); Unix pairs keep the host's default (net.core.wmem_default).
SOL_SOCKET = socket.SOL_SOCKET
BUFFER_OPTIONS = {"SO_SNDBUF": socket.SO_SNDBUF, "SO_RCVBUF": socket.SO_RCVBUF,
                  "SO_SNDBUFFORCE": 32, "SO_RCVBUFFORCE": 33}  # (the last two: not in Python's socket)
# A program attached to a socket (classic BPF, or eBPF by descriptor) is kernel code, the BPF
# checker and JIT, that any process reaches with no privilege: a guest attached one with
# SO_ATTACH_REUSEPORT_CBPF and loaded its own seccomp filters (seen). Python never does either.
PROGRAM_OPTIONS = {"SO_ATTACH_FILTER": 26, "SO_ATTACH_BPF": 50, "SO_ATTACH_REUSEPORT_CBPF": 51,
                   "SO_ATTACH_REUSEPORT_EBPF": 52}
PR_SET_SECCOMP = _libc.PR_SET_SECCOMP
# The peer of the guest's channel is a process of the host: SO_PEERPIDFD handed the guest a
# pidfd of it (the kernel then refused it a signal, EINVAL), and SO_PASSPIDFD would attach one
# to each message it receives. No guest needs a handle on a process it cannot see.
PEER_PIDFD_OPTIONS = {"getsockopt": ("SO_PEERPIDFD", 77), "setsockopt": ("SO_PASSPIDFD", 76)}
# A TCP upper-layer protocol (kTLS, espintcp) is kernel code an unprivileged process reaches by
# naming it (CVE-2023-0461, a use-after-free through it, needed no privilege); Python's ssl
# module encrypts in user space and never sets one.
TCP_ULP = 31
# Out-of-band data on a Unix stream socket is kernel code with a history (CVE-2025-38236, a
# use-after-free any process reached with MSG_OOB and MSG_PEEK; Chrome's renderers may not use
# the flag); on TCP it is urgent data, which Python programs practically never use (the stdlib's
# one sender, ftplib's abort, talks to FTP servers no sandbox reaches). MSG_OOB is denied to
# every call that takes flags, whatever the socket: (fd, buf, len, flags, …) for sendto and
# recvfrom, (fd, msg, flags) for sendmsg and recvmsg, (fd, vec, vlen, flags, …) for the mmsg forms.
MSG_OOB = socket.MSG_OOB
MSG_FLAGS_ARGUMENT = {"sendto": 3, "recvfrom": 3, "sendmsg": 2, "recvmsg": 2, "sendmmsg": 3, "recvmmsg": 3}
# An IPv6 flow label comes from one count the kernel keeps for the whole host (4,096, and
# processes without CAP_NET_ADMIN are refused past 3,072): 22 processes of one call took 3,071,
# and the next request, another call's or a host process's, got ENOBUFS (seen). Creating one
# (IPV6_FLOWLABEL_MGR) is denied; reading the options stays allowed.
IPPROTO_IPV6, IPV6_FLOWLABEL_MGR = socket.IPPROTO_IPV6, 32
# A lock or a watch on a file belongs to the file, not to the process: on the folders every
# sandbox shares read-only (the stdlib, the libraries, whitelisted folders) one call could
# signal another through a lock, see and hold off the host's processes' locks, or (dnotify,
# like inotify) watch which files other calls and host processes open. These fcntl commands
# are denied, compared on the low 32 bits the kernel reads (`cmd` is an unsigned int).
FCNTL_DENIED = {"F_GETLK": 5, "F_SETLK": 6, "F_SETLKW": 7, "F_OFD_GETLK": 36, "F_OFD_SETLK": 37,
                "F_OFD_SETLKW": 38, "F_SETLEASE": 1024, "F_GETLEASE": 1025, "F_NOTIFY": 1026}
# A futex in a shared mapping of a file is keyed by the file: two calls that map the same
# library file could wake each other. Every futex operation that wakes, requeues or locks is
# denied unless it carries FUTEX_PRIVATE_FLAG (which Python's and libc's own locks do). That
# does not stop every wake: when a thread ends, the kernel wakes its clear-child-tid address as
# a shared futex, and set_tid_address names any address. So a shared wait does not sleep
# either: it fails at once with EAGAIN, which says "the word changed, read it again", and its
# callers (libc's pthread_join, process-shared locks) read it again and wait again: they spin
# instead of sleeping, and a timed one ignores its timeout. futex_waitv, whose flags are in
# memory, fails with ENOSYS, as if the kernel had none (its users fall back to futex).
# The mask leaves out FUTEX_CLOCK_REALTIME and the upper 32 bits (`op` is an int).
FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME = 128, 256
FUTEX_SHARED_DENIED = {"FUTEX_WAKE": 1, "FUTEX_FD": 2, "FUTEX_REQUEUE": 3, "FUTEX_CMP_REQUEUE": 4,
                       "FUTEX_WAKE_OP": 5, "FUTEX_LOCK_PI": 6, "FUTEX_UNLOCK_PI": 7,
                       "FUTEX_TRYLOCK_PI": 8, "FUTEX_WAKE_BITSET": 10, "FUTEX_WAIT_REQUEUE_PI": 11,
                       "FUTEX_CMP_REQUEUE_PI": 12, "FUTEX_LOCK_PI2": 13}
FUTEX_SHARED_WAITS = {"FUTEX_WAIT": 0, "FUTEX_WAIT_BITSET": 9}
LOW_32_BITS = 0xFFFFFFFF
# The page cache of the shared files is shared too. A guest that evicts a library file's pages
# (fadvise DONTNEED needs only read access) and later reads it with RWF_NOWAIT (which fails
# where a page is not cached) learns whether another call or the host read that file meanwhile
# (seen: a host `cat` of the stdlib's colorsys.py between the two). Both are denied; timing
# plain reads stays possible (the security model's timing side channels), without eviction.
POSIX_FADV_DONTNEED, RWF_NOWAIT = 4, 0x8
# Memory a process marks mergeable is deduplicated with other processes' identical pages where
# the host runs KSM (kernel same-page merging), and the time a write to such a page takes tells
# whether some other process (another call, the host) holds a page with that content: a known
# way to read across processes. Opting in is denied, for a range and for a whole process.
MADV_MERGEABLE, PR_SET_MEMORY_MERGE = 12, 67
# Huge pages from the host's reserved pool (vm.nr_hugepages, kept for a database, DPDK or VMs):
# any process may map them, the pool is the host's, and a cgroup's memory.max does not count
# them. A guest took all 32 reserved pages while a host process's MAP_HUGETLB failed with
# ENOMEM (seen). Transparent huge pages come from ordinary memory and stay allowed.
MAP_HUGETLB = 0x40000
# Where a host filesystem keeps its blocks: FS_IOC_GETFSMAP on any file of a bound folder
# (/usr/lib) returns the filesystem's whole map of used and free space, live (a diff over 3 s
# showed the host's writes), and FS_IOC_FIEMAP a file's physical extents on the host's disk;
# ext4's extent-status cache and XFS's block maps give the same extents (a probe read them
# through EXT4_IOC_GET_ES_CACHE once FIEMAP was denied); the filesystem's UUID and its sysfs
# name ("ext4/vda") name the host's disk. These ioctl requests are denied whatever the size
# their number encodes (bits 16-29, masked out: a request's size differs between versions of a
# structure), compared on the low 32 bits the kernel reads (`cmd` is an unsigned int).
FS_IOCTLS = {"FS_IOC_GETFSMAP": 0xC0C0583B, "FS_IOC_FIEMAP": 0xC020660B,
             "EXT4_IOC_GET_ES_CACHE": 0xC020662A, "XFS_IOC_GETBMAP": 0xC0205826,
             "XFS_IOC_GETBMAPA": 0xC020582C, "XFS_IOC_GETBMAPX": 0xC0205838,
             "FS_IOC_GETFSUUID": 0x80111500, "FS_IOC_GETFSSYSFSPATH": 0x80811501}
IOCTL_WITHOUT_SIZE = 0xC000FFFF
# Kernel memory no limit counts: a private futex hash of up to 2**24 slots (prctl
# PR_FUTEX_HASH, Linux 6.16: 1 GiB of vmalloc per process, in no one's RSS; 4 processes of one
# call took 4 GB of the host's), and TCP's MD5 and AO keys (each socket holds keys up to the
# host's optmem_max: 8 processes took 82 MB of unreclaimable slab). No Python program sets
# either; the kernel's own per-process futex hash is not affected.
PR_FUTEX_HASH = 78
TCP_KEY_OPTIONS = {"TCP_MD5SIG": 14, "TCP_MD5SIG_EXT": 32, "TCP_AO_ADD_KEY": 38, "TCP_AO_DEL_KEY": 39,
                   "TCP_AO_INFO": 40, "TCP_AO_REPAIR": 42}
# The host's disks, on demand: a guest writes only to its /tmp (a tmpfs, where syncing does
# nothing), but fsync of a file it only reads on a host filesystem made ext4 flush the
# device's cache, 69,068 times in 3 s (seen). The syncing calls are answered 0 without being
# made: what they do for the guest's own files. Reads with O_DIRECT go past the page cache to
# the disk every time (60,000 in 3 s, seen): refused with EINVAL, as a filesystem without
# direct I/O refuses them, at open and at fcntl(F_SETFL); openat2, whose flags are in memory
# the filter cannot read, gets ENOSYS (libc does not use it).
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range")
O_DIRECT, F_SETFL = os.O_DIRECT, fcntl.F_SETFL
BPF_INSTRUCTION_BYTES = 8  # struct sock_filter

if TYPE_CHECKING:  # loaded only where filters are built: the daemon, never the zygote
    import pyseccomp as seccomp


def build(pool_part: bool = False) -> seccomp.SyscallFilter:
    """Returns the whole filter, ready to load; names this libseccomp does not know are skipped.
    ``pool_part`` leaves out what ``build_last`` holds, which the sandbox's last steps need."""
    import pyseccomp as seccomp

    f = _deny_filter([name for name in DENIED if not (pool_part and name in CALL_STEPS)])
    deny = seccomp.ERRNO(errno.EPERM)
    for number in DENIED_BY_NUMBER.get(os.uname().machine, {}).values():
        try:
            f.add_rule(deny, number)
        except (ValueError, OSError):
            pass
    # clone may make threads and processes, but not namespaces.
    for flag in NAMESPACE_FLAGS:
        f.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    _limit_sockets(f, deny, seccomp)
    _deny_shared_state(f, deny, seccomp)
    _spare_the_host_disks(f, seccomp)
    if not pool_part:
        _deny_loading_filters(f, deny, seccomp)
    return f


def _limit_sockets(f, deny, seccomp) -> None:
    """TCP sockets over IPv4 and IPv6, and Unix sockets as a connected stream or seqpacket
    pair, with the buffers they come with, no upper-layer protocol, no out-of-band data and
    no IPv6 flow label of their own."""
    # Compared as 64-bit values: anything >= 11, upper bits set included, is denied.
    for call in ("socket", "socketpair"):
        for family in (0, *range(AF_INET + 1, AF_INET6)):
            f.add_rule(deny, call, seccomp.Arg(0, seccomp.EQ, family))
        f.add_rule(deny, call, seccomp.Arg(0, seccomp.GE, AF_INET6 + 1))
    f.add_rule(deny, "socket", seccomp.Arg(0, seccomp.EQ, AF_UNIX))
    for family in (AF_INET, AF_INET6):  # TCP only
        is_ip = seccomp.Arg(0, seccomp.EQ, family)
        f.add_rule(deny, "socket", is_ip, seccomp.Arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, 0))
        for bit in NOT_STREAM_BITS:
            f.add_rule(deny, "socket", is_ip, seccomp.Arg(1, seccomp.MASKED_EQ, bit, bit))
        # protocols other than 0 and 6, compared as 64-bit values (upper bits set: denied)
        for protocol in range(1, IPPROTO_TCP):
            f.add_rule(deny, "socket", is_ip, seccomp.Arg(2, seccomp.EQ, protocol))
        f.add_rule(deny, "socket", is_ip, seccomp.Arg(2, seccomp.GE, IPPROTO_TCP + 1))
    for kind in set(range(SOCK_TYPE_MASK + 1)) - set(UNIX_PAIR_TYPES):
        f.add_rule(deny, "socketpair", seccomp.Arg(0, seccomp.EQ, AF_UNIX),
                   seccomp.Arg(1, seccomp.MASKED_EQ, SOCK_TYPE_MASK, kind))
    low = functools.partial(_low_32_bits, seccomp)
    for option in (*BUFFER_OPTIONS.values(), *PROGRAM_OPTIONS.values()):  # (fd, level, optname, …)
        f.add_rule(deny, "setsockopt", low(1, SOL_SOCKET), low(2, option))
    for option in (TCP_ULP, *TCP_KEY_OPTIONS.values()):
        f.add_rule(deny, "setsockopt", low(1, IPPROTO_TCP), low(2, option))
    f.add_rule(deny, "setsockopt", low(1, IPPROTO_IPV6), low(2, IPV6_FLOWLABEL_MGR))
    for call, flags in MSG_FLAGS_ARGUMENT.items():
        f.add_rule(deny, call, seccomp.Arg(flags, seccomp.MASKED_EQ, MSG_OOB, MSG_OOB))
    for call, (_, option) in PEER_PIDFD_OPTIONS.items():
        f.add_rule(deny, call, low(1, SOL_SOCKET), low(2, option))


def _deny_shared_state(f, deny, seccomp) -> None:
    """The operations on state that other processes share: a file's locks and watches, a futex
    keyed by a file, a file's cached pages, merged memory, the host's huge pages, its
    filesystems' block maps and names, its core dump helper, and kernel memory no limit
    counts (see the tables above)."""
    low = functools.partial(_low_32_bits, seccomp)
    for command in FCNTL_DENIED.values():
        f.add_rule(deny, "fcntl", low(1, command))
    for request in FS_IOCTLS.values():
        f.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, IOCTL_WITHOUT_SIZE, request & IOCTL_WITHOUT_SIZE))
    for operation in FUTEX_SHARED_DENIED.values():
        f.add_rule(deny, "futex", seccomp.Arg(1, seccomp.MASKED_EQ, LOW_32_BITS & ~FUTEX_CLOCK_REALTIME, operation))
    f.add_rule(deny, "fadvise64", low(3, POSIX_FADV_DONTNEED))
    for call in ("preadv2", "pwritev2"):  # (fd, iov, iovcnt, pos_l, pos_h, flags)
        f.add_rule(deny, call, seccomp.Arg(5, seccomp.MASKED_EQ, RWF_NOWAIT, RWF_NOWAIT))
    f.add_rule(deny, "madvise", low(2, MADV_MERGEABLE))
    f.add_rule(deny, "prctl", low(0, PR_SET_MEMORY_MERGE))
    f.add_rule(deny, "prctl", low(0, PR_FUTEX_HASH))
    f.add_rule(deny, "mmap", seccomp.Arg(3, seccomp.MASKED_EQ, MAP_HUGETLB, MAP_HUGETLB))
    # prlimit64(pid, resource, new, old): only with a new limit
    f.add_rule(deny, "prlimit64", low(1, RLIMIT_CORE), seccomp.Arg(2, seccomp.NE, 0))
    f.add_rule(deny, "setrlimit", low(0, RLIMIT_CORE))
    # futex_wake's flags name a shared futex unless they hold FUTEX2_PRIVATE (the same bit)
    f.add_rule(deny, FUTEX_WAKE_NUMBER, seccomp.Arg(3, seccomp.MASKED_EQ, FUTEX_PRIVATE_FLAG, 0))
    word_changed = seccomp.ERRNO(errno.EAGAIN)
    for operation in FUTEX_SHARED_WAITS.values():
        f.add_rule(word_changed, "futex",
                   seccomp.Arg(1, seccomp.MASKED_EQ, LOW_32_BITS & ~FUTEX_CLOCK_REALTIME, operation))
    f.add_rule(word_changed, FUTEX_WAIT_NUMBER, seccomp.Arg(3, seccomp.MASKED_EQ, FUTEX_PRIVATE_FLAG, 0))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), FUTEX_WAITV_NUMBER)


def _spare_the_host_disks(f, seccomp) -> None:
    """No device flush and no uncached read of a host filesystem on the guest's demand (see
    SYNC_CALLS)."""
    for call in SYNC_CALLS:
        f.add_rule(seccomp.ERRNO(0), call)
    direct = seccomp.ERRNO(errno.EINVAL)
    for call, flags in (("open", 1), ("openat", 2)):  # (path, flags, mode), (dirfd, path, flags, mode)
        try:
            f.add_rule(direct, call, seccomp.Arg(flags, seccomp.MASKED_EQ, O_DIRECT, O_DIRECT))
        except (ValueError, OSError):
            pass  # no open() on this architecture (aarch64): openat is all there is
    f.add_rule(direct, "fcntl", _low_32_bits(seccomp, 1, F_SETFL), seccomp.Arg(2, seccomp.MASKED_EQ, O_DIRECT, O_DIRECT))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")


def _low_32_bits(seccomp, index: int, value: int):
    """Argument ``index`` equal to ``value`` on the low 32 bits, all the kernel reads of an int."""
    return seccomp.Arg(index, seccomp.MASKED_EQ, LOW_32_BITS, value)


def build_last() -> seccomp.SyscallFilter:
    """The call's part of the filter: the system calls ``build(pool_part=True)`` left out, and
    loading another filter (this one is the last the sandbox loads)."""
    import pyseccomp as seccomp

    f = _deny_filter(CALL_STEPS)
    _deny_loading_filters(f, seccomp.ERRNO(errno.EPERM), seccomp)
    return f


def _deny_loading_filters(f, deny, seccomp) -> None:
    """prctl(PR_SET_SECCOMP); the seccomp system call is in DENIED (see PROGRAM_OPTIONS)."""
    f.add_rule(deny, "prctl", _low_32_bits(seccomp, 0, PR_SET_SECCOMP))


def _deny_filter(names) -> seccomp.SyscallFilter:
    import pyseccomp as seccomp

    f = seccomp.SyscallFilter(seccomp.ALLOW)
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in names:
        try:
            f.add_rule(deny, name)
        except (ValueError, OSError):
            pass  # a syscall this architecture does not have cannot be called either
    return f


def programs() -> tuple[bytes, bytes]:
    """The pool's and the call's parts, compiled. The daemon compiles them once and hands
    them to the zygote, which never loads libseccomp (one library less in every sandbox)."""
    return compile_filter(build(pool_part=True)), compile_filter(build_last())


def compile_filter(f: seccomp.SyscallFilter) -> bytes:
    """The filter as the BPF program libseccomp would load, so a sandbox does not pay for
    libseccomp's compilation on every call."""
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb", closefd=False) as pipe:
            f.export_bpf(pipe)
        os.close(write)
        write = -1
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read)
        if write != -1:
            os.close(write)


def apply(program: bytes) -> None:
    """Loads a compiled filter into this process; requires no_new_privs or CAP_SYS_ADMIN."""
    if not program or len(program) % BPF_INSTRUCTION_BYTES:
        raise SandboxSetupError("seccomp", f"prctl(PR_SET_SECCOMP) with a {len(program)}-byte program",
                                errno.EINVAL)
    _libc.load_seccomp_program(program, len(program) // BPF_INSTRUCTION_BYTES)
