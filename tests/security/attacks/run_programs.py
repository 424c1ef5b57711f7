# Attack: run another program — os.system, os.execv of the interpreter itself through
# /proc/self/exe, subprocess, posix_spawn and execveat on a memfd — to leave the Python runtime.
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
    fd = os.memfd_create("payload")
    os.write(fd, b"#!/bin/sh\nexit 0\n")
    results["execveat memfd"] = syscall(EXECVEAT, fd, 0, 0, 0, AT_EMPTY_PATH)[1]
    return results
