# Attack: hold kernel memory in socket buffers — loopback TCP connections written to and never
# read, whose buffers grow by themselves to the host's TCP limits, and sockets whose buffers
# are enlarged with SO_SNDBUF / SO_RCVBUF, and UDP sockets' queues. None of it counts against
# the address-space limit, and TCP's and UDP's draw on budgets every socket of the host shares
# (tcp_mem, udp_mem).
from escape import outcome, real_import

CHUNK = 1 << 16


def hoard(pairs):
    """Opens ``pairs`` loopback connections and writes into both ends of each until the kernel
    takes no more; returns how many bytes it queued."""
    socket = real_import("socket")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(pairs)
    ends = []
    for _ in range(pairs):
        ends.append(socket.create_connection(server.getsockname()))
        ends.append(server.accept()[0])
    queued = 0
    for end in ends:
        end.setblocking(False)
        while True:
            try:
                queued += end.send(b"x" * CHUNK)
            except BlockingIOError:
                break
    return {"pairs": len(ends) // 2, "queued": queued}


def backlog(attempts):
    """Connects ``attempts`` times to a listener that asks for a backlog of 4096 and never
    accepts; returns how many connections the kernel completed (each holds its buffers in the
    backlog, with no descriptor of the guest's)."""
    socket, select, time = real_import("socket"), real_import("select"), real_import("time")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    clients = []
    for _ in range(attempts):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(server.getsockname())
        clients.append(client)
    time.sleep(0.3)  # the handshakes on loopback take microseconds; refused SYNs are retried after 1 s
    _, writable, _ = select.select([], clients, [], 0)
    return sum(1 for c in writable if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)


def enlarge():
    """SO_SNDBUF and SO_RCVBUF on a TCP socket and a Unix pair; options that do not grow a
    buffer, which must still work; and a UDP socket, whose queue draws on udp_mem."""
    socket = real_import("socket")
    tcp, (unix, _other) = socket.socket(), socket.socketpair()
    results = {}
    for kind, sock in (("tcp", tcp), ("unix", unix)):
        for name in ("SO_SNDBUF", "SO_RCVBUF", "SO_SNDBUFFORCE", "SO_RCVBUFFORCE"):
            option = getattr(socket, name, {"SO_SNDBUFFORCE": 32, "SO_RCVBUFFORCE": 33}.get(name))
            results[f"{kind} {name}"] = outcome(lambda: sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20))
    results["read SO_RCVBUF"] = outcome(lambda: tcp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0)
    results["SO_REUSEADDR"] = outcome(lambda: tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1))
    results["TCP_NODELAY"] = outcome(lambda: tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    results["udp"] = outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    results["udp v6"] = outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
    return results
