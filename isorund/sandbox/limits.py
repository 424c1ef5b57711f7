"""Resource limits of the guest process: rlimits, set after the last privileged step.

RLIMIT_NPROC counts processes per host uid; each concurrent sandbox has its own uid, so the
limit is per call and a fork bomb in one call cannot starve another. The address-space limit
is the memory limit where no cgroup is delegated; Python turns it into a MemoryError, which
the guest runner reports as ``ResourceLimitError(limit="memory")``.
"""
from __future__ import annotations

import math
import resource
from dataclasses import dataclass

from ._libc import SandboxSetupError


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    max_processes: int
    max_open_files: int
    max_file_bytes: int
    cpu_seconds: float


def apply(limits: Limits) -> None:
    """Sets every rlimit, soft and hard, so the guest can only lower them further."""
    cpu = max(1, math.ceil(limits.cpu_seconds))
    for name, value in (
        ("RLIMIT_AS", limits.memory_bytes),
        ("RLIMIT_NPROC", limits.max_processes),
        ("RLIMIT_NOFILE", limits.max_open_files),
        ("RLIMIT_FSIZE", limits.max_file_bytes),
        ("RLIMIT_CORE", 0),
        # The soft limit sends SIGXCPU, which the guest runner turns into a clean report;
        # the hard limit, a second later, is the kernel's SIGKILL.
        ("RLIMIT_CPU", (cpu, cpu + 1)),
    ):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError) as e:
            raise SandboxSetupError("limits", f"setrlimit({name}, ({soft}, {hard}))",
                                    getattr(e, "errno", None) or 22) from e
