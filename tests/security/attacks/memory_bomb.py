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


def oom_score():
    """The guest's standing with the host's OOM killer, in this process and a child, and
    whether it can lower it (then a guest holding memory no process's score counts, pipe
    buffers, would not be the first to go)."""
    def read():
        with real_import("builtins").open("/proc/self/oom_score_adj") as f:
            return int(f.read())

    def lower(to):
        try:
            with real_import("builtins").open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(to))
            return f"lowered to {read()}"
        except OSError as e:
            return real_import("errno").errorcode[e.errno]
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(w, str(read()).encode())
        os._exit(0)
    os.waitpid(child, 0)
    return {"own": read(), "child": int(os.read(r, 16)), "to -1": lower(-1), "to 0": lower(0)}
