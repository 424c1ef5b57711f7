"""Resource limits of the guest process: rlimits, set after the last privileged step.

RLIMIT_NPROC counts processes per host uid; each concurrent sandbox has its own uid, so the
limit is per call and a fork bomb in one call cannot starve another. The address-space limit
is the memory limit of one process; Python turns it into a MemoryError, which the guest
runner reports as ``ResourceLimitError(limit="memory")``. Its soft limit keeps a reserve for
the runtime's report (``memory_reserve``). Without a delegated cgroup (see
``cgroup``), a call of N processes may use up to N times that.
"""
from __future__ import annotations

import errno
import math
import resource
from dataclasses import dataclass

from ._libc import SandboxSetupError


class CpuLimitExceeded(BaseException):
    """Raised from SIGXCPU: the guest used up its CPU seconds. ``raised`` stays true once it
    was, for code that may have swallowed it (the standard library's traceback formatting
    catches anything a guest's ``__str__`` raises)."""

    raised = False

    def __init__(self, *args):
        super().__init__(*args)
        CpuLimitExceeded.raised = True


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    max_processes: int
    max_open_files: int
    max_file_bytes: int
    cpu_seconds: float


# Queued signals per uid: enough for any program that does not flood itself with sigqueue().
SIGNALS_PENDING = 64
# The end of the address space the guest's code runs without (a soft RLIMIT_AS below the hard
# one), given back to the runtime once the function has returned or raised, to encode and send
# the outcome: a guest that held all but a few MiB of its limit and returned a 2 MiB string
# ended its call without an outcome (protobuf's encoder failed, or crashed, for want of
# memory), a SandboxError where the memory limit or its result was due.
RESERVE_MAX = 16 << 20


def memory_reserve(memory_bytes: int) -> int:
    """A sixteenth of the limit, at most ``RESERVE_MAX`` (3 MiB of the least, 48 MiB)."""
    return min(RESERVE_MAX, memory_bytes // 16)


def cpu_rlimit(seconds: float) -> int:
    """RLIMIT_CPU for ``seconds``: whole seconds, a fraction rounded up, never 0 (no limit)."""
    return max(1, math.ceil(seconds))


def rlimits(limits: Limits) -> list[tuple[str, int, int]]:
    """Every rlimit the call sets, as (name, soft, hard); fixed ones included (RLIMIT_CORE is
    set earlier, in the pool: ``keep_crashes_to_the_sandbox``)."""
    cpu = cpu_rlimit(limits.cpu_seconds)
    return [
        ("RLIMIT_AS", limits.memory_bytes - memory_reserve(limits.memory_bytes), limits.memory_bytes),
        ("RLIMIT_NPROC", limits.max_processes, limits.max_processes),
        ("RLIMIT_NOFILE", limits.max_open_files, limits.max_open_files),
        ("RLIMIT_FSIZE", limits.max_file_bytes, limits.max_file_bytes),
        # The soft limit sends SIGXCPU, which the guest runner turns into a clean report;
        # the hard limit, a second later, is the kernel's SIGKILL.
        ("RLIMIT_CPU", cpu, cpu + 1),
        # Kernel memory a guest could pin outside its address space: locked pages, POSIX
        # message queues, queued signals. No guest needs the first two.
        ("RLIMIT_MEMLOCK", 0, 0),
        ("RLIMIT_MSGQUEUE", 0, 0),
        ("RLIMIT_SIGPENDING", SIGNALS_PENDING, SIGNALS_PENDING),
        # Whatever the daemon was granted (systemd's LimitRTPRIO=, LimitNICE=) stays with it.
        ("RLIMIT_RTPRIO", 0, 0),
        ("RLIMIT_NICE", 0, 0),
    ]


def keep_crashes_to_the_sandbox() -> None:
    """RLIMIT_CORE to 1, in the pool, before its part of the seccomp filter (which then denies
    setting it). Not 0: where the host's kernel.core_pattern pipes cores to a helper
    (systemd-coredump, apport), the kernel starts that helper, as root on the host, for every
    crash whatever the limit, except for a limit of exactly 1 (its guard against a crashing
    helper). A guest that forked and aborted 10 children started 10 host helpers with a limit
    of 0. One byte is also too small for a core file."""
    _set("RLIMIT_CORE", 1, 1)


# The OOM killer's score of a sandbox's processes: the highest, so that when the host runs out
# of memory a guest goes before any host process. Not every page a guest holds is counted in
# its score (pipe and socket buffers are in no process's), and without it a guest holding
# gigabytes in pipes scored 666 while the daemon scored 667. Children inherit it. A guest may
# lower it to 0, not below: a floor would need CAP_SYS_RESOURCE, which the daemon does not keep
# (isorund/privileges.py).
OOM_SCORE_ADJ = 1000


def first_for_the_oom_killer() -> None:
    """Sets the sandbox's oom_score_adj (``OOM_SCORE_ADJ``), in the pool."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError as e:
        raise SandboxSetupError("limits", f"write('/proc/self/oom_score_adj', {OOM_SCORE_ADJ})",
                                e.errno or errno.EIO) from e


def apply(limits: Limits) -> None:
    """Sets every rlimit, soft and hard; the guest can lower them, and raise a soft limit only
    as far as its hard one (RLIMIT_AS's reserve, RLIMIT_CPU's second of grace)."""
    for name, soft, hard in rlimits(limits):
        _set(name, soft, hard)


def _set(name: str, soft: int, hard: int) -> None:
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (OSError, ValueError) as e:
        raise SandboxSetupError("limits", f"setrlimit({name}, ({soft}, {hard}))",
                                getattr(e, "errno", None) or errno.EINVAL) from e
