# Attack: leave a file in /tmp for the next call — of this tenant or another — to find and
# trust; each call's /tmp must start empty and vanish with the call.
from escape import os


def attack(name):
    found = sorted(os.listdir("/tmp"))
    fd = os.open(f"/tmp/{name}", os.O_WRONLY | os.O_CREAT, 0o666)
    os.write(fd, b"left behind")
    os.close(fd)
    return found
