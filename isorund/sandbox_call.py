"""The daemon's side of one call in a prepared sandbox: the plan out, the events in.

Parent-side code only. ``run_call`` sends the call's folders and plan down the sandbox's
channel, relays its events, and enforces what an untrusted guest cannot be trusted to enforce
itself (the wall-clock timeout, the console and result caps); whatever happens, it kills the
sandbox on return. The sandboxes themselves come from ``isorund.launcher``; what a call whose
sandbox sent no outcome stands for is ``isorund.sandbox_end``'s to say.
"""
from __future__ import annotations

import array
import asyncio
import json
import logging
import math
import os
import socket
import time
import traceback

from google.protobuf.message import DecodeError

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb
from isorund.sandbox import channel, filesystem
from isorund.sandbox._libc import SandboxSetupError

from .code_cache import MAX_EVENT_BYTES as MAX_COMPILED_EVENT
from .sandbox_handle import Sandbox
from .plan import RequestError
from .sandbox_end import died, failure_outcome, reaped, with_usage

log = logging.getLogger("isorund")
Failure = pb.Failure
EVENT_SLACK = 64 << 10  # framing and message overhead allowed on top of a size limit
CONSOLE_KINDS = ("console", "console_batch")
RUNNING = pb.RunEvent(running=pb.Running())


