"""The escape battery's daemon and harness.

One daemon for the whole battery, with a host uid range of its own (so that "no process of a
call is left" can be checked from the host without seeing other test runs' sandboxes), tight
limits (so the limit attacks end fast), and a secret in its environment.

Every attack is a guest file in ``attacks/`` whose first comment states the attack; it runs
with ``attacks/escape.py`` beside it, which hands it the real ``os`` and an unrestricted import.
After every test, the ``daemon_survives`` check runs: the daemon is up, the next call works and
no process of any call is left on the host.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from isorun import CodeRunner

ATTACKS = Path(__file__).resolve().parent / "attacks"
SECRET_ENV = "ISORUN_SECURITY_SECRET"
SECRET_VALUE = "env-secret-5d1e7b"
MiB = 1 << 20
LIMITS = {"memory_bytes": 256 * MiB, "max_processes": 16, "tmp_bytes": 4 * MiB,
          "max_file_bytes": 1 * MiB, "cpu_seconds": 2.0}
# A uid range no other test daemon uses (theirs start at the default, 1 500 000).
UID_BASE = 3_000_000 + (os.getpid() % 1000) * 1000
UID_COUNT = 1000

CONFIG = f"""
sandbox_uid_base = {UID_BASE}
sandbox_uid_count = {UID_COUNT}

[limits]
""" + "\n".join(f"{key} = {value}" for key, value in LIMITS.items()) + "\n"


@pytest.fixture(scope="session")
def secure_daemon(start_daemon_session):
    """The battery's daemon; ``uids`` is the host uid range of its sandboxes, ``limits`` its
    per-call limits and ``secret`` the (name, value) planted in its environment."""
    d = start_daemon_session(config=CONFIG, env={SECRET_ENV: SECRET_VALUE})
    d.uids = range(UID_BASE, UID_BASE + UID_COUNT)
    d.limits = LIMITS
    d.secret = (SECRET_ENV, SECRET_VALUE)
    return d


@pytest.fixture
def host_processes(secure_daemon):
    """host_processes() -> host processes of finished or running calls (not pooled sandboxes)."""
    return lambda: leftover_processes(secure_daemon)


@pytest.fixture
def every_sandbox_process(secure_daemon):
    """every_sandbox_process() -> host processes under the battery's sandbox uids (calls running or left)."""
    return lambda: sandbox_processes(secure_daemon.uids)


def sandbox_processes(uids: range) -> list[psutil.Process]:
    """Host processes running under one of ``uids``: sandboxes serving a call (a pooled sandbox
    runs as root until its plan arrives), their children, or what a call left."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        ids = proc.info["uids"]
        if ids is not None and (ids.real in uids or ids.effective in uids):
            found.append(proc)
    return found


def call_sandbox_pids(daemon) -> dict[int, float]:
    """Host pid of the sandbox of every call the daemon has run (its per-call log lines), with
    the time this harness first read it: a live process with that pid started later is another
    process that was given the pid again (pid_max can be as low as 32,768)."""
    seen = daemon.__dict__.setdefault("sandbox_pids_seen", {})
    for line in daemon.log().splitlines():
        if '"sandbox_pid"' in line:
            try:
                seen.setdefault(json.loads(line)["sandbox_pid"], time.time())
            except (ValueError, KeyError):
                pass
    return seen


def leftover_processes(daemon) -> list[psutil.Process]:
    """Every live process that belongs to a call the daemon has run.

    A call's sandbox is pid 1 of its own pid namespace, so the kernel kills whatever it forked
    when it dies; while it lives it counts, and so does anything under a sandbox uid (pooled
    sandboxes run as root, so are never counted). Processes may exit while they are looked at:
    one that is gone is not left."""
    zygotes = {p.pid for p in psutil.Process(daemon.pid).children()
               if "isorund.zygote" in " ".join(p.cmdline())}
    left = {}
    for pid, seen in call_sandbox_pids(daemon).items():
        proc = _process_started_by(pid, seen)
        if proc is not None and _running(proc) and _parent_pid(proc) in zygotes:
            left[pid] = proc
    for proc in sandbox_processes(daemon.uids):
        if _running(proc):
            left.setdefault(proc.pid, proc)
    return list(left.values())


def _process_started_by(pid: int, moment: float) -> psutil.Process | None:
    """The process ``pid`` if it lives and was started by ``moment`` (a ``time.time()``)."""
    try:
        proc = psutil.Process(pid)
        return proc if proc.create_time() <= moment else None
    except psutil.NoSuchProcess:
        return None


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a zombie holds nothing but its pid)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _parent_pid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except psutil.NoSuchProcess:
        return None


def wait_until_no_leftovers(daemon, seconds: float = 10.0) -> list:
    deadline = time.monotonic() + seconds
    while True:
        left = leftover_processes(daemon)
        if not left or time.monotonic() > deadline:
            return [p.pid for p in left]
        time.sleep(0.1)


@pytest.fixture(scope="session")
def run_attack(secure_daemon, tmp_path_factory):
    """run_attack(module, func="attack", args=(), files={}, timeout=None, **runner_options).

    Runs ``func`` of ``attacks/<module>.py`` in a fresh guest folder holding it, escape.py and
    any extra ``files`` (name -> text, or name -> ("symlink", target)); returns the call's
    value or raises its error. ``run_attack.root`` is the last folder made."""
    def run(module: str, func: str = "attack", args=(), files=None, timeout=None, **options):
        root = Path(tempfile.mkdtemp(dir=tmp_path_factory.mktemp("guest"), prefix="root"))
        root.chmod(0o755)
        shutil.copy(ATTACKS / "escape.py", root / "escape.py")
        shutil.copy(ATTACKS / f"{module}.py", root / f"{module}.py")
        for name, content in (files or {}).items():
            if isinstance(content, tuple) and content[0] == "symlink":
                os.symlink(content[1], root / name)
            else:
                (root / name).write_text(content)
        run.root = str(root)
        with CodeRunner(root=str(root), file=f"{module}.py", socket=secure_daemon.socket, **options) as runner:
            return runner.run(func, args=list(args), timeout=timeout)
    return run


@pytest.fixture
def attack(run_attack):
    """``run_attack`` for one test (see there)."""
    return run_attack


@pytest.fixture(autouse=True)
def daemon_survives(secure_daemon, tmp_path_factory):
    """After every attack: the daemon is up, the next call works, no process of a call is left."""
    yield
    assert secure_daemon.proc.poll() is None, "the daemon died:\n" + secure_daemon.log()
    root = tmp_path_factory.mktemp("next-call")
    root.chmod(0o755)
    (root / "index.py").write_text("def ping(x):\n    return x + 1\n")
    with CodeRunner(root=str(root), file="index.py", socket=secure_daemon.socket) as runner:
        assert runner.run("ping", args=[41], timeout=20) == 42
    left = wait_until_no_leftovers(secure_daemon)
    assert not left, f"processes of finished calls are still running on the host: {left}"
