"""CodeRunner and AsyncCodeRunner: one call = one request to isorund, one outcome back.

The two runners share everything but I/O (``_Base``): request building, the check of tagged
values against the daemon's type names, and the mapping of outcomes and gRPC status codes to
``isorun.errors`` (in ``_outcome``, the only place that mapping lives). A CodeRunner holds one
channel for its life, an AsyncCodeRunner one per event loop it is used in; capabilities are
asked once per channel, and again when a value's type is missing from them or the daemon was
started anew (its socket file changed). close() refuses new calls and lets the
calls in flight finish, as the Node client's does; a callback that raises cancels its call.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, AsyncIterator, Callable, Iterator

import grpc
from google.protobuf import struct_pb2

from . import _codec
from . import _inputs
from . import errors
from ._outcome import readable_answer, raise_failure, transport_error
from ._proto import runner_pb2 as pb
from ._proto import runner_pb2_grpc
from ._wire import _short

ConsoleCallback = Callable[[str, str], Any]

SYSTEM_SOCKET = "/run/isorund/isorund.sock"
# How long a call may wait in the daemon's queue on top of its own timeout before the client
# gives up. The daemon honours the resulting gRPC deadline while the call is queued.
QUEUE_ALLOWANCE_SECONDS = 60.0
# When the caller leaves the timeout to the daemon, the deadline follows the daemon's default
# timeout (from its capabilities); this only if a daemon reports none.
_DEFAULT_TIMEOUT_GUESS = 30.0
_CAPABILITIES_TIMEOUT = 10.0
# How long a call that met a daemon started since the runner last heard one waits for the
# channel to reach it: the longest reconnect backoff (_channel_options) and a connection.
_RECONNECT_WAIT = 2.0
_MAX_MESSAGE = 64 * 1024 * 1024
# What the values of one request (args and context together) may take: the message, less room
# for the rest of the request (paths, names, framing), so that a request over the limit fails
# here, before anything is sent, as a SerializationError naming the limit (as in the Node client).
_VALUES_BUDGET = _MAX_MESSAGE - 1024 * 1024
_REQUEST_TOO_LARGE = (f"the arguments and context are too large: more than {_VALUES_BUDGET} "
                      "bytes together (limit 'size')")
# gRPC turns a timeout into an absolute deadline that overflows somewhere past 1e9 s from now,
# and then expires at once. No daemon accepts a timeout anywhere near a year (isorund's
# max_timeout is at most 1e6 s), so the cap only ever lets the daemon refuse the timeout itself.
_MAX_DEADLINE_SECONDS = 365 * 24 * 3600.0
_STREAMS = {pb.ConsoleLine.STDOUT: "stdout", pb.ConsoleLine.STDERR: "stderr"}


def default_socket() -> str:
    """``$ISORUN_SOCKET``, else the system daemon's socket when it exists, else the per-user
    one (``$XDG_RUNTIME_DIR/isorund.sock``) — the paths isorund itself defaults to."""
    if os.environ.get("ISORUN_SOCKET"):
        return os.environ["ISORUN_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() == 0 or not runtime or os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return os.path.join(runtime, "isorund.sock")


class _Base:
    def __init__(self, root: str, file: str, *, external: Sequence[str] = (),
                 whitelisted_paths: Sequence[str] = (), source_extensions: Sequence[str] = (".py",),
                 compiler: str | None = None, resolver: str | None = None,
                 resolver_options: Mapping[str, Any] | None = None,
                 on_console: ConsoleCallback | None = None, socket: str | None = None,
                 registry: _codec.TypeRegistry | None = None):
        self.root = _inputs.path("root", root)
        self.file = _inputs.path("file", file)
        self.socket = _inputs.path("socket", socket) if socket else default_socket()
        self.on_console = _inputs.callback("on_console", on_console)
        if registry is not None and not isinstance(registry, _codec.TypeRegistry):
            raise errors.InvalidRequest(f"registry must be an isorun.TypeRegistry, got {type(registry).__name__}")
        self._registry = _codec.default_registry if registry is None else registry
        self._template = pb.RunRequest(
            root=self.root, file=self.file, external=_inputs.strings("external", external),
            whitelisted_paths=_inputs.strings("whitelisted_paths", whitelisted_paths, paths=True),
            source_extensions=_inputs.source_extensions(source_extensions),
            compiler=_inputs.plugin_name("compiler", compiler),
            resolver=_inputs.plugin_name("resolver", resolver))
        if resolver_options is not None:
            self._template.resolver_options.CopyFrom(_inputs.options_struct(resolver_options))
        self._unreachable = _inputs.socket_problem(self.socket)
        # The daemon's capabilities, asked once per channel when a call needs them: its type
        # names (for tagged values) and its default timeout (for a call that names none).
        self._daemon: pb.Capabilities | None = None
        self._daemon_socket: tuple[int, int, int] | None = None  # the socket file they came through
        self._heard_through: tuple[int, int, int] | None = None  # that of the last answer heard
        self._closed = False
        # True while this thread or asyncio task is inside one of this runner's calls (in a
        # callback, say): close() from there must not wait for the call that is running it.
        self._inside: contextvars.ContextVar[bool] = contextvars.ContextVar(
            f"isorun_in_call_{id(self)}", default=False)

    def _check_usable(self) -> None:
        if self._closed:
            raise errors.IsorunError("this runner is closed")
        if self._unreachable:
            raise errors.DaemonUnavailable(self._unreachable)

    def _request(self, func_name: str, args: Sequence[Any] | None, context: Mapping[str, Any] | None,
                 timeout: float | None, args_resolver: str | None,
                 limits: Mapping[str, float] | None = None) -> tuple[pb.RunRequest, set[str]]:
        """Builds the request; returns it with every tagged type name its values use. Its
        values share one size budget, so an oversized request is refused before it is sent."""
        if not isinstance(func_name, str) or not func_name:
            raise errors.InvalidRequest(f"func_name must be a non-empty string, got {func_name!r}")
        _inputs.unicode_text("func_name", func_name)
        seconds = _inputs.timeout_seconds(timeout)
        args = () if args is None else _inputs.sequence("args", args, "the positional arguments")
        context = {} if context is None else _inputs.mapping("context", context, "global names to values")
        request = pb.RunRequest()
        request.CopyFrom(self._template)
        request.func_name = func_name
        request.timeout_seconds = seconds
        request.args_resolver = _inputs.plugin_name("args_resolver", args_resolver)
        _inputs.call_limits(limits, request.limits)
        names: set[str] = set()
        budget = _VALUES_BUDGET
        for i, arg in enumerate(args):
            budget -= _encode(request.args.add(), arg, self._registry, names, f"argument {i}", budget)
        for key, value in context.items():
            if not isinstance(key, str):
                raise errors.InvalidRequest(f"context names must be str, got {type(key).__name__} {_short(key)}")
            _inputs.unicode_text("a context name", key)
            budget -= _encode(request.context[key], value, self._registry, names,
                              f"context {key!r}", budget)
        return request, names

    def _needs_capabilities(self, request: pb.RunRequest, names: set[str]) -> bool:
        return bool(names or not request.timeout_seconds) and self._stale()

    def _stale(self) -> bool:
        """Whether the daemon's capabilities must be asked (again). A daemon started since
        they were asked binds a new socket file, and may have another default timeout: a call
        naming none got a deadline from the old one (a default raised from 5 s to 80 s cut a
        70 s call at 65 s, and a call queued behind another was refused at once)."""
        return self._daemon is None or _file_identity(self.socket) != self._daemon_socket

    def _remember(self, capabilities: pb.Capabilities, socket_file: tuple[int, int, int] | None) -> None:
        self._daemon, self._daemon_socket = capabilities, socket_file

    def _missing(self, names: set[str]) -> list[str]:
        """The type names the daemon's (cached) capabilities do not offer, sorted."""
        return sorted(names.difference(self._daemon.type_names))

    def _check_names(self, names: set[str]) -> None:
        missing = self._missing(names)
        if missing:
            offered = ", ".join(sorted(self._daemon.type_names)) or "none"
            raise errors.SerializationError(
                f"the daemon at {self.socket} has no resolver for type {missing[0]!r}; "
                f"it offers: {offered}")

    def _deadline(self, request: pb.RunRequest) -> float:
        """The gRPC deadline: the call's timeout (or the daemon's default) plus the queue's
        allowance. A deadline shorter than the daemon's default timeout would cut calls short,
        and leave them no room to wait in the queue at all."""
        timeout = request.timeout_seconds or (self._daemon.default_timeout_seconds if self._daemon else 0)
        return min((timeout or _DEFAULT_TIMEOUT_GUESS) + QUEUE_ALLOWANCE_SECONDS, _MAX_DEADLINE_SECONDS)

    def _replaced_before_any_answer(self, error: grpc.RpcError, socket_file, heard: list) -> bool:
        """Whether ``error`` is a connection to the daemon that failed before anything of the
        call came back, while the socket file is not the one through which the runner last
        heard a daemon: one started since, which the channel has not reached yet (its reconnect
        backoff, up to 1 s, grew while the daemon was down: a call made as soon as the new one
        was ready failed with DaemonUnavailable). The call is then made once more, when the
        channel is ready; the new daemon never saw it."""
        return (not heard and error.code() == grpc.StatusCode.UNAVAILABLE and socket_file is not None
                and self._heard_through is not None and socket_file != self._heard_through)

    def _result(self, outcome: pb.Outcome | None) -> Any:
        if outcome is None:
            raise errors.SandboxError("the daemon ended the call without an outcome")
        if outcome.WhichOneof("result") == "value":
            return _decoded_result(outcome.value, self._registry)
        raise_failure(outcome.failure)

    def _callbacks(self, event: pb.RunEvent, running: Callable[[], Any] | None) -> list[Callable[[], Any]]:
        """What a streamed event asks of the caller: ``running``, or one ``on_console`` per line."""
        kind = event.WhichOneof("event")
        if kind == "running" and running is not None:
            return [running]
        if kind not in ("console", "console_batch") or self.on_console is None:
            return []
        lines = [event.console] if kind == "console" else event.console_batch.lines
        return [functools.partial(self.on_console, _STREAMS.get(line.stream, "stdout"), line.text)
                for line in lines]

    def _target(self) -> str:
        return "unix:" + os.path.abspath(self.socket)


