"""isorun benchmark: echo latency and throughput against peers, workloads, memory, core scaling.

    python bench/run.py [--quick] [--out bench/] [--daemon-config FILE]

Writes results.json, RESULTS.md and latency.png into --out. The phases, in order:

1. start every approach (those that cannot run here are skipped with a note) and warm it up;
2. echo at concurrency 1 (p50/p90/p99) and with 8 callers (calls/s), approaches interleaved;
3. isorun workloads, each interleaved with the same function called in-process;
4. full mode: isorun throughput with the daemon pinned to one core vs both cores;
5. isorun daemon memory on a fresh daemon: idle, after 1,000 and after 10,000 calls.

Full mode is sized to finish in under 3 minutes on 2 cores, --quick in under 1 minute; every
phase checks the time left and is skipped, with a note, rather than overrun.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import approaches as ap
import measure
import report
import targets
import workloads as wl
from isorun_daemon import Daemon, DaemonError, daemon_split, find_isorun, per_sandbox

CALLERS = 8
SETTLE_S = 0.5  # after a burst, let finished sandboxes be reaped before reading memory
MEMORY_OVERHEAD_S = 8  # daemon start and stop, settles
MEMORY_MIN_S = 10


@dataclass(frozen=True)
class Settings:
    mode: str
    time_limit_s: float
    latency_rounds: int
    latency_batch_s: float
    latency_batch_max: int
    latency_batch_min: int
    throughput_rounds: int
    throughput_batch_s: float
    workload_rounds: int
    workload_batch_s: float
    workload_batch_max: int
    memory_checkpoints: tuple[int, ...]
    memory_budget_s: float
    core_scaling: bool
    core_scaling_rounds: int
    core_scaling_batch_s: float


# Sized so that full mode ends in under 3 minutes and quick mode in under 1 on 2 cores.
FULL = Settings(mode="full", time_limit_s=175,
                latency_rounds=5, latency_batch_s=0.6, latency_batch_max=200, latency_batch_min=5,
                throughput_rounds=3, throughput_batch_s=1.0,
                workload_rounds=3, workload_batch_s=1.6, workload_batch_max=40,
                memory_checkpoints=(1000, 10_000), memory_budget_s=90,
                core_scaling=True, core_scaling_rounds=3, core_scaling_batch_s=1.5)
QUICK = Settings(mode="quick", time_limit_s=55,
                 latency_rounds=3, latency_batch_s=0.25, latency_batch_max=100, latency_batch_min=4,
                 throughput_rounds=2, throughput_batch_s=0.5,
                 workload_rounds=2, workload_batch_s=0.8, workload_batch_max=20,
                 memory_checkpoints=(200, 1000), memory_budget_s=22,
                 core_scaling=False, core_scaling_rounds=0, core_scaling_batch_s=0)


class Clock:
    """Time left in the run, so that each phase can decide whether it still fits."""

    def __init__(self, limit_s: float):
        self.start = time.monotonic()
        self.limit_s = limit_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def fits(self, need_s: float) -> bool:
        return self.elapsed() + need_s <= self.limit_s


class Bench:
    """Holds what the phases share: settings, work folder, daemons, results."""

    def __init__(self, settings: Settings, work: Path, daemon_config: str | None):
        self.s = settings
        self.work = work
        self.daemon_config = daemon_config
        self.clock = Clock(settings.time_limit_s)
        self.daemons: list[Daemon] = []
        self.started: list[ap.Approach] = []
        self.numbers = measure.CallNumbers()
        self.results = {"meta": report.machine_info(asdict(settings)), "approaches": {},
                        "workloads": {}, "isorun_memory": {}, "core_scaling": {}, "notes": []}
        self.isorun_note = find_isorun()

    # ---- set-up ---------------------------------------------------------------------------

    def new_daemon(self, name: str, cpus: str | None = None) -> Daemon:
        daemon = Daemon(self.work, name, cpus=cpus, config=self.daemon_config)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def candidates(self) -> list:
        """Factories in report order; isorun's starts a daemon, so it is built lazily too."""
        return [("isorun", "isorun (client → daemon → fresh sandbox)", self.make_isorun),
                ("vm2", "vm2 peer", lambda: ap.Vm2(workers=os.cpu_count() or 2)),
                ("fork_ns", "floor: fork + namespaces", lambda: ap.fork_floor("ns")),
                ("fork", "plain fork()", lambda: ap.fork_floor("plain")),
                ("bwrap", "bwrap + python3 -I -S", ap.Bwrap),
                ("subprocess", "python3 -I -S", ap.subprocess_python)]

    def make_isorun(self) -> ap.Approach:
        if self.isorun_note:
            raise ap.Skip(self.isorun_note)
        try:
            return ap.Isorun(self.new_daemon("isorund"))
        except DaemonError as exc:
            raise ap.Skip(f"skipped: {exc}") from exc

    def start_approach(self, approach: ap.Approach) -> ap.Approach | None:
        """Starts and warms one approach; on failure records why and returns None."""
        entry = self.results["approaches"].setdefault(approach.key, {"label": approach.label})
        entry["label"] = approach.label
        try:
            approach.start()
        except ap.Skip as exc:
            entry.update(status="skipped", note=str(exc))
            return None
        except Exception as exc:  # an approach that crashes on start is reported, not fatal
            approach.close()
            entry.update(status="skipped", note=f"skipped: start failed: {exc!r}")
            return None
        self.started.append(approach)
        memory = approach.memory()
        error = measure.warm_up(approach, self.numbers)
        if error:
            entry.update(status="skipped", note=f"skipped: warm-up call failed: {error}")
            return None
        entry.update(status="ok", memory={"after_start": memory} if memory else None)
        return approach

    def start_all(self) -> list[ap.Approach]:
        running = []
        for key, label, factory in self.candidates():
            try:
                approach = factory()
            except ap.Skip as exc:
                self.results["approaches"][key] = {"label": label, "status": "skipped",
                                                   "note": str(exc)}
                continue
            if self.start_approach(approach):
                running.append(approach)
        return running

    # ---- phases ----------------------------------------------------------------------------

    def echo_phase(self, running: list[ap.Approach]) -> None:
        """Latency at concurrency 1, then calls/s with 8 callers, both interleaved."""
        s = self.s
        lat = measure.interleave(running, s.latency_rounds, lambda a: measure.latency_batch(
            a, self.numbers, s.latency_batch_max, s.latency_batch_min, s.latency_batch_s))
        isorun = next((a for a in running if a.key == "isorun"), None)
        if isorun is not None:  # so far the daemon has only seen concurrency-1 calls
            self.results["isorun_daemon_split"] = daemon_split(isorun.daemon.call_lines("echo"))
        thr = measure.interleave(running, s.throughput_rounds, lambda a: measure.throughput_batch(
            a, self.numbers, CALLERS, s.throughput_batch_s))
        for a in running:
            entry = self.results["approaches"][a.key]
            samples = [ms for b in lat[a.key] for ms in b.samples_ms]
            entry["latency_ms"] = measure.summarize(samples)
            entry["calls_per_s_at_8"] = measure.calls_per_second(thr[a.key])
            entry["throughput_batches"] = [
                {"calls": b.calls, "seconds": round(b.seconds, 3)} for b in thr[a.key]]
            errors = [b for b in lat[a.key] + thr[a.key] if b.errors]
            entry["errors"] = sum(b.errors for b in errors)
            if errors:
                entry["first_error"] = errors[0].first_error
            memory = a.memory()
            if memory and entry.get("memory") is not None:
                entry["memory"]["after_benchmark"] = memory
        report.add_ratios(self.results["approaches"])

    def workload_phase(self, daemon: Daemon) -> None:
        """Each workload through isorun and in-process, call by call in pairs, the workloads
        interleaved round by round; "isorun adds" is the median of the pairs' differences."""
        s = self.s
        spin_n = wl.calibrate_spin()
        pairs = []
        for w in wl.all_workloads(spin_n):
            entry = self.results["workloads"].setdefault(w.key, {"label": w.label})
            pair = (self.start_approach_quiet(wl.isorun_for(w, daemon), entry, "isorun"),
                    self.start_approach_quiet(wl.InProcess(w), entry, "in_process"))
            if all(pair):
                pairs.append((w.key, pair))
        runs = {key: ([], [], []) for key, _ in pairs}
        for r in range(s.workload_rounds):
            shift = r % max(1, len(pairs))
            for key, (isorun, in_process) in pairs[shift:] + pairs[:shift]:
                for into, got in zip(runs[key], measure.paired_batch(
                        isorun, in_process, self.numbers, s.workload_batch_max, 3,
                        s.workload_batch_s)):
                    into.append(got)
        echo = (self.results["approaches"].get("isorun") or {}).get("latency_ms")
        for key, (iso_batches, base_batches, diffs) in runs.items():
            entry = self.results["workloads"][key]
            for side, batches in (("isorun", iso_batches), ("in_process", base_batches)):
                entry[side] = measure.summarize([ms for b in batches for ms in b.samples_ms])
                entry[f"{side}_errors"] = sum(b.errors for b in batches)
                first = next((b.first_error for b in batches if b.first_error), None)
                if first:
                    entry[f"{side}_first_error"] = first
            paired = measure.summarize([d for ds in diffs for d in ds])
            if paired:
                entry["isorun_adds_ms"] = paired["p50"]
                if echo:  # what the work costs isorun beyond an empty call (echo, same run)
                    entry["beyond_echo_ms"] = round(paired["p50"] - echo["p50"], 3)
        self.results["meta"]["spin_n"] = spin_n

    def start_approach_quiet(self, approach, entry: dict, side: str):
        """Like start_approach, for a workload half: failures go into the workload's entry."""
        try:
            approach.start()
        except Exception as exc:  # reported in the table instead
            entry[f"{side}_note"] = f"start failed: {exc!r}"
            return None
        self.started.append(approach)
        error = measure.warm_up(approach, self.numbers, calls=2)
        if error:
            entry[f"{side}_note"] = f"warm-up call failed: {error}"
            return None
        return approach

    def core_scaling_phase(self, both_cores: ap.Approach) -> None:
        """isorun calls/s at 8 callers, daemon pinned to CPU 0 vs free to use both cores."""
        s = self.s
        try:
            pinned = ap.Isorun(self.new_daemon("isorund-cpu0", cpus="0"), key="isorun_cpu0",
                               label="isorun, daemon pinned to CPU 0")
        except DaemonError as exc:
            self.results["core_scaling"] = {"note": f"skipped: {exc}"}
            return
        if not self.start_approach_quiet(pinned, self.results["core_scaling"], "pinned"):
            return
        batches = measure.interleave([both_cores, pinned], s.core_scaling_rounds,
                                     lambda a: measure.throughput_batch(
                                         a, self.numbers, CALLERS, s.core_scaling_batch_s))
        one = measure.calls_per_second(batches["isorun_cpu0"])
        two = measure.calls_per_second(batches[both_cores.key])
        self.results["core_scaling"].update(
            one_core_calls_per_s=one, two_cores_calls_per_s=two,
            speedup=round(two / one, 2) if one and two else None,
            errors=sum(b.errors for runs in batches.values() for b in runs))
        pinned.close()
        pinned.daemon.stop()

    def memory_phase(self, budget_s: float) -> None:
        """A fresh daemon's RSS/PSS/USS (with descendants): idle, then after N echo calls
        (8 callers); also what one prepared sandbox holds and a guest's peak RSS."""
        s = self.s
        try:
            daemon = self.new_daemon("isorund-memory")
        except DaemonError as exc:
            self.results["isorun_memory"] = {"note": f"skipped: {exc}"}
            return
        time.sleep(SETTLE_S)
        idle = daemon.memory()
        points = [{"calls": 0, **idle}]
        approach = ap.Isorun(daemon)
        approach.start()
        self.started.append(approach)
        done, errors = 0, 0
        deadline = time.monotonic() + budget_s
        for target in s.memory_checkpoints:
            left = deadline - time.monotonic()
            if left > 0 and done < target:
                batch = measure.throughput_batch(approach, self.numbers, CALLERS, left,
                                                 max_calls=target - done)
                done += batch.calls
                errors += batch.errors
            time.sleep(SETTLE_S)
            points.append({"calls": done, "target": target, "reached": done >= target,
                           **daemon.memory()})
        peaks = [line["peak_memory_bytes"] / 2**20 for line in daemon.call_lines("echo")
                 if line.get("peak_memory_bytes")]
        self.results["isorun_memory"] = {
            "points": points, "errors": errors, "budget_s": round(budget_s, 1),
            "per_sandbox": per_sandbox(idle),
            "guest_peak_rss_mib": measure.summarize(peaks)}
        approach.close()
        daemon.stop()

    # ---- the whole run ---------------------------------------------------------------------

    def run(self) -> dict:
        s = self.s
        running = self.start_all()
        self.echo_phase(running)
        isorun = next((a for a in running if a.key == "isorun"), None)
        for a in [a for a in running if a.key != "isorun"]:
            a.close()  # idle peers would only add noise to the isorun-only phases
        if isorun is None:
            why = self.results["approaches"]["isorun"]["note"].removeprefix("skipped: ")
            self.note(f"isorun-only phases (workloads, core scaling, daemon memory) not run: {why}")
            self.results["core_scaling"] = {"note": "not run: isorun did not start"}
            self.results["isorun_memory"] = {"note": "not run: isorun did not start"}
        else:
            need = s.workload_rounds * len(wl.KEYS) * s.workload_batch_s * 1.3 + 3
            if self.clock.fits(need + s.memory_budget_s):
                self.workload_phase(isorun.daemon)
            else:
                self.note("workloads skipped: not enough time left")
            need = s.core_scaling_rounds * 2 * s.core_scaling_batch_s + 10
            if s.core_scaling and self.clock.fits(need + s.memory_budget_s):
                self.core_scaling_phase(isorun)
            elif s.core_scaling:
                self.note("core scaling skipped: not enough time left")
            self.close_all()
            # The memory phase takes what is left, up to its budget: a short run that reaches
            # fewer calls says so in the table, which beats no reading at all.
            left = s.time_limit_s - self.clock.elapsed() - MEMORY_OVERHEAD_S
            if left >= MEMORY_MIN_S:
                self.memory_phase(min(s.memory_budget_s, left))
            else:
                self.note("daemon memory phase skipped: not enough time left")
        self.results["meta"].update(duration_s=round(self.clock.elapsed(), 1),
                                    vm2=report.vm2_version(), bwrap=report.bwrap_version(),
                                    load_end=report.load_average())
        self.results["targets"] = targets.evaluate(self.results)
        return self.results

    def note(self, text: str) -> None:
        self.results["notes"].append(text)

    def close_all(self) -> None:
        for a in self.started:
            try:
                a.close()
            except Exception:  # closing is best effort; the daemons are stopped below anyway
                pass
        for d in self.daemons:
            d.stop()
        self.started.clear()


