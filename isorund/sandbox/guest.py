"""The guest runner: the last step in the sandbox, once every restriction is in place.

It decodes the arguments, imports the call's file through the restricted importer, finds the
function, reports ``running``, calls it (awaiting a coroutine), and sends exactly one outcome.
Console output is streamed while the call runs (a burst in batches, see ``Console``). Whatever
the guest does, the report says what happened in the guest's terms: its exception and its own
frames, never the runtime's.
"""
from __future__ import annotations

import _signal  # signal's own functions wrap each handler in an enum: 30 times slower
import asyncio
import builtins
import codecs
import inspect
import io
import os
import resource
import signal
import sys
import threading
import time
import traceback
import types

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb
from isorun.errors import SerializationError

from . import channel
from .compiled import Compiled, CompiledBudget
from .importer import (GuestImporter, GuestModuleNotFound, ImportPolicy,
                       PluginFailure, call_plugin)

Failure = pb.Failure


class CpuLimitExceeded(BaseException):
    """Raised from SIGXCPU: the guest used up its CPU seconds."""


class Console:
    """The call's console lines, from stdout and stderr in the order printed, sent in batches.

    A line sent as a frame of its own cost ~10 µs of the guest's time (a message, a system
    call, a wake-up of the daemon, which relayed it) and made a burst of 1,000 lines take
    20–190 ms. Now a line after a quiet spell goes out at once, as before; the lines of a burst
    that follow it wait until ``FLUSH_BYTES`` of them are pending or ``FLUSH_SECONDS`` have
    passed since the last send — a thread, started with the call's first burst, sends them then,
    so a line printed before a long computation or a sleep still arrives while it lasts — and
    the runtime flushes before it sends ``running`` and the outcome. ``sys.stdout.flush()``
    sends at once. What a burst printed in its last ``FLUSH_SECONDS`` is lost if the sandbox is
    killed (timeout, memory) or exits without returning, where a line used to be on its way.
    """
    FLUSH_BYTES = 16 << 10
    FLUSH_SECONDS = 0.005

    def __init__(self, sock):
        self._sock = sock
        # The call's console cap in bytes (``limits.output_bytes``), known once its plan came.
        self.cap = sys.maxsize
        self._lines: list[tuple[int, str]] = []
        self._bytes = 0
        self._sent_at = 0.0
        # reentrant: a guest's signal handler may print while the interrupted code is printing
        self._lock = threading.RLock()
        self._line_added = threading.Condition(self._lock)
        self._flusher: threading.Thread | None | bool = None  # False: none can run
        # A frame on its way: a signal handler that prints runs in the middle of it (sendall
        # runs handlers when a signal interrupts it) and must not send a frame of its own into it.
        self._sending = False
        os.register_at_fork(after_in_child=self._after_fork)

    def add(self, stream: int, text: str) -> None:
        # A lone surrogate (os.fsdecode of a name that is not UTF-8 makes them) is written as its
        # escape, as Python's stderr writes it: no protobuf string may hold one, and the send
        # that met it, often the outcome's, ended the sandbox without an outcome.
        text = capped_line(_encodable(text), self.cap)
        with self._lock:
            self._lines.append((stream, text))
            self._bytes += len(text)
            quiet = len(self._lines) == 1 and time.monotonic() - self._sent_at >= self.FLUSH_SECONDS
            if quiet or self._bytes >= self.FLUSH_BYTES:
                self._send()
                return
            if self._flusher is None:
                self._start_flusher()
            if not self._flusher:
                self._send()
            elif len(self._lines) == 1:
                self._line_added.notify()

    def flush(self) -> None:
        with self._lock:
            self._send()

    def send_after_lines(self, event) -> None:
        """Sends ``event`` (``running``, the outcome) after every line printed before it, and
        never in the middle of a line's frame (a guest's own threads may be printing)."""
        with self._lock:
            self._send()
            self._sending = True  # (lines a handler prints now follow the event)
            try:
                channel.send(self._sock, event)
            finally:
                self._sending = False

    def _send(self) -> None:
        """Sends the pending lines, and those a signal handler adds meanwhile; re-entered from
        such a handler, leaves its lines to the send under way."""
        if self._sending:
            return
        self._sending = True
        try:
            while self._lines:
                lines, self._lines, self._bytes = self._lines, [], 0
                channel.send(self._sock, _console_event(lines))
                self._sent_at = time.monotonic()
        finally:
            self._sending = False

    def _start_flusher(self) -> None:
        """If no thread can start (the call's process limit leaves no room for one), each line
        goes out as it comes."""
        self._flusher = threading.Thread(target=self._flush_soon, name="isorun-console", daemon=True)
        try:
            self._flusher.start()
        except RuntimeError:
            self._flusher = False

    def _flush_soon(self) -> None:
        try:
            with self._lock:
                while True:
                    while not self._lines:
                        self._line_added.wait()
                    self._line_added.wait(max(0.0, self._sent_at + self.FLUSH_SECONDS - time.monotonic()))
                    self._send()
        finally:
            self._flusher = False  # whatever ended it (the channel gone): lines go out as they come

    def _after_fork(self) -> None:
        """A guest's forked child sends its lines as they come, with a lock of its own: it may
        exit at any moment, with no runtime left to flush for it."""
        self._lock = threading.RLock()
        self._line_added = threading.Condition(self._lock)
        self._lines, self._bytes, self._flusher, self._sending = [], 0, False, False


