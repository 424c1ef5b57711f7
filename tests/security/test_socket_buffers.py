"""Socket buffers: kernel memory a guest could hold outside its address-space limit, and for
TCP and UDP out of budgets every socket of the host draws on (tcp_mem, udp_mem). TCP's
self-tuning buffers are capped in the call's network namespace; enlarging any socket's
buffers is denied by the filter, and so are UDP sockets."""
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


def test_socket_buffers_cannot_be_enlarged_and_udp_is_refused(attack):
    """Unrefused, SO_RCVBUF takes up to twice the host's rmem_max for one socket (8 MiB here);
    UDP was refused after 60 sockets of one guest held 11 MiB of the host's udp_mem."""
    results = attack("socket_buffers", "enlarge", timeout=20)
    for kind in ("tcp", "unix"):
        for name in ("SO_SNDBUF", "SO_RCVBUF", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE"):
            assert results.pop(f"{kind} {name}") == "EPERM", (kind, name)
    assert results == {"read SO_RCVBUF": "ok: True", "SO_REUSEADDR": "ok: None", "TCP_NODELAY": "ok: None",
                       "udp": "EPERM", "udp v6": "EPERM"}
