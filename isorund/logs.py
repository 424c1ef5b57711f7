"""The daemon's log: one JSON object per line on stderr, whoever logs.

The daemon's own records are JSON already. gRPC's Python layer and asyncio log plain text,
with multi-line tracebacks, which a journal or a log shipper then reads as many unrelated
lines: they are wrapped, the traceback a field of the one line. (gRPC's C core writes a few
lines of its own straight to stderr, such as "File descriptor limit reached"; those are not
Python records and stay as they are.)
"""
from __future__ import annotations

import json
import logging
import sys


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


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(_answer_undelivered)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
