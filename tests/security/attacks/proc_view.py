# Attack: look around through /proc for anything that is not the guest's own — host pids,
# another root behind /proc/1/root, kernel files like /proc/kcore.
from escape import os, outcome


def attack(daemon_pid):
    return {
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "own_pid": os.getpid(),
        "entries": sorted(p for p in os.listdir("/proc") if not p.isdigit()),
        "pid_1_root": outcome(lambda: sorted(os.listdir("/proc/1/root"))),
        "own_root": outcome(lambda: sorted(os.listdir("/"))),
        "daemon": outcome(lambda: os.stat(f"/proc/{daemon_pid}")),
        "kcore": outcome(lambda: os.stat("/proc/kcore")),
        "sysrq": outcome(lambda: os.stat("/proc/sysrq-trigger")),
        "children_seen": _children_seen(),
    }


def _children_seen():
    # The guest's own children are its to see: the view hides others, not its own family.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    try:
        return str(pid) in os.listdir("/proc")
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
        os.close(read_end)
