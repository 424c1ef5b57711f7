"""The ways to run ``echo(x) -> x`` in isolation that the benchmark compares.

Every approach has the same small surface, so the harness times them identically:

- ``start()``: set up (raise ``Skip`` with the reason when it cannot run here);
- ``call(i)``: one call with ``x = [i, "hi"]``, returning the value; safe from many threads;
- ``check(i, value)``: whether the value is right (checked outside the timed region);
- ``memory()``: RSS/PSS of the resident processes, or None for per-call-process approaches;
- ``close()``.

Resident peers (vm2, the fork floors) speak one JSON object per line over stdin/stdout with a
request id, so several calls can be in flight on one pipe, the way several callers share one
gRPC channel to isorund.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import procmem

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
GUESTS = BENCH / "guests"
CALL_TIMEOUT_S = 30.0

# The interpreter behind this harness, not a shim (pyenv's ``python3`` is a shell script that
# would add its own start-up to every spawn) and not the venv wrapper (-I -S ignores it anyway).
BASE_PYTHON = os.path.realpath(sys.executable)

# What per-call-interpreter approaches run: the arguments as JSON on stdin, the result on stdout.
ECHO_PROGRAM = (
    "import json, sys\n"
    "def echo(x):\n"
    "    return x\n"
    "sys.stdout.write(json.dumps(echo(*json.load(sys.stdin))))\n"
)


class Skip(Exception):
    """This approach cannot run on this machine; the message says why."""


def echo_args(i: int) -> list:
    return [[i, "hi"]]


class Approach:
    key = ""
    label = ""

    def start(self) -> None:
        pass

    def call(self, i: int):
        raise NotImplementedError

    def check(self, i: int, value) -> bool:
        return value == [i, "hi"]

    def memory(self) -> dict | None:
        return None

    def close(self) -> None:
        pass


# ---- isorun ------------------------------------------------------------------------------------

class Isorun(Approach):
    """The real thing, end to end: CodeRunner → gRPC → isorund → fresh sandbox → result.

    One runner (one channel) shared by every caller thread, as an application would hold it.
    Also serves the workloads: another guest file, function, arguments and check.
    """

    def __init__(self, daemon, key="isorun", label="isorun (client → daemon → fresh sandbox)",
                 file="echo.py", func="echo", args_for=echo_args, check=None, on_console=None):
        self.daemon = daemon
        self.key, self.label = key, label
        self.file, self.func, self.args_for = file, func, args_for
        self._check = check
        self.on_console = on_console
        self.runner = None

    def start(self) -> None:
        from isorun import CodeRunner
        kwargs = {"root": str(GUESTS), "file": self.file, "socket": self.daemon.socket}
        if self.on_console is not None:
            kwargs["on_console"] = self.on_console
        self.runner = CodeRunner(**kwargs)

    def call(self, i: int):
        return self.runner.run(self.func, args=self.args_for(i))

    def check(self, i: int, value) -> bool:
        return self._check(i, value) if self._check else super().check(i, value)

    def memory(self) -> dict | None:
        return self.daemon.memory()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


# ---- resident peers over a line protocol -------------------------------------------------------

class LinePeer(Approach):
    """A long-lived peer process answering JSON-line requests, several in flight at once."""

    def __init__(self, key: str, label: str, argv: list[str]):
        self.key, self.label, self.argv = key, label, argv
        self.proc: subprocess.Popen | None = None
        self.write_lock = threading.Lock()
        self.waiting: dict[int, list] = {}  # id -> [event, reply]
        self.next_id = 0
        self.ready = threading.Event()
        self.ready_msg: dict = {}
        self.stderr = tempfile.TemporaryFile()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, cwd=PEERS)
        threading.Thread(target=self._read_replies, name=f"{self.key}-reader",
                         daemon=True).start()
        if not self.ready.wait(CALL_TIMEOUT_S) or not self.ready_msg.get("ready"):
            reason = self.ready_msg.get("error") or self.ready_msg.get("fatal") or \
                self._stderr_tail() or "no ready line"
            self.close()
            raise Skip(f"{self.argv[0]} peer did not start: {reason}")

    def _read_replies(self) -> None:
        """Hands each reply to the caller waiting for its id; fails them all at EOF."""
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "id" not in msg:
                self.ready_msg = msg
                self.ready.set()
                continue
            slot = self.waiting.pop(msg["id"], None)
            if slot is not None:
                slot[1] = msg
                slot[0].set()
        self.ready.set()
        for slot in list(self.waiting.values()):
            slot[1] = {"ok": False, "error": f"peer exited: {self._stderr_tail()}"}
            slot[0].set()

    def call(self, i: int):
        slot = [threading.Event(), None]
        with self.write_lock:
            self.next_id += 1
            req_id = self.next_id
            self.waiting[req_id] = slot
            self.proc.stdin.write(b'{"id":%d,"fn":"echo","args":[[%d,"hi"]]}\n' % (req_id, i))
            self.proc.stdin.flush()
        if not slot[0].wait(CALL_TIMEOUT_S):
            self.waiting.pop(req_id, None)
            raise TimeoutError(f"{self.key}: no reply to call {req_id} in {CALL_TIMEOUT_S} s")
        if not slot[1].get("ok"):
            raise RuntimeError(f"{self.key}: {slot[1].get('error')}")
        return slot[1]["result"]

    def memory(self) -> dict | None:
        return procmem.tree_memory(self.proc.pid) if self.proc else None

    def close(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-800:].decode(errors="replace").strip()


def ensure_node_modules() -> None:
    """Installs the pinned vm2 into bench/peers once (`npm ci`: exactly package-lock.json)."""
    if (PEERS / "node_modules" / "vm2").is_dir():
        return
    if not shutil.which("npm"):
        raise Skip("skipped: npm not found (Node 20 + npm are needed for the vm2 peer)")
    proc = subprocess.run(["npm", "ci", "--prefix", str(PEERS), "--no-audit", "--no-fund"],
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise Skip(f"skipped: npm install failed: {proc.stderr.decode()[-500:]}")


class Vm2(LinePeer):
    """isolated-runtime's approach: a worker_threads pool, a fresh vm2 NodeVM per call."""

    def __init__(self, workers: int):
        super().__init__("vm2", f"vm2: fresh NodeVM per call, {workers} worker threads",
                         ["node", str(PEERS / "vm2_peer.js"),
                          "--file", str(PEERS / "guests" / "echo.js"), "--workers", str(workers)])

    def start(self) -> None:
        if not shutil.which("node"):
            raise Skip("skipped: node not found")
        ensure_node_modules()
        super().start()


