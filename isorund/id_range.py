"""The host ids sandboxes run as (``sandbox_uid_base``, ``sandbox_uid_count``) must be no one
else's.

A sandbox's guest runs as its host uid and gid and is dumpable: a host process with the same
uid needs no privilege to read its memory (``/proc/PID/mem``), stop it or kill it. With the
range overlapping ids the host gives out, a host user read another tenant's secret from a
guest's memory and stopped the guest (seen): a user holding the id itself, or one of
``/etc/subuid``'s subordinate ranges, which its owner maps into a user namespace of its own
with ``newuidmap`` (the default range is given out that way to the 22nd user that
``useradd`` makes one for, under the usual ``login.defs``). So the daemon refuses to start
when the range holds an id of the host's user or group databases or of a subordinate range.
Ids handed out at run time (systemd's dynamic users, container managers' ranges) cannot be
seen here; docs/operations.md says which ranges to avoid.
"""
from __future__ import annotations

import grp
import pwd

SUBORDINATE = ("/etc/subuid", "/etc/subgid")


def others_in(base: int, count: int) -> list[str]:
    """Who else holds ids in ``[base, base + count)``, in words; empty when no one does."""
    end = base + count
    found = [f"user {p.pw_name!r} ({p.pw_uid})" for p in pwd.getpwall() if base <= p.pw_uid < end]
    found += [f"group {g.gr_name!r} ({g.gr_gid})" for g in grp.getgrall() if base <= g.gr_gid < end]
    for path in SUBORDINATE:
        for owner, first, size in subordinate_ranges(path):
            if first < end and base < first + size:
                found.append(f"the subordinate ids of {owner!r} in {path} ({first}-{first + size - 1})")
    return found


def subordinate_ranges(path: str) -> list[tuple[str, int, int]]:
    """The ``owner:first:count`` lines of a subuid or subgid file; none if it is missing."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    ranges = []
    for line in lines:
        owner, *numbers = (field.strip() for field in line.strip().split(":"))
        if len(numbers) == 2 and all(n.isdigit() for n in numbers):
            ranges.append((owner, int(numbers[0]), int(numbers[1])))
    return ranges


def refusal(base: int, count: int) -> str | None:
    """Why the daemon may not give sandboxes these ids, or None."""
    found = others_in(base, count)
    if not found:
        return None
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"config keys sandbox_uid_base and sandbox_uid_count give sandboxes the host ids {base}-{base + count - 1}, "
            f"which others hold: {shown}; a process of theirs could read a guest's memory, stop or kill it. "
            "Choose a range no user, group or /etc/subuid or /etc/subgid entry holds")
