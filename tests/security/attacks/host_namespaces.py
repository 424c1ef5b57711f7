# Attack: meet the host through the namespaces a call should not share with it — open a POSIX
# message queue the host made (mode 0666) by its name, and read which namespaces the guest is
# in (/proc/self/ns/*: the same inode as the host's means the same namespace).
from escape import os, real_import, syscall

MQ_OPEN = {"x86_64": 240, "aarch64": 180}
O_RDWR = 2


def open_queue(name):
    """mq_open(name, O_RDWR) on the host's queue ``name`` (no leading slash: the system call's form)."""
    ctypes = real_import("ctypes")
    path = ctypes.create_string_buffer(name.encode())
    result, err = syscall(MQ_OPEN[os.uname().machine], ctypes.addressof(path), O_RDWR, 0, 0)
    return err or "opened"


def namespaces(names):
    """{name: inode of /proc/self/ns/<name>} as the guest sees them."""
    return {name: os.stat(f"/proc/self/ns/{name}").st_ino for name in names}
