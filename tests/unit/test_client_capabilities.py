"""How long a runner waits for the daemon's capabilities: one setting, whichever way they are asked.

No daemon runs here: the runner's stub is replaced by one that records the timeout it was
given, so the test sees what the client would ask of gRPC.
"""
from __future__ import annotations

import asyncio
import types

import pytest

from isorun import AsyncCodeRunner, CodeRunner
from isorun import _async, _sync
from isorun._proto import runner_pb2 as pb

WAIT = 3.25  # not the default, so that a timeout written out where the setting belongs shows


class _RecordingStub:
    def __init__(self):
        self.timeouts: list[float] = []

    def GetCapabilities(self, request, timeout=None):
        self.timeouts.append(timeout)
        return pb.Capabilities(version="test")


class _AsyncRecordingStub(_RecordingStub):
    async def GetCapabilities(self, request, timeout=None):
        return _RecordingStub.GetCapabilities(self, request, timeout)


@pytest.fixture
def short_wait(monkeypatch):
    for module in (_sync, _async):  # (the setting as each runner's module reads it)
        monkeypatch.setattr(module, "_CAPABILITIES_TIMEOUT", WAIT)


def test_capabilities_waits_as_long_as_the_capabilities_timeout_says(tmp_path, short_wait):
    runner = CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "isorund.sock"))
    runner._stub = stub = _RecordingStub()
    try:
        assert runner.capabilities().version == "test"
        runner._ensure_capabilities(again=True)  # (the capabilities a call asks for itself)
    finally:
        runner.close()
    assert stub.timeouts == [WAIT, WAIT]


def test_async_capabilities_waits_as_long_as_the_capabilities_timeout_says(tmp_path, short_wait):
    stub = _AsyncRecordingStub()

    async def main():
        runner = AsyncCodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "isorund.sock"))
        idle = asyncio.Event()
        idle.set()
        connection = types.SimpleNamespace(stub=stub, lock=asyncio.Lock(), calls=0, idle=idle,
                                           close_when_idle=False, loop=asyncio.get_running_loop(),
                                           channel=None)
        runner._connect = lambda: connection
        assert (await runner.capabilities()).version == "test"
        await runner._ensure_capabilities(connection, again=True)

    asyncio.run(main())
    assert stub.timeouts == [WAIT, WAIT]
