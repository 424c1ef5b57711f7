# Attack: survey what the sandbox leaves in reach — the root's contents, /dev, /root, the
# hostname, network interfaces, open file descriptors and the environment.
from escape import os, outcome, real_import


def attack():
    socket = real_import("socket")
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the descriptor listdir itself had open, closed by now
    text = read_text("/proc/self/net/dev")
    interfaces = sorted(line.split(":")[0].strip() for line in text.splitlines()[2:])
    return {
        "root": sorted(os.listdir("/")),
        "dev": sorted(os.listdir("/dev")),
        "root_home": outcome(lambda: sorted(os.listdir("/root"))),
        "etc": outcome(lambda: os.listdir("/etc")),
        "home": outcome(lambda: os.listdir("/home")),
        "var": outcome(lambda: os.listdir("/var")),
        "sys": outcome(lambda: os.listdir("/sys")),
        "hostname": socket.gethostname(),
        "nodename": os.uname().nodename,
        "interfaces": interfaces,
        "fds": fds,
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
    }


def read_text(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)
