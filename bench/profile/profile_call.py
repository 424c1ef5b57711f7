"""Profiles isorun echo calls end to end: client → gRPC → daemon → sandbox → back (needs root).

    python bench/profile/profile_call.py [--calls 300] [--py-spy 8] [--perf 8] [--strace 40]
                                         [--out DIR]

Run it with the interpreter of the isorun tree to profile. What it measures, in order:

1. a timeline of ``--calls`` sequential echo calls: the client's own marks (request built, RPC
   answered, result decoded) lined up with the marks ``traced_daemon.py`` logs inside the
   daemon (same CLOCK_MONOTONIC), as p50 per span;
2. an empty RPC (``GetCapabilities``) on the same channel: what gRPC alone costs;
3. CPU time per call at concurrency 1 and with 8 callers: the daemon's whole process tree is
   put in a cgroup of its own (v1 ``cpuacct`` or v2), so sandboxes are counted whoever reaps
   them; the daemon process alone from /proc; the client from ``getrusage``;
4. optionally, while calls run: ``py-spy`` on the daemon (with its zygote) and on this client,
   ``perf record`` of the whole machine (kernel stacks; the CPU split by process role and
   kernel path), ``strace -c -f`` of the zygote tree.

Prints a report and writes ``profile.json`` plus the tools' raw output into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import tools

HERE = Path(__file__).resolve().parent
GUESTS = HERE.parent / "guests"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


# ---- the daemon under test ---------------------------------------------------------------------

class CpuGroup:
    """A cgroup holding the daemon's whole tree, to read the CPU time of everything in it."""

    def __init__(self):
        name = f"isorun-profile-{os.getpid()}"
        v1, v2 = Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup")
        if (v1 / "cpuacct.usage").exists():
            self.path, self.v2 = v1 / name, False
        elif (v2 / "cgroup.controllers").exists():
            self.path, self.v2 = v2 / name, True
        else:
            self.path = None
            return
        self.path.mkdir()

    def join(self) -> None:
        """Run in the daemon's child before exec: moves it (and so its descendants) in."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def usage_s(self) -> float | None:
        if self.path is None:
            return None
        if self.v2:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec"):
                    return int(line.split()[1]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)


class Daemon:
    def __init__(self, work: Path, group: CpuGroup):
        self.socket = str(work / "isorund.sock")
        self.log = work / "isorund.log"
        self.group = group
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "traced_daemon.py"), "--socket", self.socket],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=group.join)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the traced daemon did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.zygote = next(pid for pid in _children(self.proc.pid)
                           if b"isorund.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes())

    def cpu_s(self) -> float:
        """utime + stime of the daemon process (all its threads), not of its children."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * TICK_S

    def traces(self) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()
                 if line.startswith('{"event": "trace"')]
        return [t["marks"] for t in lines if t.get("rpc") == "Run"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


# ---- measurements ------------------------------------------------------------------------------

MB = 1_000_000
# What --workload calls: (guest file, function, arguments for call i, check of the result).
WORKLOADS = {
    "echo": ("echo.py", "echo", lambda i: [[i, "hi"]], lambda i, v: v == [i, "hi"]),
    "bytes_arg": ("bigio.py", "size", lambda i: [b"\xcd" * MB], lambda i, v: v == MB),
    "bytes_result": ("bigio.py", "make", lambda i: [MB], lambda i, v: len(v) == MB),
    # unary Run: the daemon collects the lines into the response (the bench streams them)
    "console": ("chatty.py", "chatty", lambda i: [1000], lambda i, v: v == 1000),
}


def timed_call(runner, i: int, workload: str = "echo") -> dict:
    """One call through the client's own steps (``CodeRunner.run``'s path without callbacks)."""
    _file, func, args_for, check = WORKLOADS[workload]
    args = args_for(i)
    marks = {"c_start": time.monotonic_ns()}
    request, names = runner._request(func, args, None, None, None)
    if runner._needs_capabilities(request, names):
        runner._ensure_capabilities()
    if names:
        runner._check_names(names)
    marks["c_built"] = time.monotonic_ns()
    response = runner._stub.Run(request, timeout=runner._deadline(request))
    marks["c_answered"] = time.monotonic_ns()
    value = runner._result(response.outcome)
    marks["c_decoded"] = time.monotonic_ns()
    if not check(i, value):
        raise RuntimeError(f"{func} returned {str(value)[:80]!r}")
    return marks


# (span, from mark, to mark); client marks start with c_, the others are the daemon's.
SPANS = [
    ("client: build + encode the request", "c_start", "c_built"),
    ("client → daemon: gRPC send, HTTP/2, server dispatch", "c_built", "rpc_in"),
    ("daemon: handler entry → plan build", "rpc_in", "plan_start"),
    ("daemon: plan.build (validate, realpaths, CallPlan)", "plan_start", "plan_end"),
    ("daemon: admission", "plan_end", "take_start"),
    ("daemon: zygote.take (a prepared sandbox)", "take_start", "take_end"),
    ("daemon: serialize + send the plan", "run_start", "plan_sent"),
    ("sandbox: plan sent → 'running' (confine + import)", "plan_sent", "first_frame"),
    ("sandbox: 'running' → outcome (call, encode, send)", "first_frame", "last_frame"),
    ("daemon: outcome → sandbox killed + closed", "last_frame", "closed"),
    ("daemon: closed → handler returns (log line)", "closed", "rpc_out"),
    ("daemon → client: response, gRPC, client wake-up", "rpc_out", "c_answered"),
    ("client: decode the result", "c_answered", "c_decoded"),
    ("total at the client", "c_start", "c_decoded"),
]


def settled_traces(daemon: Daemon) -> list[dict]:
    """The daemon's traces once no more arrive: its log thread writes a call's line a moment
    after the answer, so the warm-up's last lines can still be on their way."""
    traces = daemon.traces()
    while True:
        time.sleep(0.3)
        again = daemon.traces()
        if len(again) == len(traces):
            return again
        traces = again


def timeline(runner, daemon: Daemon, calls: int, workload: str = "echo") -> list[dict]:
    before = len(settled_traces(daemon))
    client = [timed_call(runner, i, workload) for i in range(calls)]
    server = settled_traces(daemon)[before:]
    if len(server) != len(client):
        raise RuntimeError(f"{len(client)} calls but {len(server)} daemon traces")
    merged = [{**c, **s} for c, s in zip(client, server)]
    rows = []
    for name, start, end in SPANS:
        values = [(m[end] - m[start]) / 1e6 for m in merged if start in m and end in m]
        if values:
            rows.append({"span": name, "p50_ms": round(statistics.median(values), 3),
                         "mean_ms": round(statistics.fmean(values), 3), "n": len(values)})
    return rows


def empty_rpc(runner, calls: int) -> float:
    from isorun._proto import runner_pb2 as pb
    times = []
    for _ in range(calls):
        t0 = time.monotonic_ns()
        runner._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
        times.append((time.monotonic_ns() - t0) / 1e6)
    return round(statistics.median(times), 3)


def load(runner, seconds: float, callers: int) -> int:
    """Echo calls from ``callers`` threads for ``seconds``; returns how many completed."""
    done = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def caller():
        n = 0
        while time.monotonic() < end:
            runner.run("echo", args=[[n, "hi"]])
            n += 1
        with lock:
            done[0] += n
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0]


