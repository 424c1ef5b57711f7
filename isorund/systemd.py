"""sd_notify: tells systemd (Type=notify) when the daemon is ready, stopping, and how it is.

The protocol is one datagram of newline-separated assignments to $NOTIFY_SOCKET; without it
(not run by systemd) this does nothing. Failures are ignored: the service manager going away
must never take the daemon down with it.
"""
from __future__ import annotations

import os
import socket


def enabled() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(*assignments: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto("\n".join(assignments).encode(), address)
        except OSError:
            return False
    return True
