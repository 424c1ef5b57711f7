"""Timing: latency batches at concurrency 1, throughput batches with N callers, interleaving.

Approaches are measured in round-robin batches (A B C, then B C A, …) rather than one after
the other, so a noisy neighbour or a CPU-frequency change lands on all of them alike and the
ratios between approaches stay meaningful even when absolute numbers drift. Every loop is
bounded by a call count and by time.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass, field

MAX_ERRORS_PER_BATCH = 5


@dataclass
class Batch:
    """What one batch of one approach produced."""
    samples_ms: list[float] = field(default_factory=list)
    calls: int = 0
    seconds: float = 0.0
    errors: int = 0
    first_error: str | None = None

    def fail(self, exc: BaseException | str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"


class CallNumbers:
    """Distinct call numbers across threads, so every reply can be checked against its request."""

    def __init__(self):
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            return next(self._count)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile: always a value that was observed."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(samples_ms: list[float]) -> dict | None:
    if not samples_ms:
        return None
    s = sorted(samples_ms)
    return {"p50": round(percentile(s, 50), 3), "p90": round(percentile(s, 90), 3),
            "p99": round(percentile(s, 99), 3), "mean": round(sum(s) / len(s), 3),
            "min": round(s[0], 3), "max": round(s[-1], 3), "n": len(s)}


def timed_call(approach, numbers: CallNumbers, batch: Batch) -> float | None:
    """One checked call; its latency in ms, or None (counted in ``batch``) when it failed."""
    i = numbers.next()
    t0 = time.perf_counter()
    try:
        value = approach.call(i)
    except Exception as exc:  # any failure of the system under test is data, not a crash
        batch.fail(exc)
        return None
    elapsed_ms = (time.perf_counter() - t0) * 1000
    if not approach.check(i, value):
        batch.fail(f"wrong result for call {i}: {str(value)[:120]}")
        return None
    return elapsed_ms


def latency_batch(approach, numbers: CallNumbers, max_calls: int, min_calls: int,
                  budget_s: float) -> Batch:
    """Sequential calls until ``max_calls``, or until ``budget_s`` once ``min_calls`` are in.

    A hard stop at 5 × budget bounds approaches slower than expected.
    """
    batch = Batch()
    start = time.perf_counter()
    while batch.calls < max_calls and batch.errors < MAX_ERRORS_PER_BATCH:
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s * 5 or (elapsed >= budget_s and batch.calls >= min_calls):
            break
        ms = timed_call(approach, numbers, batch)
        batch.calls += 1
        if ms is not None:
            batch.samples_ms.append(ms)
    batch.seconds = time.perf_counter() - start
    return batch


def throughput_batch(approach, numbers: CallNumbers, callers: int, budget_s: float,
                     max_calls: int = 1_000_000) -> Batch:
    """``callers`` threads calling back to back for ``budget_s``; calls/s = done ÷ wall time.

    Wall time runs until the last in-flight call returns, so slow calls are not cut off.
    """
    batch = Batch()
    lock = threading.Lock()
    started = [0]  # calls begun, shared so that max_calls bounds the batch as a whole
    deadline = time.perf_counter() + budget_s

    def caller():
        local = Batch()
        while time.perf_counter() < deadline and local.errors < MAX_ERRORS_PER_BATCH:
            with lock:
                if started[0] >= max_calls:
                    break
                started[0] += 1
            if timed_call(approach, numbers, local) is not None:
                local.calls += 1
        with lock:
            batch.calls += local.calls  # successful calls only
            batch.errors += local.errors
            batch.first_error = batch.first_error or local.first_error

    start = time.perf_counter()
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(budget_s + 60)
    batch.seconds = time.perf_counter() - start
    return batch


def paired_batch(first, second, numbers: CallNumbers, max_pairs: int, min_pairs: int,
                 budget_s: float) -> tuple[Batch, Batch, list[float]]:
    """Calls ``first`` and ``second`` alternately (which goes first swaps every pair) until
    ``max_pairs``, or until ``budget_s`` once ``min_pairs`` are in.

    Returns both batches and, for every pair where both calls succeeded, ``first − second``
    in ms. Two calls a few milliseconds apart see the same machine, so the median of these
    differences is far less noisy than the difference of two medians taken batch by batch.
    """
    a, b, diffs = Batch(), Batch(), []
    start = time.perf_counter()
    while a.calls < max_pairs and a.errors + b.errors < MAX_ERRORS_PER_BATCH:
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s * 5 or (elapsed >= budget_s and a.calls >= min_pairs):
            break
        order = ((first, a), (second, b)) if a.calls % 2 == 0 else ((second, b), (first, a))
        pair = {}
        for approach, batch in order:
            ms = timed_call(approach, numbers, batch)
            batch.calls += 1
            if ms is not None:
                batch.samples_ms.append(ms)
            pair[id(batch)] = ms
        if pair[id(a)] is not None and pair[id(b)] is not None:
            diffs.append(pair[id(a)] - pair[id(b)])
    a.seconds = b.seconds = time.perf_counter() - start
    return a, b, diffs


def calls_per_second(batches: list[Batch]) -> float | None:
    """Median of the batches' rates: one slow batch (a noisy moment) does not drag it down."""
    rates = sorted(b.calls / b.seconds for b in batches if b.seconds > 0 and b.calls > 0)
    if not rates:
        return None
    mid = len(rates) // 2
    return round(rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2, 1)


def interleave(approaches: list, rounds: int, run_batch) -> dict[str, list[Batch]]:
    """Runs ``run_batch(approach)`` round-robin, rotating the start each round."""
    results: dict[str, list[Batch]] = {a.key: [] for a in approaches}
    for r in range(rounds):
        shift = r % max(1, len(approaches))
        for approach in approaches[shift:] + approaches[:shift]:
            results[approach.key].append(run_batch(approach))
    return results


def warm_up(approach, numbers: CallNumbers, calls: int = 5, budget_s: float = 2.0) -> str | None:
    """A few unrecorded calls (caches, JIT, pools); returns the first error, if any."""
    batch = latency_batch(approach, numbers, calls, 1, budget_s)
    if batch.errors:
        return batch.first_error
    return None
