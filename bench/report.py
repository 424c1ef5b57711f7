"""Turning results into results.json, RESULTS.md and latency.png.

Everything here reads the results dict that run.py builds; nothing measures. The markdown is
printed too, so a terminal run shows the table without opening a file.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

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


def machine_info(settings: dict) -> dict:
    """Where and with what the numbers were taken; ratios only compare within one run."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": settings["mode"], "settings": settings,
        "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "kernel": platform.release(),
        "python": platform.python_version(), "node": _version(["node", "--version"]),
        "vm2": vm2_version(), "bwrap": bwrap_version(),
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


def _echo_table(approaches: dict) -> list[str]:
    lines = ["| approach | p50 ms | p90 ms | p99 ms | calls/s @8 | p50 ×vm2 | p50 ×floor | n |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for entry in approaches.values():
        lat = entry.get("latency_ms")
        if entry.get("status") != "ok" or not lat:
            notes.append(f"- **{entry['label']}**: {entry.get('note', 'no samples')}")
            continue
        lines.append(
            f"| {entry['label']} | {_num(lat['p50'])} | {_num(lat['p90'])} | {_num(lat['p99'])}"
            f" | {_num(entry.get('calls_per_s_at_8'), 0)} | {_num(entry.get('p50_over_vm2'))}"
            f" | {_num(entry.get('p50_over_fork_ns'))} | {lat['n']} |")
        if entry.get("errors"):
            notes.append(f"- **{entry['label']}**: {entry['errors']} failed calls, first: "
                         f"{entry.get('first_error')}")
    return lines + ([""] + notes if notes else [])


def _memory_table(approaches: dict, daemon_memory: dict) -> list[str]:
    lines = ["| process tree | when | RSS MiB | PSS MiB | processes |",
             "| --- | --- | ---: | ---: | ---: |"]
    for entry in approaches.values():
        for when, mem in (entry.get("memory") or {}).items():
            lines.append(f"| {entry['label']} | {when.replace('_', ' ')} | {_num(mem['rss_mib'], 1)}"
                         f" | {_num(mem['pss_mib'], 1)} | {mem['processes']} |")
    for point in daemon_memory.get("points", []):
        when = "idle after start" if not point["calls"] else f"after {point['calls']:,} calls"
        if point.get("target") and not point["reached"]:
            when += f" (time bound hit before {point['target']:,})"
        lines.append(f"| isorund + descendants (fresh daemon) | {when} | "
                     f"{_num(point['rss_mib'], 1)} | {_num(point['pss_mib'], 1)} | "
                     f"{point['processes']} |")
    if daemon_memory.get("note"):
        lines += ["", f"Daemon memory: {daemon_memory['note']}"]
    return lines


def _workload_table(workloads: dict) -> list[str]:
    lines = ["| workload | isorun p50 | p90 | p99 | in-process p50 | isorun adds (p50) | n |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    notes = []
    for entry in workloads.values():
        iso, base = entry.get("isorun"), entry.get("in_process")
        if not iso or not base:
            why = entry.get("isorun_note") or entry.get("in_process_note") or "no samples"
            notes.append(f"- **{entry['label']}**: {why}")
            continue
        lines.append(f"| {entry['label']} | {_num(iso['p50'])} | {_num(iso['p90'])} | "
                     f"{_num(iso['p99'])} | {_num(base['p50'], 3)} | "
                     f"{_num(entry.get('isorun_adds_ms'))} | {iso['n']} |")
        for side in ("isorun", "in_process"):
            if entry.get(f"{side}_errors"):
                notes.append(f"- **{entry['label']}** ({side}): {entry[f'{side}_errors']} failed"
                             f" calls, first: {entry.get(f'{side}_first_error')}")
    return lines + ([""] + notes if notes else [])


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [
        "# isorun benchmark results", "",
        f"{meta['date_utc']}, `{meta['mode']}` mode, {meta['duration_s']} s; {meta['cpus']} CPUs"
        f" ({meta['cpu_model']}), Linux {meta['kernel']}, Python {meta['python']}, "
        f"Node {meta['node']}, vm2 {meta['vm2']}, {meta['bwrap'] or 'no bwrap'}.", "",
        "## echo(x) → x with x = [i, \"hi\"]", "",
        "Latency at concurrency 1; calls/s with 8 concurrent callers. Approaches ran in "
        "interleaved batches, so compare the ratios rather than absolute numbers across runs. "
        "×vm2 and ×floor divide each p50 by the p50 of vm2 and of the fork + namespaces floor.",
        "", *_echo_table(results["approaches"]), "",
        "## Memory (RSS counts shared pages in every process; PSS splits them)", "",
        *_memory_table(results["approaches"], results.get("isorun_memory", {})), "",
    ]
    if results.get("workloads"):
        out += ["## isorun workloads (concurrency 1, ms)", "",
                "\"isorun adds\" = isorun p50 − p50 of the same function called in-process in a "
                "warm interpreter (modules already imported).", "",
                *_workload_table(results["workloads"]), ""]
    scaling = results.get("core_scaling") or {}
    if scaling.get("two_cores_calls_per_s") or scaling.get("note") or scaling.get("pinned_note"):
        out += ["## Core scaling (isorun, 8 callers)", ""]
        if scaling.get("two_cores_calls_per_s"):
            out += ["| daemon on | calls/s |", "| --- | ---: |",
                    f"| CPU 0 only (taskset -c 0) | {_num(scaling['one_core_calls_per_s'], 0)} |",
                    f"| both cores | {_num(scaling['two_cores_calls_per_s'], 0)} |",
                    f"| speed-up | {_num(scaling['speedup'])}× |", ""]
        else:
            out += [scaling.get("note") or scaling.get("pinned_note"), ""]
    if results.get("notes"):
        out += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    return "\n".join(out)


# ---- plot --------------------------------------------------------------------------------------

def plot(results: dict, path: Path) -> bool:
    """Percentiles per approach (and per workload) on a log scale; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    echo = [(e["label"], e["latency_ms"]) for e in results["approaches"].values()
            if e.get("status") == "ok" and e.get("latency_ms")]
    work = [(e["label"], e["isorun"], e["in_process"]) for e in results["workloads"].values()
            if e.get("isorun") and e.get("in_process")]
    panels = 2 if work else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 0.55 * max(len(echo), 5) + 1.8),
                             squeeze=False)
    _percentile_panel(axes[0][0], [(label, lat, None) for label, lat in echo],
                      "echo latency, concurrency 1")
    if work:
        _percentile_panel(axes[0][1], work, "isorun workloads (× = in-process p50)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _percentile_panel(ax, rows: list, title: str) -> None:
    styles = (("p50", "o", "tab:blue"), ("p90", "s", "tab:orange"), ("p99", "^", "tab:red"))
    for y, (_, lat, base) in enumerate(rows):
        ax.plot([lat["p50"], lat["p99"]], [y, y], color="0.8", zorder=1)
        for key, marker, color in styles:
            ax.scatter(lat[key], y, marker=marker, color=color, zorder=2,
                       label=key if y == 0 else None)
        if base:
            ax.scatter(max(base["p50"], 1e-3), y, marker="x", color="black", zorder=2,
                       label="in-process p50" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (log scale)")
    ax.set_title(title)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def write_all(results: dict, out: Path) -> list[Path]:
    written = []
    if plot(results, out / "latency.png"):
        written.append(out / "latency.png")
    else:
        results["notes"].append("latency.png not drawn: matplotlib is not installed")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(results))
    return [out / "results.json", out / "RESULTS.md"] + written