def _console_event(lines: list[tuple[int, str]]) -> pb.RunEvent:
    if len(lines) == 1:
        return pb.RunEvent(console=pb.ConsoleLine(stream=lines[0][0], text=lines[0][1]))
    event = pb.RunEvent()
    add = event.console_batch.lines.add
    for stream, text in lines:
        add(stream=stream, text=text)
    return event


def capped_line(line: str, cap: int) -> str:
    """``line``, or if it is over the console cap by itself, its start, cut to just over it
    (1–4 bytes). The daemon, which counts the call's console bytes, then ends the call for its
    output (``limit='output'``), where the whole line, sent as one event, could have been
    larger than any event it reads and been reported as an oversized result."""
    if 4 * len(line) <= cap:  # no str of this length takes more bytes than the cap
        return line
    data = line.encode("utf-8")  # (Console.add escaped any lone surrogate)
    if len(data) <= cap + 4:
        return line
    end = cap + 4
    while (data[end] & 0xC0) == 0x80:  # a character's continuation byte: cut before that character
        end -= 1  # (at most 3 times: the start stays over the cap)
    return data[:end].decode("utf-8")


class ConsoleStream:
    """A text stream whose lines become console events; print() and sys.stdout land here.

    What guests' libraries look for on ``sys.stdout`` is there (``encoding``, ``errors``,
    ``writelines``, ``writable()``, ``fileno()`` raising ``UnsupportedOperation``, ``buffer``
    for bytes, ``reconfigure()``; each was an AttributeError), and it counts as an
    ``io.TextIOBase`` (registered, not inherited: attribute access on a subclass of the C
    base is slower, 8.4–8.7 µs a printed line against 7.0–7.2, best of 9 × 100,000). It
    cannot be closed: ``close()`` only flushes, as the console is the call's, not the guest's.

    A guest's signal handler that prints runs in the middle of whatever the interrupted code
    was writing (print() writes its parts one by one): its text then waits in
    ``_interrupting`` and follows the interrupted write's, as on a terminal, instead of seeing
    half-updated state (which sent a line twice)."""

    encoding = "utf-8"
    errors = "backslashreplace"  # (what Console.add does to a lone surrogate)
    newlines = None
    closed = False
    _bytes_held = False  # the start of a character written to .buffer, not yet completed

    def __init__(self, console: Console, stream: int):
        self._console, self._stream = console, stream
        self.name = "<stdout>" if stream == pb.ConsoleLine.STDOUT else "<stderr>"
        self.buffer = self._bytes = ConsoleBytes(self)
        # The line being written, in parts: print(x, end="") in a loop made one str grow by
        # copying, 100,000 times 6 characters took 14 s.
        self._pending: list[str] = []
        self._pending_chars = 0
        self._busy = False
        self._interrupting: list[str] = []
        self._flush_after = False  # a flush asked for while busy, done when the write ends

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self._bytes_held:
            ConsoleBytes.finish(self._bytes)
        if self._busy:
            self._interrupting.append(text)
            return len(text)
        self._busy = True
        try:
            self._take_interrupting()  # (one that came as the last write ended is older than text)
            self._take(text)
            self._take_interrupting()
        finally:
            self._done()
        return len(text)

    def flush(self) -> None:
        """Sends what was written, a line begun included. From a signal handler in the middle
        of a write (``print(..., flush=True)``), it waits for that write to end: taking the
        handler's text then raised the runtime's IndexError in the guest's print()."""
        if self._busy:
            self._flush_after = True
            return
        self._busy = True
        try:
            self._take_interrupting()
            if self._pending:
                self._console.add(self._stream, self._line_so_far())
        finally:
            self._done()
        self._console.flush()

    def _done(self) -> None:
        self._busy = False
        if self._flush_after:  # (the lines taken so far; the interrupted code's line goes on)
            self._flush_after = False
            self._console.flush()

    def finish(self) -> None:
        """Sends what is left at the end of the call."""
        ConsoleBytes.finish(self._bytes)
        ConsoleStream.flush(self)

    def isatty(self) -> bool:
        return False

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def close(self) -> None:
        self.flush()

    def reconfigure(self, *, encoding=None, errors=None, newline=None, line_buffering=None,
                    write_through=None) -> None:
        """Accepted and without effect (``sys.stdout.reconfigure(encoding="utf-8")`` is a common
        first line of scripts): the console carries text, with no encoding step to set."""

    def _take(self, text: str) -> None:
        if "\n" not in text:
            if not text:
                return
            self._pending.append(text)  # print() writes its parts one by one, the newline last
            self._pending_chars += len(text)
            if self._pending_chars > self._console.cap:
                # a line past the call's whole console cap is sent as it stands (the daemon ends
                # the call for it) rather than held until memory runs out
                self._console.add(self._stream, self._line_so_far())
            return
        first, *lines = text.split("\n")
        last = lines.pop()
        self._console.add(self._stream, self._line_so_far(first) + "\n")
        for line in lines:
            self._console.add(self._stream, line + "\n")
        if last:
            self._pending, self._pending_chars = [last], len(last)

    def _line_so_far(self, end: str = "") -> str:
        """The pending parts and ``end`` as one str; nothing is pending after."""
        self._pending.append(end)
        line = "".join(self._pending)
        self._pending, self._pending_chars = [], 0
        return line

    def _take_interrupting(self) -> None:
        while self._interrupting:
            self._take(self._interrupting.pop(0))