async def run_call(sandbox: Sandbox, plan, request: bytes, on_event, isolated: bool,
                   deadline: float | None = None, on_compiled=None) -> sb.RelayedOutcome:
    """Sends ``plan`` and the client's ``request`` (its bytes) to ``sandbox`` and relays its
    events to ``on_event`` until the outcome.

    Enforces what an untrusted guest cannot be trusted to enforce itself: the wall-clock
    timeout (cut short by the client's ``deadline``, a ``time.monotonic()`` value, so that no
    call runs for a client that stopped waiting), the console byte cap and the result size
    cap. Whatever happens, the sandbox is killed on return — after an outcome that kill just
    collects what the guest left behind. The outcome's result stays the bytes the sandbox
    encoded (``SandboxEvent`` in sandbox.proto): the client parses it, the daemon only relays.
    Raises RequestError when the sandbox finds the request's values do not parse.

    When the plan asks for the call's compiled modules, a ``compiled`` event that is the
    sandbox's first goes to ``on_compiled``: the runtime writes it before any guest code runs.
    Any other ``compiled`` event ends the call, as any event the runtime would not send."""
    started = time.monotonic()
    budget = plan.timeout_seconds
    if deadline is not None:
        budget = max(0.0, min(budget, deadline - started))
    try:
        async with asyncio.timeout(budget):
            try:
                await _send_plan(sandbox, plan, request, isolated)
            except SandboxSetupError as e:
                return failure_outcome(Failure(kind=Failure.SANDBOX, message=str(e)), started)
            outcome = await _Relay(sandbox, plan, on_event, on_compiled).outcome()
            if outcome is None:
                return await died(sandbox, started, plan.limits.cpu_seconds)
            outcome.usage.wall_seconds = time.monotonic() - started
            return outcome
    except TimeoutError:
        cut = f"the client's deadline passed after {budget:.3g} s of the call's" if budget < plan.timeout_seconds \
            else "the call did not finish within its"
        timed_out = failure_outcome(Failure(kind=Failure.TIMEOUT, message=(
            f"{cut} {plan.timeout_seconds:g} s timeout; its sandbox was killed")), started)
        _kill(sandbox, isolated)
        return with_usage(timed_out, await reaped(sandbox))
    except RequestError:
        raise
    except ConnectionError:
        # The sandbox went away with bytes of ours unread (killed mid-plan, say by the end of
        # the shutdown grace): the same as a channel closed without an outcome.
        return await died(sandbox, started, plan.limits.cpu_seconds)
    except Exception as e:  # a guest that sends garbage must not take the daemon with it
        if not isinstance(e, (DecodeError, _FrameTooLarge, _OutputLimit, _UnexpectedEvent)):
            # not what garbage on the channel raises: the daemon's own fault, which the call's
            # answer would otherwise lay at the sandbox's door without a trace (found by review)
            log.error(json.dumps({"event": "relay_failed", "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc()}))
        return failure_outcome(_failure_of(e), started)
    finally:
        _kill(sandbox, isolated)
        sandbox.close()


def _kill(sandbox: Sandbox, isolated: bool) -> None:
    sandbox.kill_group() if not isolated else sandbox.kill()


async def _send_plan(sandbox: Sandbox, plan, request: bytes, isolated: bool) -> None:
    """The call's folders (as descriptors), its plan and the client's request, down the
    sandbox's channel. Raises SandboxSetupError when a folder cannot be opened."""
    folders = filesystem.detach_folders(plan.root, list(plan.host_paths)) if isolated else []
    payload = plan.SerializeToString()
    loop = asyncio.get_running_loop()
    try:
        if isolated:
            await _take_the_sandboxs_channel(sandbox)
        _send_folders(sandbox.sock, folders)
        await loop.sock_sendall(sandbox.sock, channel.HEADER.pack(len(payload)) + payload
                                + channel.HEADER.pack(len(request)))
        await loop.sock_sendall(sandbox.sock, request)  # not joined: it may be 64 MiB
    except OSError:
        pass  # the sandbox may have failed set-up already; its report is in the channel
    finally:
        for fd in folders:
            os.close(fd)


class _Relay:
    """One call's events, from the sandbox's channel to ``on_event``, in the order and within
    the limits the sandbox's runtime keeps: an optional ``compiled`` event first, one
    ``running``, console lines, one outcome."""

    def __init__(self, sandbox: Sandbox, plan, on_event, on_compiled):
        self.reader = _FrameReader(asyncio.get_running_loop(), sandbox.sock)
        self.on_event, self.on_compiled = on_event, on_compiled
        # An outcome is at most the result's bytes and the event's own; a console line may be
        # as long as the console cap (the runtime cuts one longer to just over it).
        self.max_outcome = plan.limits.result_bytes + EVENT_SLACK
        self.max_frame = max(plan.limits.result_bytes, plan.limits.output_bytes) + EVENT_SLACK
        self.output_bytes = plan.limits.output_bytes
        self.console_left = plan.limits.output_bytes
        self.compiled_expected = plan.report_compiled

    async def outcome(self) -> sb.RelayedOutcome | None:
        """The sandbox's outcome, once every event before it was relayed; None if the channel
        closed without one."""
        running_seen = False
        received = await self._first()
        while received is not None:
            event, frame = received
            kind = event.WhichOneof("event")
            if kind == "outcome":
                if len(frame) > self.max_outcome:
                    raise _FrameTooLarge(f"the call sent an outcome of {len(frame)} bytes, over its "
                                         f"{self.max_outcome}-byte limit")
                return _as_the_runtime_sends(event.outcome)
            if kind == "invalid_request" and not running_seen:
                # The sandbox parses the request's values first (the daemon relays them
                # unparsed): the client's error, answered as any other bad request.
                raise RequestError(event.invalid_request[:2000])
            if kind == "running" and not running_seen:
                running_seen = True
                await self.on_event(RUNNING)
                received = await self._next()
            elif kind in CONSOLE_KINDS:
                received = await self._relay_console(event, frame) or await self._next()
            else:
                # The guest can write to this socket itself: anything the sandbox's runtime
                # never sends (a second 'running', an empty event) ends the call rather
                # than reaching the client.
                raise _UnexpectedEvent(kind)
        return None

    async def _next(self, max_bytes: int = 0) -> tuple[sb.SandboxEvent, bytes] | None:
        frame = await self.reader.next(max_bytes or self.max_frame)
        return None if frame is None else (_parse_event(frame), frame)

    async def _first(self) -> tuple[sb.SandboxEvent, bytes] | None:
        """The first event, the ``compiled`` one the plan asked for handed to ``on_compiled``;
        it is read under the modules' bound, any other first event under the result's.

        Console lines may come before it: the operator's code runs before the modules are
        compiled (an operator type's decode of the arguments, a resolver, a compiler plugin),
        and what it prints is sent first. No guest code has run yet, so the ``compiled`` event
        after them is still the runtime's."""
        if not self.compiled_expected:
            return await self._next()
        bound = max(self.max_frame, MAX_COMPILED_EVENT)
        received = await self._next(bound)
        while received is not None and received[0].WhichOneof("event") in CONSOLE_KINDS:
            received = await self._relay_console(*received, max_bytes=bound) or await self._next(bound)
        if received is None:
            return None
        event, frame = received
        if event.WhichOneof("event") == "compiled":
            if self.on_compiled is not None:
                self.on_compiled(event.compiled)
            return await self._next()
        if len(frame) > self.max_frame:
            raise _FrameTooLarge(f"the call sent an event of {len(frame)} bytes, over its "
                                 f"{self.max_frame}-byte limit")
        return received

    async def _relay_console(self, event: sb.SandboxEvent, frame: bytes,
                             max_bytes: int = 0) -> tuple[sb.SandboxEvent, bytes] | None:
        """Relays ``event``'s lines with every console event already received behind it, as
        one message; returns a non-console event read on the way, which comes next.

        Each line costs the bytes it took on the channel plus a frame header, as if sent on
        its own, so that no line is free: not an empty one, not one padded with fields the
        schema does not know, not one in a batch. A batch larger than what is left of the cap
        is never parsed whole; the lines of it that fit are relayed before the output limit
        ends the call (the batch that went over took all its lines with it: 1 of the ~60
        lines a 1,000-byte cap holds arrived)."""
        relayed, carried = pb.ConsoleBatch(), None  # (lines kept in one message: no object each)
        while True:
            fits = len(frame) <= self.console_left  # (a frame over it is not parsed whole)
            if fits:
                batch = _batch_of(event)
                cost = len(frame) + channel.HEADER.size * len(batch.lines)
                fits = cost <= self.console_left
            if not fits:
                relayed.MergeFrom(_batch_within(event, self.console_left))
                self.console_left = -1
                break
            self.console_left -= cost
            relayed.MergeFrom(batch)
            if (frame := self.reader.buffered(max_bytes or self.max_frame)) is None:
                break
            event = _parse_event(frame)
            if event.WhichOneof("event") not in CONSOLE_KINDS:
                carried = (event, frame)
                break
        if relayed.lines:
            await self.on_event(pb.RunEvent(console=relayed.lines[0]) if len(relayed.lines) == 1
                                else pb.RunEvent(console_batch=relayed))
        if self.console_left < 0:
            raise _OutputLimit(self.output_bytes)
        # A guest that keeps its channel full would otherwise keep this loop from ever
        # waiting: its timeout, and every other call, need the event loop to run.
        await asyncio.sleep(0)
        return carried


# The limits a runtime's failure names (runner.proto's Failure.limit): memory, cpu, output and
# result for RESOURCE_LIMIT, depth and size for SERIALIZATION.
RUNTIME_LIMITS = frozenset({"", "memory", "cpu", "output", "result", "depth", "size"})


def _as_the_runtime_sends(outcome: sb.RelayedOutcome) -> sb.RelayedOutcome:
    """The outcome, if the sandbox's runtime could have made it. The guest can write to its
    channel itself: an outcome of a kind no daemon knows made the call's log line raise (the
    call was missing from the log and the metrics), a limit name of 8 MB went into the log
    whole, and a NaN CPU time made the line invalid JSON (all seen). A forged outcome that the
    runtime could have made is the guest's own to give (docs/security.md)."""
    failure = outcome.failure if outcome.WhichOneof("result") == "failure" else None
    usage = outcome.usage
    if (failure is not None and (failure.kind not in Failure.Kind.values() or failure.kind == Failure.KIND_UNSPECIFIED
                                 or failure.limit not in RUNTIME_LIMITS)) \
            or not (math.isfinite(usage.cpu_seconds) and usage.cpu_seconds >= 0):
        raise _UnexpectedEvent("outcome", "an outcome its runtime never makes (of an unknown kind, limit or usage)")
    return outcome


def _failure_of(error: Exception) -> pb.Failure:
    """What the client is told when the sandbox's events broke the runtime's rules."""
    if isinstance(error, _OutputLimit):
        return Failure(kind=Failure.RESOURCE_LIMIT, limit="output",
                       message=f"the call printed more than its {error.args[0]} console bytes")
    if isinstance(error, _FrameTooLarge):
        return Failure(kind=Failure.RESOURCE_LIMIT, limit="result", message=str(error))
    if isinstance(error, _UnexpectedEvent):
        kind = error.args[0]
        what = error.args[1] if len(error.args) > 1 else "a second 'running' event" if kind == "running" \
            else f"a {kind!r} event" if kind else "an empty event"
        return Failure(kind=Failure.SANDBOX, message=(
            f"the sandbox sent {what}, which its runtime never sends (one 'running', console "
            "lines, one outcome): something in the call wrote to its channel; the call was ended"))
    return Failure(kind=Failure.SANDBOX, message=f"the sandbox sent an invalid event: {error}")


def _batch_of(event: sb.SandboxEvent) -> pb.ConsoleBatch:
    """The console lines of a console event, as a batch (a batch's frame is at most the
    largest event the daemon reads, ``max_frame``)."""
    if event.WhichOneof("event") == "console":
        return pb.ConsoleBatch(lines=[event.console])
    batch = pb.ConsoleBatch.FromString(event.console_batch)
    batch.DiscardUnknownFields()
    if not batch.lines:
        raise _UnexpectedEvent(None)  # an empty batch: nothing the runtime sends
    return batch


# A batch's lines on the wire: field 1 (``lines``), length-delimited, each then its length.
_LINE_TAG = 1 << 3 | 2


def _batch_within(event: sb.SandboxEvent, budget: int) -> pb.ConsoleBatch:
    """The first lines of a console event that fit in ``budget`` bytes, each costing what it
    would alone on the channel. A batch is cut at the last line that fits, found from its
    lines' lengths, and only that part is parsed: parsed whole, one 16 MB batch of 8,000,000
    empty lines took the daemon 460 MiB."""
    if event.WhichOneof("event") == "console":
        alone = channel.HEADER.size + event.ByteSize()
        return pb.ConsoleBatch(lines=[event.console] if alone <= budget else [])
    batch, end = event.console_batch, 0
    while end < len(batch) and batch[end] == _LINE_TAG:
        size, start = _varint(batch, end + 1)
        budget -= channel.HEADER.size + (start - end) + size  # as a console event of its own
        if budget < 0 or start + size > len(batch):
            break
        end = start + size
    fitting = pb.ConsoleBatch.FromString(batch[:end])
    fitting.DiscardUnknownFields()
    return fitting


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The base-128 varint at ``at`` (at most 5 bytes here: a length) and where it ends; a
    varint cut short or too long reads as a length past the data."""
    value = 0
    for shift, position in zip(range(0, 35, 7), range(at, min(at + 5, len(data)))):
        value |= (data[position] & 0x7F) << shift
        if not data[position] & 0x80:
            return value, position + 1
    return len(data) + 1, len(data)


def _parse_event(frame: bytes) -> sb.SandboxEvent:
    """A sandbox's event, without fields the schema does not declare: those would be relayed
    to the client (and held by the daemon) uncounted. A result's own bytes are relayed as they
    came: they are counted, by the frame's size against the result cap."""
    event = sb.SandboxEvent.FromString(frame)
    event.DiscardUnknownFields()
    return event


async def _take_the_sandboxs_channel(sandbox: Sandbox) -> None:
    """Swaps the channel the zygote made for the one the sandbox made in its own network
    namespace (``channel.move_into_own_namespace``), once the sandbox has sent it (a pooled
    one has, long before). A sandbox that failed before that sends its report on the old
    channel, or closes it: the byte is looked at before it is read, and then left there."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            first = sandbox.sock.recv(1, socket.MSG_PEEK)
            break
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sandbox.sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(sandbox.sock.fileno())
    if first != channel.NEW_CHANNEL:
        return
    _data, fds, _flags, _address = socket.recv_fds(sandbox.sock, 1, 1)
    if not fds:
        raise ConnectionError("the sandbox's new channel did not arrive")
    new = socket.socket(fileno=fds[0])
    new.setblocking(False)
    sandbox.sock.close()
    sandbox.sock = new


def _send_folders(sock: socket.socket, fds: list[int]) -> None:
    """The call's folders as file descriptors, in one byte's ancillary data, ahead of the plan
    (an empty socket buffer takes one byte at once, so this never blocks)."""
    if sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []) != 1:
        raise BlockingIOError("the call's folders could not be sent")


class _FrameTooLarge(Exception):
    pass


class _OutputLimit(Exception):
    """The call printed more than its console cap (args[0]: the cap in bytes)."""


class _UnexpectedEvent(Exception):
    """An event the sandbox's runtime never sends at that point (args[0]: its kind, or None;
    args[1], if given: what it was, in words)."""


class _FrameReader:
    """Reads length-prefixed frames from a non-blocking socket with the event loop."""

    def __init__(self, loop, sock):
        self.loop, self.sock, self.buf = loop, sock, bytearray()

    async def next(self, max_bytes: int) -> bytes | None:
        header = await self._exactly(channel.HEADER.size)
        if header is None:
            return None
        (size,) = channel.HEADER.unpack(header)
        if size > max_bytes:
            raise _FrameTooLarge(f"the call sent an event of {size} bytes, over its {max_bytes}-byte limit")
        return await self._exactly(size)

    def buffered(self, max_bytes: int) -> bytes | None:
        """The next frame if it has been received whole already, else None (never waits)."""
        if len(self.buf) < channel.HEADER.size:
            return None
        (size,) = channel.HEADER.unpack_from(self.buf)
        if size > max_bytes:
            raise _FrameTooLarge(f"the call sent an event of {size} bytes, over its {max_bytes}-byte limit")
        end = channel.HEADER.size + size
        if len(self.buf) < end:
            return None
        return self._take(channel.HEADER.size, end)

    async def _exactly(self, size: int) -> bytes | None:
        while len(self.buf) < size:
            chunk = await self.loop.sock_recv(self.sock, max(65536, size - len(self.buf)))
            if not chunk:
                return None
            self.buf += chunk
        return self._take(0, size)

    def _take(self, start: int, end: int) -> bytes:
        """``buf[start:end]`` as bytes, removed with what precedes it; copied once (a slice of
        the bytearray would be a second copy of a frame that may be 16 MB)."""
        with memoryview(self.buf) as view:
            data = bytes(view[start:end])
        del self.buf[:end]
        return data