def cpu_per_call(runner, daemon: Daemon, group: CpuGroup, seconds: float, callers: int) -> dict:
    tree0, own0 = group.usage_s(), daemon.cpu_s()
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    calls = load(runner, seconds, callers)
    wall = time.monotonic() - wall0
    time.sleep(0.5)  # let the last sandboxes exit and be counted
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    client = (client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime)
    result = {"callers": callers, "calls": calls, "calls_per_s": round(calls / wall, 1),
              "daemon_ms": round((daemon.cpu_s() - own0) / calls * 1000, 2),
              "client_ms": round(client / calls * 1000, 2)}
    if tree0 is not None:
        tree = group.usage_s() - tree0
        result["tree_ms"] = round(tree / calls * 1000, 2)
        result["zygote_and_sandboxes_ms"] = round(result["tree_ms"] - result["daemon_ms"], 2)
    return result


# ---- the run -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="echo",
                        help="what the timeline calls (the rest always uses echo)")
    parser.add_argument("--cpu-seconds", type=float, default=5.0)
    parser.add_argument("--py-spy", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--perf", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--strace", type=int, default=0, metavar="CALLS")
    parser.add_argument("--out", default=None, help="folder for profile.json and raw tool output")
    args = parser.parse_args()
    from isorun import CodeRunner
    out = Path(args.out or tempfile.mkdtemp(prefix="isorun-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="isorun-profile-run-"))
    group = CpuGroup()
    daemon = Daemon(work, group)
    report = {"python": sys.executable, "load_start": os.getloadavg()}
    try:
        if args.workload != "echo":
            other = CodeRunner(root=str(GUESTS), file=WORKLOADS[args.workload][0], socket=daemon.socket)
            for i in range(5):
                timed_call(other, i, args.workload)
            report[f"timeline_{args.workload}"] = timeline(other, daemon, args.calls, args.workload)
            other.close()
        runner = CodeRunner(root=str(GUESTS), file="echo.py", socket=daemon.socket)
        for i in range(30):
            timed_call(runner, i)
        report["timeline"] = timeline(runner, daemon, args.calls)
        report["empty_rpc_p50_ms"] = empty_rpc(runner, args.calls)
        report["cpu"] = [cpu_per_call(runner, daemon, group, args.cpu_seconds, n) for n in (1, 8)]
        background = lambda seconds: load(runner, seconds, 8)  # noqa: E731
        if args.py_spy:
            report["py_spy"] = tools.py_spy(daemon.proc.pid, os.getpid(), args.py_spy, out, background)
        if args.perf:
            report["perf"] = tools.perf(daemon.proc.pid, daemon.zygote, os.getpid(), args.perf, out, background)
        if args.strace:
            report["strace"] = tools.strace(daemon.zygote, daemon.proc.pid, out,
                                            lambda: runner.run("echo", args=[[0, "hi"]]), args.strace)
        runner.close()
    finally:
        daemon.stop()
        group.remove()
        shutil.rmtree(work, ignore_errors=True)
    report["load_end"] = os.getloadavg()
    (out / "profile.json").write_text(json.dumps(report, indent=1))
    tools.print_report(report)
    print(f"\nwrote {out}/profile.json and raw tool output in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
