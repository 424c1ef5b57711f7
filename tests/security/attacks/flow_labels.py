# Attack: take the host's IPv6 flow labels. The kernel keeps one count of them for the whole
# host (4,096; past 3,072 it refuses processes without CAP_NET_ADMIN, in any namespace), and
# setsockopt(IPV6_FLOWLABEL_MGR) with IPV6_FL_F_CREATE takes one (kept 6 s after its release):
# 22 processes of one call took 3,071, and the next request, another call's or the host's, got
# ENOBUFS.
from escape import outcome, real_import

IPV6_FLOWLABEL_MGR, IPV6_FL_A_GET, IPV6_FL_A_PUT, IPV6_FL_F_CREATE, IPV6_FL_S_EXCL = 32, 0, 1, 1, 1
LABEL = 0x12345  # bit 19 clear: not in the range the kernel may keep for itself


def attack():
    """Creates one flow label and puts it back; what each step gave, and an IPv6 option that
    takes nothing from the host, which must still work."""
    socket, struct = real_import("socket"), real_import("struct")
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)

    def request(action, flags):  # struct in6_flowlabel_req: dst (not ::), label (big-endian),
        # action, share, flags, expires, linger, padding
        return socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!I", LABEL) + struct.pack("=BBHHHI", action, IPV6_FL_S_EXCL, flags, 0, 0, 0)

    return {
        "create": outcome(lambda: s.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR,
                                               request(IPV6_FL_A_GET, IPV6_FL_F_CREATE))),
        "put back": outcome(lambda: s.setsockopt(socket.IPPROTO_IPV6, IPV6_FLOWLABEL_MGR,
                                                 request(IPV6_FL_A_PUT, 0))),
        "IPV6_V6ONLY": outcome(lambda: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)),
    }
