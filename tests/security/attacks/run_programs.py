# Attack: run another program — os.system, os.execv of the interpreter itself through
# /proc/self/exe, subprocess, posix_spawn and execveat on a file descriptor — to leave the Python runtime.
from escape import os, outcome, real_import, syscall

EXECVEAT = 322
AT_EMPTY_PATH = 0x1000


def attack():
    subprocess = real_import("subprocess")
    results = {
        "os.system": os.system("exit 7"),
        "os.execv": outcome(lambda: os.execv("/proc/self/exe", ["python", "-c", "pass"])),
        "execve missing file": outcome(lambda: os.execv("/no/such/program", ["x"])),
        "subprocess": outcome(lambda: subprocess.run(["/proc/self/exe", "-c", "pass"]).returncode),
        "posix_spawn": outcome(lambda: os.waitpid(os.posix_spawn("/proc/self/exe", ["python", "-c", "pass"], {}), 0)),
    }
    # A memfd would be the classic payload; it is denied itself, so the payload is a file.
    results["memfd_create"] = outcome(lambda: os.memfd_create("payload"))
    fd = os.open("/tmp/payload", os.O_CREAT | os.O_RDWR, 0o700)
    os.write(fd, b"#!/bin/sh\nexit 0\n")
    results["execveat fd"] = syscall(EXECVEAT, fd, 0, 0, 0, AT_EMPTY_PATH)[1]
    return results
