"""Workloads beyond echo, for isorun only, each paired with the same work done in-process.

"What isorun adds" is isorun's p50 minus the in-process p50 of the same function, called in
this harness with its modules already imported: the cost of running the call in a fresh
sandbox instead of in a warm process without isolation. For the import workload that
difference therefore includes importing json and decimal afresh (unless the daemon's zygote
pre-imports them), which is exactly what a user of isorun pays.
"""
from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass
from typing import Callable

from approaches import GUESTS, Approach, Isorun

MB = 1_000_000
CONSOLE_LINES = 1000
ONE_MB = b"\xcd" * MB  # built once: allocating it is not part of any call


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    file: str
    func: str
    args_for: Callable[[int], list]
    check: Callable[[int, object], bool]
    console_lines: int = 0  # lines the call must stream to on_console


def sum_of_squares_below(n: int) -> int:
    return (n - 1) * n * (2 * n - 1) // 6


def calibrate_spin(target_ms: float = 100.0) -> int:
    """The ``n`` for which spin(n) takes about ``target_ms`` here (fastest of 3 trials)."""
    spin = load_function("spin.py", "spin")
    n = 200_000
    best = min(_time_ms(spin, n) for _ in range(3))
    return max(1000, int(n * target_ms / best))


def _time_ms(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1000


KEYS = ("imports", "bytes_arg", "bytes_result", "console", "cpu")


def all_workloads(spin_n: int) -> list[Workload]:
    spin_total = sum_of_squares_below(spin_n)
    return [
        Workload("imports", "guest imports json + decimal", "imports.py", "parse_total",
                 lambda i: [f'["1.10", "{i}.20"]'], lambda i, v: v == f"{i + 1}.30"),
        Workload("bytes_arg", "1 MB bytes argument", "bigio.py", "size",
                 lambda i: [ONE_MB], lambda i, v: v == MB),
        Workload("bytes_result", "1 MB bytes result", "bigio.py", "make",
                 lambda i: [MB], lambda i, v: isinstance(v, bytes) and len(v) == MB),
        Workload("console", f"{CONSOLE_LINES:,} console lines", "chatty.py", "chatty",
                 lambda i: [CONSOLE_LINES], lambda i, v: v == CONSOLE_LINES,
                 console_lines=CONSOLE_LINES),
        Workload("cpu", "100 ms of CPU (pure Python loop)", "spin.py", "spin",
                 lambda i: [spin_n], lambda i, v: v == spin_total),
    ]


def load_function(file: str, func: str):
    """The guest's function, loaded into a fresh namespace of this process (no sandbox)."""
    path = GUESTS / file
    namespace = {"__name__": f"guest_{path.stem}", "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace[func]


class ConsoleCounter:
    """Counts lines delivered to an on_console-style callback; ``take`` resets the count."""

    def __init__(self):
        self.lines = 0
        self.lock = threading.Lock()

    def __call__(self, stream: str, text: str) -> None:
        with self.lock:
            self.lines += 1

    def take(self) -> int:
        with self.lock:
            lines, self.lines = self.lines, 0
            return lines


class _LineSink(io.TextIOBase):
    """A stdout that hands every complete line to a callback, like isorun's console stream."""

    def __init__(self, callback):
        self.callback = callback
        self.partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        for line in lines:
            self.callback("stdout", line + "\n")
        return len(text)


class InProcess(Approach):
    """The workload's function called directly in this process: the baseline."""

    def __init__(self, workload: Workload):
        self.key, self.label = f"{workload.key}/in_process", "in-process"
        self.workload = workload
        self.fn = load_function(workload.file, workload.func)
        self.counter = ConsoleCounter()

    def call(self, i: int):
        args = self.workload.args_for(i)
        if not self.workload.console_lines:
            return self.fn(*args)
        with contextlib.redirect_stdout(_LineSink(self.counter)):
            return self.fn(*args)

    def check(self, i: int, value) -> bool:
        lines = self.counter.take()
        return self.workload.check(i, value) and lines == self.workload.console_lines


def isorun_for(workload: Workload, daemon) -> Isorun:
    """The workload through isorun, console lines counted via ``on_console``."""
    counter = ConsoleCounter() if workload.console_lines else None

    def check(i, value):
        lines = counter.take() if counter else 0
        return workload.check(i, value) and lines == workload.console_lines

    return Isorun(daemon, key=f"{workload.key}/isorun", label="isorun", file=workload.file,
                  func=workload.func, args_for=workload.args_for, check=check,
                  on_console=counter)
