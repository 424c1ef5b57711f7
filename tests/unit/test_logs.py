"""Every record the daemon's process logs is one JSON line (isorund/logs.py)."""
import io
import json
import logging

import pytest
from grpc._cython.cygrpc import ExecuteBatchError

from isorund import logs


@pytest.fixture
def captured(monkeypatch):
    """The daemon's log configuration, writing into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.configure("info")
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def lines(stream):
    logs.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_library_traceback_is_one_line_with_the_traceback_as_a_field(captured):
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    [entry] = lines(captured)
    assert entry["logger"] == "asyncio" and entry["level"] == "error"
    assert entry["message"] == "Task exception was never retrieved"
    assert "Traceback" in entry["error"] and "ValueError: boom" in entry["error"]


def test_the_daemons_own_json_records_pass_through_unchanged(captured):
    logging.getLogger("isorund").info(json.dumps({"event": "call", "outcome": "ok"}))
    assert lines(captured) == [{"event": "call", "outcome": "ok"}]


def test_an_answer_its_client_left_before_reading_is_one_info_line(captured):
    try:
        raise ExecuteBatchError("Failed \"execute_batch\": (<grpc._cython.cygrpc.SendMessageOperation>,)")
    except ExecuteBatchError:
        logging.getLogger("grpc._cython.cygrpc").exception("Unexpected [%s] raised by servicer method [%s]",
                                                           "ExecuteBatchError", "/isorun.v1.Runner/Run")
    [entry] = lines(captured)
    assert entry["level"] == "info" and "error" not in entry
    assert entry["message"].endswith("the answer was not delivered, its client had gone")
    assert "/isorun.v1.Runner/Run" in entry["message"]


def test_records_below_the_configured_level_are_dropped(captured):
    logging.getLogger("grpc").debug("noise")
    logging.getLogger("grpc").warning("kept")
    assert [e["message"] for e in lines(captured)] == ["kept"]


def test_lines_stderr_has_no_room_for_are_dropped_counted_and_said_once_there_is_room(captured, monkeypatch):
    """A reader of stderr that stopped reading froze the whole daemon once the pipe was full
    (seen): lines wait in a bounded queue instead, past it they are counted and dropped."""
    monkeypatch.setattr(logs, "MAX_QUEUED", 3)
    monkeypatch.setattr(logs.sys, "stderr", captured)
    logs.configure("info")  # a queue of 3, its writer not started (as before the daemon drops its privileges)
    log = logging.getLogger("isorund")
    for i in range(5):
        log.info(json.dumps({"event": "call", "n": i}))
    logs.flush()
    log.info(json.dumps({"event": "call", "n": 5}))
    written = lines(captured)
    assert [e.get("n") for e in written] == [0, 1, 2, None, 5]
    assert written[3]["event"] == "log_lines_dropped" and written[3]["count"] == 2
