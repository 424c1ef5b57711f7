"""Resource attacks: each ends at its limit, as a clear error or an OSError in the guest, and
takes nothing from the host or the next call (checked after every test by ``daemon_survives``)."""
import time

import pytest

from isorun import errors

MiB = 1 << 20


def test_fork_bomb_stops_at_max_processes(attack, secure_daemon):
    result = attack("fork_bomb", timeout=20)
    assert result["stopped_by"] == "EAGAIN"
    assert 0 < result["made"] < secure_daemon.limits["max_processes"]


def test_memory_bomb_is_a_memory_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("memory_bomb", timeout=20)
    assert raised.value.limit == "memory"


def test_cpu_spin_ends_at_cpu_seconds(attack):
    # A limit error, not RuntimeTimeoutError: the CPU limit (2 s) ended it, not the 20 s timeout.
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("cpu_spin", timeout=20)
    assert raised.value.limit == "cpu"


def test_cpu_spin_ignoring_sigxcpu_is_killed_by_the_kernel(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("cpu_spin", "attack_ignoring_sigxcpu", timeout=20)
    assert raised.value.limit == "cpu"


def test_filling_tmp_ends_with_enospc(attack, secure_daemon):
    result = attack("fill_disk", "fill", args=[256 << 10], timeout=20)
    assert result["stopped_by"] == "ENOSPC"
    assert result["written"] <= secure_daemon.limits["tmp_bytes"]


def test_a_file_over_max_file_bytes_ends_with_efbig(attack, secure_daemon):
    result = attack("fill_disk", "huge_file", args=[8 * MiB], timeout=20)
    assert result == {"written": secure_daemon.limits["max_file_bytes"], "stopped_by": "EFBIG"}


def test_empty_files_in_tmp_run_out_of_inodes(attack, secure_daemon):
    result = attack("fill_disk", "inodes", timeout=20)
    assert result["stopped_by"] == "ENOSPC"
    assert result["made"] <= secure_daemon.limits["tmp_bytes"] // 4096


def test_output_flood_is_an_output_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("floods", "output", timeout=20)
    assert raised.value.limit == "output"


def test_huge_result_is_a_result_limit_error(attack):
    with pytest.raises(errors.ResourceLimitError) as raised:
        attack("floods", "result", args=[20 * MiB], timeout=20)
    assert raised.value.limit == "result"


@pytest.mark.parametrize("func", ["huge_frame", "garbage_frame"])
def test_garbage_on_the_channel_ends_only_that_call(attack, func):
    started = time.monotonic()
    with pytest.raises(errors.IsorunError):
        attack("channel_garbage", func, timeout=20)
    assert time.monotonic() - started < 8  # the daemon stopped reading at once; the guest slept 10 s
