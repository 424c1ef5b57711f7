"""CodeRunner and AsyncCodeRunner: one call = one request to isorund, one outcome back.

The two runners share everything but I/O (``_Base``): request building, the check of tagged
values against the daemon's type names, and the mapping of outcomes and gRPC status codes to
``isorun.errors`` (``_raise_failure``, ``_transport_error``) — the only place that mapping
lives. Each runner holds one channel for its life; capabilities are asked once per channel.
"""
from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Callable, Iterable, Mapping, Sequence

import grpc
from google.protobuf import struct_pb2

from . import _codec
from . import errors
from ._proto import runner_pb2 as pb
from ._proto import runner_pb2_grpc

ConsoleCallback = Callable[[str, str], Any]

SYSTEM_SOCKET = "/run/isorund/isorund.sock"
# How long a call may wait in the daemon's queue on top of its own timeout before the client
# gives up. The daemon honours the resulting gRPC deadline while the call is queued.
QUEUE_ALLOWANCE_SECONDS = 60.0
# Used for the deadline only when the caller leaves the timeout to the daemon.
_DEFAULT_TIMEOUT_GUESS = 30.0
_MAX_MESSAGE = 64 * 1024 * 1024
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
    def __init__(self, root: str, file: str, *, external: Iterable[str] = (),
                 whitelisted_paths: Iterable[str] = (), source_extensions: Iterable[str] = (".py",),
                 compiler: str | None = None, resolver: str | None = None,
                 resolver_options: Mapping[str, Any] | None = None,
                 on_console: ConsoleCallback | None = None, socket: str | None = None,
                 registry: _codec.TypeRegistry | None = None):
        self.root = os.fspath(root)
        self.file = os.fspath(file)
        self.socket = os.fspath(socket) if socket else default_socket()
        self.on_console = on_console
        self._registry = registry or _codec.default_registry
        self._template = pb.RunRequest(
            root=self.root, file=self.file, external=list(external),
            whitelisted_paths=[os.fspath(p) for p in whitelisted_paths],
            source_extensions=list(source_extensions), compiler=compiler or "",
            resolver=resolver or "")
        if resolver_options is not None:
            self._template.resolver_options.CopyFrom(_options_struct(resolver_options))
        self._type_names: frozenset[str] | None = None
        self._closed = False

    def _request(self, func_name: str, args: Sequence[Any] | None, context: Mapping[str, Any] | None,
                 timeout: float | None, args_resolver: str | None) -> tuple[pb.RunRequest, set[str]]:
        """Builds the request; returns it with every tagged type name its values use."""
        if self._closed:
            raise errors.IsorunError("this runner is closed")
        if not isinstance(func_name, str) or not func_name:
            raise errors.InvalidRequest(f"func_name must be a non-empty string, got {func_name!r}")
        if timeout is not None and not timeout > 0:
            raise errors.InvalidRequest(f"timeout must be > 0 seconds, got {timeout!r}")
        request = pb.RunRequest()
        request.CopyFrom(self._template)
        request.func_name = func_name
        request.timeout_seconds = timeout or 0.0
        request.args_resolver = args_resolver or ""
        names: set[str] = set()
        for i, arg in enumerate(args or ()):
            _encode(request.args.add(), arg, self._registry, names, f"argument {i}")
        for key, value in (context or {}).items():
            if not isinstance(key, str):
                raise errors.SerializationError(f"context names must be str, got {key!r}")
            _encode(request.context[key], value, self._registry, names, f"context {key!r}")
        return request, names

    def _check_names(self, names: set[str]) -> None:
        missing = sorted(names - (self._type_names or frozenset()))
        if missing:
            offered = ", ".join(sorted(self._type_names or ())) or "none"
            raise errors.SerializationError(
                f"the daemon at {self.socket} has no resolver for type {missing[0]!r}; "
                f"it offers: {offered}")

    def _deadline(self, timeout: float | None) -> float:
        return (timeout or _DEFAULT_TIMEOUT_GUESS) + QUEUE_ALLOWANCE_SECONDS

    def _result(self, outcome: pb.Outcome) -> Any:
        if outcome.WhichOneof("result") == "value":
            return _codec.decode(outcome.value, self._registry)
        _raise_failure(outcome.failure)

    def _console(self, line: pb.ConsoleLine) -> None:
        if self.on_console is not None:
            self.on_console(_STREAMS.get(line.stream, "stdout"), line.text)

    def _target(self) -> str:
        return "unix:" + os.path.abspath(self.socket)


