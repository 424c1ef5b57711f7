"""bench/targets.py: the memory rows' verdicts, which `make bench BENCH_ARGS=--leak` turns into
its exit status (0 only for a pass)."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_targets", Path(__file__).resolve().parents[2] / "bench" / "targets.py")
targets = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(targets)


def _point(calls: int, rss: float, target: int | None = None, reached: bool = True) -> dict:
    return {"calls": calls, "target": target or calls, "reached": reached, "rss_mib": rss, "pss_mib": rss / 2,
            "processes": 6, "by_role": {"daemon": {"rss_mib": 40.0}, "zygote": {"rss_mib": 30.0}}}


def _leak(points: list[dict]) -> dict:
    return targets.memory_rows({"points": points})[-1]


@pytest.mark.parametrize("after, ok", [(157.6, True), (171.0, True), (172.0, False), (139.0, False)])
def test_rss_may_move_by_up_to_ten_percent_between_1000_and_10000_calls(after, ok):
    row = _leak([_point(0, 150.0), _point(1000, 155.5), _point(10_000, after)])
    assert row["ok"] is ok, row
    assert (row["verdict"] == "pass") if ok else row["verdict"].startswith("FAIL: grew")


def test_a_phase_cut_short_by_its_time_bound_is_not_judged():
    row = _leak([_point(0, 150.0), _point(1000, 155.5), _point(8379, 156.0, target=10_000, reached=False)])
    assert row["ok"] is None and "time bound hit after 8,379 calls, before 10,000" in row["verdict"]


def test_without_two_checkpoints_nothing_is_judged():
    assert _leak([_point(0, 150.0)])["ok"] is None
    assert targets.memory_rows({"note": "daemon did not start"})[-1]["verdict"] == "n/a: daemon did not start"


def test_the_idle_row_is_judged_in_mib_against_80_mb():
    limit_mib = 80e6 / 2**20  # 76.29 MiB
    assert targets.memory_rows({"points": [_point(0, limit_mib - 0.1)]})[0]["ok"] is True
    assert targets.memory_rows({"points": [_point(0, limit_mib + 0.1)]})[0]["ok"] is False
