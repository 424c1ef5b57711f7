"""The zygote's host-id allocation: every id once, then the longest-released first."""
import pytest

from isorund.zygote import TRANSIENT, HostIds, IdsInUse


def test_every_id_is_used_once_before_any_comes_back():
    ids = HostIds(1000, 4)
    first = [ids.take() for _ in range(3)]
    ids.release(first[1])
    assert first == [1000, 1001, 1002]
    assert ids.take() == 1003  # a fresh id before the released one


def test_released_ids_come_back_in_the_order_they_were_released():
    ids = HostIds(1000, 3)
    taken = [ids.take() for _ in range(3)]
    for host_id in (taken[2], taken[0]):
        ids.release(host_id)
    assert [ids.take(), ids.take()] == [1002, 1000]


def test_running_out_is_an_error_that_passes_not_a_shared_id():
    ids = HostIds(1000, 2)
    ids.take(), ids.take()
    with pytest.raises(IdsInUse) as refused:
        ids.take()
    assert refused.value.errno in TRANSIENT  # asked again later, as a fork the kernel refused
    ids.release(1001)
    assert ids.take() == 1001