class CodeRunner(_Base):
    """Calls functions of ``file`` under ``root`` in fresh sandboxes of the isorun daemon.

    Thread-safe: one runner may serve many threads; calls run concurrently on the daemon.
    """

    def __init__(self, root: str, file: str, **options: Any):
        super().__init__(root, file, **options)
        self._channel = grpc.insecure_channel(self._target(), options=_channel_options())
        self._stub = runner_pb2_grpc.RunnerStub(self._channel)
        self._lock = threading.Lock()

    def run(self, func_name: str, args: Sequence[Any] | None = None, context: Mapping[str, Any] | None = None,
            running: Callable[[], Any] | None = None, timeout: float | None = None,
            args_resolver: str | None = None) -> Any:
        """Calls ``func_name(*args)`` in a fresh sandbox and returns its value, or raises."""
        request, names = self._request(func_name, args, context, timeout, args_resolver)
        deadline = self._deadline(timeout)
        try:
            if names:
                self._ensure_type_names(deadline)
                self._check_names(names)
            if running is None and self.on_console is None:
                return self._result(self._stub.Run(request, timeout=deadline).outcome)
            for event in self._stub.RunStream(request, timeout=deadline):
                kind = event.WhichOneof("event")
                if kind == "console":
                    self._console(event.console)
                elif kind == "console_batch":
                    for line in event.console_batch.lines:
                        self._console(line)
                elif kind == "running" and running is not None:
                    running()
                elif kind == "outcome":
                    return self._result(event.outcome)
        except grpc.RpcError as e:
            raise _transport_error(e, self.socket) from None
        raise errors.SandboxError("the daemon ended the call without an outcome")

    def _ensure_type_names(self, deadline: float) -> None:
        with self._lock:
            if self._type_names is None:
                caps = self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=deadline)
                self._type_names = frozenset(caps.type_names)

    def capabilities(self) -> pb.Capabilities:
        """The daemon's version, isolation level, limits, plugins and value type names."""
        try:
            return self._stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
        except grpc.RpcError as e:
            raise _transport_error(e, self.socket) from None

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> "CodeRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncCodeRunner(_Base):
    """``CodeRunner`` for asyncio: ``await runner.run(...)``; many calls may be in flight."""

    def __init__(self, root: str, file: str, **options: Any):
        super().__init__(root, file, **options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: runner_pb2_grpc.RunnerStub | None = None
        self._lock: asyncio.Lock | None = None

    def _connect(self) -> runner_pb2_grpc.RunnerStub:
        # grpc.aio channels belong to the event loop that is running when they are made.
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._target(), options=_channel_options())
            self._stub = runner_pb2_grpc.RunnerStub(self._channel)
            self._lock = asyncio.Lock()
        return self._stub

    async def run(self, func_name: str, args: Sequence[Any] | None = None,
                  context: Mapping[str, Any] | None = None, running: Callable[[], Any] | None = None,
                  timeout: float | None = None, args_resolver: str | None = None) -> Any:
        """Calls ``func_name(*args)`` in a fresh sandbox and returns its value, or raises.
        ``running`` and ``on_console`` may be plain functions or coroutine functions."""
        request, names = self._request(func_name, args, context, timeout, args_resolver)
        deadline = self._deadline(timeout)
        stub = self._connect()
        try:
            if names:
                await self._ensure_type_names(stub, deadline)
                self._check_names(names)
            if running is None and self.on_console is None:
                return self._result((await stub.Run(request, timeout=deadline)).outcome)
            async for event in stub.RunStream(request, timeout=deadline):
                kind = event.WhichOneof("event")
                if kind in ("console", "console_batch") and self.on_console is not None:
                    lines = [event.console] if kind == "console" else event.console_batch.lines
                    for line in lines:
                        await _maybe_await(self.on_console(_STREAMS.get(line.stream, "stdout"), line.text))
                elif kind == "running" and running is not None:
                    await _maybe_await(running())
                elif kind == "outcome":
                    return self._result(event.outcome)
        except grpc.RpcError as e:
            raise _transport_error(e, self.socket) from None
        raise errors.SandboxError("the daemon ended the call without an outcome")

    async def _ensure_type_names(self, stub: runner_pb2_grpc.RunnerStub, deadline: float) -> None:
        async with self._lock:
            if self._type_names is None:
                caps = await stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=deadline)
                self._type_names = frozenset(caps.type_names)

    async def capabilities(self) -> pb.Capabilities:
        try:
            return await self._connect().GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
        except grpc.RpcError as e:
            raise _transport_error(e, self.socket) from None

    async def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> "AsyncCodeRunner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _maybe_await(result: Any) -> None:
    if asyncio.iscoroutine(result):
        await result


