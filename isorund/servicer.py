"""The Runner service's gRPC face: it translates between protobuf and ``Calls`` and maps
errors to status codes; the logic lives in ``isorund.calls``.

Requests are parsed leniently (a request whose bytes do not parse is answered
INVALID_ARGUMENT, not INTERNAL) and read and answered as their wire twins (sandbox.proto),
whose values stay bytes: the daemon relays them, the sandbox and the client parse them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

from .admission import QueueFull, QueueTimeout
from .launcher import ZygoteUnavailable
from .plan import RequestError

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("isorund")
RUNNER = pb.DESCRIPTOR.services_by_name["Runner"]
SERVICE = RUNNER.full_name


class Malformed:
    """A request whose bytes are not the expected message; the servicer answers
    INVALID_ARGUMENT (a deserializer that raised would make grpc answer INTERNAL)."""

    def __init__(self, error: str):
        self.error = error


def _lenient(message_class, public_class=None):
    """Parses a request as ``message_class``; the error names ``public_class``, the message of
    the .proto the client knows, when the daemon reads it as its wire twin."""
    public_name = (public_class or message_class).DESCRIPTOR.full_name

    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except (DecodeError, RuntimeWarning, ValueError) as e:
            # its text only: the exception's traceback holds this frame, and so the request's
            # bytes, in a cycle only a full collection frees (32 malformed 50 MiB requests
            # kept 1.6 GiB, seen)
            return Malformed(str(e).replace(message_class.DESCRIPTOR.full_name, public_name))
    return parse


class Refused(Exception):
    """Ends an RPC with a status code other than OK (see ``_answered``)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


async def _answered(context, handling):
    """Awaits a handler's work; a ``Refused`` becomes the RPC's status, set on the context.
    Not ``context.abort()``: grpc keeps its AbortError in the RPC's state, which the frames of
    the error's traceback refer back to, and that cycle pins every frame's locals (the
    request's bytes among them) until a full collection: 10 refused 20 MiB requests held
    360 MiB of the daemon (seen). gRPC sends no response with a status that is not OK."""
    try:
        return await handling
    except Refused as refusal:
        context.set_code(refusal.code)
        context.set_details(refusal.message)
        return None


class _Stream:
    """A RunStream's writes, one after another. A write waits while the client does not read;
    the call's timeout, ending the call, interrupts the wait but not the write, which goes on
    in gRPC's core. The next write (the outcome) must wait for it: started while it is pending,
    gRPC refused it (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, a traceback in the log) and the
    client, once it read, got the console lines and no outcome."""

    def __init__(self, context):
        self._context = context
        self._pending: asyncio.Future | None = None

    async def write(self, message) -> None:
        if self._pending is not None and not self._pending.done():
            await asyncio.shield(self._pending)
        self._pending = asyncio.ensure_future(self._context.write(message))
        # its error, if no later write awaits it, is the RPC's end, not an unretrieved one
        self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.shield(self._pending)


class RunnerServicer:
    def __init__(self, server: "Server"):
        self.server = server

    async def Run(self, request, context):
        with self.server.rpc_in_flight():
            return await _answered(context, self._run_collecting(request, context))

    async def RunStream(self, request, context):
        with self.server.rpc_in_flight():
            await _answered(context, self._run_streaming(request, context))

    async def _run_streaming(self, request, context):
        stream = _Stream(context)
        outcome = await self._run(request, context, stream.write)
        await stream.write(sb.SandboxEvent(outcome=outcome))

    async def _run_collecting(self, request, context):
        """Run: the console lines are held and answered with the outcome."""
        console = []

        async def collect(event):
            kind = event.WhichOneof("event")
            if kind == "console":
                console.append(event.console)
            elif kind == "console_batch":
                console.extend(event.console_batch.lines)
        outcome = await self._run(request, context, collect)
        return sb.RelayedRunResponse(outcome=outcome, console=console)

    async def GetCapabilities(self, request, context):
        return await _answered(context, self._capabilities(request, context))

    async def _capabilities(self, request, context):
        self._admitted(request, context, pb.GetCapabilitiesRequest)
        return self.server.capabilities()

    def _admitted(self, request, context, message_class):
        """Refuses malformed requests and peers not on the allowlist; returns the peer's name,
        and its credentials when the allowlist's front knows them (else None)."""
        peer, creds = context.peer(), None
        front = self.server.front
        if front is not None:
            creds = front.lookup(peer)
            if creds is None or not front.allowlist.allows(creds):
                log.info(json.dumps({"event": "denied", "peer": str(creds) if creds else peer}))
                raise Refused(grpc.StatusCode.PERMISSION_DENIED, front.allowlist.refusal(creds) if creds
                              else "isorund cannot tell who this peer is; refused")
            peer = str(creds)
        if isinstance(request, Malformed):
            message = f"the request is not a valid {message_class.DESCRIPTOR.full_name} message: {request.error}"
            if message_class is pb.RunRequest:
                self.server.calls.refused(peer, "invalid_argument", message)
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, message)
        return peer, creds

    async def _run(self, request, context, on_event):
        peer, caller = self._admitted(request, context, pb.RunRequest)
        if self.server.stopping:
            self.server.calls.refused(peer, "unavailable", "isorund is shutting down")
            raise Refused(grpc.StatusCode.UNAVAILABLE, "isorund is shutting down")
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            return await self.server.calls.run(request, on_event, deadline=deadline, peer=peer, caller=caller)
        except RequestError as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        except QueueFull as e:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except QueueTimeout as e:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from None
        except ZygoteUnavailable as e:
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(e)) from None


def runner_handler(servicer: RunnerServicer) -> grpc.GenericRpcHandler:
    """The Runner service with lenient request parsing (see ``Malformed``), requests and
    answers read and written as their wire twins (sandbox.proto), whose values stay bytes."""
    methods = RUNNER.methods_by_name
    handlers = {
        "Run": grpc.unary_unary_rpc_method_handler(
            servicer.Run, _lenient(sb.RelayedRunRequest, pb.RunRequest), sb.RelayedRunResponse.SerializeToString),
        "RunStream": grpc.unary_stream_rpc_method_handler(
            servicer.RunStream, _lenient(sb.RelayedRunRequest, pb.RunRequest), _encoded),
        "GetCapabilities": grpc.unary_unary_rpc_method_handler(
            servicer.GetCapabilities, _lenient(pb.GetCapabilitiesRequest), pb.Capabilities.SerializeToString),
    }
    assert set(handlers) == set(methods), "every Runner method of the .proto needs a handler"
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _encoded(event) -> bytes:
    """A RunStream event: a RunEvent, or the outcome as its wire twin ``SandboxEvent``."""
    return event.SerializeToString()
