# Attack: stop or steer the processes that run the sandbox — signal the daemon and the zygote by
# their host pids, kill(-1, SIGKILL), kill pid 1 of the namespace, signal the session they
# would share, ptrace-attach to them and read their memory with process_vm_readv; take a pidfd
# of the process at the other end of the call's channel.
from escape import os, outcome, real_import, syscall

PTRACE_ATTACH = 16
PROCESS_VM_READV = 310
PTRACE = 101
SO_PASSPIDFD, SO_PEERPIDFD = 76, 77


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


def peer_pidfd():
    """A handle on the host process at the other end of each of its sockets (the call's
    channel): a pidfd of it (SO_PEERPIDFD), or one with every message (SO_PASSPIDFD)."""
    socket = real_import("socket")
    results = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=os.dup(int(name)))
        results[f"SO_PEERPIDFD {name}"] = outcome(lambda: sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))
        results[f"SO_PASSPIDFD {name}"] = outcome(lambda: sock.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1))
        sock.close()
    return results


def new_session():
    """A child of the guest makes a session of its own: an autogroup of its own where the
    kernel shares CPU by session, as much CPU as the whole daemon gets. Returns the child's
    outcome and whether its session is still the guest's."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, outcome(os.setsid).encode() + b" " + str(os.getsid(0)).encode())
        os._exit(0)
    os.close(write)
    said = os.read(read, 100).decode()
    os.waitpid(pid, 0)
    result, _, session = said.rpartition(" ")
    return {"setsid": result, "same session": int(session) == os.getsid(0)}