def _channel_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 0)]


def _encode(target: struct_pb2.Value, value: Any, registry: _codec.TypeRegistry, names: set[str],
            where: str) -> None:
    try:
        _codec.encode_into(target, value, registry, names=names)
    except errors.SerializationError as e:
        error = type(e)(f"{where}: {e}")
        error.limit = e.limit
        raise error from None


def _options_struct(options: Mapping[str, Any]) -> struct_pb2.Struct:
    """resolver_options are plain JSON handed to the resolver plugin as a dict."""
    message = struct_pb2.Struct()
    try:
        message.update(dict(options))
    except (ValueError, TypeError) as e:
        raise errors.SerializationError(f"resolver_options must be JSON-like: {e}") from None
    return message


def _raise_failure(failure: pb.Failure) -> None:
    kind, message = failure.kind, failure.message
    if kind == pb.Failure.MODULE_NOT_FOUND:
        raise errors.ModuleNotFound(failure.module)
    if kind == pb.Failure.FUNCTION_NOT_FOUND:
        raise errors.FunctionNotFound(message)
    if kind == pb.Failure.GUEST_EXCEPTION:
        raise errors.GuestError(failure.type_name, message, failure.traceback)
    if kind == pb.Failure.TIMEOUT:
        raise errors.RuntimeTimeoutError(message)
    if kind == pb.Failure.RESOURCE_LIMIT:
        raise errors.ResourceLimitError(message, failure.limit)
    if kind == pb.Failure.SERIALIZATION:
        raise errors.SerializationError(message)
    raise errors.SandboxError(message or "the sandbox failed without a message")


def _transport_error(error: grpc.RpcError, socket: str) -> errors.IsorunError:
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else "") or str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidRequest(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "message larger than max" in details.lower():  # grpc's own size check, either side
            return errors.ResourceLimitError(f"a message to or from isorund at {socket} is too large: {details}",
                                             "message")
        return errors.ResourceLimitError(details, "queue")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.AccessDenied(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.RuntimeTimeoutError(f"no answer from isorund at {socket} before the deadline: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        # A daemon that answered (shutting down, zygote restarting) says why; only a failed
        # connection is explained by the socket itself.
        if "failed to connect" not in details.lower() and "connect" not in details.lower():
            return errors.DaemonUnavailable(f"isorund at {socket} is unavailable: {details}")
        if not os.path.exists(socket):
            return errors.DaemonUnavailable(f"no isorun daemon at {socket}: the socket does not exist")
        return errors.DaemonUnavailable(f"no isorun daemon answers at {socket}: {details}")
    return errors.SandboxError(f"isorund at {socket} failed the call ({code.name if code else 'unknown'}): {details}")
