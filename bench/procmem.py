"""Memory of a process and everything it started, read from /proc.

RSS counts every shared page in full in every process, so summing it over a zygote and its
forks overstates the cost; PSS splits each shared page between the processes that map it, so
the PSS sum is the memory the tree really holds. Both are reported. Read straight from
/proc/PID/smaps_rollup (Linux ≥ 4.14) so the harness needs no extra package.
"""
from __future__ import annotations

import os


def descendants(root_pid: int) -> list[int]:
    """``root_pid`` and every live process below it, parents before children.

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
    tree, todo = [], [root_pid]
    while todo and len(tree) < 100_000:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return tree


def rollup_kib(pid: int) -> dict[str, int] | None:
    """``{"rss": KiB, "pss": KiB}`` of one process, or None when it is gone or unreadable."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    values[key.lower()] = int(rest.split()[0])
    except (OSError, ValueError):
        return None
    return values if len(values) == 2 else None


def tree_memory(root_pid: int) -> dict:
    """RSS and PSS summed over ``root_pid`` and its descendants, in MiB, with the process count."""
    rss = pss = count = 0
    for pid in descendants(root_pid):
        mem = rollup_kib(pid)
        if mem is None:
            continue
        rss += mem["rss"]
        pss += mem["pss"]
        count += 1
    return {"rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1), "processes": count}
