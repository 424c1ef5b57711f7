"""Bad input at the protocol level: every malformed or hostile request gets a clear status and
message, the daemon never crashes, and the next call works."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time

import grpc
import pytest

from isorun import CodeRunner, errors
from isorun._proto import runner_pb2 as pb
from wire import length_delimited

RUN = "/isorun.v1.Runner/Run"
ECHO = "def echo(x):\n    return x\n"
SLEEPY = "import time\n\ndef nap(seconds):\n    time.sleep(seconds)\n    return 'woke'\n"


@pytest.fixture
def raw(daemon):
    """raw(method, payload: bytes, timeout) -> (status code, details); no serializers at all."""
    channel = grpc.insecure_channel("unix:" + daemon.socket)

    def call(payload: bytes, method: str = RUN, timeout: float = 30):
        try:
            channel.unary_unary(method)(payload, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""
    yield call
    channel.close()


def request(root: str, **fields) -> bytes:
    return pb.RunRequest(**{"root": root, "file": "index.py", "func_name": "echo", **fields}).SerializeToString()


def assert_still_serving(daemon, make_root) -> None:
    assert daemon.proc.poll() is None, daemon.log()
    with CodeRunner(root=make_root({"index.py": ECHO}), file="index.py", socket=daemon.socket) as r:
        assert r.run("echo", args=[41]) == 41


@pytest.mark.parametrize("payload, words", [
    (b"\xff\xff\xff\xff", "not a valid isorun.v1.RunRequest"),
    (b"\x0a\x01\xff", "not a valid isorun.v1.RunRequest"),  # root: invalid UTF-8
    (b"\x0a\x10abc", "not a valid isorun.v1.RunRequest"),  # root: truncated
    (b"", "root must be an absolute folder path"),  # a valid, empty message
])
def test_bytes_that_are_no_request_are_invalid_argument(raw, daemon, make_root, payload, words):
    code, details = raw(payload)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details
    assert "Relayed" not in details  # the daemon's wire twin of the message (it read so before)
    assert_still_serving(daemon, make_root)


def test_malformed_capabilities_request_is_invalid_argument(raw):
    code, details = raw(b"\xff\x00", method="/isorun.v1.Runner/GetCapabilities")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "GetCapabilitiesRequest" in details


def test_a_value_nested_too_deep_to_parse_is_invalid_argument(raw, daemon, make_root):
    root = make_root({"index.py": ECHO})
    req = pb.RunRequest(root=root, file="index.py", func_name="echo")
    nested = req.args.add()
    for _ in range(300):
        nested = nested.list_value.values.add()
    code, details = raw(req.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert_still_serving(daemon, make_root)


NOT_UTF8 = length_delimited(3, b"\xff\xfe")  # a Value whose string_value is not UTF-8


@pytest.mark.parametrize("where, field", [
    ("args", length_delimited(4, NOT_UTF8)),
    ("context", length_delimited(5, length_delimited(1, b"user") + length_delimited(2, NOT_UTF8))),
    ("resolver_options", length_delimited(11, b"\x0f")),  # a field of wire type 7, which does not exist
])
def test_values_that_do_not_parse_are_invalid_argument(raw, daemon, make_root, where, field):
    """The daemon relays a request's values unparsed; the sandbox parses them before any
    guest code runs, and a value that does not parse is still the request's error."""
    code, details = raw(request(make_root({"index.py": ECHO})) + field)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "the request's values (args, context, resolver_options) are not valid" in details, details
    assert json.loads(daemon.log().splitlines()[-1])["outcome"] == "invalid_argument"
    assert_still_serving(daemon, make_root)


