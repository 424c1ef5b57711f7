"""The network: a namespace of the call's own with loopback only. Host services, the host's
abstract Unix sockets and the daemon's socket are out of reach; the guest may talk to itself."""
import secrets
import socket
import threading

import pytest


class Listener:
    """A host service that greets whoever connects; ``connected`` counts who did."""

    def __init__(self, family, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connected = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                peer, _ = self.sock.accept()
            except OSError:
                continue
            self.connected += 1
            peer.sendall(b"hello from the host")
            peer.close()

    def close(self):
        self.stopping = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def host_services():
    tcp = Listener(socket.AF_INET, ("127.0.0.1", 0))
    name = f"isorun-security-{secrets.token_hex(4)}"
    abstract = Listener(socket.AF_UNIX, "\0" + name)
    yield tcp, abstract, name
    tcp.close()
    abstract.close()


def test_guest_cannot_reach_host_services(attack, secure_daemon, host_services):
    tcp, abstract, name = host_services
    port = tcp.sock.getsockname()[1]
    results = attack("network", args=[port, name, secure_daemon.socket], timeout=20)
    assert results["host loopback"] == "ECONNREFUSED"  # the call's own, empty loopback answers
    assert results["host loopback v6"] in ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH")
    assert results["abstract unix"] == "EPERM"  # no Unix socket of its own (and a namespace's names)
    assert results["daemon socket"] == "EPERM"
    assert results["daemon socket exists"] is False
    assert results["internet"] == "ENETUNREACH"
    assert results["netlink"] == "EPERM"
    assert results["packet"] == "EPERM"
    assert tcp.connected == 0 and abstract.connected == 0


def test_guest_can_still_use_its_own_loopback(attack, secure_daemon, host_services):
    _, _, name = host_services
    assert attack("network", args=[1, name, secure_daemon.socket], timeout=20)["own loopback"] == "ping"


@pytest.fixture
def socket_files(tmp_path_factory):
    """A folder holding a host service's stream and datagram socket files, mode 0666."""
    folder = tmp_path_factory.mktemp("sockets")
    folder.chmod(0o755)
    stream = Listener(socket.AF_UNIX, str(folder / "service.sock"))
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagram.bind(str(folder / "log.sock"))
    datagram.settimeout(0.5)
    for name in ("service.sock", "log.sock"):
        (folder / name).chmod(0o666)
    yield folder, stream, datagram
    stream.close()
    datagram.close()


def test_a_socket_file_in_a_folder_the_call_was_given_is_out_of_reach(attack, socket_files):
    """A read-only bind does not stop connect(): a world-writable socket in a whitelisted folder
    reached the host service (seen: "hello from the host") until no guest could make a Unix
    socket but a connected pair."""
    folder, stream, datagram = socket_files
    results = attack("network", "socket_file", args=[str(folder / "service.sock"), str(folder / "log.sock")],
                     whitelisted_paths=[str(folder)], timeout=20)
    assert results == {"stream connect": "EPERM", "datagram sendto": "EPERM", "raw sendto": "EPERM",
                       "own pair": "ok: 'ping'", "own seqpacket pair": "ok: 'ping'"}
    assert stream.connected == 0
    with pytest.raises(TimeoutError):
        datagram.recv(64)