_NOT_AWAITED = "CodeRunner does not await its callbacks; use AsyncCodeRunner, or a plain function"


def _no_coroutine_function(name: str, callback: Callable[..., Any] | None) -> None:
    """An async callback of the sync runner did nothing: its lines were lost with a warning."""
    if inspect.iscoroutinefunction(callback):
        raise errors.InvalidRequest(f"{name} is a coroutine function: {_NOT_AWAITED}")


def _not_awaitable(returned: Any) -> None:
    """The same for a callback that returned an awaitable (a lambda around an async function)."""
    if inspect.isawaitable(returned):
        if inspect.iscoroutine(returned):
            returned.close()  # (no "never awaited" warning on top of the error)
        raise errors.InvalidRequest(f"a callback (on_console or running) returned an awaitable: {_NOT_AWAITED}")


# isolated-runtime's options, and their JavaScript spellings, that isorun names otherwise: code
# moved over would otherwise meet only "unexpected keyword argument".
_RENAMED = {
    "resolve": "isolated-runtime's resolve function is resolver= here: the name of a resolver plugin "
               "in the daemon's config",
    "resolve_arguments": "isolated-runtime's resolveArguments function is run(args_resolver=...) here: "
                         "the name of an args-resolver plugin in the daemon's config",
}


def _known_options(runner: str, options: Mapping[str, Any]) -> None:
    """A runner's options by name, refused as Python refuses a keyword, but naming the runner
    (it said ``_Base.__init__()``) and what isorun calls an option it spells otherwise."""
    known = list(inspect.signature(_Base.__init__).parameters)[3:]
    for name in options:
        if name not in known:
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
            hint = _RENAMED.get(snake) or (f"did you mean {snake!r}?" if snake in known
                                           else f"known are {', '.join(known)}")
            raise TypeError(f"{runner}() got an unexpected keyword argument {name!r}: {hint}")


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
                if not heard:  # (the first event: the daemon took the call)
                    heard.append(True)
                    self._heard_through = socket_file
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
                return self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
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
_forked = False  # this process is a fork of one that may have had channels


