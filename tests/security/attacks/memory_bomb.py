# Attack: a memory bomb — allocate 16 MiB after 16 MiB and touch every page, until the host
# runs out of memory; or spread it over several processes, each under the per-process limit.
from escape import os, real_import


def attack():
    hoard = []
    while True:
        chunk = bytearray(16 << 20)
        chunk[::4096] = b"x" * len(chunk[::4096])
        hoard.append(chunk)


def attack_in_children(children, each_bytes):
    """The same, spread over processes: each stays under the per-process address-space limit,
    together they are far over the call's memory. Only a cgroup sees the sum."""
    for _ in range(children):
        if os.fork() == 0:
            try:
                chunk = bytearray(each_bytes)
                chunk[::4096] = b"x" * len(chunk[::4096])
                while True:
                    real_import("time").sleep(1)
            finally:
                os._exit(0)
    while True:
        os.wait()
