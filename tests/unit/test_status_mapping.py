"""What the Python client raises for each gRPC status a daemon (or gRPC itself) may answer a
Run with. A small real gRPC server stands in for the daemon, so that statuses a live daemon
gives only in rare states (its queue past a client's deadline, gRPC's own limits) are covered."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from isorun import CodeRunner, errors

NOT_STARTED = ("no sandbox was ready while the call's deadline left room for its timeout (the sandbox zygote "
               "is slow or stalled); it was not started")
CASES = [
    (grpc.StatusCode.INVALID_ARGUMENT, "file 'x.py' is not in root", errors.InvalidRequest, None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "all 8 sandboxes are busy", errors.ResourceLimitError, "queue"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (70000000 vs. 67108864)",
     errors.ResourceLimitError, "message"),
    (grpc.StatusCode.CANCELLED, "Cancelled", errors.ResourceLimitError, "queue"),
    (grpc.StatusCode.PERMISSION_DENIED, "uid 65534 may not call", errors.AccessDenied, None),
    (grpc.StatusCode.DEADLINE_EXCEEDED, NOT_STARTED, errors.RuntimeTimeoutError, None),
    (grpc.StatusCode.UNAVAILABLE, "isorund is shutting down; the call was not started", errors.DaemonUnavailable, None),
    (grpc.StatusCode.INTERNAL, "something broke", errors.SandboxError, None),
]


@pytest.fixture
def answering(tmp_path):
    """A socket whose server answers every Run with the status the test sets."""
    answer = {}

    def run(request, context):
        context.abort(*answer["status"])
    handler = grpc.method_handlers_generic_handler("isorun.v1.Runner", {
        "Run": grpc.unary_unary_rpc_method_handler(run)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    path = str(tmp_path / "fake.sock")
    server.add_insecure_port("unix:" + path)
    server.start()
    yield path, answer
    server.stop(0)


@pytest.mark.parametrize("code, details, kind, limit", CASES)
def test_each_status_becomes_the_documented_error_with_the_daemons_words(answering, code, details, kind, limit):
    path, answer = answering
    answer["status"] = (code, details)
    with CodeRunner(root="/srv/x", file="index.py", socket=path) as r:
        with pytest.raises(errors.IsorunError) as raised:
            r.run("f", args=[1], timeout=5)
    assert type(raised.value) is kind
    assert details in str(raised.value)
    if limit is not None:
        assert raised.value.limit == limit


def test_a_deadline_is_not_reported_as_no_answer_when_the_daemon_answered(answering):
    path, answer = answering
    answer["status"] = (grpc.StatusCode.DEADLINE_EXCEEDED, NOT_STARTED)
    with CodeRunner(root="/srv/x", file="index.py", socket=path) as r:
        with pytest.raises(errors.RuntimeTimeoutError) as raised:
            r.run("f", args=[1], timeout=5)
    assert str(raised.value).startswith(f"the call's deadline passed before isorund at {path} gave a result: ")
    assert isinstance(raised.value, TimeoutError)