def _connect_runners_after_fork() -> None:
    """In a child forked with runners: gRPC's channels do not cross fork() (the first calls
    failed "Closed on fork" or "Wrong file descriptor generation"), and the parent's locks may
    be held by threads the child does not have. The parent's channels are left alone (closing
    one here would act on the parent's connection)."""
    global _forked
    _forked = True
    for runner in list(_SYNC_RUNNERS):
        runner._connect()


os.register_at_fork(after_in_child=_connect_runners_after_fork)


def _runner_stub(channel) -> runner_pb2_grpc.RunnerStub:
    """The generated stub, but a run's answer whose result does not parse is that call's
    ``SandboxError`` rather than grpc's INTERNAL (see ``readable_answer``)."""
    stub = runner_pb2_grpc.RunnerStub(channel)
    stub.Run = channel.unary_unary("/isorun.v1.Runner/Run", request_serializer=pb.RunRequest.SerializeToString,
                                   response_deserializer=readable_answer(pb.RunResponse))
    stub.RunStream = channel.unary_stream("/isorun.v1.Runner/RunStream",
                                          request_serializer=pb.RunRequest.SerializeToString,
                                          response_deserializer=readable_answer(pb.RunEvent))
    return stub


class _Connection:
    """An aio channel and what else belongs to the event loop it was made in."""

    def __init__(self, target: str):
        self.loop = asyncio.get_running_loop()
        self.channel = grpc.aio.insecure_channel(target, options=_channel_options())
        self.stub = _runner_stub(self.channel)
        self.lock = asyncio.Lock()  # asks the capabilities once
        self.calls = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.close_when_idle = False


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
        loop = asyncio.get_running_loop()
        if self._connection is None or self._connection.loop is not loop:
            self._connection = _Connection(self._target())
            self._daemon = None  # asked once per channel: the daemon may have changed
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
                if not heard:  # (the first event: the daemon took the call)
                    heard.append(True)
                    self._heard_through = socket_file
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
                return await connection.stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
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
                    await connection.channel.close()

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
        await connection.channel.close()

    async def __aenter__(self) -> "AsyncCodeRunner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _maybe_await(result: Any) -> None:
    """A callback's coroutine, or any awaitable it returned (a Task, a Future): its failure
    cancels the call, as a failure raised by the callback itself does."""
    if inspect.isawaitable(result):
        await result


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """Tells a file from the one it replaced; the inode number alone may be reused at once."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _channel_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # gRPC shares connections between a process's channels; after fork() that pool holds
            # the parent's, and a new channel drawing on it failed 1 to 6 first calls in 20
            # children. A forked process's channels keep connections of their own.
            ("grpc.use_local_subchannel_pool", int(_forked))]


def _encode(target: struct_pb2.Value, value: Any, registry: _codec.TypeRegistry, names: set[str],
            where: str, budget: int) -> int:
    """Encodes one value of a request into target and returns its size; ``budget`` is what
    the request's values have left, so that they all share one size limit."""
    try:
        return _codec.encode_into(target, value, registry, names=names, max_bytes=budget)
    except errors.SerializationError as e:
        error = type(e)(f"{where}: {_REQUEST_TOO_LARGE if e.limit == 'size' else e}")
        error.limit = e.limit
        raise error from None


# A result tagged with a type name this client's registry lacks: the names listed are this
# client's, not the daemon's (which has the type, or the guest could not have sent it).
_NOT_REGISTERED_HERE = ("no resolver is registered for it here (isorun.register_type, or the runner's "
                        "registry); this client decodes {names}")


def _decoded_result(value: struct_pb2.Value, registry: _codec.TypeRegistry) -> Any:
    """The call's result; its SerializationError says it was the result, as the sandbox's say
    which argument."""
    with _codec.said_of("the result"):
        return _codec.decode(value, registry, no_resolver=_NOT_REGISTERED_HERE)