io.TextIOBase.register(ConsoleStream)


class ConsoleBytes(io.BufferedIOBase):
    """``sys.stdout.buffer``: bytes written to it are read as UTF-8 (a character split across
    two writes joins up; a byte that is no UTF-8 becomes U+FFFD) and go to the console."""

    def __init__(self, text: ConsoleStream):
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data) -> int:
        data = memoryview(data).cast("B")  # (bytes-like, as a binary stream takes)
        text = self._decoder.decode(data)  # (what it held before is in text now)
        self._text._bytes_held = False
        self._text.write(text)
        self._text._bytes_held = bool(self._decoder.getstate()[0])
        return data.nbytes

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._text.flush()

    def close(self) -> None:
        self.flush()

    def finish(self) -> None:
        """A character begun and not completed, at the end of the call or before text written
        to the text stream, is a U+FFFD there, not lost or sent after it (bytes written to a
        real stdout would still reach the terminal, in their place)."""
        self._text._bytes_held = False
        ConsoleStream.write(self._text, self._decoder.decode(b"", final=True))


_console: Console | None = None  # the call's (one call per process), made by prepare()
# Its stdout and stderr streams: a line begun on them is sent at the end of the call even if
# the guest has put something else in sys.stdout since (the line was lost).
_streams: tuple[ConsoleStream, ...] = ()


