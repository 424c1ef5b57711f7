# Attack: meet the host or another call through System V shared memory — look up a segment by
# a key someone else chose, and leave one behind (mode 0666) for the next call to find.
from escape import syscall

SHMGET, IPC_CREAT = 29, 0o1000


def look(key):
    result, err = syscall(SHMGET, key, 0, 0)
    return err or "found"


def leave(key):
    result, err = syscall(SHMGET, key, 4096, IPC_CREAT | 0o666)
    return err or "made"