@pytest.mark.parametrize("fields, words", [
    ({"func_name": "f" * 100_000}, "func_name must be a name of 1 to 256 characters"),
    ({"func_name": ""}, "func_name must be a name of 1 to 256 characters"),
    ({"file": "../escape.py"}, "outside root"),
    ({"file": "/etc/passwd"}, "relative to root"),
    ({"file": "x" * 1_000_000}, "file must be a path relative to root"),
    ({"compiler": "no-such-plugin"}, "unknown compiler 'no-such-plugin'"),
    ({"resolver": "nope"}, "unknown resolver 'nope'"),
    ({"args_resolver": "nope"}, "unknown args_resolver 'nope'"),
    ({"timeout_seconds": -1}, "timeout must be > 0"),
    ({"timeout_seconds": float("nan")}, "timeout must be > 0"),
    ({"external": ["os;rm"]}, "external module names"),
    ({"whitelisted_paths": ["relative/path"]}, "whitelisted_paths[0] must be an absolute folder path"),
    ({"whitelisted_paths": ["/"]}, "may not be"),
    ({"source_extensions": ["py"]}, "source extension must look like '.py'"),
    ({"limits": pb.Limits(memory_bytes=1 << 50)}, "may only lower"),
])
def test_a_bad_field_is_invalid_argument_naming_it(raw, make_root, fields, words):
    code, details = raw(request(make_root({"index.py": ECHO}), **fields))
    assert (code, words in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details


def test_a_huge_or_missing_root_is_invalid_argument(raw):
    for root in ("/" + "a" * 1_000_000, "/no/such/folder", "relative", "/"):
        code, details = raw(request(root))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "root" in details, details


def test_the_client_raises_invalid_request_for_an_unknown_plugin(daemon, make_root):
    with CodeRunner(root=make_root({"index.py": ECHO}), file="index.py", socket=daemon.socket,
                    compiler="no-such-compiler") as r:
        with pytest.raises(errors.InvalidRequest, match="unknown compiler 'no-such-compiler'"):
            r.run("echo", args=[1])


def test_an_unknown_method_is_unimplemented(raw):
    code, _ = raw(b"", method="/isorun.v1.Runner/Nope")
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_a_message_over_the_size_limit_is_refused_by_grpc(start_daemon, make_root):
    d = start_daemon(config="max_request_bytes = 1048576\n[limits]\nresult_bytes = 524288\noutput_bytes = 262144\n")
    with grpc.insecure_channel("unix:" + d.socket, options=[("grpc.max_send_message_length", -1)]) as channel:
        payload = request(make_root({"index.py": ECHO}), args=[pb.RunRequest().args.add(string_value="x" * 2_000_000)])
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(RUN)(payload, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.value.details()
    assert_still_serving(d, make_root)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 4096,  # an HTTP/2 preface, then nonsense frames
    random.Random(6).randbytes(256 << 10),
])
def test_garbage_written_to_the_socket_leaves_the_daemon_serving(daemon, make_root, garbage):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(daemon.socket)
        try:
            s.sendall(garbage)
            while s.recv(65536):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # grpc hung up on us mid-write: exactly what it should do
    assert_still_serving(daemon, make_root)


def test_connect_and_disconnect_at_once_many_times(daemon, make_root):
    for _ in range(200):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(daemon.socket)
    assert_still_serving(daemon, make_root)


def test_a_client_that_vanishes_mid_call_has_its_sandbox_killed(daemon, make_root):
    root = make_root({"index.py": SLEEPY})
    client = subprocess.Popen([sys.executable, "-c", (
        "import sys; from isorun import CodeRunner\n"
        f"r = CodeRunner(root={root!r}, file='index.py', socket={daemon.socket!r}, external=['time'])\n"
        "r.run('nap', args=[20], timeout=25, running=lambda: print('running', flush=True))\n")],
        stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "running"
    client.kill()
    client.wait()
    killed_at = time.monotonic()
    line = wait_for_call_line(daemon, root, timeout=10)
    assert line["outcome"] == "cancelled"
    assert time.monotonic() - killed_at < 5 and line["total_ms"] < 15_000
    assert_still_serving(daemon, make_root)


def wait_for_call_line(daemon, root: str, timeout: float) -> dict:
    import json
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for text in daemon.log().splitlines():
            if text.startswith("{") and f'"root": "{os.path.realpath(root)}"' in text:
                return json.loads(text)
        time.sleep(0.05)
    raise AssertionError(f"no log line for the call in {root}:\n{daemon.log()}")