def prepare(sock, registry) -> None:
    """Everything of a call that does not depend on it, done while the sandbox waits in the pool.

    Besides installing the console and the CPU-limit handler, it runs the runtime's own
    path once on a made-up value (codec, compile, the outcome message): the first touch of
    each page inherited from the zygote is a copy-on-write fault, and taking those here keeps
    them off the call's path. Nothing of it is visible to the guest.
    """
    global _console, _streams
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    _console = Console(sock)
    sys.stdout = ConsoleStream(_console, pb.ConsoleLine.STDOUT)
    sys.stderr = ConsoleStream(_console, pb.ConsoleLine.STDERR)
    _streams = (sys.stdout, sys.stderr)
    # "the real stdout, however sys.stdout was redirected" is the console too: the original
    # streams write to /dev/null, so a guest's print(file=sys.__stderr__) was lost
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    sample = _codec.decode(_codec.encode([1, "warm", {"up": 2.5}], registry), registry)
    namespace = {"__builtins__": dict(vars(builtins))}
    exec(compile("def echo(x):\n    return x\n", "/warm-up.py", "exec", dont_inherit=True), namespace)
    event = pb.RunEvent()
    _codec.encode_into(event.outcome.value, namespace["echo"](sample), registry)
    event.outcome.usage.CopyFrom(_usage(time.monotonic()))
    event.SerializeToString()


def run(plan, request_bytes: bytes, plugins, registry, guest_dir: str) -> None:
    """Runs the call described by ``plan`` and the client's request, and sends its events on
    the channel ``prepare`` gave the console (after the lines printed before each of them)."""
    started, cpu_before = time.monotonic(), _cpu_seconds()
    _console.cap = plan.limits.output_bytes
    importer = None
    # The result is encoded straight into the event that carries it: a large result is then
    # built once, not copied into an Outcome and again into a RunEvent.
    event = pb.RunEvent()
    outcome = event.outcome
    try:
        failure = None
        request = _request_of(request_bytes)
        args = [_codec.decode(v, registry) for v in request.args]
        context = {k: _codec.decode(v, registry) for k, v in request.context.items()}
        policy = ImportPolicy(guest_dir=guest_dir, extensions=tuple(plan.extensions),
                              allowed=frozenset(plan.allowed), search_paths=tuple(plan.search_paths))
        resolver = None
        if request.resolver:
            options = _codec.decode(struct_pb2.Value(struct_value=request.resolver_options), registry)
            resolver = call_plugin("resolver", request.resolver, plugins.resolvers[request.resolver], options)
        importer = GuestImporter(policy, context=context, resolver=resolver,
                                 compiler=plugins.compilers.get(request.compiler) if request.compiler else None,
                                 plugin_names=(request.compiler, request.resolver))
        _preload(importer, plan)
        module = importer.load_main(plan.file)
        func = module.__dict__.get(request.func_name)
        if not callable(func):
            failure = Failure(kind=Failure.FUNCTION_NOT_FOUND, type_name="TypeError", message=(
                f"{request.func_name} is not a function in /{plan.file}" if request.func_name in module.__dict__
                else f"function {request.func_name} was not found in /{plan.file}"))
        else:
            _console.send_after_lines(pb.RunEvent(running=pb.Running()))
            if request.args_resolver:
                args = list(call_plugin("args_resolver", request.args_resolver,
                                        plugins.args_resolvers[request.args_resolver], args))
            result = func(*_padded(func, args))
            if isinstance(result, types.CoroutineType):  # (inspect's test, with no frame to trace)
                result = asyncio.run(result)
            sys.settrace(None)  # before any frame of the runtime's: see _interpreter_settings_back
            sys.setprofile(None)
            _silence_guest_handlers()
            _interpreter_settings_back()
            importer.withdraw()
            _codec.encode_into(outcome.value, result, registry, max_bytes=plan.limits.result_bytes)
    except InvalidRequest as e:
        _console.send_after_lines(sb.SandboxEvent(invalid_request=str(e)))
        return
    except BaseException as e:  # noqa: B036 - everything the guest raises is its outcome
        # A handler of the guest's may still be due (a timer's signal that arrived as its
        # exception unwound): Python runs it at the next call or loop, here, and its error
        # ended the sandbox without an outcome. Signals are held first (a C call, so nothing
        # runs before it), after which only handlers already due can run, each once; the
        # guest's failure is what is reported. Not closed: with two or more due, one may run
        # at the loop's jump back, outside the try; a guest thread may still take a signal.
        while True:
            try:
                _signal.pthread_sigmask(_signal.SIG_BLOCK, _SIGNALS)
                sys.settrace(None)
                sys.setprofile(None)
                _silence_guest_handlers()
                break
            except BaseException:  # noqa: B036 - a late handler's error: the call already ended
                pass
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _SIGNALS)
        _interpreter_settings_back()
        if importer is not None:
            importer.withdraw()
        failure = _described(e, importer.guest_files if importer else set())
    for stream in _streams:
        ConsoleStream.finish(stream)  # (from the class: the guest may have replaced its methods)
    outcome.call_id = plan.call_id
    outcome.usage.CopyFrom(_usage(started, cpu_before))
    if failure is not None:
        # the result oneof: whatever value was begun is dropped
        outcome.failure.CopyFrom(_within_bounds(failure, plan.limits.result_bytes))
    _console.send_after_lines(event)


