"""The call channel between the daemon and one guest: length-prefixed protobuf frames.

A frame is a 4-byte big-endian length and that many bytes. The daemon sends one CallPlan;
the guest answers with RunEvents, the last of which carries the outcome. The guest is
untrusted, so the daemon side (``isorund.launcher``) caps every frame it reads.
"""
from __future__ import annotations

import socket
import struct

HEADER = struct.Struct(">I")


def send(sock: socket.socket, message) -> None:
    payload = message.SerializeToString()
    sock.sendall(HEADER.pack(len(payload)) + payload)


def receive(sock: socket.socket, max_bytes: int) -> bytes:
    """Reads one frame; raises EOFError if the peer closed, ValueError if it is too large."""
    (size,) = HEADER.unpack(_exactly(sock, HEADER.size))
    if size > max_bytes:
        raise ValueError(f"frame of {size} bytes is over the {max_bytes}-byte limit")
    return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("channel closed")
        buf += chunk
    return bytes(buf)
