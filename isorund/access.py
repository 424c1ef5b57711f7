"""Who may call: the peer allowlist, checked with the kernel's SO_PEERCRED.

grpc's Python server never shows a handler the connection's socket, and its ``peer()`` for a
Unix socket is just ``"unix:"`` — nothing identifies the calling process. So when an
allowlist is configured, isorund puts a small front on the public socket (``AccessFront``):
it accepts each connection, reads the peer's uid, gid and supplementary groups from the
kernel (``SO_PEERCRED``, ``SO_PEERGROUPS``: recorded at ``connect()``, unforgeable), and
relays the bytes to grpc listening on a private socket in a root-only folder. The relay
connects from an autobound abstract address, which the kernel picks and keeps unique, and
which grpc reports as the call's ``peer()`` (``unix-abstract:XXXXX``); the servicer looks the
credentials up by it and answers ``PERMISSION_DENIED`` for a peer not on the list.

Denied peers are still relayed — refusing them at ``connect()`` would show as a broken
connection (UNAVAILABLE), not as the clear PERMISSION_DENIED the client maps to
``AccessDenied``. Without an allowlist there is no front: grpc owns the public socket and the
relay's cost (measured in docs/operations.md) is not paid.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger("isorund")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python lacks the name
# Python's getsockopt reads at most 1024 bytes: 256 groups. A peer in more groups than that
# (the kernel answers ERANGE) is judged by its uid and primary gid alone.
MAX_GROUPS = 256
# Connections one refused uid may hold open at once: enough to be told PERMISSION_DENIED, too
# few to use up the daemon's descriptors (each relayed connection holds three).
REFUSED_CONNECTIONS_PER_UID = 8
BACKLOG = 1024
# How long a closed relay's peer is still known (see AccessFront.forget_later).
CLOSED_RELAY_SECONDS = 5.0
# When accept() fails (out of descriptors), how long the front stops accepting: Linux keeps
# reporting the listening socket readable, so retrying at once would spin.
ACCEPT_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class Peer:
    """A connected process as the kernel saw it at ``connect()``."""
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return f"pid={self.pid} uid={self.uid} gid={self.gid}"


def peer_credentials(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_GROUPS)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        groups = ()
    return Peer(pid, uid, gid, tuple(groups))


class Allowlist:
    """The policy alone, so it can be tested without sockets."""

    def __init__(self, uids: frozenset, gids: frozenset):
        self.uids, self.gids = uids, gids

    def allows(self, peer: Peer) -> bool:
        return peer.uid in self.uids or bool(self.gids.intersection((peer.gid, *peer.groups)))

    def refusal(self, peer: Peer) -> str:
        return (f"uid {peer.uid} (gid {peer.gid}) may not call this isorund: it is in neither "
                "allowed_uids nor allowed_gids of the daemon's config")


class AccessFront:
    """Owns the public socket; relays every connection to grpc's private socket."""

    def __init__(self, public: str, private: str, allowlist: Allowlist):
        self.public, self.private, self.allowlist = public, private, allowlist
        self.peers: dict[str, Peer] = {}  # grpc peer() of a relay -> the credentials behind it
        self._relays: set[_Side] = set()
        self._refused_open: dict[int, int] = {}  # uid not on the allowlist -> its open connections
        self._listener: socket.socket | None = None

    async def start(self) -> None:
        # Our own accept loop, not loop.create_unix_server: out of descriptors, Python 3.11's
        # goes on through its whole backlog, logging a traceback and scheduling a retry for
        # every queued slot (CPython gh-151615): ~1,000 tracebacks a second in the journal.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.public)
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._watch_listener()

    def _watch_listener(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept_queued)

    def _accept_queued(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(BACKLOG):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:  # out of descriptors, most likely: pause rather than spin
                loop.remove_reader(self._listener.fileno())
                loop.call_later(ACCEPT_RETRY_SECONDS, self._watch_listener)
                log.error(json.dumps({"event": "access_accept_paused", "error": str(e),
                                      "retry_seconds": ACCEPT_RETRY_SECONDS}))
                return
            conn.setblocking(False)
            loop.create_task(loop.connect_accepted_socket(lambda: _Side(self), conn))

    def lookup(self, grpc_peer: str) -> Peer | None:
        return self.peers.get(grpc_peer)

    def forget_later(self, name: str) -> None:
        """Forgets a closed relay's peer a while after: gRPC may still hand the servicer a
        request the client sent whole before it closed, whose peer must then be judged as
        it was (looked up at once, it was unknown, and an allowed client was logged as
        denied). Unless the kernel gave the name to a new relay meanwhile."""
        peer = self.peers.get(name)
        asyncio.get_running_loop().call_later(
            CLOSED_RELAY_SECONDS, lambda: self.peers.get(name) is peer and self.peers.pop(name))

    def stop_accepting(self) -> None:
        """New connections are refused from now on; relays in progress go on."""
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self.stop_accepting()
        for side in list(self._relays):
            side.transport.close()

    def hold_refused(self, peer: Peer) -> bool:
        """Counts one more open connection of a peer the allowlist refuses; False (not
        counted) when its uid already holds REFUSED_CONNECTIONS_PER_UID."""
        held = self._refused_open.get(peer.uid, 0)
        if held >= REFUSED_CONNECTIONS_PER_UID:
            return False
        self._refused_open[peer.uid] = held + 1
        if held + 1 == REFUSED_CONNECTIONS_PER_UID:
            log.warning(json.dumps({"event": "denied_connections_capped", "peer": str(peer),
                                    "open": held + 1, "note": "further connections are closed at once"}))
        return True

    def release_refused(self, peer: Peer) -> None:
        self._refused_open[peer.uid] -= 1
        if not self._refused_open[peer.uid]:
            del self._refused_open[peer.uid]

    async def _connect(self, client: "_Side") -> None:
        """Opens the relay's grpc side for one accepted connection."""
        loop = asyncio.get_running_loop()
        upstream = None
        try:
            # inside the try: out of descriptors (EMFILE), the client's connection must still be
            # closed, or it stays open, unread and unnoticed, for the daemon's life
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.bind("")  # autobind: the kernel picks a unique abstract name
            upstream.setblocking(False)
            await loop.sock_connect(upstream, self.private)
            name = "unix-abstract:" + upstream.getsockname()[1:].decode()
            self.peers[name] = client.peer
            _, server_side = await loop.create_unix_connection(lambda: _Side(self, client, name), sock=upstream)
        except OSError as e:
            if upstream is not None:
                upstream.close()
            log.error(json.dumps({"event": "access_relay_failed", "peer": str(client.peer), "error": str(e)}))
            client.transport.close()
            return
        client.link(server_side)


class _Side(asyncio.Protocol):
    """One end of a relay: what it reads goes to its partner, with backpressure both ways."""

    def __init__(self, front: AccessFront, partner: "_Side | None" = None, name: str = ""):
        self.front, self.partner, self.name = front, partner, name
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.early: list[bytes] = []  # client bytes that arrive before grpc's side is open
        self.holds_refused_slot = False  # a refused peer's connection, counted in the front

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.front._relays.add(self)
        if self.partner is None:  # a client: learn who it is, then open grpc's side
            peer = peer_credentials(transport.get_extra_info("socket"))
            if not self.front.allowlist.allows(peer):
                # still relayed, to be told PERMISSION_DENIED; but only a few at once
                if not self.front.hold_refused(peer):
                    transport.close()
                    return
                self.holds_refused_slot = True
            self.peer = peer
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.front._connect(self))

    def link(self, partner: "_Side") -> None:
        self.partner = partner
        for chunk in self.early:
            partner.transport.write(chunk)
        self.early.clear()
        if not self.transport.is_closing():
            self.transport.resume_reading()
        else:
            partner.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.partner is None:
            self.early.append(data)
        else:
            self.partner.transport.write(data)

    def eof_received(self) -> bool:
        return False  # HTTP/2 has no use for half-closed streams: close both ends

    def connection_lost(self, exc) -> None:
        self.front._relays.discard(self)
        if self.holds_refused_slot:
            self.holds_refused_slot = False
            self.front.release_refused(self.peer)
        if self.name:
            self.front.forget_later(self.name)
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.close()

    def pause_writing(self) -> None:
        if self.partner is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and not self.partner.transport.is_closing():
            self.partner.transport.resume_reading()


def prepare_private_folder(state_dir: str) -> str:
    """grpc's socket behind the front; only root may enter its folder, so only the front
    can connect to it and every peer() grpc reports is one of the front's relays."""
    folder = os.path.join(state_dir, "grpc")
    os.mkdir(folder, 0o700)
    return os.path.join(folder, "grpc.sock")
