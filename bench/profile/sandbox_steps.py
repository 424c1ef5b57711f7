"""Replays the life of isorun sandboxes with a clock around every step (needs root).

    python bench/profile/sandbox_steps.py [--calls 200] [--json OUT]

Run it with the interpreter of the isorun tree to profile (its ``isorund`` is imported). It
builds the zygote's state exactly as the zygote does (``isorund.zygote.Zygote``: config,
plugins, root plan, seccomp filters, warm-up), then for every call plays the zygote and the
sandbox itself, calling the same functions in the same order as ``isorund.zygote.Zygote.spawn``
and ``isorund.sandbox.sandbox_main`` (``_prepare``, ``_confine``, ``guest.run``) — only with a
``time.monotonic_ns()`` mark between the steps. CLOCK_MONOTONIC is one clock for every process,
so marks taken in the sandbox line up with the parent's. If those functions change order,
update ``sandbox_side`` below.

Marks travel back on the call channel as JSON frames: the pool's once the sandbox waits for its
plan, the call's after its outcome. The parent waits ``--idle-ms`` between a sandbox being
ready and sending its plan, as the daemon's pool does,
so the measured per-call path does not compete with the preparation of the same sandbox.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
import types
import traceback
from pathlib import Path

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2
from isorund import plan as plans
from isorund import zygote as zygote_module
from isorund.config import Config
from isorund import sandbox_call
from isorund.sandbox import (_close_fds_except, _libc, _receive_folders, _redirect_std_fds, channel,
                             filesystem, guest, import_policy, importer, limits, namespaces, seccomp)

GUESTS = Path(__file__).resolve().parent.parent / "guests"
MARKS: dict[str, int] = {}  # filled in whichever process runs; each process has its own copy


def mark(name: str) -> None:
    MARKS[name] = time.monotonic_ns()


def faults(name: str) -> None:
    """Page faults so far (minor: almost all copy-on-write of the zygote's pages after fork)."""
    MARKS[name] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _send_json(sock: socket.socket, body: dict) -> None:
    data = json.dumps(body).encode()
    sock.sendall(channel.HEADER.pack(len(data)) + data)


def instrument() -> None:
    """Marks inside ``guest.run`` without changing it: its imports are module attributes."""
    real_load_main = importer.GuestImporter.load_main
    real_preload = importer.GuestImporter.preload
    real_send = channel.send
    real_decode = _codec.decode
    real_encode_into = _codec.encode_into

    def load_main(self, relative_file):
        mark("import_start")
        try:
            return real_load_main(self, relative_file)
        finally:
            mark("import_end")

    def preload(self, *args, **kwargs):
        mark("preload_start")
        try:
            return real_preload(self, *args, **kwargs)
        finally:
            mark("preload_end")

    def send(sock, message):
        # (the outcome goes as its bytes, serialized beforehand: parsed here to name it)
        event = message if hasattr(message, "WhichOneof") else pb.RunEvent.FromString(message)
        kind = event.WhichOneof("event") or "frame"
        mark(f"send_{kind}_start")
        real_send(sock, message)
        mark(f"send_{kind}_end")

    def decode(*args, **kwargs):
        MARKS.setdefault("decode_args_start", time.monotonic_ns())
        return real_decode(*args, **kwargs)

    def encode_into(*args, **kwargs):
        mark("encode_result_start")
        try:
            return real_encode_into(*args, **kwargs)
        finally:
            mark("encode_result_end")

    importer.GuestImporter.load_main = load_main
    importer.GuestImporter.preload = preload
    channel.send = send
    # the codec with two functions marked; everything else (said_of, …) is the codec's own
    guest._codec = types.SimpleNamespace(**{**vars(_codec), "decode": decode, "encode_into": encode_into})


# ---- child side: the sandbox, as isorund.sandbox.sandbox_main runs it --------------------------

def cached_modules(root, file: str) -> list:
    """What a warm daemon's code cache puts in the plans of ``file``'s calls: its modules as a
    sandbox compiles them (paths as the guest sees them, so compiled here the same)."""
    reader = importer.GuestImporter(import_policy.ImportPolicy(guest_dir=str(root), extensions=(".py",),
                                                          allowed=frozenset()))
    return guest._within_budget(reader.preload(file, {}, report=True))


def sandbox_side(zyg, chan: socket.socket, host_id: int) -> None:
    """``sandbox_main``'s steps (``_prepare``, then ``_confine``) with a mark between each."""
    mark("sandbox_start")
    faults("faults_pool_start")
    _libc.prctl("sandbox", _libc.PR_SET_PDEATHSIG, 9)
    _close_fds_except((chan.fileno(), zyg.plan.template_ns))
    namespaces.unshare_host_views(zyg.plan.template_ns, scratch=filesystem.NEW_ROOT)
    channel.move_into_own_namespace(chan)
    mark("pool_unshared")
    filesystem.prepare_root(zyg.plan.root)
    _redirect_std_fds("/dev/null")
    mark("pool_root_prepared")
    os.environ.clear()
    guest.prepare(chan, zyg.registry)
    MARKS.pop("decode_args_start", None)  # the warm-up decodes too; only the call's counts
    mark("pool_warmed")
    seccomp.apply(zyg.filters[0])
    mark("pool_ready")
    faults("faults_pool_end")
    _send_json(chan, {"pool": MARKS})
    folder_fds = _receive_folders(chan)
    frame = channel.receive(chan, 256 << 20)
    request = channel.receive(chan, 256 << 20)
    mark("plan_received")
    call = sandbox_pb2.CallPlan.FromString(frame)
    mark("plan_parsed")
    lim = call.limits
    filesystem.enter_call(zyg.plan.root, folder_fds, list(call.host_paths), lim.tmp_bytes)
    for fd in folder_fds:
        os.close(fd)
    mark("root_entered")
    namespaces.become_guest_user(host_id)
    mark("guest_user")
    _libc.prctl("limits", _libc.PR_SET_NO_NEW_PRIVS, 1)
    limits.apply(limits.Limits(memory_bytes=lim.memory_bytes, max_processes=lim.max_processes,
                               max_open_files=lim.max_open_files, max_file_bytes=lim.max_file_bytes,
                               cpu_seconds=lim.cpu_seconds))
    mark("rlimits")
    seccomp.apply(zyg.filters[1])
    mark("seccomp")
    faults("faults_confined")
    guest.run(call, request, zyg.plugins, zyg.registry, guest_dir=filesystem.GUEST_DIR)
    mark("run_returned")
    faults("faults_guest_end")
    _send_json(chan, {"guest": MARKS})


# ---- parent side: the zygote and the daemon's run_call, reduced to their I/O ----------------

def read_frame(sock: socket.socket) -> bytes:
    return channel.receive(sock, 256 << 20)


class Prepared:
    """One sandbox forked by the parent (playing the zygote), until its init reports ready."""

    def __init__(self, zyg, host_id: int):
        self.marks: dict[str, int] = {"parent_fork": time.monotonic_ns()}
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = namespaces.fork_into_new_pid_ns(zyg.own_pid_ns)
        if pid == 0:
            status = 1
            try:
                self.sock.close()
                sandbox_side(zyg, theirs, host_id)
                status = 0
            except BaseException:
                traceback.print_exc()  # the replay's own bug or a refused step: say which
            finally:
                os._exit(status)
        theirs.close()
        self.pid, self.pidfd = pid, os.pidfd_open(pid)
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            # the channel the sandbox made in its own network namespace, as the daemon takes it
            _data, fds, _flags, _address = socket.recv_fds(self.sock, 1, 1)
            self.sock.close()
            self.sock = socket.socket(fileno=fds[0])
            self.marks.update(json.loads(read_frame(self.sock))["pool"])
            self.ready = True

    def run(self, call_plan: bytes, request: bytes, overlap) -> dict:
        """Sends the plan, calls ``overlap()`` (the zygote's next fork, in overlap mode),
        reads the outcome and the guest's marks."""
        self.wait_ready()
        self.marks["parent_send_plan"] = time.monotonic_ns()
        plan = sandbox_pb2.CallPlan.FromString(call_plan)
        folders = filesystem.detach_folders(plan.root, list(plan.host_paths))
        sandbox_call._send_folders(self.sock, folders)
        for fd in folders:
            os.close(fd)
        self.sock.sendall(channel.HEADER.pack(len(call_plan)) + call_plan)
        self.sock.sendall(channel.HEADER.pack(len(request)) + request)
        overlap()
        while True:
            event = pb.RunEvent.FromString(read_frame(self.sock))
            if event.WhichOneof("event") == "outcome":
                break
        self.marks["parent_outcome_in"] = time.monotonic_ns()
        if event.outcome.WhichOneof("result") != "value":
            raise RuntimeError(f"the replayed call failed: {event.outcome.failure.message}")
        self.marks.update(json.loads(read_frame(self.sock))["guest"])
        return self.marks

    def kill(self, reap: bool) -> None:
        self.marks["parent_kill"] = time.monotonic_ns()
        signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if reap:
            os.waitpid(self.pid, 0)
            self.marks["parent_reaped"] = time.monotonic_ns()
        os.close(self.pidfd)
        self.sock.close()


def replay(zyg, call_plan: bytes, request: bytes, calls: int, idle_s: float, overlap: bool, uid_base: int) -> list[dict]:
    """Sequential mode: prepare, let it idle in the "pool", run, kill and reap, then the next.
    Overlap mode, like the daemon: the next sandbox is forked as soon as a plan is sent (the
    daemon asks the zygote for a replacement in ``take()``), and the finished one is killed
    and reaped in the background while the next call runs."""
    runs, current = [], Prepared(zyg, uid_base)
    for i in range(1, calls + 1):
        upcoming = []
        if overlap:
            fork_next = lambda: upcoming.append(Prepared(zyg, uid_base + i % 64))  # noqa: E731
        else:
            fork_next = lambda: None  # noqa: E731
            current.wait_ready()
            time.sleep(idle_s)  # the sandbox waits in the pool
        runs.append(current.run(call_plan, request, fork_next))
        current.kill(reap=not overlap)
        if overlap:
            while _reap_any():
                pass
            time.sleep(idle_s)  # the client's turn-around before its next call
        current = upcoming[0] if upcoming else Prepared(zyg, uid_base + i % 64)
    current.kill(reap=True)
    while _reap_any(block=True):
        pass
    return runs


def _reap_any(block: bool = False) -> bool:
    try:
        pid, _ = os.waitpid(-1, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return False
    return pid != 0


# Spans reported, in the order they happen: (name, from mark, to mark, on the critical path?)
SPANS = [
    ("zygote: unshare(CLONE_NEWPID) + fork + setns", "parent_fork", "sandbox_start", False),
    ("pool: unshare mnt/net/ipc/uts/cgroup, hostname, lo up, the channel anew", "sandbox_start", "pool_unshared", False),
    ("pool: prepare_root (tmpfs, template moved in, /proc, /tmp, pivot_root)", "pool_unshared",
     "pool_root_prepared", False),
    ("pool: warm-up", "pool_root_prepared", "pool_warmed", False),
    ("pool: the pool's part of the seccomp filter", "pool_warmed", "pool_ready", False),
    ("daemon → sandbox: detach the folders, send them and the plan", "parent_send_plan", "plan_received", True),
    ("call: parse CallPlan", "plan_received", "plan_parsed", True),
    ("call: enter_call (move_mount the call's folders)", "plan_parsed", "root_entered", True),
    ("call: become_guest_user (setres*id, userns, maps, caps)", "root_entered", "guest_user", True),
    ("call: no_new_privs + rlimits", "guest_user", "rlimits", True),
    ("call: the call's part of the seccomp filter", "rlimits", "seccomp", True),
    ("guest.run: SIGXCPU handler, console streams", "seccomp", "decode_args_start", True),
    ("guest.run: decode args, policy, importer set-up", "decode_args_start", "preload_start", True),
    ("guest.run: read ahead (the daemon's code, or nothing with --no-code-cache)", "preload_start", "preload_end",
     True),
    ("guest.run: import the guest file (read, compile or unmarshal, exec)", "import_start", "import_end", True),
    ("guest.run: send 'running'", "send_running_start", "send_running_end", True),
    ("guest.run: call + encode the result", "send_running_end", "encode_result_end", True),
    ("guest.run: rusage + build the outcome", "encode_result_end", "send_outcome_start", True),
    ("guest → daemon: outcome frame read and parsed", "send_outcome_start", "parent_outcome_in", True),
    ("daemon: SIGKILL the sandbox via pidfd + reap it", "parent_kill", "parent_reaped", False),
]


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name, start, end, critical in SPANS:
        values = [(r[end] - r[start]) / 1e6 for r in runs if start in r and end in r]
        if values:
            rows.append({"step": name, "critical": critical, "p50_ms": round(statistics.median(values), 3),
                         "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))], 3),
                         "n": len(values)})
    for name, start, end, critical in (
            ("critical path: plan sent → outcome read", "parent_send_plan", "parent_outcome_in", True),
            ("  of which inside the guest: plan received → outcome sent", "plan_received", "send_outcome_end", True),
            ("pool preparation: fork → waiting for its plan", "parent_fork", "pool_ready", False)):
        values = sorted((r[end] - r[start]) / 1e6 for r in runs)
        rows.append({"step": name, "critical": critical, "p50_ms": round(statistics.median(values), 3),
                     "p90_ms": round(values[int(0.9 * (len(values) - 1))], 3), "n": len(values)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--idle-ms", type=float, default=20.0,
                        help="time a prepared sandbox idles before its plan (sequential mode), "
                             "or between calls (overlap mode)")
    parser.add_argument("--overlap", action="store_true",
                        help="fork the next sandbox while the current call runs, as the daemon does")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() before forking")
    parser.add_argument("--json", help="write the per-call marks and the summary here")
    parser.add_argument("--no-code-cache", action="store_true",
                        help="plans without the daemon's compiled modules: every call compiles the guest file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("sandbox_steps.py needs root, as isorund does", file=sys.stderr)
        return 2
    state = tempfile.mkdtemp(prefix="isorun-steps-")
    os.mkdir(os.path.join(state, "root"))
    config = Config.load(None, {})
    programs = [base64.b64encode(p).decode() for p in seccomp.programs()]
    # the zygote's own log lines go to the daemon through this pair; a few, never read here
    control, _daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zyg = zygote_module.Zygote(dict(dataclasses.asdict(config), _new_root=os.path.join(state, "root"),
                                    _seccomp=programs), control=control)
    instrument()
    if args.gc_freeze:
        import gc
        gc.freeze()  # what the zygote could do before forking: GC never touches these objects
    request = pb.RunRequest(root=str(GUESTS), file="echo.py", func_name="echo",
                            args=[_codec.encode([7, "hi"])])
    plan = plans.build(request, config)
    if not args.no_code_cache:
        plan.modules.extend(cached_modules(GUESTS, "echo.py"))
    call_plan = plan.SerializeToString()
    runs = replay(zyg, call_plan, request.SerializeToString(), args.calls + 5, args.idle_ms / 1000, args.overlap,
                  config.sandbox_uid_base)[5:]  # the first calls warm caches
    rows = summarize(runs)
    for name, start, end in (("page faults, pool: fork → waiting", "faults_pool_start", "faults_pool_end"),
                             ("page faults, call: confine steps", "faults_pool_end", "faults_confined"),
                             ("page faults, guest: guest.run", "faults_confined", "faults_guest_end")):
        values = [r[end] - r[start] for r in runs]
        rows.append({"step": name, "critical": False, "p50_ms": statistics.median(values), "unit": "faults"})
    width = max(len(r["step"]) for r in rows)
    for r in rows:
        flag = "*" if r["critical"] else " "
        if r.get("unit") == "faults":
            print(f"  {r['step']:<{width}}  p50 {r['p50_ms']:7.0f}")
        else:
            print(f"{flag} {r['step']:<{width}}  p50 {r['p50_ms']:7.3f} ms  p90 {r.get('p90_ms', 0):7.3f} ms")
    print("* = on a call's critical path once a prepared sandbox is waiting in the pool")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": rows, "runs": runs}, indent=1))
    # build_template left this process's own mount namespace without the template's mounts
    os.rmdir(os.path.join(state, "root"))
    os.rmdir(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
