"""The external profilers profile_call.py drives, and the plain-text report it prints.

Each function starts its tool against running processes, keeps calls flowing while it samples
(``background(seconds)`` runs echo calls from 8 threads), stops it, keeps the raw output in
``out`` and returns a short summary for profile.json.
"""
from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def _which(name: str) -> str | None:
    beside = Path(sys.executable).parent / name  # pip installs py-spy next to the interpreter
    return str(beside) if beside.exists() else shutil.which(name)


# ---- py-spy ------------------------------------------------------------------------------------

def py_spy(daemon_pid: int, client_pid: int, seconds: float, out: Path, background) -> dict:
    exe = _which("py-spy")
    if exe is None:
        return {"note": "py-spy not installed (pip install py-spy)"}
    procs = {}
    for name, pid, extra in (("daemon", daemon_pid, ["--subprocesses"]), ("client", client_pid, [])):
        # --subprocesses follows the zygote and the sandboxes it forks during the recording.
        procs[name] = subprocess.Popen(
            [exe, "record", "-p", str(pid), *extra, "--rate", "250", "--format", "raw",
             "--nonblocking", "--duration", str(int(seconds)), "--output", str(out / f"py-spy-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached before the calls start
    background(seconds)
    summary = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=seconds + 30)
        path = out / f"py-spy-{name}.txt"
        summary[name] = summarize_collapsed(path) if path.exists() else {"error": err.decode()[-500:]}
    return summary


ROLES = ("daemon", "zygote", "sandbox init", "sandbox guest")
# Where a pooled sandbox waits for its call (or its init for its guest): sampled, but idle.
WAITING = ("_exactly (isorund/sandbox/channel.py)", "_reap_until (isorund/sandbox/__init__.py)",
           "EpollSelector.select (selectors.py)")  # an event loop waiting for work


def summarize_collapsed(path: Path, top: int = 25) -> dict:
    """From py-spy's ``frame;frame;… count`` lines: per role (daemon, zygote, sandbox init,
    sandbox guest — told apart by how deep the ``process …`` frames nest), the samples and,
    per function, the share of that role's busy samples where it is on the stack (inclusive)
    and at its top (self). Sandboxes blocked waiting in the pool are counted apart."""
    roles: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        depth = sum(1 for f in frames if f.startswith("process "))
        role = ROLES[min(max(depth, 1), len(ROLES)) - 1] if depth else "client"
        names = [_function(f) for f in frames if not f.startswith(("process ", "thread "))]
        entry = roles.setdefault(role, {"samples": 0, "waiting": 0, "inclusive": collections.Counter(),
                                        "self": collections.Counter()})
        entry["samples"] += n
        if names and names[-1] in WAITING:
            entry["waiting"] += n
            continue
        for name in set(names):
            entry["inclusive"][name] += n
        if names:
            entry["self"][names[-1]] += n
    summary = {}
    for role, entry in roles.items():
        busy = max(1, entry["samples"] - entry["waiting"])
        pct = lambda c: [(name, round(100 * k / busy, 1)) for name, k in c.most_common(top)]  # noqa: E731
        summary[role] = {"samples": entry["samples"], "waiting_in_pool": entry["waiting"],
                         "inclusive_pct": pct(entry["inclusive"]), "self_pct": pct(entry["self"])}
    return summary


def _function(frame: str) -> str:
    # py-spy raw frames look like "run_call (isorund/sandbox_call.py:224)"; drop the line number.
    return re.sub(r":\d+\)$", ")", frame.strip())


# ---- perf --------------------------------------------------------------------------------------

def perf(daemon_pid: int, zygote_pid: int, client_pid: int, seconds: float, out: Path, background) -> dict:
    """Kernel + user stacks of the whole machine while calls run (recording only the daemon and
    the zygote tree would miss the sandboxes' exits and the kernel threads that tear down their
    namespaces), and the share of each role and kernel path (``role_paths``)."""
    exe = _which("perf")
    if exe is None:
        return {"note": "perf not installed"}
    data = out / "perf.data"
    proc = subprocess.Popen([exe, "record", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(data),
                             "-a", "--", "sleep", str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    background(seconds)
    proc.wait(timeout=seconds + 30)
    reports = {}
    for name, sort in (("by_dso", "dso"), ("by_symbol", "dso,sym")):
        text = subprocess.run([exe, "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
                               "--percent-limit", "0.7", "--sort", sort],
                              capture_output=True, text=True, timeout=120).stdout
        (out / f"perf-{name}.txt").write_text(text)
        reports[name] = [line.strip() for line in text.splitlines()
                         if line.strip() and not line.startswith("#")][:30]
    tree = subprocess.run([exe, "report", "-i", str(data), "--stdio", "--children", "--sort", "sym",
                           "-g", "caller,0.5,callee", "--percent-limit", "2"],
                          capture_output=True, text=True, timeout=120).stdout
    (out / "perf-children.txt").write_text(tree)
    script = subprocess.run([exe, "script", "-i", str(data), "--show-task-events", "-F", "comm,pid,tid,ip,sym"],
                            capture_output=True, text=True, timeout=300).stdout
    reports["by_role_and_path"] = [f"{share:5.1f}%  {role:<14} {path}" for (role, path), share
                                   in role_paths(script, daemon_pid, zygote_pid, client_pid) if share >= 0.2]
    return reports


# What a kernel stack was doing: the first entry of this list with a frame anywhere on the stack
# (so a page fault taken inside a syscall counts as a page fault). Entry points, not leaves: the
# leaves are helpers (locks, memcpy) that every path shares.
KERNEL_PATHS = (
    ("page faults", ("asm_exc_page_fault",)),
    ("fork: copying the address space", ("dup_mm", "copy_process")),
    ("exit: unmapping, freeing", ("exit_mmap",)),
    ("exit: the rest (namespaces, mounts, files)", ("do_exit", "do_group_exit")),
    ("namespaces: unshare, setns", ("ksys_unshare", "__x64_sys_setns")),
    ("mounts", ("__x64_sys_mount", "__x64_sys_umount", "__x64_sys_pivot_root", "__x64_sys_move_mount",
                "__x64_sys_open_tree", "__x64_sys_mount_setattr")),
    ("other syscalls", ("do_syscall_64",)),
)
_FORK = re.compile(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)")


def _samples(script: str, roles: dict[int, str]):
    """(pid, [(address, symbol), ...]) per sample of ``perf script --show-task-events`` output,
    leaf frame first. Fork records, one line each and possibly just before a sample, give each
    new process its role as they go by: the zygote's children are sandboxes, theirs guest
    children, kthreadd's kernel threads."""
    pid, frames = None, []
    for line in script.splitlines():
        fork = _FORK.search(line)
        if fork or "PERF_RECORD_" in line or not line.strip():
            if pid is not None:
                yield pid, frames
            pid, frames = None, []
            if fork:
                child, parent = int(fork.group(1)), int(fork.group(2))
                inherited = {"zygote": "sandbox", "sandbox": "guest child", "guest child": "guest child",
                             "kernel thread": "kernel thread"}.get(roles.get(parent))
                if inherited and child != parent:  # child == parent: a new thread
                    roles[child] = inherited
        elif line.startswith("\t"):
            address, _, symbol = line.strip().partition(" ")
            frames.append((address, symbol))
        else:
            if pid is not None:
                yield pid, frames
            pid, frames = int(line.split()[1].split("/")[0]), []
    if pid is not None:
        yield pid, frames


def role_paths(script: str, daemon_pid: int, zygote_pid: int, client_pid: int) -> list[tuple[tuple[str, str], float]]:
    """Share of the busy samples per (role, path), largest first, from ``perf script
    --show-task-events`` output of a whole-machine recording. The role is daemon, zygote,
    sandbox (a process the zygote forked), guest child (one a sandbox forked), client, kernel
    thread (a child of kthreadd, pid 2) or other, known from the fork records; the path is
    "user" or the first of KERNEL_PATHS on the kernel stack ("kernel, other" when none).
    Idle time (pid 0) is left out."""
    roles = {daemon_pid: "daemon", zygote_pid: "zygote", client_pid: "client", 2: "kernel thread"}
    counts: collections.Counter = collections.Counter()
    for pid, frames in _samples(script, roles):
        if pid == 0:
            continue  # idle
        path = "user"
        if frames and frames[0][0].startswith("ffffffff"):
            names = {name for _, name in frames}
            path = next((name for name, entries in KERNEL_PATHS if names.intersection(entries)), "kernel, other")
        counts[(roles.get(pid, "other"), path)] += 1
    total = sum(counts.values()) or 1
    return [(key, 100 * n / total) for key, n in counts.most_common()]


# ---- strace ------------------------------------------------------------------------------------

def strace(zygote_pid: int, daemon_pid: int, out: Path, one_call, calls: int) -> dict:
    """Syscall counts and times per call for the zygote tree and for the daemon's threads, then
    a timestamped trace of the zygote tree over 3 calls (strace slows every syscall down, so
    read its times as relative costs only)."""
    exe = _which("strace")
    if exe is None:
        return {"note": "strace not installed"}
    procs = {name: subprocess.Popen([exe, "-c", "-f", "-p", str(pid), "-o", str(out / f"strace-{name}.txt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in (("zygote", zygote_pid), ("daemon", daemon_pid))}
    time.sleep(1.0)
    for _ in range(calls):
        one_call()
    time.sleep(0.5)
    for proc in procs.values():
        _stop(proc)
    timeline = subprocess.Popen([exe, "-f", "-tt", "-T", "-p", str(zygote_pid),
                                 "-o", str(out / "strace-zygote-timeline.txt")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    for _ in range(POOL_TURNOVER + 3):  # the first calls use sandboxes forked before strace attached
        one_call()
    time.sleep(0.5)
    _stop(timeline)
    zygote = _strace_table(out / "strace-zygote.txt")
    # Per sandbox: the zygote tree makes two clones per sandbox (its init, the init's guest).
    sandboxes = max(1, sum(r["calls"] for r in zygote if r["syscall"] == "clone") // 2)
    return {"zygote_per_sandbox": _per(zygote, sandboxes),
            "daemon_per_call": _per(_strace_table(out / "strace-daemon.txt"), calls)}


POOL_TURNOVER = 6  # more than the daemon's default pool_size (4)


def _stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


def _strace_table(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^\d+\.\d+$", parts[0]) and parts[-1] != "total":
            rows.append({"syscall": parts[-1], "seconds": float(parts[1]), "calls": int(parts[3]),
                         "errors": int(parts[4]) if len(parts) == 6 else 0})
    return sorted(rows, key=lambda r: -r["seconds"])


def _per(rows: list[dict], n: int, top: int = 20) -> list[dict]:
    return [{**r, "per_call": round(r["calls"] / n, 1), "us_per_call": round(r["seconds"] / n * 1e6)}
            for r in rows[:top]]


# ---- the printed report ------------------------------------------------------------------------

def print_report(report: dict) -> None:
    print(f"load average before: {report['load_start']}, after: {report['load_end']}")
    for key in [k for k in report if k.startswith("timeline")]:
        what = key.partition("_")[2] or "echo"
        print(f"\nOne {what} call at concurrency 1, p50 of each span (ms):")
        for row in report[key]:
            print(f"  {row['span']:<56} {row['p50_ms']:8.3f}   (mean {row['mean_ms']:.3f}, n {row['n']})")
    print(f"\nEmpty RPC (GetCapabilities) round trip, p50: {report.get('empty_rpc_p50_ms')} ms")
    print("\nCPU time per call (ms):")
    for row in report.get("cpu", []):
        print(f"  {row['callers']} caller(s): {row['calls_per_s']} calls/s; daemon {row['daemon_ms']}, "
              f"zygote + sandboxes {row.get('zygote_and_sandboxes_ms')}, client {row['client_ms']}, "
              f"daemon tree total {row.get('tree_ms')}")
    for name, summary in (report.get("py_spy") or {}).items():
        for role, data in summary.items():
            if "inclusive_pct" not in data:
                print(f"\npy-spy {name}: {data}")
                continue
            print(f"\npy-spy {name} / {role}: {data['samples']} samples, {data['waiting_in_pool']} waiting in the pool")
            print("  inclusive %: " + "; ".join(f"{n} {p}" for n, p in data["inclusive_pct"][:14]))
            print("  self %:      " + "; ".join(f"{n} {p}" for n, p in data["self_pct"][:14]))
    for name, lines in (report.get("perf") or {}).items():
        print(f"\nperf {name}:")
        for line in lines[:20]:
            print("  " + line)
    for name, rows in (report.get("strace") or {}).items():
        print(f"\nstrace -c -f, {name.replace('_', ' ')} (strace inflates every time):")
        for row in rows[:15]:
            print(f"  {row['syscall']:<20} {row['per_call']:7.1f} calls  {row['us_per_call']:7d} us")
