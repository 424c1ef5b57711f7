"""Memory of a process and everything it started, read from /proc.

RSS counts every shared page in full in every process, so summing it over a zygote and its
forks overstates the cost; PSS splits each shared page between the processes that map it, so
the PSS sum is the memory the tree really holds; USS (private pages only) is what one process
alone holds, i.e. what would be freed if it exited. All three are reported, summed over the
whole tree and per depth in it (for isorund: 0 = daemon, 1 = zygote, 2+ = sandboxes). Read
straight from /proc/PID/smaps_rollup (Linux ≥ 4.14) so the harness needs no extra package.
"""
from __future__ import annotations

import os

FIELDS = {"Rss": "rss", "Pss": "pss", "Private_Clean": "uss", "Private_Dirty": "uss"}


def descendants(root_pid: int) -> list[tuple[int, int]]:
    """``(pid, depth)`` of ``root_pid`` (depth 0) and every live process below it.

    Walks the parent links of every process in /proc rather than /proc/PID/task/*/children,
    which misses children of threads other than the one listed and needs CONFIG_PROC_CHILDREN.
    """
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # it exited while we looked
            continue
        # The command name may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [(root_pid, 0)]
    while todo and len(tree) < 100_000:
        pid, depth = todo.pop(0)
        tree.append((pid, depth))
        todo.extend((child, depth + 1) for child in sorted(children.get(pid, [])))
    return tree


def rollup_kib(pid: int) -> dict[str, int] | None:
    """``{"rss", "pss", "uss"}`` of one process in KiB, or None when it is gone or unreadable."""
    values = {"rss": 0, "pss": 0, "uss": 0}
    seen = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in FIELDS:
                    values[FIELDS[key]] += int(rest.split()[0])
                    seen += 1
    except (OSError, ValueError):
        return None
    return values if seen == len(FIELDS) else None


def _mib(kib: dict) -> dict:
    return {f"{k}_mib": round(v / 1024, 1) for k, v in kib.items()}


def tree_memory(root_pid: int, roles: tuple[str, ...] = ()) -> dict:
    """RSS, PSS and USS in MiB summed over ``root_pid`` and its descendants, with the process
    count; with ``roles`` (names for depth 0, 1, 2, …; the last covers every deeper level),
    the same sums per role under ``"by_role"``."""
    total = {"rss": 0, "pss": 0, "uss": 0}
    by_role: dict[str, dict] = {}
    count = 0
    for pid, depth in descendants(root_pid):
        mem = rollup_kib(pid)
        if mem is None:
            continue
        count += 1
        for key, value in mem.items():
            total[key] += value
        if roles:
            role = by_role.setdefault(roles[min(depth, len(roles) - 1)],
                                      {"rss": 0, "pss": 0, "uss": 0, "processes": 0})
            role["processes"] += 1
            for key, value in mem.items():
                role[key] += value
    result = {**_mib(total), "processes": count}
    if roles:
        result["by_role"] = {name: {**_mib({k: v for k, v in r.items() if k != "processes"}),
                                    "processes": r["processes"]} for name, r in by_role.items()}
    return result
