"""The bound on the bytes of held requests: pure bookkeeping, no daemon."""
import asyncio

import pytest

from isorund.admission import Admission, QueueFull, RequestsTooLarge


def test_requests_are_held_from_the_queue_on_up_to_the_bound_and_released_when_they_end():
    async def scenario():
        admission = Admission(max_concurrency=1, queue_size=4, max_held_bytes=100)
        async with admission.slot(None, 60):
            waiting = asyncio.ensure_future(_hold(admission, 40))  # queued behind the first
            await asyncio.sleep(0)
            assert admission.held_bytes == 100 and admission.waiting == 1
            with pytest.raises(RequestsTooLarge) as refused:
                async with admission.slot(1.0, 1):  # with no bound it would wait, then time out
                    pass
            assert admission.waiting == 1  # refused at once, not queued
        await waiting
        assert admission.held_bytes == 0
        return refused.value
    refused = asyncio.run(scenario())
    assert "max_held_request_bytes" in str(refused)
    assert isinstance(refused, QueueFull)  # answered RESOURCE_EXHAUSTED like a full queue


def test_a_call_that_fails_still_releases_its_bytes():
    async def scenario():
        admission = Admission(max_concurrency=1, queue_size=4, max_held_bytes=100)
        with pytest.raises(ValueError):
            async with admission.slot(None, 100):
                raise ValueError("the call failed")
        async with admission.slot(None, 100):
            assert admission.held_bytes == 100
    asyncio.run(scenario())


async def _hold(admission: Admission, request_bytes: int) -> None:
    async with admission.slot(None, request_bytes):
        pass
