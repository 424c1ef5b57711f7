"""Replays the life of isorun sandboxes with a clock around every step (needs root).

    python bench/profile/sandbox_steps.py [--calls 200] [--json OUT]

Run it with the interpreter of the isorun tree to profile (its ``isorund`` is imported). It
builds the zygote's state exactly as the zygote does (``isorund.zygote.Zygote``: config,
plugins, root plan, seccomp filter, warm-up), then for every call plays the zygote, the
sandbox's init and its guest itself, calling the same functions in the same order as
``isorund.zygote.Zygote.spawn``, ``isorund.sandbox.init_main``, ``_guest_main``, ``confine``
and ``guest.run`` — only with a ``time.monotonic_ns()`` mark between the steps. CLOCK_MONOTONIC
is one clock for every process, so marks taken in the init and the guest line up with the
parent's. If those functions change order, update ``guest_side`` and ``init_side`` below.

Marks travel back on the call channel as JSON frames: the init's once it has forked the guest
(the sandbox is then "in the pool"), the guest's after its outcome. The parent waits
``--idle-ms`` between a sandbox being ready and sending its plan, as the daemon's pool does,
so the measured per-call path does not compete with the preparation of the same sandbox.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2
from isorund import plan as plans
from isorund import zygote as zygote_module
from isorund.config import Config
from isorund.sandbox import (_close_fds_except, _libc, channel, filesystem, guest, importer,
                             limits, namespaces, seccomp)

GUESTS = Path(__file__).resolve().parent.parent / "guests"
MARKS: dict[str, int] = {}  # filled in whichever process runs; each process has its own copy


def mark(name: str) -> None:
    MARKS[name] = time.monotonic_ns()


def _send_json(sock: socket.socket, body: dict) -> None:
    data = json.dumps(body).encode()
    sock.sendall(channel.HEADER.pack(len(data)) + data)


def instrument() -> None:
    """Marks inside ``guest.run`` without changing it: its imports are module attributes."""
    real_load_main = importer.GuestImporter.load_main
    real_send = channel.send
    real_decode = _codec.decode
    real_encode = _codec.encode

    def load_main(self, relative_file):
        mark("import_start")
        try:
            return real_load_main(self, relative_file)
        finally:
            mark("import_end")

    def send(sock, message):
        kind = message.WhichOneof("event") if hasattr(message, "WhichOneof") else "frame"
        mark(f"send_{kind}_start")
        real_send(sock, message)
        mark(f"send_{kind}_end")

    def decode(*args, **kwargs):
        MARKS.setdefault("decode_args_start", time.monotonic_ns())
        return real_decode(*args, **kwargs)

    def encode(*args, **kwargs):
        mark("encode_result_start")
        try:
            return real_encode(*args, **kwargs)
        finally:
            mark("encode_result_end")

    importer.GuestImporter.load_main = load_main
    channel.send = send
    guest._codec = type("CodecShim", (), {"decode": staticmethod(decode),
                                           "encode": staticmethod(encode)})


# ---- child side: the init and the guest, as isorund.sandbox runs them -------------------------

def init_side(zyg, theirs: socket.socket, host_id: int) -> int:
    mark("init_start")
    _libc.prctl("init", _libc.PR_SET_PDEATHSIG, 9)
    namespaces.unshare_host_views()
    mark("init_unshared")
    filesystem.prepare_root(zyg.plan.root)
    mark("init_root_prepared")
    pid = os.fork()
    if pid == 0:
        MARKS.clear()
        try:
            guest_side(zyg, theirs, host_id)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)
    mark("init_guest_forked")
    _send_json(theirs, {"init": MARKS})
    theirs.close()
    os.waitpid(pid, 0)
    return 0


def guest_side(zyg, chan: socket.socket, host_id: int) -> None:
    mark("guest_start")
    _libc.prctl("guest", _libc.PR_SET_PDEATHSIG, 9)
    frame = channel.receive(chan, 256 << 20)
    mark("plan_received")
    call = sandbox_pb2.CallPlan.FromString(frame)
    mark("plan_parsed")
    os.environ.clear()
    filesystem.enter_root(zyg.plan.root, call.root, list(call.host_paths), call.limits.tmp_bytes)
    mark("root_entered")
    _close_fds_except(chan.fileno())
    mark("fds_closed")
    namespaces.become_guest_user(host_id)
    mark("guest_user")
    _libc.prctl("limits", _libc.PR_SET_NO_NEW_PRIVS, 1)
    mark("no_new_privs")
    lim = call.limits
    limits.apply(limits.Limits(memory_bytes=lim.memory_bytes, max_processes=lim.max_processes,
                               max_open_files=lim.max_open_files, max_file_bytes=lim.max_file_bytes,
                               cpu_seconds=lim.cpu_seconds))
    mark("rlimits")
    seccomp.apply(zyg.filter)
    mark("seccomp")
    guest.run(call, chan, zyg.plugins, zyg.registry, guest_dir=filesystem.GUEST_DIR)
    mark("run_returned")
    _send_json(chan, {"guest": MARKS})


# ---- parent side: the zygote and the daemon's run_call, reduced to their I/O ----------------

def read_frame(sock: socket.socket) -> bytes:
    return channel.receive(sock, 256 << 20)


def one_call(zyg, call_plan: bytes, host_id: int, idle_s: float) -> dict:
    parent: dict[str, int] = {}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent["fork"] = time.monotonic_ns()
    pid = namespaces.fork_into_new_pid_ns(zyg.own_pid_ns)
    if pid == 0:
        status = 1
        try:
            ours.close()
            status = init_side(zyg, theirs, host_id)
        except BaseException:
            traceback.print_exc()  # the replay's own bug or a refused step: say which
        finally:
            os._exit(status)
    theirs.close()
    pidfd = os.pidfd_open(pid)
    parent["forked"] = time.monotonic_ns()
    init_marks = json.loads(read_frame(ours))["init"]
    parent["ready"] = time.monotonic_ns()
    time.sleep(idle_s)  # the sandbox waits in the pool
    parent["send_plan"] = time.monotonic_ns()
    ours.sendall(channel.HEADER.pack(len(call_plan)) + call_plan)
    parent["plan_sent"] = time.monotonic_ns()
    while True:
        event = pb.RunEvent.FromString(read_frame(ours))
        if event.WhichOneof("event") == "outcome":
            break
    parent["outcome_in"] = time.monotonic_ns()
    outcome = event.outcome
    guest_marks = json.loads(read_frame(ours))["guest"]
    parent["kill"] = time.monotonic_ns()
    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    os.waitpid(pid, 0)
    parent["reaped"] = time.monotonic_ns()
    os.close(pidfd)
    ours.close()
    if outcome.WhichOneof("result") != "value":
        raise RuntimeError(f"the replayed call failed: {outcome.failure.message}")
    return {**{f"parent_{k}": v for k, v in parent.items()}, **init_marks, **guest_marks}


# Spans reported, in the order they happen: (name, from mark, to mark, on the critical path?)
SPANS = [
    ("zygote: unshare(CLONE_NEWPID) + fork + setns", "parent_fork", "init_start", False),
    ("init: unshare mnt/net/ipc/uts/cgroup, hostname, lo up", "init_start", "init_unshared", False),
    ("init: prepare_root (tmpfs, ro binds, /proc, /dev)", "init_unshared", "init_root_prepared", False),
    ("init: fork the guest", "init_root_prepared", "init_guest_forked", False),
    ("daemon → guest: send + receive the plan", "parent_send_plan", "plan_received", True),
    ("guest: parse CallPlan", "plan_received", "plan_parsed", True),
    ("guest: enter_root (guest bind, /tmp, remount ro, pivot_root, umount)", "plan_parsed", "root_entered", True),
    ("guest: close fds", "root_entered", "fds_closed", True),
    ("guest: become_guest_user (setres*id, userns, maps, caps)", "fds_closed", "guest_user", True),
    ("guest: no_new_privs", "guest_user", "no_new_privs", True),
    ("guest: rlimits", "no_new_privs", "rlimits", True),
    ("guest: seccomp load", "rlimits", "seccomp", True),
    ("guest.run: decode args, policy, importer set-up", "seccomp", "import_start", True),
    ("guest.run: import the guest file (read, compile, exec)", "import_start", "import_end", True),
    ("guest.run: send 'running'", "send_running_start", "send_running_end", True),
    ("guest.run: call + encode the result", "send_running_end", "encode_result_end", True),
    ("guest.run: rusage + build + send the outcome", "encode_result_end", "send_outcome_end", True),
    ("guest → daemon: outcome frame read and parsed", "send_outcome_end", "parent_outcome_in", True),
    ("daemon: SIGKILL the init via pidfd + reap it", "parent_kill", "parent_reaped", False),
]


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name, start, end, critical in SPANS:
        values = [(r[end] - r[start]) / 1e6 for r in runs if start in r and end in r]
        if values:
            rows.append({"step": name, "critical": critical, "p50_ms": round(statistics.median(values), 3),
                         "p90_ms": round(sorted(values)[int(0.9 * (len(values) - 1))], 3),
                         "n": len(values)})
    total = [(r["parent_outcome_in"] - r["parent_send_plan"]) / 1e6 for r in runs]
    prep = [(r["init_guest_forked"] - r["parent_fork"]) / 1e6 for r in runs]
    rows.append({"step": "critical path: plan sent → outcome read", "critical": True,
                 "p50_ms": round(statistics.median(total), 3), "n": len(total)})
    rows.append({"step": "pool preparation: fork → guest waiting", "critical": False,
                 "p50_ms": round(statistics.median(prep), 3), "n": len(prep)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--idle-ms", type=float, default=20.0)
    parser.add_argument("--json", help="write the per-call marks and the summary here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("sandbox_steps.py needs root, as isorund does", file=sys.stderr)
        return 2
    state = tempfile.mkdtemp(prefix="isorun-steps-")
    os.mkdir(os.path.join(state, "root"))
    config = Config.load(None, {})
    zyg = zygote_module.Zygote(dict(dataclasses.asdict(config), _new_root=os.path.join(state, "root")),
                               control=None)
    instrument()
    request = pb.RunRequest(root=str(GUESTS), file="echo.py", func_name="echo",
                            args=[_codec.encode([7, "hi"])])
    call_plan = plans.build(request, config).SerializeToString()
    runs = []
    for i in range(args.calls + 5):
        run = one_call(zyg, call_plan, config.sandbox_uid_base + (i % 64), args.idle_ms / 1000)
        if i >= 5:  # the first calls warm the page cache and the kernel's mount caches
            runs.append(run)
    rows = summarize(runs)
    width = max(len(r["step"]) for r in rows)
    for r in rows:
        flag = "*" if r["critical"] else " "
        print(f"{flag} {r['step']:<{width}}  p50 {r['p50_ms']:7.3f} ms  p90 {r.get('p90_ms', 0):7.3f} ms")
    print("* = on a call's critical path once a prepared sandbox is waiting in the pool")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": rows, "runs": runs}, indent=1))
    os.rmdir(os.path.join(state, "root"))
    os.rmdir(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
