"""Per-call cgroup v2 limits: memory, pids and cpu for the whole call, where the daemon has a
delegated cgroup v2 subtree (systemd ``Delegate=yes``). Without one, rlimits alone apply (see
``limits``), which bound each process of a call but not their sum.

Layout under the delegated folder (``cgroup_root``; empty = the daemon's own cgroup):

    <root>/                         controllers enabled for its children, holds no process
    <root>/isorund/                 the daemon and the zygote (cgroup v2: only leaves hold processes)
    <root>/call-<zygote>-<n>/       one sandbox: every process of its call

Who does what, in order:
- the zygote, at start: ``locate`` + ``setup`` (check, move its own processes to a leaf,
  enable the controllers), or a one-line reason why limits stay off;
- the sandbox, in the pool, before it leaves the host's cgroup namespace: ``enter`` (create its
  group with the daemon's limits, join it);
- the sandbox, when its call arrives, still root: ``lower`` to its call's own limits, through
  its group's folder opened before ``pivot_root``;
- the zygote, after reaping the sandbox: ``release`` (read ``memory.events``, remove the group).

``memory.oom.group`` makes an out-of-memory kill take the whole call, which ends the pid
namespace; the zygote then reports ``"limit": "memory"`` and the daemon answers
``ResourceLimitError(limit="memory")``. No new kill path: the call still ends the way every
call ends, by its pid 1 dying.

The functions that read text (``own_cgroup``, ``cgroup2_mount``, ``locate``,
``missing_controllers``, ``oom_kills``, ``call_values``) are pure and unit-tested; the ones
that write to cgroupfs need a host with the controllers on cgroup v2.
"""
from __future__ import annotations

import os
import re

from ._libc import SandboxSetupError

REQUIRED = ("memory", "pids", "cpu")
DAEMON_LEAF = "isorund"
CPU_PERIOD_US = 100_000  # cpu.max: one CPU's worth of time per call, whatever its threads


class Unavailable(Exception):
    """Per-call cgroup limits cannot be used here; the message says why, for the start-up log."""


# -- pure: deciding ---------------------------------------------------------------------------
def own_cgroup(proc_self_cgroup: str) -> str | None:
    """The cgroup v2 path in ``/proc/self/cgroup`` text (its ``0::/path`` line), or None."""
    for line in proc_self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and path.startswith("/"):
            return path
    return None


def cgroup2_mount(mountinfo: str) -> str | None:
    """Where the cgroup2 filesystem is mounted with its root, from ``/proc/self/mountinfo``."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and right.split()[:1] == ["cgroup2"] and len(fields) >= 5 and fields[3] == "/":
            return _unescape(fields[4])
    return None


def locate(setting: str, proc_self_cgroup: str, mountinfo: str) -> str:
    """The delegated folder to use: the configured one, or the daemon's own cgroup."""
    if setting == "off":
        raise Unavailable('turned off in the config (cgroup_root = "off")')
    if setting:
        if not setting.startswith("/"):
            raise Unavailable(f"cgroup_root must be an absolute path, got {setting!r}")
        return os.path.normpath(setting)
    mount = cgroup2_mount(mountinfo)
    if mount is None:
        raise Unavailable("no cgroup2 filesystem is mounted")
    own = own_cgroup(proc_self_cgroup)
    if own is None:
        raise Unavailable("the daemon is in no cgroup v2 group (this host uses cgroup v1 only)")
    if own == "/":
        raise Unavailable("the daemon runs in the root cgroup, which is not a delegated subtree; "
                          "run it under systemd with Delegate=yes, or set cgroup_root")
    return os.path.normpath(mount + own)


def missing_controllers(controllers: str) -> list[str]:
    """Which of memory, pids and cpu a ``cgroup.controllers`` text lacks."""
    available = controllers.split()
    return [c for c in REQUIRED if c not in available]


def oom_kills(memory_events: str) -> int:
    """The ``oom_kill`` count of a ``memory.events`` text (0 when absent)."""
    match = re.search(r"^oom_kill (\d+)$", memory_events, re.MULTILINE)
    return int(match.group(1)) if match else 0


