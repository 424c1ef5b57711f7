"""CPU per echo call, split by who spent it, against a running isorund (needs root to read
every process's /proc/<pid>/stat).

    python bench/profile/cpu_split.py --socket PATH [--callers 8] [--calls 600]

Reads the whole machine's busy time from /proc/stat, the daemon's own CPU, its zygote's
CPU including every reaped child (each sandbox is the zygote's child: utime + stime + cutime +
cstime), the kernel threads' (children of kthreadd: deferred namespace teardown runs there)
and this client's, before and after ``--calls`` echo calls made by ``--callers`` threads.
What is left over ("other") is CPU nobody above was charged with.
"""
from __future__ import annotations

import argparse
import glob
import os
import threading
import time
from pathlib import Path

from isorun import CodeRunner

GUESTS = Path(__file__).resolve().parent.parent / "guests"
HZ = os.sysconf("SC_CLK_TCK")


def busy_ticks() -> int:
    """Non-idle ticks of the whole machine (idle and iowait left out)."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def process_ticks(pid: int, with_children: bool) -> int:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if with_children else 0)


def kernel_thread_ticks() -> int:
    total = 0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(path).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == "2":  # parent is kthreadd
            total += int(fields[11]) + int(fields[12])
    return total


def own_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * HZ


def daemon_and_zygote(socket_path: str) -> tuple[int, int]:
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            argv = open(path, "rb").read().split(b"\0")
        except OSError:
            continue
        if b"isorund" in b" ".join(argv) and socket_path.encode() in argv:
            daemon = int(path.split("/")[2])
            children = open(f"/proc/{daemon}/task/{daemon}/children").read().split()
            return daemon, int(children[0])
    raise SystemExit(f"no isorund serving {socket_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=600)
    args = parser.parse_args()
    daemon, zygote = daemon_and_zygote(args.socket)
    runners = [CodeRunner(root=str(GUESTS), file="echo.py", socket=args.socket) for _ in range(args.callers)]
    for r in runners:
        r.run("echo", [[0, "hi"]])
    time.sleep(1)  # the pool refills

    def reading():
        return (busy_ticks(), process_ticks(daemon, False), process_ticks(zygote, True),
                kernel_thread_ticks(), own_ticks())

    def work(runner, count):
        for i in range(count):
            runner.run("echo", [[i, "hi"]])

    before = reading()
    threads = [threading.Thread(target=work, args=(r, args.calls // args.callers)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.5)  # the last sandboxes are reaped
    after = reading()
    calls = args.callers * (args.calls // args.callers)
    total, own_daemon, sandboxes, kernel, client = ((a - b) / HZ / calls * 1000 for a, b in zip(after, before))
    print(f"{args.callers} callers, {calls} calls, ms of CPU per call: total {total:.1f} = daemon {own_daemon:.1f}"
          f" + zygote and sandboxes {sandboxes:.1f} + kernel threads {kernel:.1f} + client {client:.1f}"
          f" + other {total - own_daemon - sandboxes - kernel - client:.1f}")


if __name__ == "__main__":
    main()
