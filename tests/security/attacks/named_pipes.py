# Attack: write into a host service's named pipe that lies in a folder the call was given. The
# mount is read-only, but opening a pipe for writing does not check that: the daemon must refuse
# to give a call such a folder at all.
from escape import os, outcome


def attack(paths):
    def write(path):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            return f"wrote {os.write(fd, b'from the guest')}"
        finally:
            os.close(fd)
    return {path: outcome(lambda: write(path)) for path in paths}
