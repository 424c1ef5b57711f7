"""The guest's console: what it prints, as console events on the call's channel.

``sys.stdout`` and ``sys.stderr`` of the sandbox are ``ConsoleStream``s (with a ``ConsoleBytes``
as their ``buffer``); their lines go to the call's one ``Console``, which sends them in batches
(see ``Console``) before each other event of the call. Every line is text a protobuf string
may hold (``encodable``) and no longer than the call's console cap (``capped_line``).
"""
from __future__ import annotations

import codecs
import io
import os
import sys
import threading
import time

from isorun._proto import runner_pb2 as pb

from . import channel


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
    killed (timeout, memory) or exits without returning, where a line used to be on its way; so
    is text written after the last newline and not flushed (``ConsoleStream`` holds it until the
    line ends: sent earlier, one printed line would reach the caller as two).
    """
    FLUSH_BYTES = 16 << 10  # counted in characters (``_bytes``): bytes for ASCII, near enough else
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
        text = capped_line(encodable(text), self.cap)
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


def encodable(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\ud800``), as Python's stderr
    writes it: no protobuf string may hold one."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
