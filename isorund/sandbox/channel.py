"""The call channel between the daemon and one guest: length-prefixed protobuf frames.

A frame is a 4-byte big-endian length and that many bytes. The daemon first sends the call's
folders as descriptors (one byte, ``F``, carrying them with SCM_RIGHTS), then one CallPlan and
the client's RunRequest as its bytes; the sandbox answers with SandboxEvents (the wire twins of
RunEvent, with the daemon-only ``compiled`` and ``invalid_request``), the last of which carries
the outcome. The guest is untrusted, so the daemon side (``isorund.sandbox_call``) caps every frame
it reads.
"""
from __future__ import annotations

import os
import socket
import struct

HEADER = struct.Struct(">I")


# Frames up to this size go out in one write; larger ones as header, then payload, so that a
# megabyte result is not copied once more just to put four bytes in front of it. A frame that
# fits the socket's buffer (~200 KiB) is one send() the kernel does not split, so guest threads
# printing at once cannot interleave it; larger frames were never whole sends anyway.
ONE_WRITE_BYTES = 256 << 10


# The first byte a sandbox sends, carrying the daemon's end of a channel made anew in the
# sandbox's own network namespace (see move_into_own_namespace); never the first byte of a
# frame, whose length would then be over a gigabyte.
NEW_CHANNEL = b"C"


def move_into_own_namespace(sock: socket.socket) -> None:
    """Replaces the channel, which the zygote made in the host's network namespace, with one
    made in the sandbox's own, handing the daemon its end over the old one. A Unix socket
    belongs to the namespace it was made in: on the old channel the guest's interface ioctls
    listed the host's devices, their addresses and MACs, and asked the host's NIC driver, and a
    bind() took a name in the host's abstract socket namespace, seen by the host and by other
    calls (found by a probe). Done in the pool, after the namespace is made."""
    ours, daemons = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        socket.send_fds(sock, [NEW_CHANNEL], [daemons.fileno()])
    finally:
        daemons.close()
    os.dup2(ours.fileno(), sock.fileno(), inheritable=False)  # the old channel closes with it
    ours.close()


def send(sock: socket.socket, message) -> None:
    """Sends ``message``, or its bytes (a message serialized beforehand)."""
    payload = message if isinstance(message, bytes) else message.SerializeToString()
    if len(payload) <= ONE_WRITE_BYTES:
        sock.sendall(HEADER.pack(len(payload)) + payload)
    else:
        sock.sendall(HEADER.pack(len(payload)))
        sock.sendall(payload)


def receive(sock: socket.socket, max_bytes: int) -> bytes:
    """Reads one frame; raises EOFError if the peer closed, ValueError if it is too large."""
    (size,) = HEADER.unpack(_exactly(sock, HEADER.size))
    if size > max_bytes:
        raise ValueError(f"frame of {size} bytes is over the {max_bytes}-byte limit")
    return _exactly(sock, size)


def _exactly(sock: socket.socket, size: int) -> bytes:
    """One ``recv`` that waits for the whole frame: the kernel copies it straight into a single
    bytes object, which protobuf can then read without copying it again. A fresh process pays
    a page fault for every page it touches first, so a megabyte plan read in chunks, joined
    and copied cost several times the faults of this single pass. A signal can cut the wait
    short; the rest is then read the same way."""
    data = sock.recv(size, socket.MSG_WAITALL)
    if len(data) == size:
        return data
    parts = [data]
    received = len(data)
    while data and received < size:
        data = sock.recv(size - received, socket.MSG_WAITALL)
        parts.append(data)
        received += len(data)
    if received < size:
        raise EOFError("channel closed")
    return b"".join(parts)
