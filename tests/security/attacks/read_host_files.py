# Attack: read host secrets by their host paths — /etc/shadow, /etc/passwd, root's home, the
# daemon's own files (config, log, socket folder) and another tenant's folder.
from escape import os, outcome


def attack(paths):
    def read(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    return {path: outcome(lambda: read(path)) for path in paths}


def listing(paths):
    return {path: outcome(lambda: sorted(os.listdir(path))) for path in paths}