def _preload(importer: GuestImporter, plan) -> None:
    """Gets the guest's modules ready from the daemon's code cache, before any guest code runs;
    when the daemon asked, sends it the modules, first of all events: the only moment the
    process holds nothing but the runtime's own work (see isorund.code_cache)."""
    compiled = importer.preload(plan.file, {m.path: m for m in plan.modules}, plan.report_compiled)
    if plan.report_compiled:
        _console.send_after_lines(sb.SandboxEvent(compiled=sb.CompiledModules(modules=_within_budget(compiled))))


def _within_budget(modules: list[Compiled]) -> list[sb.CompiledModule]:
    """The modules that fit in ``MAX_COMPILED_BYTES``, in the order found (the call's file
    first), one too large for what is left skipped: the daemon reads the event under that bound."""
    out, budget = [], CompiledBudget()
    for m in modules:
        message = sb.CompiledModule(path=m.path, source_hash=m.source_hash, code=m.code, imports=m.imports,
                                    inode=m.version[0], size=m.version[1], mtime_ns=m.version[2],
                                    ctime_ns=m.version[3])
        if budget.take(message.ByteSize()):
            out.append(message)
    return out


class InvalidRequest(Exception):
    """The client's request holds values that do not parse; the daemon answers INVALID_ARGUMENT."""


def _request_of(data: bytes) -> pb.RunRequest:
    """The client's request, parsed here: the daemon relays it with its values unparsed."""
    try:
        return pb.RunRequest.FromString(data)
    except DecodeError as e:
        if "alloc failed" in str(e):  # upb's words when its arena meets the call's memory limit
            raise MemoryError() from None
        raise InvalidRequest(f"the request's values (args, context, resolver_options) are not valid "
                             f"protobuf messages: {e}") from None


def describe(e: BaseException, guest_files: set[str]) -> pb.Failure:
    """Turns what the guest raised into the Failure the client will raise."""
    if isinstance(e, GuestModuleNotFound):
        return _failure(kind=Failure.MODULE_NOT_FOUND, module=e.name, message=str(e))
    if isinstance(e, MemoryError) and not e.args:
        # an allocation that failed (a guest's own `raise MemoryError("…")` has a message and
        # is its exception like any other)
        return _failure(kind=Failure.RESOURCE_LIMIT, limit="memory",
                        message="the call went over its memory limit")
    if isinstance(e, PluginFailure):
        return _failure(kind=Failure.SANDBOX, type_name=type(e.__cause__).__name__, message=str(e))
    if isinstance(e, CpuLimitExceeded):
        return _failure(kind=Failure.RESOURCE_LIMIT, limit="cpu", message="the call used up its CPU time")
    if isinstance(e, SerializationError):
        if getattr(e, "limit", None) == "size":
            return _failure(kind=Failure.RESOURCE_LIMIT, limit="result",
                            message=str(e).replace("(limit 'size';", "(limit 'result';"))
        # a result nested past the depth limit (or containing itself) says so, as on the client
        return _failure(kind=Failure.SERIALIZATION, message=str(e), type_name="SerializationError",
                        limit=getattr(e, "limit", None) or "")
    return _failure(kind=Failure.GUEST_EXCEPTION, type_name=type(e).__name__, message=_message(e),
                    traceback=guest_traceback(e, guest_files))


