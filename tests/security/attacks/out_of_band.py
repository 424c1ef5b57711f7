# Attack: send and receive out-of-band data (MSG_OOB) on a Unix stream pair, the kernel code of
# CVE-2025-38236 (a use-after-free reached by any process through MSG_OOB and MSG_PEEK), and on
# a loopback TCP connection (urgent data), with every call that takes the flag.
from escape import outcome, real_import, syscall as _syscall

SENDTO, RECVFROM, SENDMSG, RECVMSG, SENDMMSG, RECVMMSG = 44, 45, 46, 47, 307, 299


def syscall(number, *args):
    """The errno name the raw call failed with, or "succeeded"."""
    return _syscall(number, *args)[1] or "succeeded"


def attack():
    """What each way of sending or receiving MSG_OOB gave ("ok: …" or the errno name), and
    plain, peeking and non-blocking traffic on the same sockets, which must still work."""
    socket = real_import("socket")
    results = {}
    unix = socket.socketpair()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    tcp = (socket.create_connection(server.getsockname()), server.accept()[0])
    for kind, (a, b) in (("unix", unix), ("tcp", tcp)):
        results[f"{kind} send MSG_OOB"] = outcome(lambda: a.send(b"!", socket.MSG_OOB))
        results[f"{kind} recv MSG_OOB"] = outcome(lambda: b.recv(1, socket.MSG_OOB))
        results[f"{kind} sendmsg MSG_OOB"] = outcome(lambda: a.sendmsg([b"!"], [], socket.MSG_OOB))
        results[f"{kind} recvmsg MSG_OOB"] = outcome(lambda: b.recvmsg(1, 0, socket.MSG_OOB)[0])
        # the raw calls, flags with upper bits set included: (fd, vectors, count, flags, …)
        results[f"{kind} sendmmsg MSG_OOB"] = syscall(SENDMMSG, a.fileno(), 0, 0, (1 << 32) | 1)
        results[f"{kind} recvmmsg MSG_OOB"] = syscall(RECVMMSG, b.fileno(), 0, 0, 1 | 0x40, 0)
        results[f"{kind} sendto MSG_OOB|MSG_DONTWAIT"] = syscall(SENDTO, a.fileno(), 0, 0, 1 | 0x40, 0, 0)
        results[f"{kind} plain"] = outcome(lambda: (a.sendall(b"ping"), b.recv(4, socket.MSG_PEEK),
                                                     b.recv(4), a.sendmsg([b"x"]), b.recvmsg(1)[0],
                                                     a.send(b"y", socket.MSG_DONTWAIT), b.recv(1)))
    return results
