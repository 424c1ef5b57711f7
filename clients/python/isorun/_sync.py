"""CodeRunner, the blocking runner, and its reconnection in a child forked with runners.

Its I/O only: a gRPC channel for the runner's life, calls counted under a lock so that close()
lets them finish, callbacks called in the calling thread. Everything it shares with
AsyncCodeRunner (request building, capabilities, results and errors) is ``_Base`` in
``_base``; it is apart from ``_async`` because the two share no I/O, and the fork handling
concerns thread-bound channels only.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterator

import grpc

from . import _inputs
from ._base import (_CAPABILITIES_TIMEOUT, _RECONNECT_WAIT, _Base, _channel_options, _file_identity,
                    _known_options, _no_coroutine_function, _not_awaitable, _runner_stub)
from ._outcome import transport_error
from ._proto import runner_pb2 as pb


class CodeRunner(_Base):
    """Calls functions of ``file`` under ``root`` in fresh sandboxes of the isorun daemon.

    Thread-safe: one runner may serve many threads; calls run concurrently on the daemon.
    """

    def __init__(self, root: str, file: str, **options: Any):
        _known_options("CodeRunner", options)
        super().__init__(root, file, **options)
        _no_coroutine_function("on_console", self.on_console)
        self._connect()
        _SYNC_RUNNERS.add(self)

    def _connect(self) -> None:
        """A channel of this process's own, with fresh locks and no call counted. A socket path
        too long for an address gets no channel (gRPC would only log that it cannot parse
        it); every call then fails in _check_usable, naming the path. So does a closed runner."""
        self._channel = None if self._unreachable or self._closed else grpc.insecure_channel(
            self._target(), options=_channel_options())
        self._stub = _runner_stub(self._channel) if self._channel else None
        self._daemon = None  # asked once per channel
        self._lock = threading.Lock()
        self._idle = threading.Condition()  # guards _calls, _closed and the channel's closing
        self._calls = 0
        self._close_when_idle = False

    def run(self, func_name: str, args: Sequence[Any] | None = None, context: Mapping[str, Any] | None = None,
            running: Callable[[], Any] | None = None, timeout: float | None = None,
            args_resolver: str | None = None, limits: Mapping[str, float] | None = None) -> Any:
        """Calls ``func_name(*args)`` in a fresh sandbox and returns its value, or raises.
        ``limits`` lowers the daemon's limits for this call (``{"memory_bytes": 64 << 20}``)."""
        _no_coroutine_function("running", _inputs.callback("running", running))
        with self._in_flight():
            request, names = self._request(func_name, args, context, timeout, args_resolver, limits)
            socket_file, heard = _file_identity(self.socket), []
            try:
                try:
                    outcome = self._call(request, names, running, socket_file, heard)
                except grpc.RpcError as e:
                    if not (self._replaced_before_any_answer(e, socket_file, heard) and self._ready_soon()):
                        raise
                    outcome = self._call(request, names, running, socket_file, heard)
            except grpc.RpcError as e:
                raise transport_error(e, self.socket) from None
            return self._result(outcome)

    def _call(self, request: pb.RunRequest, names: set[str], running: Callable[[], Any] | None,
              socket_file, heard: list) -> pb.Outcome | None:
        if self._needs_capabilities(request, names):
            self._ensure_capabilities()
        if names:
            if self._missing(names):
                self._ensure_capabilities(again=True)  # (see _ensure_capabilities)
            self._check_names(names)
        deadline = self._deadline(request)
        if running is None and self.on_console is None:
            outcome = self._stub.Run(request, timeout=deadline).outcome
            self._heard_through = socket_file
            return outcome
        return self._stream(request, deadline, running, socket_file, heard)

    def _ready_soon(self) -> bool:
        """Whether the channel connects within its longest reconnect backoff and a little."""
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=_RECONNECT_WAIT)
            return True
        except grpc.FutureTimeoutError:
            ready.cancel()  # (it would go on watching the channel)
            return False

    def _stream(self, request: pb.RunRequest, deadline: float, running: Callable[[], Any] | None,
                socket_file, heard: list) -> pb.Outcome | None:
        call = self._stub.RunStream(request, timeout=deadline)
        try:
            for event in call:
                self._note_heard(heard, socket_file)
                if event.WhichOneof("event") == "outcome":
                    return event.outcome
                for callback in self._callbacks(event, running):
                    _not_awaitable(callback())
        except BaseException:
            call.cancel()  # a callback raised: end the sandbox now, not at its timeout
            raise
        return None

    def _ensure_capabilities(self, again: bool = False) -> None:
        """Asks the daemon once; ``again`` when a value's type was missing from its answer: the
        channel may have reconnected to a daemon restarted with more types since, which the
        runner refused until it was made anew."""
        with self._lock:
            if again or self._stale():
                socket_file = _file_identity(self.socket)  # before asking: a later restart is seen
                self._remember(self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=_CAPABILITIES_TIMEOUT),
                               socket_file)
                self._heard_through = socket_file

    def capabilities(self) -> pb.Capabilities:
        """The daemon's version, isolation level, limits, plugins and value type names."""
        with self._in_flight():
            try:
                return self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=_CAPABILITIES_TIMEOUT)
            except grpc.RpcError as e:
                raise transport_error(e, self.socket) from None

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Counts a call so that close() lets it finish; refuses it once the runner is closed."""
        with self._idle:
            self._check_usable()
            self._calls += 1
        token = self._inside.set(True)
        try:
            yield
        finally:
            self._inside.reset(token)
            with self._idle:
                self._calls -= 1
                if not self._calls:
                    self._idle.notify_all()
                    if self._close_when_idle:
                        self._channel.close()

    def close(self) -> None:
        """Refuses new calls at once; calls already in flight finish, then the channel closes.
        From a callback of a call in flight it returns at once (that call cannot finish
        before the callback does), and the last call to finish closes the channel."""
        with self._idle:
            self._closed = True
            if self._calls and self._inside.get():
                self._close_when_idle = True
                return
            self._idle.wait_for(lambda: not self._calls)
            if self._channel is not None:
                self._channel.close()

    def __enter__(self) -> "CodeRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Every CodeRunner, so that a child forked with it gets a channel of its own.
_SYNC_RUNNERS: "weakref.WeakSet[CodeRunner]" = weakref.WeakSet()


def _connect_runners_after_fork() -> None:
    """In a child forked with runners: gRPC's channels do not cross fork() (the first calls
    failed "Closed on fork" or "Wrong file descriptor generation"), and the parent's locks may
    be held by threads the child does not have. The parent's channels are left alone (closing
    one here would act on the parent's connection)."""
    for runner in list(_SYNC_RUNNERS):
        runner._connect()


os.register_at_fork(after_in_child=_connect_runners_after_fork)