def fork_floor(mode: str) -> LinePeer:
    """The floors, from one warm Python process (bench/peers/fork_floor.py)."""
    labels = {"ns": ("fork_ns", "floor: fork + unshare 6 namespaces + fork"),
              "plain": ("fork", "plain fork()")}
    key, label = labels[mode]
    return LinePeer(key, label, [BASE_PYTHON, str(PEERS / "fork_floor.py"), "--mode", mode])


# ---- one interpreter per call ------------------------------------------------------------------

class Spawn(Approach):
    """A new ``python3 -I -S`` per call, optionally under a wrapper such as bwrap."""

    def __init__(self, key: str, label: str, wrapper: list[str]):
        self.key, self.label = key, label
        self.argv = wrapper + [BASE_PYTHON, "-I", "-S", "-c", ECHO_PROGRAM]

    def start(self) -> None:
        try:
            value = self.call(0)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            raise Skip(f"skipped: {exc}") from exc
        if not self.check(0, value):
            raise Skip(f"skipped: echo returned {value!r}")

    def call(self, i: int):
        proc = subprocess.run(self.argv, input=json.dumps(echo_args(i)).encode(),
                              capture_output=True, timeout=CALL_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.argv[0]} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-500:]}")
        return json.loads(proc.stdout)


def ensure_bwrap() -> str:
    """Path of bwrap, installing Debian's bubblewrap when missing; Skip if that fails."""
    found = shutil.which("bwrap")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Skip("skipped: bwrap not installed and apt-get not usable (not root?)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in (["apt-get", "install", "-y", "-q", "bubblewrap"],
                 ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "bubblewrap"]):
        try:
            subprocess.run(step, capture_output=True, timeout=240, env=env)
        except subprocess.TimeoutExpired:
            break
        if shutil.which("bwrap"):
            return shutil.which("bwrap")
    raise Skip("skipped: bwrap missing and `apt-get install bubblewrap` failed")


class Bwrap(Spawn):
    def __init__(self):
        super().__init__("bwrap", "bwrap --unshare-all + python3 -I -S per call", [])

    def start(self) -> None:
        bwrap = ensure_bwrap()
        self.argv = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev",
                     "--proc", "/proc"] + self.argv
        super().start()


def subprocess_python() -> Spawn:
    return Spawn("subprocess", "python3 -I -S per call, no isolation", [])