def _described(e: BaseException, guest_files: set[str]) -> pb.Failure:
    """``describe(e)``, or if that fails too, ``e`` without its traceback; the sandbox used to
    end without an outcome. Formatting can fail for want of memory (a guest that recursed until
    it ran out still holds every frame), or by what the guest's ``__str__`` raises; the call's
    CPU time can run out on the way, which is then the call's outcome."""
    try:
        return describe(e, guest_files)
    except CpuLimitExceeded as spent:
        return describe(spent, guest_files)
    except BaseException as failed:  # noqa: B036 - anything, a MemoryError most likely
        e.__traceback__ = None  # lets the frames go
        reason = type(failed).__name__
        del failed
        return _failure(kind=Failure.GUEST_EXCEPTION, type_name=type(e).__name__, message=_message(e),
                        traceback=f"(the traceback could not be formatted: {reason})\n")


def _failure(**fields) -> pb.Failure:
    """A Failure whose texts may hold what the guest made: a lone surrogate (``"\\ud800"``),
    which no protobuf string may hold, is written as its escape, as Python's stderr writes it
    (the guest's ``raise ValueError("\\ud800")`` ended the sandbox without an outcome)."""
    return Failure(**{name: _encodable(value) if isinstance(value, str) else value
                      for name, value in fields.items()})


