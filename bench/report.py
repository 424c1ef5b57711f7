"""Turning results into results.json, RESULTS.md and latency.png (drawn by ``plot``).

Everything here reads the results dict that run.py builds; nothing measures. The markdown is
printed too, so a terminal run shows the tables without opening a file.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import plot

PEERS = Path(__file__).resolve().parent / "peers"
REFERENCES = {"vm2": "×vm2", "fork_ns": "×floor"}


def _version(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, timeout=10, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if out.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def vm2_version() -> str | None:
    """The vm2 actually installed (None before npm install ran)."""
    try:
        return json.loads((PEERS / "node_modules" / "vm2" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def bwrap_version() -> str | None:
    return _version(["bwrap", "--version"])


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was besides the benchmark."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def machine_info(settings: dict) -> dict:
    """Where and with what the numbers were taken; ratios only compare within one run."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": settings["mode"], "settings": settings,
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "kernel": platform.release(),
        "python": platform.python_version(), "node": _version(["node", "--version"]),
        "vm2": vm2_version(), "bwrap": bwrap_version(), "load_start": load_average(),
    }


def add_ratios(approaches: dict) -> None:
    """p50 of each approach divided by the p50 of vm2 and of the fork+namespaces floor."""
    for ref_key in REFERENCES:
        ref = (approaches.get(ref_key) or {}).get("latency_ms")
        for entry in approaches.values():
            mine = entry.get("latency_ms")
            if ref and mine and ref["p50"] > 0:
                entry[f"p50_over_{ref_key}"] = round(mine["p50"] / ref["p50"], 2)


# ---- markdown ----------------------------------------------------------------------------------

