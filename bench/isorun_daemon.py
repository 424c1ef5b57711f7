"""Finding, starting and stopping an isorun daemon for the benchmark.

The daemon is started exactly as an operator would: ``<python> -m isorund --socket PATH``, with
the interpreter running this harness (the project's venv under ``make``). It is ready when its
socket file exists. Nothing here knows the daemon's internals: memory is read from /proc and
per-call numbers from the one JSON log line the daemon writes per call (DESIGN.md, Operations).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import procmem
from measure import summarize

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
# Depth below the daemon's pid: its zygote, then the sandboxes (one process each, pid 1 of its
# call's pid namespace, waiting in the pool for its call), then whatever a running guest forks.
ROLES = ("daemon", "zygote", "sandbox", "guest_children")
STOP_GRACE_S = 10.0


class DaemonError(RuntimeError):
    """The daemon did not start or died; the message ends with the tail of its log."""


def find_isorun() -> str | None:
    """None when ``python -m isorund`` and ``isorun.CodeRunner`` are installed, else a skip note.

    Installed, not merely on ``PYTHONPATH``: the daemon starts its zygote with an empty
    environment, so the zygote imports whatever ``isorund`` this interpreter has installed.
    """
    try:
        if importlib.util.find_spec("isorund.__main__") is None:
            return "skipped: no module isorund.__main__ (`python -m isorund`); run `make`"
        from isorun import CodeRunner  # noqa: F401
    except ImportError as exc:
        return f"skipped: isorun is not installed here (run `make`): {exc}"
    return None


class Daemon:
    """One isorund process on its own socket, optionally pinned to some CPUs."""

    def __init__(self, workdir: Path, name: str, cpus: str | None = None, config: str | None = None):
        self.socket = str(workdir / f"{name}.sock")
        self.log_path = workdir / f"{name}.log"
        self.cpus = cpus
        self.config = config
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "isorund", "--socket", self.socket]
        if self.config:
            argv += ["--config", self.config]
        if self.cpus is not None and shutil.which("taskset"):
            # taskset execs the daemon, so the pid we hold is the daemon's and its forks
            # inherit the affinity.
            argv = ["taskset", "-c", self.cpus] + argv
        return argv

    def _pin_without_taskset(self) -> None:
        os.sched_setaffinity(0, {int(c) for c in self.cpus.split(",")})

    def start(self) -> None:
        """Starts the daemon and waits (at most 30 s) for its socket to appear."""
        preexec = None
        if self.cpus is not None and not shutil.which("taskset"):
            preexec = self._pin_without_taskset
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=REPO,
                                     preexec_fn=preexec)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise DaemonError(f"isorund exited with {self.proc.returncode} before creating "
                                  f"{self.socket}; log: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(f"isorund did not create {self.socket} within "
                                  f"{START_TIMEOUT_S:.0f} s; log: {self.log_tail()}")
            time.sleep(0.02)

    def memory(self) -> dict:
        """RSS/PSS/USS of the daemon and all its descendants, also split by role (``ROLES``);
        the sandboxes are the pooled ones waiting for a call plus any call in flight."""
        return procmem.tree_memory(self.proc.pid, ROLES)

    def call_lines(self, function: str | None = None) -> list[dict]:
        """The daemon's per-call log lines so far (``{"event": "call", ...}``), optionally of
        one guest function only."""
        lines = []
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if not line.startswith('{"event": "call"'):
                        continue
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if function is None or entry.get("function") == function:
                        lines.append(entry)
        except OSError:
            pass
        return lines

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (the daemon drains), then SIGKILL after 10 s."""
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, limit: int = 1500) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-limit:].strip() or "(empty log)"


def per_sandbox(memory: dict) -> dict | None:
    """What one prepared sandbox holds, averaged over the pool: USS is the memory it alone
    holds, the real per-call cost."""
    sandboxes = memory.get("by_role", {}).get("sandbox")
    if not sandboxes:
        return None
    n = sandboxes["processes"]
    return {"sandboxes": n, **{key: round(sandboxes[key] / n, 1) for key in ("rss_mib", "pss_mib", "uss_mib")}}


def daemon_split(lines: list[dict]) -> dict | None:
    """Medians of the daemon's own per-call timings (its log): where a call's time goes
    between the daemon receiving it and answering."""
    if not lines:
        return None
    return {key: summarize([line[key] for line in lines if key in line])
            for key in ("queue_ms", "run_ms", "total_ms")} | {"calls": len(lines)}
