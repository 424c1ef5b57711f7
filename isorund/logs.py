"""The daemon's log: one JSON object per line on stderr, whoever logs.

The daemon's own records are JSON already. gRPC's Python layer and asyncio log plain text,
with multi-line tracebacks, which a journal or a log shipper then reads as many unrelated
lines: they are wrapped, the traceback a field of the one line. (gRPC's C core writes a few
lines of its own straight to stderr, such as "File descriptor limit reached"; those are not
Python records and stay as they are.)

Lines are written by a thread of their own, from a bounded queue. Written from the event loop,
a reader of stderr that stopped reading (a stalled log shipper, a pipe nobody drains) froze
the whole daemon once the pipe's 64 KiB were full: every call hung, health did not answer
(seen). Now calls go on; past ``MAX_QUEUED`` lines waiting, lines are dropped and counted, and
a ``log_lines_dropped`` line says how many once there is room again.
"""
from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time

MAX_QUEUED = 10_000  # lines waiting for stderr (a call's line is ~400 bytes: ~4 MB)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "isorund" and message.startswith("{") and not record.exc_info:
            return message
        entry = {"event": "log", "logger": record.name, "level": record.levelname.lower(), "message": message}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _answer_undelivered(record: logging.LogRecord) -> bool:
    """gRPC logs an error with a traceback when an answer could not be sent because its client
    had gone (it closed its connection before reading): the client's doing, not a fault of the
    daemon's, and the call's own line already says how it ended. Kept as one info line."""
    if record.exc_info and record.exc_info[0] is not None and record.exc_info[0].__name__ == "ExecuteBatchError":
        record.exc_info = None
        record.exc_text = None
        record.msg = f"{record.getMessage()}: the answer was not delivered, its client had gone"
        record.args = ()
        record.levelno, record.levelname = logging.INFO, "INFO"
    return record.levelno >= logging.getLogger().getEffectiveLevel()


class _Queued(logging.handlers.QueueHandler):
    """Formats a record where it is logged and queues the line without ever waiting."""

    def __init__(self, lines: queue.Queue):
        super().__init__(lines)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                self.queue.put_nowait(_dropped_line(self.dropped))
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def _dropped_line(count: int) -> logging.LogRecord:
    return logging.makeLogRecord({"name": "isorund", "levelno": logging.WARNING, "levelname": "WARNING",
                                  "msg": json.dumps({"event": "log_lines_dropped", "count": count,
                                                     "note": "stderr was not read for a while; these lines were lost"})})


_lines: queue.Queue | None = None
_out = None  # where the writer writes: a descriptor of stderr's, or (in tests) a text stream
_writer: threading.Thread | None = None


def configure(level: str) -> None:
    """Every record of this process as one JSON line on stderr, queued until ``start_writing``."""
    global _lines, _out, _writer
    _lines, _writer = queue.Queue(MAX_QUEUED), None
    _out = _descriptor_of(sys.stderr)
    handler = _Queued(_lines)
    handler.setFormatter(JsonLines())
    handler.addFilter(_answer_undelivered)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _descriptor_of(stream):
    """A descriptor of its own on ``stream``'s file, written with ``os.write``: a thread blocked
    writing through Python's stream (or a logging handler) holds their locks, and the daemon's
    exit then waited on them for as long as stderr was not read (found by a probe: a stop
    took ten minutes). A stream without a file (a test's) is written as it is."""
    try:
        return os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return stream


def start_writing() -> None:
    """Starts the thread that writes the lines. Called once the daemon has dropped the
    capabilities it does not need: they belong to each thread, and one started before would
    have kept them all (isorund/privileges.py)."""
    global _writer
    if _writer is None and _lines is not None:
        _writer = threading.Thread(target=_write, args=(_lines, _out), name="isorund-log", daemon=True)
        _writer.start()


# Once it has written what was queued, the writer rests this long before it takes more: lines
# queued meanwhile wake no one (a put wakes only a thread that waits), and go out together.
# Woken for each line, the thread cost the daemon ~4 context switches and ~0.2 ms of CPU a call
# (of ~1.4 ms; measured with perf stat under 8 callers); a line now lands up to this late.
REST_SECONDS = 0.05


def _write(lines: queue.Queue, out) -> None:
    while True:
        batch = [lines.get()]
        while len(batch) < 1000:
            try:
                batch.append(lines.get_nowait())
            except queue.Empty:
                break
        text = "".join(record.getMessage() + "\n" for record in batch)  # (formatted when queued)
        try:
            if isinstance(out, int):
                data = text.encode("utf-8", "backslashreplace")
                while data:
                    data = data[os.write(out, data):]
            else:
                out.write(text)
                out.flush()
        except OSError:
            pass  # a stderr that cannot be written: the lines are lost, the daemon goes on
        finally:
            for _ in batch:
                lines.task_done()
        time.sleep(REST_SECONDS)


def flush(seconds: float = 2.0) -> None:
    """Writes what is queued, waiting up to ``seconds`` (at the daemon's exit: lines still
    queued when stderr is not read are given up, not waited for)."""
    start_writing()
    deadline = time.monotonic() + seconds
    while _lines is not None and _lines.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)
