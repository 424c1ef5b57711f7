"""Every error isorun raises, in one place.

    IsorunError
    ├── ModuleNotFound          the guest imported something not allowed or not present
    ├── FunctionNotFound        (also TypeError) func_name is missing or not callable
    ├── GuestError              the guest raised: type_name, message, traceback
    ├── RuntimeTimeoutError     (also TimeoutError) the call ran past its timeout
    ├── ResourceLimitError      limit names which: memory, output, result, cpu, queue, message
    ├── SerializationError      (also TypeError) a value has no codec or resolver
    ├── DaemonUnavailable       (also ConnectionError) no daemon answers at the socket
    ├── InvalidRequest          (also ValueError) the request is malformed (client or daemon said so)
    ├── AccessDenied            (also PermissionError) the daemon does not accept this peer
    └── SandboxError            the sandbox could not be built or died unexpectedly

Guest-side outcomes arrive in-band from the daemon; transport and request problems arrive as
gRPC status codes. Both become these classes in one place: ``_outcome``.
"""
from __future__ import annotations

__all__ = [
    "IsorunError", "ModuleNotFound", "FunctionNotFound", "GuestError", "RuntimeTimeoutError",
    "ResourceLimitError", "SerializationError", "DaemonUnavailable", "InvalidRequest",
    "AccessDenied", "SandboxError",
]


class IsorunError(Exception):
    """Base of every isorun error."""


class ModuleNotFound(IsorunError):
    """The guest imported a module that is not allowed or does not exist; ``traceback`` says
    where (the guest's frames, as GuestError's)."""

    def __init__(self, module: str, traceback: str = ""):
        super().__init__(f"Cannot find module '{module}'")
        self.module = module
        self.traceback = traceback

    def __reduce__(self):  # (see GuestError.__reduce__)
        return type(self), (self.module,), self.__dict__


class FunctionNotFound(IsorunError, TypeError):
    """The requested function does not exist in the file, or is not callable."""


class GuestError(IsorunError):
    """The guest function (or its module, while importing) raised an exception."""

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self):
        """What pickle and copy rebuild it from: the arguments of ``__init__``, not the message
        it made of them (an error raised in a process pool's worker reaches the parent
        pickled; one that could not be rebuilt broke the pool)."""
        return type(self), (self.type_name, self.message, self.traceback), self.__dict__


class RuntimeTimeoutError(IsorunError, TimeoutError):
    """The call ran past its wall-clock timeout; its whole sandbox was killed."""


class ResourceLimitError(IsorunError):
    """The call went over a limit; ``limit`` names which one: ``memory``, ``cpu``, ``output``,
    ``result``, ``queue`` (the daemon's queue is full), or ``message`` (a gRPC message to or from
    the daemon is over its size limit).

    Going over ``max_processes`` is not one: in the guest, starting a process fails with
    ``BlockingIOError`` (EAGAIN) and starting a thread with ``RuntimeError("can't start new
    thread")``, which reach the caller as a GuestError unless the guest handles them."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit

    def __reduce__(self):  # (see GuestError.__reduce__)
        return type(self), (self.args[0], self.limit), self.__dict__


class SerializationError(IsorunError, TypeError):
    """A value cannot cross the wire: no codec, no resolver, or over a size or depth limit
    (then ``limit`` is ``"size"`` or ``"depth"``; otherwise it is None)."""

    limit: str | None = None


class DaemonUnavailable(IsorunError, ConnectionError):
    """No isorun daemon answers at the socket path named in the message."""


class InvalidRequest(IsorunError, ValueError):
    """The request is malformed: the daemon refused it (a bad path, an unknown plugin, a limit
    out of range), or the client did before sending it (a timeout that is not a finite number
    of seconds, ``args`` that are not a list or tuple)."""


class AccessDenied(IsorunError, PermissionError):
    """The daemon does not accept calls from this process's user or group."""


class SandboxError(IsorunError):
    """The sandbox could not be set up, or died without reporting an outcome."""
