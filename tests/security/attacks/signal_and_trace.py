# Attack: stop or steer the processes that run the sandbox — signal the daemon and the zygote by
# their host pids, kill(-1, SIGKILL), kill pid 1 of the namespace, signal the session they
# would share, ptrace-attach to them and read their memory with process_vm_readv.
from escape import os, outcome, syscall

PTRACE_ATTACH = 16
PROCESS_VM_READV = 310
PTRACE = 101


def attack(pids):
    results = {}
    for name, pid in pids.items():
        results[f"kill {name}"] = outcome(lambda: os.kill(pid, 9))
        results[f"ptrace {name}"] = syscall(PTRACE, PTRACE_ATTACH, pid, 0, 0)[1]
        results[f"process_vm_readv {name}"] = syscall(PROCESS_VM_READV, pid, 0, 0, 0, 0, 0)[1]
        results[f"pidfd_open {name}"] = outcome(lambda: os.pidfd_open(pid))
    results["kill pid 1"] = outcome(lambda: os.kill(1, 9))
    results["ptrace pid 1"] = syscall(PTRACE, PTRACE_ATTACH, 1, 0, 0)[1]
    # Its own session and process group: kill(0, SIGCONT) then reaches only the call's own
    # processes (within a session the kernel lets SIGCONT through whatever the uids).
    results["session and group"] = [os.getsid(0), os.getpgrp()]
    results["kill(-1, SIGKILL)"] = outcome(lambda: os.kill(-1, 9))
    results["still alive"] = True  # kill(-1) spares the caller; reaching this line shows it
    return results
