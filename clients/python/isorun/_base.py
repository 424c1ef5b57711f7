"""What CodeRunner and AsyncCodeRunner share: everything but I/O.

One call = one request to isorund, one outcome back. The two runners share everything but I/O
(``_Base``): request building, the check of tagged values against the daemon's type names, and
the mapping of outcomes and gRPC status codes to ``isorun.errors`` (in ``_outcome``, the only
place that mapping lives). A CodeRunner holds one channel for its life, an AsyncCodeRunner one
per event loop it is used in; capabilities are asked once (again when a value's type is
missing from them or the daemon was started anew: its socket file changed). close() refuses new
calls and lets the calls in flight finish. (Unlike the Node client's, where a run() called
before close() is in flight at once, an AsyncCodeRunner's call is in flight once its coroutine
runs: a task made before close() that had not started yet is refused.) A callback that raises
cancels its call.

This module holds that shared half: ``_Base``, socket discovery, the settings both runners read
(deadlines, message sizes, the capabilities timeout), the check of a runner's options, the
encoding of a request's values and decoding of a result, and how a channel and its stub are
made. It is apart from ``_sync`` (CodeRunner) and ``_async`` (AsyncCodeRunner) so that each
runner's module holds only its own I/O, and a change to what they share is made once.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import grpc
from google.protobuf import struct_pb2

from . import _codec
from . import _inputs
from . import errors
from ._outcome import readable_answer, raise_failure
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

    def _note_heard(self, heard: list, socket_file) -> None:
        """At a streamed call's first event: the daemon took the call (see
        ``_replaced_before_any_answer``)."""
        if not heard:
            heard.append(True)
            self._heard_through = socket_file

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


_forked = False  # this process is a fork of one that may have had channels


def _note_fork() -> None:
    """Every channel made from now on keeps connections of its own (``_channel_options``).
    Registered here rather than with CodeRunner's reconnection (``_sync``), so that it is set
    in a forked child of a process that used only AsyncCodeRunner too, and before CodeRunners
    reconnect (at-fork handlers run in the order they were registered)."""
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_note_fork)


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
