"""The bound on the bytes of held requests: pure bookkeeping, no daemon."""
import pytest

from isorund.admission import Admission, QueueFull, RequestsTooLarge


def test_requests_are_held_up_to_the_bound_and_released_when_they_end():
    admission = Admission(max_concurrency=1, queue_size=4, max_held_bytes=100)
    with admission.holding(60):
        with admission.holding(40):
            assert admission.held_bytes == 100
            with pytest.raises(RequestsTooLarge) as refused:
                with admission.holding(1):
                    pass
        assert admission.held_bytes == 60
    assert admission.held_bytes == 0
    assert "max_held_request_bytes" in str(refused.value)
    assert isinstance(refused.value, QueueFull)  # answered RESOURCE_EXHAUSTED like a full queue


def test_a_request_that_fails_still_releases_its_bytes():
    admission = Admission(max_concurrency=1, queue_size=4, max_held_bytes=100)
    with pytest.raises(ValueError):
        with admission.holding(100):
            raise ValueError("the call failed")
    with admission.holding(100):
        assert admission.held_bytes == 100
