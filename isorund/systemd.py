"""sd_notify: tells systemd (Type=notify) when the daemon is ready, stopping, and how it is,
and that it is still alive when the unit asks for watchdog pings (WatchdogSec=).

The protocol is one datagram of newline-separated assignments to $NOTIFY_SOCKET; without it
(not run by systemd) this does nothing. Failures are ignored: the service manager going away
must never take the daemon down with it.
"""
from __future__ import annotations

import os
import socket


def enabled() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET"))


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings when systemd expects them: half its timeout, as
    sd_watchdog_enabled(3) advises. None when it expects none, or expects them from another
    process (``$WATCHDOG_PID``)."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID", "")
    if not enabled() or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


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
