# Attack: change identity — become root, take another sandbox's host uid, join group 0 — the
# guest holds no capability and only its own id is mapped, so each attempt must fail.
from escape import os, outcome


def attack(other_host_uid):
    return {
        "setuid(0)": outcome(lambda: os.setuid(0)),
        "setresuid(0, 0, 0)": outcome(lambda: os.setresuid(0, 0, 0)),
        "setgid(0)": outcome(lambda: os.setgid(0)),
        "setgroups([0])": outcome(lambda: os.setgroups([0])),
        "setuid(other sandbox)": outcome(lambda: os.setuid(other_host_uid)),
        "ids_after": [os.getuid(), os.geteuid(), os.getgid()],
    }
