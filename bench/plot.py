"""latency.png: what the tables say, at a glance. Reads the results dict; measures nothing.

Three panels: echo latency percentiles per approach (log scale: the approaches span 1 ms to
50 ms), echo calls/s with 8 callers, and per workload the isorun p50 split into the guest's
own work (the in-process p50) and what isorun adds, with p90 and p99 marked.
"""
from __future__ import annotations

from pathlib import Path

NICE_TICKS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
PERCENTILES = (("p50", "o", "tab:blue"), ("p90", "s", "tab:orange"), ("p99", "^", "tab:red"))


def draw(results: dict, path: Path) -> bool:
    """Writes the figure to ``path``; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return False
    echo = [e for e in results["approaches"].values()
            if e.get("status") == "ok" and e.get("latency_ms")]
    work = [e for e in results.get("workloads", {}).values()
            if e.get("isorun") and e.get("in_process")]
    panels = 3 if work else 2
    height = 0.5 * max(len(echo), len(work), 5) + 2.0
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, height), squeeze=False)
    _echo_latency(axes[0][0], echo, ticker)
    _echo_throughput(axes[0][1], echo)
    if work:
        _workloads(axes[0][2], work)
    meta = results["meta"]
    fig.suptitle(f"isorun benchmark, {meta['mode']} mode, {meta['date_utc']}, "
                 f"{meta['cpus']} CPUs", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _labels(ax, names: list[str]) -> None:
    ax.set_yticks(range(len(names)), [_wrap(n) for n in names], fontsize="small")
    ax.invert_yaxis()


def _wrap(label: str, width: int = 30) -> str:
    """Breaks a long label on the space nearest its middle, so the panels keep their room."""
    if len(label) <= width:
        return label
    middle = len(label) // 2
    spaces = [i for i, c in enumerate(label) if c == " "]
    if not spaces:
        return label
    cut = min(spaces, key=lambda i: abs(i - middle))
    return label[:cut] + "\n" + label[cut + 1:]


def _echo_latency(ax, entries: list[dict], ticker) -> None:
    for y, entry in enumerate(entries):
        lat = entry["latency_ms"]
        ax.plot([lat["p50"], lat["p99"]], [y, y], color="0.8", zorder=1)
        for key, marker, color in PERCENTILES:
            ax.scatter(lat[key], y, marker=marker, color=color, zorder=2,
                       label=key if y == 0 else None)
    _labels(ax, [e["label"] for e in entries])
    ax.set_xscale("log")
    # Plain numbers (2, 5, 10, 20 ms) instead of matplotlib's 2×10⁰ on every minor tick.
    low, high = ax.get_xlim()
    ax.set_xticks([v for v in NICE_TICKS if low <= v <= high])
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("ms, log scale")
    ax.set_title("echo latency, concurrency 1")
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize="small")


def _echo_throughput(ax, entries: list[dict]) -> None:
    rates = [e.get("calls_per_s_at_8") or 0 for e in entries]
    colors = ["tab:blue" if e.get("label", "").startswith("isorun") else "0.6" for e in entries]
    ax.barh(range(len(entries)), rates, color=colors)
    for y, rate in enumerate(rates):
        ax.text(rate, y, f" {rate:,.0f}", va="center", fontsize="small")
    _labels(ax, [e["label"] for e in entries])
    ax.set_xlim(0, max(rates + [1]) * 1.2)
    ax.set_xlabel("calls/s")
    ax.set_title("echo throughput, 8 callers")
    ax.grid(axis="x", alpha=0.3)


def _workloads(ax, entries: list[dict]) -> None:
    own = [e["in_process"]["p50"] for e in entries]
    adds = [max(0.0, e["isorun"]["p50"] - e["in_process"]["p50"]) for e in entries]
    ys = range(len(entries))
    ax.barh(ys, own, color="0.6", label="guest's own work (in-process p50)")
    ax.barh(ys, adds, left=own, color="tab:blue", label="isorun adds (p50)")
    for y, entry in enumerate(entries):
        for key, marker, color in PERCENTILES[1:]:
            ax.scatter(entry["isorun"][key], y, marker=marker, color=color, zorder=3,
                       label=f"isorun {key}" if y == 0 else None)
    _labels(ax, [e["label"] for e in entries])
    ax.set_xlabel("ms")
    ax.set_title("isorun workloads, concurrency 1")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small")
