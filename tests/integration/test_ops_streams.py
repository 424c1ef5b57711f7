"""HTTP/2 streams, driven by hand: gRPC holds every stream from its first bytes, before the
daemon's handlers (and its queue) see it, so the daemon bounds how many may be open at once
over all connections (``max_open_rpcs``)."""
from __future__ import annotations

import contextlib
import json
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from isorun import CodeRunner, errors

OPEN_RPCS = 40
SMALL = f"max_concurrency = 1\nqueue_size = 2\nmax_open_rpcs = {OPEN_RPCS}\n"
ECHO = "def echo(x):\n    return x\n"


class Http2:
    """One HTTP/2 connection to the daemon, written by hand with h2: streams that never send
    their request, as no gRPC client would."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(0.05)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                        header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.events: list = []

    def refuse_answers(self) -> None:
        """Grants the daemon no flow-control window: no answer's bytes can reach this client."""
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.sock.sendall(self.h2.data_to_send())

    def call(self, request: bytes) -> None:
        """One Run call, its request whole."""
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                      (":path", "/isorun.v1.Runner/Run"), (":authority", "isorund"),
                                      ("content-type", "application/grpc"), ("te", "trailers")])
        self.h2.send_data(stream, b"\0" + struct.pack(">I", len(request)) + request, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())

    def open(self, count: int) -> None:
        """Sends the headers of ``count`` Run calls and nothing else."""
        for _ in range(count):
            stream = self.h2.get_next_available_stream_id()
            self.h2.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                          (":path", "/isorun.v1.Runner/Run"), (":authority", "isorund"),
                                          ("content-type", "application/grpc"), ("te", "trailers")])
        self.sock.sendall(self.h2.data_to_send())

    def read(self, seconds: float, until=lambda: False) -> None:
        """What the daemon sends for ``seconds``, or until ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                return
            self.events.extend(self.h2.receive_data(data))
            self.sock.sendall(self.h2.data_to_send())

    def grpc_statuses(self) -> list[str]:
        return [dict(e.headers).get("grpc-status") for e in self.events
                if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived))
                and "grpc-status" in dict(e.headers)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connections():
    opened: list[Http2] = []

    def connect(path: str) -> Http2:
        opened.append(Http2(path))
        return opened[-1]
    yield connect
    for c in opened:
        c.close()


def call_echo(d, make_root):
    with CodeRunner(root=make_root({"index.py": ECHO}), file="index.py", socket=d.socket) as r:
        return r.run("echo", args=[41])


def test_streams_past_max_open_rpcs_are_refused_until_some_close(start_daemon, make_root, connections):
    # Without a bound one connection held 20,000 streams that never sent their request, and
    # the daemon 410 MiB more for them (seen).
    d = start_daemon(config=SMALL)
    first, second = connections(d.socket), connections(d.socket)
    first.open(30)
    first.read(1.0)
    second.open(200)

    def statuses() -> list[str]:
        return first.grpc_statuses() + second.grpc_statuses()
    second.read(20.0, until=lambda: len(statuses()) >= 230 - OPEN_RPCS)
    for c in (first, second):
        c.read(0.5)  # and no more
    # From gRPC itself: RESOURCE_EXHAUSTED past the bound, or CANCELLED from its queue of calls
    # not yet handed to the daemon, sized to the same bound (both ResourceLimitError('queue')).
    refused = statuses()
    assert len(refused) == 230 - OPEN_RPCS and set(refused) <= {"8", "1"}, refused
    with pytest.raises(errors.ResourceLimitError):  # the daemon is full: what holding it costs
        call_echo(d, make_root)
    first.close()
    second.close()
    time.sleep(0.5)
    assert call_echo(d, make_root) == 41
    assert d.proc.poll() is None


def test_a_client_gone_before_its_answer_leaves_json_lines_in_the_log(start_daemon, make_root, connections):
    """gRPC logged its failure to send the answer as an error with a multi-line traceback,
    in a log documented as one JSON object per line; it is one info line now."""
    from isorun._proto import runner_pb2 as pb
    d = start_daemon()
    root = make_root({"index.py": "def big():\n    return 'x' * 2_000_000\n"})
    client = connections(d.socket)
    client.refuse_answers()
    client.call(pb.RunRequest(root=root, file="index.py", func_name="big", timeout_seconds=5).SerializeToString())
    deadline = time.monotonic() + 20
    while not d.calls("big") and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    deadline = time.monotonic() + 10
    while "not delivered" not in d.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in d.log().splitlines() if line.strip()]
    assert all(line.startswith("{") and json.loads(line) for line in lines), d.log()
    (undelivered,) = [json.loads(line) for line in lines if "not delivered" in line]
    assert undelivered["level"] == "info" and "/isorun.v1.Runner/Run" in undelivered["message"]
    assert call_echo(d, make_root) == 41  # and the daemon goes on


@pytest.mark.parametrize("allowed", [True, False])
def test_a_client_of_the_front_gone_before_its_request_was_read_is_judged_as_it_was(start_daemon, make_root, allowed):
    """Through the allowlist's front, a request sent whole by a client that closed at once
    reached the servicer after the front had forgotten the relay: 12 of 200 were logged
    ``denied`` for a peer on the list (seen). The front now remembers a closed relay's peer a
    while: an allowed client's request is a call like any, a refused one's a denial."""
    from isorun._proto import runner_pb2 as pb
    d = start_daemon(config=f"allowed_uids = [{0 if allowed else 12345}]\nsocket_mode = 0o666\n")
    root = make_root({"index.py": ECHO})
    request = pb.RunRequest(root=root, file="index.py", func_name="echo", timeout_seconds=5).SerializeToString()
    for _ in range(300):
        client = Http2(d.socket)
        client.call(request)
        client.sock.shutdown(socket.SHUT_WR)  # and waits for the front to close its side
        client.sock.settimeout(2)
        with contextlib.suppress(OSError):
            client.sock.recv(1 << 16)
        client.close()
    time.sleep(2)
    denied = d.log().count('"event": "denied"')
    if allowed:
        assert denied == 0
        assert {line["outcome"] for line in d.calls("echo")} <= {"ok", "cancelled"}
        assert call_echo(d, make_root) == 41
    else:
        assert d.calls() == []  # never a call: denials (when gRPC got that far) or nothing
