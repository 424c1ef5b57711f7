"""AsyncCodeRunner: CodeRunner for asyncio, with one channel per event loop it is used in.

Its I/O only: grpc.aio channels (``_Connection``, one per event loop, since an aio channel
works only in the loop it was made in), calls counted per channel so that close() lets them
finish, callbacks that may be coroutines awaited in order. Everything it shares with CodeRunner
is ``_Base`` in ``_base``; it is apart from ``_sync`` because the two share no I/O.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, AsyncIterator, Callable

import grpc

from . import _inputs, errors
from ._base import (_CAPABILITIES_TIMEOUT, _RECONNECT_WAIT, _Base, _channel_options, _file_identity,
                    _known_options, _runner_stub)
from ._outcome import transport_error
from ._proto import runner_pb2 as pb
from ._proto import runner_pb2_grpc


# grpc.aio does not survive fork(): in a child of a process with an aio channel open, every
# call of every AsyncCodeRunner, new ones too, waited forever (seen: past its deadline, with no
# error). Such a child refuses them at once instead; CodeRunner works there.
_open: "weakref.WeakSet[_Connection]" = weakref.WeakSet()
_FORKED_WITH_AIO = ("AsyncCodeRunner cannot be used in this process: it was forked while an AsyncCodeRunner "
                    "of its parent had a channel open, and gRPC's asyncio layer does not survive fork(); use "
                    "CodeRunner here, or close the parent's AsyncCodeRunners before forking")
_usable = True


def _note_fork() -> None:
    global _usable
    _usable = _usable and not any(not c.closed for c in _open)


os.register_at_fork(after_in_child=_note_fork)


class _Connection:
    """An aio channel and what else belongs to the event loop it was made in."""

    def __init__(self, target: str):
        self.loop = asyncio.get_running_loop()
        self.channel = grpc.aio.insecure_channel(target, options=_channel_options())
        self.closed = False
        _open.add(self)
        self.stub = _runner_stub(self.channel)
        self.lock = asyncio.Lock()  # asks the capabilities once
        self.calls = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.close_when_idle = False

    async def close(self) -> None:
        await self.channel.close()
        self.closed = True


class AsyncCodeRunner(_Base):
    """``CodeRunner`` for asyncio: ``await runner.run(...)``; many calls may be in flight.

    It may be used in one event loop after another (successive ``asyncio.run()``): each loop
    gets its own channel.
    """

    def __init__(self, root: str, file: str, **options: Any):
        _known_options("AsyncCodeRunner", options)
        super().__init__(root, file, **options)
        self._connection: _Connection | None = None

    def _connect(self) -> _Connection:
        # A grpc.aio channel (and an asyncio lock) works only in the loop that was running when
        # it was made. An earlier loop's channel cannot be closed from this one (closing awaits
        # in its own loop, usually closed by now); grpc.aio releases it when it is collected.
        if not _usable:
            raise errors.IsorunError(_FORKED_WITH_AIO)
        loop = asyncio.get_running_loop()
        if self._connection is None or self._connection.loop is not loop:
            # (the daemon's capabilities are kept: asked again when its socket file changed,
            # see _stale; forgotten here, a call in another loop between asking for them and
            # reading them found none: an AttributeError, 1 call in ~200 from four loops)
            self._connection = _Connection(self._target())
        return self._connection

    async def run(self, func_name: str, args: Sequence[Any] | None = None,
                  context: Mapping[str, Any] | None = None, running: Callable[[], Any] | None = None,
                  timeout: float | None = None, args_resolver: str | None = None,
                  limits: Mapping[str, float] | None = None) -> Any:
        """Calls ``func_name(*args)`` in a fresh sandbox and returns its value, or raises.
        ``running`` and ``on_console`` may be plain functions or coroutine functions;
        ``limits`` lowers the daemon's limits for this call."""
        _inputs.callback("running", running)
        async with self._in_flight() as connection:
            request, names = self._request(func_name, args, context, timeout, args_resolver, limits)
            socket_file, heard = _file_identity(self.socket), []
            try:
                try:
                    outcome = await self._call(connection, request, names, running, socket_file, heard)
                except grpc.RpcError as e:
                    if not (self._replaced_before_any_answer(e, socket_file, heard)
                            and await self._ready_soon(connection)):
                        raise
                    outcome = await self._call(connection, request, names, running, socket_file, heard)
            except grpc.RpcError as e:
                raise transport_error(e, self.socket) from None
            return self._result(outcome)

    async def _call(self, connection: _Connection, request: pb.RunRequest, names: set[str],
                    running: Callable[[], Any] | None, socket_file, heard: list) -> pb.Outcome | None:
        if self._needs_capabilities(request, names):
            await self._ensure_capabilities(connection)
        if names:
            if self._missing(names):
                await self._ensure_capabilities(connection, again=True)  # (as CodeRunner's)
            self._check_names(names)
        deadline = self._deadline(request)
        if running is None and self.on_console is None:
            outcome = (await connection.stub.Run(request, timeout=deadline)).outcome
            self._heard_through = socket_file
            return outcome
        return await self._stream(connection.stub, request, deadline, running, socket_file, heard)

    @staticmethod
    async def _ready_soon(connection: _Connection) -> bool:
        """Whether the channel connects within its longest reconnect backoff and a little."""
        try:
            await asyncio.wait_for(connection.channel.channel_ready(), _RECONNECT_WAIT)
            return True
        except asyncio.TimeoutError:
            return False

    async def _stream(self, stub: runner_pb2_grpc.RunnerStub, request: pb.RunRequest, deadline: float,
                      running: Callable[[], Any] | None, socket_file, heard: list) -> pb.Outcome | None:
        call = stub.RunStream(request, timeout=deadline)
        try:
            async for event in call:
                self._note_heard(heard, socket_file)
                if event.WhichOneof("event") == "outcome":
                    return event.outcome
                for callback in self._callbacks(event, running):
                    await _maybe_await(callback())
        except BaseException:
            # A callback raised (or our task was cancelled): end the sandbox now. grpc.aio does
            # not cancel a call whose iteration was abandoned; it would run to its end.
            call.cancel()
            raise
        return None

    async def _ensure_capabilities(self, connection: _Connection, again: bool = False) -> None:
        async with connection.lock:
            if again or self._stale():
                socket_file = _file_identity(self.socket)  # (as CodeRunner's)
                self._remember(await connection.stub.GetCapabilities(pb.GetCapabilitiesRequest(),
                                                                     timeout=_CAPABILITIES_TIMEOUT), socket_file)
                self._heard_through = socket_file

    async def capabilities(self) -> pb.Capabilities:
        async with self._in_flight() as connection:
            try:
                return await connection.stub.GetCapabilities(pb.GetCapabilitiesRequest(),
                                                             timeout=_CAPABILITIES_TIMEOUT)
            except grpc.RpcError as e:
                raise transport_error(e, self.socket) from None

    @contextlib.asynccontextmanager
    async def _in_flight(self) -> AsyncIterator[_Connection]:
        """Counts a call so that close() lets it finish; refuses it once the runner is closed."""
        self._check_usable()
        connection = self._connect()
        connection.calls += 1
        connection.idle.clear()
        token = self._inside.set(True)
        try:
            yield connection
        finally:
            self._inside.reset(token)
            connection.calls -= 1
            if not connection.calls:
                connection.idle.set()
                if connection.close_when_idle:
                    await connection.close()

    async def close(self) -> None:
        """Refuses new calls at once; calls already in flight finish, then the channel closes
        (as ``CodeRunner.close``). Only the current event loop's channel is closed here."""
        self._closed = True
        connection = self._connection
        if connection is None or connection.loop is not asyncio.get_running_loop():
            return
        if connection.calls and self._inside.get():
            connection.close_when_idle = True
            return
        await connection.idle.wait()
        await connection.close()

    async def __aenter__(self) -> "AsyncCodeRunner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _maybe_await(result: Any) -> None:
    """A callback's coroutine, or any awaitable it returned (a Task, a Future): its failure
    cancels the call, as a failure raised by the callback itself does."""
    if inspect.isawaitable(result):
        await result
