# Attack: talk to the outside — a TCP service on the host's loopback, an abstract Unix socket
# of the host, the daemon's own socket path, the internet, and a host service's socket files in
# a folder the call was given — from inside the sandbox.
from escape import os, outcome, real_import


def _greeting(family, address) -> str:
    """Connects to ``address`` and returns what the service there says first."""
    socket = real_import("socket")
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
        return s.recv(64).decode(errors="replace")
    finally:
        s.close()


def attack(tcp_port, abstract_name, daemon_socket):
    socket = real_import("socket")
    return {
        "host loopback": outcome(lambda: _greeting(socket.AF_INET, ("127.0.0.1", tcp_port))),
        "host loopback v6": outcome(lambda: _greeting(socket.AF_INET6, ("::1", tcp_port))),
        "abstract unix": outcome(lambda: _greeting(socket.AF_UNIX, "\0" + abstract_name)),
        "daemon socket": outcome(lambda: _greeting(socket.AF_UNIX, daemon_socket)),
        "daemon socket exists": os.path.exists(daemon_socket),
        "internet": outcome(lambda: _greeting(socket.AF_INET, ("1.1.1.1", 53))),
        "netlink": outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()),
        "packet": outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()),
        "own loopback": _own_loopback(socket),
    }


def _own_loopback(socket):
    # A guest may still talk to itself: its loopback is up, and private to the call.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=3)
    peer, _ = server.accept()
    client.sendall(b"ping")
    data = peer.recv(4)
    for s in (client, peer, server):
        s.close()
    return data.decode()


def socket_file(stream_path, datagram_path):
    """A host service's socket files, world-writable, in a folder the call was given: connect to
    the stream one, send to the datagram one. A connected pair of its own still works."""
    socket = real_import("socket")

    def send(kind):
        # (the kernel makes a Unix SOCK_RAW pair a datagram pair)
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        with a, b:
            return a.sendto(b"from the guest", datagram_path)

    def own_pair(kind=socket.SOCK_STREAM):
        a, b = socket.socketpair(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
        with a, b:
            a.sendall(b"ping")
            return b.recv(4).decode()
    return {"stream connect": outcome(lambda: _greeting(socket.AF_UNIX, stream_path)),
            "datagram sendto": outcome(lambda: send(socket.SOCK_DGRAM)),
            "raw sendto": outcome(lambda: send(socket.SOCK_RAW)), "own pair": outcome(own_pair),
            "own seqpacket pair": outcome(lambda: own_pair(socket.SOCK_SEQPACKET))}