# Time enough for 10,000 echo calls at 8 callers on a slow hour of this machine (~60 calls/s).
LEAK_BUDGET_S = 300


def leak_check(out: Path, daemon_config: str | None) -> int:
    """The full run's memory phase alone, without its time bound cutting it short: a fresh
    daemon's memory idle, after 1,000 and after 10,000 echo calls. Prints the table's row."""
    with tempfile.TemporaryDirectory(prefix="isorun-bench-") as work:
        bench = Bench(FULL, Path(work), daemon_config)
        try:
            bench.memory_phase(LEAK_BUDGET_S)
        finally:
            bench.close_all()
    memory = bench.results["isorun_memory"]
    memory["meta"] = report.machine_info({"mode": "leak", "budget_s": LEAK_BUDGET_S})
    (out / "leak.json").write_text(json.dumps(memory, indent=1) + "\n")
    for point in memory.get("points", []):
        print(f"after {point['calls']:>6,} calls: RSS {point['rss_mib']:.1f} MiB, PSS {point['pss_mib']:.1f} MiB, "
              f"{point['processes']} processes")
    row = targets.memory_rows(memory)[-1]
    print(f"{row['target']}: {row['measured']}: {row['verdict']}")
    return 0 if row["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="isorun benchmark against its peers")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter batches (< 1 min)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent),
                        help="folder for results.json, RESULTS.md, latency.png (default: bench/)")
    parser.add_argument("--daemon-config", default=None,
                        help="TOML config passed to every isorund this run starts")
    parser.add_argument("--leak", action="store_true",
                        help="only the leak check, run to its 10,000 calls however long that takes "
                             "(the full run stops it at its time bound); writes leak.json")
    parser.add_argument("--render", metavar="RESULTS_JSON", default=None,
                        help="measure nothing: redo the targets, RESULTS.md and latency.png of a "
                             "results.json written earlier")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        results["targets"] = targets.evaluate(results)
        print("wrote " + ", ".join(str(p) for p in report.write_all(results, out)), file=sys.stderr)
        return 0
    if args.leak:
        return leak_check(out, args.daemon_config)
    with tempfile.TemporaryDirectory(prefix="isorun-bench-") as work:
        bench = Bench(QUICK if args.quick else FULL, Path(work), args.daemon_config)
        try:
            results = bench.run()
        finally:
            bench.close_all()
    written = report.write_all(results, out)
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
