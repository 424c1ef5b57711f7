# Attack: find a privilege left over — capabilities (effective, permitted, bounding, ambient),
# a missing no_new_privs or seccomp, an id map onto host root, an rlimit that can be raised.
from escape import os, outcome, real_import


def attack():
    resource = real_import("resource")
    fd = os.open("/proc/self/status", os.O_RDONLY)
    status = os.read(fd, 65536).decode()
    os.close(fd)
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    maps = {}
    for name in ("uid_map", "gid_map", "setgroups"):
        fd = os.open(f"/proc/self/{name}", os.O_RDONLY)
        maps[name] = os.read(fd, 4096).decode()
        os.close(fd)
    names = ["RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE",
             "RLIMIT_CPU", "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_SIGPENDING",
             "RLIMIT_RTPRIO", "RLIMIT_NICE"]
    limits = {name: resource.getrlimit(getattr(resource, name)) for name in names}
    raised = {}
    for name in ("RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_CPU"):
        soft, hard = limits[name]
        raised[name] = outcome(lambda: resource.setrlimit(getattr(resource, name), (hard, hard + 1 if hard >= 0 else hard)))
    return {
        "status": {k: fields[k].strip() for k in ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
                                                   "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
        "maps": maps,
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "rlimits": limits,
        "raise_hard_limit": raised,
    }

