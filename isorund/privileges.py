"""The daemon's capabilities: those sandbox set-up needs, however it was started.

The systemd unit gives the daemon only these (``CapabilityBoundingSet=``). Started another way
(``make run``, a shell, a container) it held all of root's, ``CAP_DAC_OVERRIDE`` among them, and
bound a folder below another user's private (0700) folder for any caller on its socket, who
then read the files in it it could not reach itself (seen). So the daemon drops the others
itself, first thing, while it has one thread (capabilities are per thread; threads started
later inherit these): the two ways of running it then hold the same. Dropped from the bounding
set as well, they are gone from the zygote too, which it starts as root with ``exec``.
"""
from __future__ import annotations

import json
import logging

from .sandbox import _libc

log = logging.getLogger("isorund")

# Each explained in systemd/isorund.service, which bounds the daemon to the same set.
NEEDED = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_NET_ADMIN": 12,
          "CAP_SYS_CHROOT": 18, "CAP_SYS_ADMIN": 21}
NEEDED_MASK = sum(1 << bit for bit in NEEDED.values())
CAP_SETPCAP = 8  # dropping from the bounding set asks for it


def keep_only_needed() -> None:
    """Drops every capability but ``NEEDED`` from this thread's bounding, ambient, permitted,
    effective and inheritable sets. Under the unit there is nothing left to drop."""
    step = "keep only the capabilities sandboxes need"
    bounding = own_set("CapBnd")
    extra = [bit for bit in range(64) if bounding >> bit & 1 and not NEEDED_MASK >> bit & 1]
    if extra and not own_set("CapEff") >> CAP_SETPCAP & 1:
        raise SystemExit(f"isorund cannot drop the capabilities sandbox set-up does not need ({len(extra)}, "
                         f"bits {extra}) from its bounding set without CAP_SETPCAP; the zygote, which it "
                         "starts as root, would hold them: start it with only those systemd/isorund.service names")
    for bit in extra:
        _libc.prctl(step, _libc.PR_CAPBSET_DROP, bit)
    _libc.prctl(step, _libc.PR_CAP_AMBIENT, _libc.PR_CAP_AMBIENT_CLEAR_ALL)
    permitted = own_set("CapPrm") & NEEDED_MASK
    _libc.set_capabilities(step, permitted, permitted)
    missing = sorted(name for name, bit in NEEDED.items() if not permitted >> bit & 1)
    if missing:
        log.warning(json.dumps({"event": "capabilities_missing", "missing": missing,
                                "note": "the self-test call shows whether sandboxes can be built without them"}))


def own_set(name: str) -> int:
    """This thread's capability set ``name`` (CapEff, CapPrm, CapBnd, …) as a bit mask."""
    with open("/proc/thread-self/status") as f:
        return int(next(line for line in f if line.startswith(name + ":")).split()[1], 16)