def _num(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _note(text: str) -> str:
    """A note inside a Markdown list: a daemon log tail keeps its lines, as a code block."""
    if "\n" not in text:
        return text
    head, _, tail = text.partition("log:")
    return f"{head.strip()} log (tail):\n\n  ```\n" + "".join(
        f"  {line}\n" for line in tail.strip().splitlines()[-12:]) + "  ```"


def _targets_table(rows: list[dict]) -> list[str]:
    lines = ["| target (issue 7) | measured in this run | required | verdict |",
             "| --- | --- | --- | --- |"]
    for row in rows:
        verdict = f"**{row['verdict']}**" if row["ok"] is False else row["verdict"]
        lines.append(f"| {row['target']} | {row['measured']} | {row['required']} | {verdict} |")
    return lines


def _echo_table(approaches: dict) -> list[str]:
    lines = ["| approach | p50 ms | p90 ms | p99 ms | calls/s @8 | p50 ×vm2 | p50 ×floor | n |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for entry in approaches.values():
        lat = entry.get("latency_ms")
        if entry.get("status") != "ok" or not lat:
            notes.append(f"- **{entry['label']}**: {_note(entry.get('note', 'no samples'))}")
            continue
        lines.append(
            f"| {entry['label']} | {_num(lat['p50'])} | {_num(lat['p90'])} | {_num(lat['p99'])}"
            f" | {_num(entry.get('calls_per_s_at_8'), 0)} | {_num(entry.get('p50_over_vm2'))}"
            f" | {_num(entry.get('p50_over_fork_ns'))} | {lat['n']} |")
        if entry.get("errors"):
            notes.append(f"- **{entry['label']}**: {entry['errors']} failed calls, first: "
                         f"{entry.get('first_error')}")
    return lines + ([""] + notes if notes else [])


def _daemon_split(split: dict | None, approaches: dict) -> list[str]:
    """One sentence: how much of isorun's echo p50 the daemon itself accounts for."""
    lat = (approaches.get("isorun") or {}).get("latency_ms")
    if not split or not lat or not split.get("total_ms"):
        return []
    total, run = split["total_ms"]["p50"], split["run_ms"]["p50"]
    return [f"Of isorun's echo p50 ({lat['p50']:.2f} ms at the client), the daemon's own log puts "
            f"{total:.2f} ms (p50) between receiving a call and answering it, of which {run:.2f} ms "
            f"from sending the plan to the sandbox until its outcome; the remaining "
            f"~{lat['p50'] - total:.2f} ms are the client, gRPC and the socket "
            f"({split['calls']} concurrency-1 calls).", ""]


def _mem_cells(mem: dict) -> str:
    return f"{_num(mem['rss_mib'], 1)} | {_num(mem['pss_mib'], 1)} | {_num(mem.get('uss_mib'), 1)}"


def _memory_table(approaches: dict, daemon_memory: dict) -> list[str]:
    lines = ["| process tree | when | RSS MiB | PSS MiB | USS MiB | processes |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for point in daemon_memory.get("points", []):
        when = "idle after start" if not point["calls"] else f"after {point['calls']:,} calls"
        if point.get("target") and not point["reached"]:
            when += f" (time bound hit before {point['target']:,})"
        lines.append(f"| isorund + all descendants (fresh daemon) | {when} | {_mem_cells(point)}"
                     f" | {point['processes']} |")
    for entry in approaches.values():
        for when, mem in (entry.get("memory") or {}).items():
            lines.append(f"| {entry['label']} | {when.replace('_', ' ')} | {_mem_cells(mem)} | "
                         f"{mem['processes']} |")
    if daemon_memory.get("note"):
        lines += ["", f"Daemon memory: {_note(daemon_memory['note'])}"]
    return lines


def _idle_roles_table(daemon_memory: dict) -> list[str]:
    """The idle daemon's tree by role, then one prepared sandbox and a guest's peak."""
    points = daemon_memory.get("points") or []
    if not points or not points[0].get("by_role"):
        return []
    lines = ["| idle isorund, by role | processes | RSS MiB | PSS MiB | USS MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for role, mem in points[0]["by_role"].items():
        lines.append(f"| {role.replace('_', ' ')} | {mem['processes']} | {_mem_cells(mem)} |")
    one = daemon_memory.get("per_sandbox")
    if one:
        lines.append(f"| **one prepared sandbox** (mean of {one['sandboxes']}) | 1 | "
                     f"{_mem_cells(one)} |")
    peak = daemon_memory.get("guest_peak_rss_mib")
    notes = [""]
    if peak:
        notes.append(f"Guest peak RSS during an echo call (ru_maxrss, from the daemon's call log): "
                     f"p50 {peak['p50']:.1f} MiB, max {peak['max']:.1f} MiB over {peak['n']:,} calls. "
                     "Most of it is shared with the zygote (copy-on-write); the sandbox's own cost "
                     "is its USS.")
    return lines + notes


def _workload_table(workloads: dict) -> list[str]:
    lines = ["| workload | isorun p50 | p90 | p99 | in-process p50 | isorun adds (p50) "
             "| beyond an echo call | n |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for entry in workloads.values():
        iso, base = entry.get("isorun"), entry.get("in_process")
        if not iso or not base:
            why = entry.get("isorun_note") or entry.get("in_process_note") or "no samples"
            notes.append(f"- **{entry['label']}**: {_note(why)}")
            continue
        lines.append(f"| {entry['label']} | {_num(iso['p50'])} | {_num(iso['p90'])} | "
                     f"{_num(iso['p99'])} | {_num(base['p50'], 3)} | "
                     f"{_num(entry.get('isorun_adds_ms'))} | {_num(entry.get('beyond_echo_ms'))} "
                     f"| {iso['n']} |")
        for side in ("isorun", "in_process"):
            if entry.get(f"{side}_errors"):
                notes.append(f"- **{entry['label']}** ({side}): {entry[f'{side}_errors']} failed"
                             f" calls, first: {entry.get(f'{side}_first_error')}")
    return lines + ([""] + notes if notes else [])


def _scaling(scaling: dict) -> list[str]:
    if scaling.get("two_cores_calls_per_s"):
        return ["| daemon on | calls/s |", "| --- | ---: |",
                f"| CPU 0 only (taskset -c 0) | {_num(scaling['one_core_calls_per_s'], 0)} |",
                f"| both cores | {_num(scaling['two_cores_calls_per_s'], 0)} |",
                f"| speed-up | {_num(scaling['speedup'])}× |", "",
                "The harness (the client side) is not pinned: with the daemon on CPU 0 it still "
                "has CPU 1 to itself.", ""]
    note = scaling.get("note") or scaling.get("pinned_note")
    return [_note(note) if note else "Not run (full mode only).", ""]


def _header(meta: dict) -> list[str]:
    load = meta.get("load_start")
    busy = load and load[0] > 0.5 * (meta["cpus"] or 1)
    return [
        "# isorun benchmark results", "",
        f"{meta['date_utc']}, `{meta['mode']}` mode, {meta['duration_s']} s; {meta['cpus']} CPUs"
        f" ({meta['cpu_model']}), Linux {meta['kernel']}, Python {meta['python']}, "
        f"Node {meta['node']}, vm2 {meta['vm2']}, {meta['bwrap'] or 'no bwrap'}.", "",
        f"Load average before the run: {', '.join(f'{v:.2f}' for v in load) if load else 'unknown'}"
        + (" — **the machine was busy; absolute numbers are noisy, ratios less so.**" if busy
           else "."), "",
        "Reproduce: `make bench` (full, < 3 min) or `make bench BENCH_ARGS=--quick` (< 1 min); "
        "method in [README.md](README.md), where the time goes in [PROFILE.md](PROFILE.md).", ""]


def markdown(results: dict) -> str:
    approaches = results["approaches"]
    memory = results.get("isorun_memory", {})
    out = [*_header(results["meta"]),
           "## Targets", "", *_targets_table(results.get("targets", [])), "",
           "## echo(x) → x with x = [i, \"hi\"]", "",
           "Latency at concurrency 1; calls/s with 8 concurrent callers. Approaches ran in "
           "interleaved batches, so compare ratios rather than absolute numbers across runs. "
           "×vm2 and ×floor divide each p50 by the p50 of vm2 and of the fork + namespaces floor.",
           "", *_echo_table(approaches), "",
           *_daemon_split(results.get("isorun_daemon_split"), approaches),
           "## Memory", "",
           "RSS counts a shared page in every process that maps it (so sums over a zygote and its "
           "forks overstate); PSS splits shared pages between their processes (the sum is what the "
           "tree really holds); USS counts private pages only (what exiting would free).", "",
           *_memory_table(approaches, memory), "", *_idle_roles_table(memory), ""]
    if results.get("workloads"):
        out += ["## isorun workloads (concurrency 1, ms)", "",
                "Each isorun call is paired with the same function called in-process in a warm "
                "interpreter (modules already imported), alternating. \"isorun adds\" = median "
                "over the pairs of (isorun − in-process); \"beyond an echo call\" subtracts "
                "isorun's echo p50 of this run as well: the cost that grows with the work.", "",
                *_workload_table(results["workloads"]), ""]
    out += ["## Core scaling (isorun, 8 callers)", "", *_scaling(results.get("core_scaling") or {})]
    if results.get("notes"):
        out += ["## Notes", "", *[f"- {_note(n)}" for n in results["notes"]], ""]
    return "\n".join(out)


def write_all(results: dict, out: Path) -> list[Path]:
    written = []
    if plot.draw(results, out / "latency.png"):
        written.append(out / "latency.png")
    else:
        results["notes"].append("latency.png not drawn: matplotlib is not installed")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(results))
    return [out / "results.json", out / "RESULTS.md"] + written
