# Attack: reach a concurrent call of another tenant — signal it, ptrace it, read its memory with
# process_vm_readv, open a pidfd or its /proc entry — given its host pid. The two calls run
# under distinct host uids in distinct pid namespaces.
from escape import os, outcome, real_import, syscall

PTRACE, PTRACE_ATTACH, PROCESS_VM_READV = 101, 16, 310


def victim(seconds):
    """The neighbour: prints its id map (so the test can find it from the host), then reports
    it again after a quiet wait, if it is left alone."""
    fd = os.open("/proc/self/uid_map", os.O_RDONLY)
    uid_map = os.read(fd, 4096).decode()
    os.close(fd)
    print("uid_map", uid_map.strip())
    real_import("time").sleep(seconds)
    return {"uid_map": uid_map, "pid": os.getpid()}


def attack(host_pid):
    fd = os.open("/proc/self/uid_map", os.O_RDONLY)
    uid_map = os.read(fd, 4096).decode()
    os.close(fd)
    return {
        "uid_map": uid_map,
        "kill": outcome(lambda: os.kill(host_pid, 9)),
        "ptrace": syscall(PTRACE, PTRACE_ATTACH, host_pid, 0, 0)[1],
        "process_vm_readv": syscall(PROCESS_VM_READV, host_pid, 0, 0, 0, 0, 0)[1],
        "pidfd_open": outcome(lambda: os.pidfd_open(host_pid)),
        "proc entry": outcome(lambda: os.stat(f"/proc/{host_pid}")),
    }