def call_values(memory_bytes: int, tmp_bytes: int, max_processes: int) -> dict[str, str]:
    """The files of one call's group and what goes in them.

    The call's /tmp is tmpfs, whose pages are charged to the call: its size is added so that
    a full /tmp does not eat into the memory the guest computes with. ``pids.max`` counts the
    guest itself, as RLIMIT_NPROC does."""
    return {
        "memory.max": str(memory_bytes + tmp_bytes),
        "memory.swap.max": "0",
        "memory.oom.group": "1",
        "pids.max": str(max_processes),
        "cpu.max": f"{CPU_PERIOD_US} {CPU_PERIOD_US}",
    }


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# -- live: cgroupfs (untested on hosts without v2 controllers) --------------------------------
def setup(root: str, own_pids: set[int]) -> None:
    """Makes ``root`` ready to hold one group per call, or raises Unavailable."""
    try:
        controllers = _read(root, "cgroup.controllers")
    except OSError as e:
        raise Unavailable(f"{root} is not a cgroup v2 folder ({e.strerror})") from e
    missing = missing_controllers(controllers)
    if missing:
        raise Unavailable(f"the {', '.join(missing)} controller(s) are not available in {root} "
                          f"(cgroup.controllers: {controllers.strip() or 'empty'})")
    for name in ("cgroup.subtree_control", "cgroup.procs"):
        if not os.access(os.path.join(root, name), os.W_OK):
            raise Unavailable(f"{root}/{name} is not writable by the daemon")
    if not missing_controllers(_read(root, "cgroup.subtree_control")):
        _remove_leftovers(root)
        return
    pids = {int(p) for p in _read(root, "cgroup.procs").split()}
    strangers = pids - own_pids
    if strangers:
        raise Unavailable(f"{root} holds processes other than isorund's (e.g. pid {min(strangers)}); "
                          "give the daemon a cgroup of its own (systemd Delegate=yes) or set cgroup_root")
    try:
        if pids:
            leaf = os.path.join(root, DAEMON_LEAF)
            os.makedirs(leaf, exist_ok=True)
            for pid in sorted(pids):
                _write(leaf, "cgroup.procs", str(pid))
        _write(root, "cgroup.subtree_control", " ".join("+" + c for c in REQUIRED))
    except OSError as e:
        raise Unavailable(f"cannot enable {', '.join(REQUIRED)} under {root}: {e.strerror}") from e


def _remove_leftovers(root: str) -> None:
    """Empty call groups a previous zygote could not remove (it died, or they were busy)."""
    for name in os.listdir(root):
        if name.startswith("call-"):
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass  # still populated: its processes are dying; the group stays


def enter(path: str, values: dict[str, str]) -> None:
    """Creates the call's group with ``values`` and moves the calling process (the sandbox) in."""
    step = "cgroup"
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise SandboxSetupError(step, f"mkdir({path!r})", e.errno) from e
    for name, value in values.items():
        if name == "memory.swap.max" and not os.path.exists(os.path.join(path, name)):
            continue  # no swap accounting on this kernel: nothing to limit
        _write_step(path, name, value)
    _write_step(path, "cgroup.procs", "0")


def lower(folder_fd: int, values: dict[str, str]) -> None:
    """Sets a call's own (lower or equal) memory and pids limits on its group, through the
    group's folder opened before the sandbox pivoted away from the host's cgroupfs."""
    for name in ("memory.max", "pids.max"):
        try:
            fd = os.open(name, os.O_WRONLY, dir_fd=folder_fd)
            try:
                os.write(fd, values[name].encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise SandboxSetupError("cgroup", f"write({name!r} in the call's group, {values[name]!r})", e.errno) from e


def release(path: str) -> tuple[int, bool]:
    """After the sandbox was reaped: (oom kills seen, whether the group could be removed)."""
    try:
        kills = oom_kills(_read(path, "memory.events"))
    except OSError:
        kills = 0
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return kills, True
    except OSError:
        return kills, False  # tasks still leaving; the caller retries later
    return kills, True


def _read(folder: str, name: str) -> str:
    with open(os.path.join(folder, name)) as f:
        return f.read()


def _write(folder: str, name: str, value: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(value)


def _write_step(folder: str, name: str, value: str) -> None:
    try:
        _write(folder, name, value)
    except OSError as e:
        raise SandboxSetupError("cgroup", f"write({os.path.join(folder, name)!r}, {value!r})", e.errno) from e