def _encodable(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# The innermost frames a traceback is made of: Python would format them all, and a guest that
# raised the recursion limit (after escaping to sys) to a million made its outcome take longer
# than any timeout. The frames dropped are the outermost: the runtime's own, then the guest's first
# (the traceback says how many of the guest's, see _Shortened).
TRACEBACK_FRAMES = 2000
# Characters of a failure's message, and of its traceback, sent at most (see _within_bounds).
FAILURE_TEXT_CHARS = 256 << 10


def guest_traceback(e: BaseException, guest_files: set[str]) -> str:
    """The traceback as Python prints it, keeping only frames of guest source."""
    te = traceback.TracebackException.from_exception(e, limit=-TRACEBACK_FRAMES)
    for part in _parts(te):
        part.stack = traceback.StackSummary.from_list([f for f in part.stack if f.filename in guest_files])
    left_out = _guest_frames_left_out(e.__traceback__, guest_files)
    if left_out:
        te.stack = _Shortened(te.stack, left_out)
    return "".join(te.format())


class _Shortened(traceback.StackSummary):
    """A stack whose outermost guest frames were left out, saying how many (without it a
    traceback cut to its innermost frames read as if it began where it was cut)."""

    def __init__(self, frames, left_out: int):
        super().__init__(frames)
        self.left_out = left_out

    def format(self) -> list[str]:
        return [f"  [… {self.left_out:,} earlier frames not shown …]\n", *super().format()]


def _guest_frames_left_out(tb, guest_files: set[str]) -> int:
    """How many of the guest's frames lie beyond the innermost ``TRACEBACK_FRAMES`` of ``tb``."""
    depth, entry = 0, tb
    while entry is not None:
        depth, entry = depth + 1, entry.tb_next
    left_out, entry = 0, tb
    for _ in range(depth - TRACEBACK_FRAMES):
        left_out += entry.tb_frame.f_code.co_filename in guest_files
        entry = entry.tb_next
    return left_out


def _within_bounds(failure: pb.Failure, result_bytes: int) -> pb.Failure:
    """``failure`` with a long message, traceback or type name cut in the middle, so that
    ``raise ValueError(huge)`` is reported as that ValueError, not as an outcome too large for
    the daemon to read. Message and traceback get at most a sixteenth of the result's bytes
    each (4 bytes a character at worst), and never less than 1,024 characters."""
    chars = max(1024, min(FAILURE_TEXT_CHARS, result_bytes // 16))
    failure.message = _cut_in_middle(failure.message, chars)
    failure.traceback = _cut_in_middle(failure.traceback, chars)
    failure.type_name = _cut_in_middle(failure.type_name, 1024)
    return failure


def _cut_in_middle(text: str, chars: int) -> str:
    """``text`` if it has at most ``chars`` characters, else its start and end around a
    note of what was cut (a traceback's end holds the innermost frame and the exception)."""
    if len(text) <= chars:
        return text
    half = chars // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters cut …]\n{text[-half:]}"


def _parts(te):
    """Every exception the report of ``te`` may show: its cause or context, theirs, and the
    members of an exception group with theirs (whose frames, the standard library's with
    their host paths, were shown in full)."""
    seen, todo = set(), [te]
    while todo:
        part = todo.pop()
        if part is None or id(part) in seen:
            continue
        seen.add(id(part))
        yield part
        todo += [part.__cause__, part.__context__, *(part.exceptions or ())]


def _message(e: BaseException) -> str:
    try:
        return str(e)
    except CpuLimitExceeded:
        raise
    except BaseException:  # a guest exception whose __str__ itself fails
        return f"<unprintable {type(e).__name__}>"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _usage(started: float, cpu_before: float = 0.0) -> pb.Usage:
    """The call's own usage: CPU spent in the pool, before the call, is not the guest's."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return pb.Usage(wall_seconds=time.monotonic() - started,
                    cpu_seconds=max(0.0, own.ru_utime + own.ru_stime + children.ru_utime
                                    + children.ru_stime - cpu_before),
                    peak_memory_bytes=max(own.ru_maxrss, children.ru_maxrss) * 1024)


def _on_sigxcpu(signum, frame):
    raise CpuLimitExceeded()


_SIGNALS = tuple(int(number) for number in signal.valid_signals())
_RECURSION_LIMIT = sys.getrecursionlimit()  # (the zygote's, which every sandbox starts with)


def _silence_guest_handlers() -> None:
    """Once the guest's function has returned or raised, its signal handlers have nothing left
    to do: one still called (by a timer left running) raised inside the runtime's report, and
    the sandbox ended without an outcome. They are ignored from here on, the CPU limit's own
    handler put back (~3 µs)."""
    for number in _SIGNALS:
        handler = _signal.getsignal(number)
        if callable(handler) and handler is not _on_sigxcpu:
            _signal.signal(number, _signal.SIG_IGN)
    if _signal.getsignal(signal.SIGXCPU) is not _on_sigxcpu:
        _signal.signal(signal.SIGXCPU, _on_sigxcpu)


def _interpreter_settings_back() -> None:
    """The runtime's own work after the guest's (encoding its result, formatting its failure)
    runs with the interpreter's settings, not the guest's: a recursion limit it lowered made
    a result 40 lists deep a SerializationError. A trace or profile function the guest set
    ran on every frame of the runtime (and its error became the call's): they are unset
    where this is called, inline, as calling this would be traced already."""
    sys.setrecursionlimit(_RECURSION_LIMIT)


def _padded(func, args: list) -> list:
    """Fills missing positional parameters (those without defaults) with None.

    isolated-runtime called JavaScript functions, which tolerate missing arguments (they are
    ``undefined``); guests ported from it, and the contract's tests, call ``f(a, b)`` with
    fewer arguments and expect the body to run. The parameters are the call's as Python sees
    them: a bound method's or a callable object's without ``self``, a partial's without the
    ones it binds. A callable whose signature cannot be read (some builtins) gets its
    arguments as given.
    """
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return args
    required = 0
    for p in parameters:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
            break
        required += 1
    if len(args) >= required:
        return args
    return list(args) + [None] * (required - len(args))

