"""How a call's outcome and gRPC's status codes become ``isorun.errors``: the only place that
mapping lives, for both runners."""
from __future__ import annotations

import os
import stat

import grpc
from google.protobuf.message import DecodeError

from . import errors
from ._proto import runner_pb2 as pb


def raise_failure(failure: pb.Failure) -> None:
    kind, message = failure.kind, failure.message
    if kind == pb.Failure.MODULE_NOT_FOUND:
        raise errors.ModuleNotFound(failure.module, failure.traceback)
    if kind == pb.Failure.FUNCTION_NOT_FOUND:
        raise errors.FunctionNotFound(message)
    if kind == pb.Failure.GUEST_EXCEPTION:
        raise errors.GuestError(failure.type_name, message, failure.traceback)
    if kind == pb.Failure.TIMEOUT:
        raise errors.RuntimeTimeoutError(message)
    if kind == pb.Failure.RESOURCE_LIMIT:
        raise errors.ResourceLimitError(message, failure.limit)
    if kind == pb.Failure.SERIALIZATION:
        error = errors.SerializationError(message)
        error.limit = failure.limit or None  # "depth" or "size"; "" when no limit was broken
        raise error
    raise errors.SandboxError(message or "the sandbox failed without a message")


def readable_answer(message_class):
    """A deserializer of RunResponse or RunEvent for which bytes that do not parse are an
    answer holding a SANDBOX failure: isorund relays a result as the sandbox encoded it, so a
    guest that wrote to its channel itself can send one that is not a valid Value."""
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as e:
            return message_class(outcome=pb.Outcome(failure=pb.Failure(kind=pb.Failure.SANDBOX, message=(
                f"isorund's answer could not be read ({e}): the call's sandbox sent a result that is not "
                "a valid google.protobuf.Value, which its runtime never sends"))))
    return parse


# A call gRPC cancels before the daemon's handler sees it: its queue of calls not yet taken
# overflowed (past max_open_rpcs), or the daemon was stopping.
_NOT_TAKEN = ("gRPC cancelled it before the daemon saw it, because more calls arrived at once than the daemon "
              "lets wait (max_open_rpcs) or because it was stopping; retry later")


def transport_error(error: grpc.RpcError, socket: str) -> errors.IsorunError:
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else "") or str(error)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return errors.InvalidRequest(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        if "message larger than max" in details.lower():  # grpc's own size check, either side
            return errors.ResourceLimitError(f"a message to or from isorund at {socket} is too large: {details}",
                                             "message")
        return errors.ResourceLimitError(details, "queue")
    if code == grpc.StatusCode.CANCELLED:  # never this client's doing: it raises its own error
        return errors.ResourceLimitError(f"isorund at {socket} did not take the call: {_NOT_TAKEN} ({details})", "queue")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.AccessDenied(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        # gRPC's own deadline ("Deadline Exceeded"), or the daemon's answer for a call whose
        # deadline left no room to run it ("… it was not started")
        return errors.RuntimeTimeoutError(f"the call's deadline passed before isorund at {socket} gave a result: {details}")
    if code == grpc.StatusCode.UNAVAILABLE:
        # A daemon that answered (shutting down, zygote restarting) says why; only a failed
        # connection is explained by the socket itself.
        if "connect" not in details.lower():
            return errors.DaemonUnavailable(f"isorund at {socket} is unavailable: {details}")
        unreachable = _unreachable(socket)
        if unreachable:
            return errors.DaemonUnavailable(unreachable)
        if "permission denied" in details.lower() or "eacces" in details.lower():
            return errors.DaemonUnavailable(
                f"this process may not connect to isorund at {socket} (permission denied): the socket's "
                f"mode and group (socket_mode, socket_group) decide who may; details: {details}")
        return errors.DaemonUnavailable(_not_kept(socket, details))
    return errors.SandboxError(f"isorund at {socket} failed the call ({code.name if code else 'unknown'}): {details}")


def _not_kept(socket: str, details: str) -> str:
    """Why a socket this process can reach did not keep the connection, as far as gRPC's words
    tell: a connection closed as it came is the daemon's bound (gRPC closes it unseen, so the
    daemon's log cannot say so); a refused one, a socket file nothing listens on."""
    lowered = details.lower()
    if any(words in lowered for words in ("broken pipe", "connection reset", "socket closed")):
        return (f"isorund at {socket} closed the connection as it was made: it holds as many client "
                f"connections as it allows (max_connections; each runner keeps one open), or it is "
                f"stopping; details: {details}")
    if "connection refused" in lowered:
        return (f"no isorun daemon answers at {socket}: nothing listens on the socket file (a daemon "
                f"that ended without removing it?); details: {details}")
    return f"no isorun daemon answers at {socket}: {details}"


def _unreachable(socket: str) -> str | None:
    """Why this process cannot even reach the socket's path, or None if it can."""
    try:
        mode = os.stat(socket).st_mode
    except PermissionError:
        return (f"this process may not reach isorund at {socket}: a folder on the socket's path is not "
                "searchable by it (permission denied); the daemon's socket belongs in a folder its callers can reach")
    except OSError:
        return f"no isorun daemon at {socket}: the socket does not exist"
    if not stat.S_ISSOCK(mode):  # (a config file or the daemon's folder given as the socket)
        kind = "a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "no socket"
        return f"no isorun daemon at {socket}: it is {kind}, not a Unix socket"
    return None
