# Attack: steal the daemon's environment (and the secrets in it) through os.environ, the
# guest's own /proc/self/environ, /proc/1/environ (pid 1 of its namespace) and
# /proc/<daemon pid>/environ.
from escape import os, outcome


def attack(daemon_pid):
    def read(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 1 << 16).decode(errors="replace")
        finally:
            os.close(fd)
    return {
        "os.environ": dict(os.environ),
        "self": outcome(lambda: read("/proc/self/environ")),
        "pid 1": outcome(lambda: read("/proc/1/environ")),
        "daemon": outcome(lambda: read(f"/proc/{daemon_pid}/environ")),
    }
