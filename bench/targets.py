"""The targets of issue 7, checked against the numbers of the same run.

Each target becomes one row: what it asks, what was measured, and a verdict — ``pass``,
``FAIL`` (with by how much) or ``n/a`` (with why it could not be judged: an approach was
skipped, a phase ran out of time). Only ratios between approaches measured in the same
interleaved run are used, never numbers remembered from another run or another machine.
"""
from __future__ import annotations

MB_IN_MIB = 1e6 / 2**20  # the issue says MB; /proc reports KiB, which the harness turns into MiB
IDLE_LIMIT_MB = 80
LEAK_TOLERANCE = 0.10
CORE_SCALING_MIN = 1.2  # "scales with cores": a second core must buy clearly more than noise


def one_line(text: str, limit: int = 160) -> str:
    """A reason fit for a table cell: a multi-line note (a daemon's traceback) becomes its
    last line, which names the error."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = lines[-1] if len(lines) > 1 else (lines[0] if lines else "")
    if len(lines) > 1:
        line = f"{lines[0].split(';')[0]}: {line}" if ";" in lines[0] else line
    line = line.replace("|", "/")
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _row(target: str, measured: str, required: str, ok: bool | None, why: str = "") -> dict:
    why = one_line(why)
    if ok is None:
        verdict = f"n/a: {why}" if why else "n/a"
    else:
        verdict = "pass" if ok else ("FAIL: " + why if why else "FAIL")
    return {"target": target, "measured": measured, "required": required, "verdict": verdict,
            "ok": ok}


def _missing(name: str, entry: dict | None) -> str:
    if not entry:
        return f"{name} was not measured"
    return f"{name}: {entry.get('note') or 'no samples'}"


def _p50(approaches: dict, key: str) -> float | None:
    return ((approaches.get(key) or {}).get("latency_ms") or {}).get("p50")


def _rate(approaches: dict, key: str) -> float | None:
    return (approaches.get(key) or {}).get("calls_per_s_at_8")


def _ratio_row(target: str, required: str, mine: float | None, theirs: float | None,
               their_name: str, their_entry: dict | None, unit: str, compare) -> dict:
    """A row comparing isorun's number with a peer's: ``compare(ratio)`` decides."""
    if mine is None:
        return _row(target, "–", required, None, "isorun was not measured")
    if theirs is None or theirs <= 0:
        return _row(target, f"isorun {mine:.2f} {unit}", required, None,
                    _missing(their_name, their_entry))
    ratio = mine / theirs
    ok, why = compare(ratio)
    measured = f"isorun {mine:,.2f} {unit} vs {their_name} {theirs:,.2f} {unit} = {ratio:.2f}×"
    return _row(target, measured, required, ok, "" if ok else why)


def latency_rows(approaches: dict) -> list[dict]:
    mine = _p50(approaches, "isorun")
    rows = [
        _ratio_row("echo p50 at or below the vm2 approach's p50", "≤ 1.00× vm2",
                   mine, _p50(approaches, "vm2"), "vm2", approaches.get("vm2"), "ms",
                   lambda r: (r <= 1.0, f"{(r - 1) * 100:.0f}% slower than vm2")),
        _ratio_row("echo p50 within 1.2× of the fork + namespaces floor", "≤ 1.20× floor",
                   mine, _p50(approaches, "fork_ns"), "floor", approaches.get("fork_ns"), "ms",
                   lambda r: (r <= 1.2, f"{r / 1.2:.2f}× over the allowed 1.2× floor")),
    ]
    bwrap = _p50(approaches, "bwrap")
    if mine is None or bwrap is None:
        why = "isorun was not measured" if mine is None else _missing("bwrap", approaches.get("bwrap"))
        rows.append(_row("at least 10× faster than bwrap + python -I -S per call (p50)", "–",
                         "≥ 10×", None, why))
    else:
        speedup = bwrap / mine
        rows.append(_row("at least 10× faster than bwrap + python -I -S per call (p50)",
                         f"bwrap {bwrap:,.2f} ms ÷ isorun {mine:,.2f} ms = {speedup:.1f}×",
                         "≥ 10×", speedup >= 10, f"only {speedup:.1f}× faster"))
    return rows


def throughput_rows(approaches: dict, scaling: dict) -> list[dict]:
    rows = [_ratio_row("calls/s with 8 callers at least 0.8× the floor's", "≥ 0.80× floor",
                       _rate(approaches, "isorun"), _rate(approaches, "fork_ns"), "floor",
                       approaches.get("fork_ns"), "calls/s",
                       lambda r: (r >= 0.8, f"{r / 0.8:.2f}× of the required 0.8× floor"))]
    one, two = scaling.get("one_core_calls_per_s"), scaling.get("two_cores_calls_per_s")
    target = "throughput scales with cores (daemon on 2 cores vs taskset to 1)"
    required = f"≥ {CORE_SCALING_MIN:.1f}×"
    if one and two:
        speedup = two / one
        rows.append(_row(target, f"{one:,.0f} → {two:,.0f} calls/s = {speedup:.2f}×", required,
                         speedup >= CORE_SCALING_MIN, f"a second core adds {(speedup - 1) * 100:.0f}%"))
    else:
        why = scaling.get("note") or scaling.get("pinned_note") or "not run (full mode only)"
        rows.append(_row(target, "–", required, None, why))
    return rows


def memory_rows(memory: dict) -> list[dict]:
    points = memory.get("points") or []
    limit_mib = IDLE_LIMIT_MB * MB_IN_MIB
    target = "idle daemon + zygote + pooled sandboxes under 80 MB RSS in all"
    required = f"< {IDLE_LIMIT_MB} MB ({limit_mib:.1f} MiB)"
    if not points:
        return [_row(target, "–", required, None, memory.get("note") or "not measured"),
                _row("RSS after 10,000 calls within 10% of RSS after 1,000", "–", "≤ 10%",
                     None, memory.get("note") or "not measured")]
    idle = points[0]
    rows = [_row(target, f"RSS {idle['rss_mib']:.1f} MiB (PSS {idle['pss_mib']:.1f}, "
                         f"{idle['processes']} processes)", required,
                 idle["rss_mib"] < limit_mib, f"{idle['rss_mib'] / limit_mib:.2f}× the limit")]
    rows += _other_readings(idle, required, limit_mib)
    rows.append(_leak_row(points[1:]))
    return rows


def _other_readings(idle: dict, required: str, limit_mib: float) -> list[dict]:
    """The same limit under the two other readings of "the daemon with its zygote in all",
    marked as such: summed RSS counts every page the zygote shares with its forks once per
    process, so it grows with the pool size even though the pool adds little memory."""
    rows = []
    pss = idle["pss_mib"]
    rows.append(_row("(other reading) the same tree's PSS: shared pages counted once", f"PSS {pss:.1f} MiB",
                     required, pss < limit_mib, f"{pss / limit_mib:.2f}× the limit"))
    roles = idle.get("by_role") or {}
    if "daemon" in roles and "zygote" in roles:
        rss = roles["daemon"]["rss_mib"] + roles["zygote"]["rss_mib"]
        rows.append(_row("(other reading) daemon + zygote RSS, pooled sandboxes left out",
                         f"RSS {rss:.1f} MiB", required, rss < limit_mib, f"{rss / limit_mib:.2f}× the limit"))
    for row in rows:
        row["info"] = True
    return rows


def _leak_row(points: list[dict]) -> dict:
    """Compares the last two checkpoints (1,000 and 10,000 calls in full mode)."""
    if len(points) < 2:
        return _row("RSS after 10,000 calls within 10% of RSS after 1,000", "–", "≤ 10%", None,
                    "fewer than two checkpoints")
    low, high = points[-2], points[-1]
    target = (f"RSS after {high['target']:,} calls within 10% of RSS after {low['target']:,}"
              " (no leak)")
    growth = (high["rss_mib"] - low["rss_mib"]) / low["rss_mib"]
    measured = (f"{low['rss_mib']:.1f} → {high['rss_mib']:.1f} MiB ({growth * 100:+.1f}%), "
                f"after {low['calls']:,} and {high['calls']:,} calls")
    if not high["reached"] or not low["reached"]:
        return _row(target, measured, "≤ 10%", None,
                    f"time bound hit after {high['calls']:,} calls, before {high['target']:,}")
    return _row(target, measured, "≤ 10%", abs(growth) <= LEAK_TOLERANCE,
                f"grew {growth * 100:.1f}%")


def evaluate(results: dict) -> list[dict]:
    approaches = results.get("approaches", {})
    return (latency_rows(approaches)
            + throughput_rows(approaches, results.get("core_scaling") or {})
            + memory_rows(results.get("isorun_memory") or {}))
