"""The daemon's own memory: what a burst of large calls used is given back once it is idle, and
what a request of millions of values costs it."""
from __future__ import annotations

import time

import grpc
import pytest
import psutil
from google.protobuf import struct_pb2

from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc
from processes import peak_rss_growth
from wire import length_delimited

MiB = 1 << 20


def test_a_burst_of_large_requests_is_given_back_when_idle(start_daemon, make_root):
    # Four bursts of 8 concurrent 40 MiB requests (refused at the result cap, so nothing large
    # comes back) left an idle daemon 250-320 MiB larger (three runs): glibc kept the freed
    # heaps. Trimmed once idle, 12-80 MiB. (The burst is 320 MiB of requests: past the default
    # max_held_request_bytes, which would refuse some; this test is about what is kept after.)
    d = start_daemon(config=f"max_held_request_bytes = {512 * MiB}\n")
    root = make_root({"index.py": "def echo(x):\n    return x\n"})
    daemon = psutil.Process(d.pid)
    small = pb.RunRequest(root=root, file="index.py", func_name="echo", args=[struct_pb2.Value(number_value=1)])
    big = pb.RunRequest(root=root, file="index.py", func_name="echo", limits=pb.Limits(result_bytes=10),
                        args=[struct_pb2.Value(string_value="x" * (40 * MiB))], timeout_seconds=30)
    with grpc.insecure_channel("unix:" + d.socket, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        for _ in range(5):
            stub.Run(small, timeout=30)
        idle_before = daemon.memory_info().rss
        for _ in range(4):
            calls = [stub.Run.future(big, timeout=120) for _ in range(8)]
            outcomes = [call.result().outcome for call in calls]
            assert {o.failure.limit for o in outcomes} == {"result"}, [o.failure for o in outcomes]
    time.sleep(1.5)  # idle: the daemon trims half a second after its last call
    grown = (daemon.memory_info().rss - idle_before) / MiB
    assert grown < 150, f"the idle daemon kept {grown:.0f} MiB of the burst"


def test_a_request_of_millions_of_tiny_values_is_relayed_not_parsed_by_the_daemon(start_daemon, make_root):
    """The daemon never parses a request's values (the sandbox does): 16,000,000 nulls in one
    64 MB argument cost it a few copies of the request (~370 MiB), not a message each (1.7 GiB
    when it parsed them), and the call ends at the sandbox's memory limit."""
    d = start_daemon()
    root = make_root({"index.py": "def echo(x):\n    return x\n"})
    head = pb.RunRequest(root=root, file="index.py", func_name="echo", timeout_seconds=30).SerializeToString()
    nulls = length_delimited(6, length_delimited(1, b"\x08\x00") * 16_000_000)  # Value.list_value
    data = head + length_delimited(4, nulls)  # RunRequest.args
    assert len(data) < 64 * MiB
    grown = peak_rss_growth(d.pid)
    with grpc.insecure_channel("unix:" + d.socket, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        run = channel.unary_unary("/isorun.v1.Runner/Run", request_serializer=lambda b: b,
                                  response_deserializer=pb.RunResponse.FromString)
        outcome = run(data, timeout=120).outcome
    assert (outcome.failure.kind, outcome.failure.limit) == (pb.Failure.RESOURCE_LIMIT, "memory"), outcome
    assert grown() < 700 * MiB, grown() / MiB


SLOW = "import time\n\ndef nap(*values):\n    time.sleep(60)\n"


def test_refused_large_requests_are_freed_at_once(start_daemon, make_root):
    # Refused with context.abort(), a request stayed in a reference cycle through gRPC's
    # AbortError until a full garbage collection, which a daemon making few objects rarely
    # runs: 10 bad-root requests of 20 MiB kept 360 MiB; 32 malformed ones of 50 MiB, 1.6 GiB.
    d = start_daemon(config=f"max_held_request_bytes = {64 * MiB}\n")
    root = make_root({"index.py": "def echo(x):\n    return x\n", "slow.py": SLOW})
    daemon = psutil.Process(d.pid)
    big = struct_pb2.Value(string_value="x" * (20 * MiB))
    bad_root = pb.RunRequest(root="relative", file="index.py", func_name="echo", args=[big])
    no_file = pb.RunRequest(root=root, file="missing.py", func_name="echo", args=[big])
    malformed = b"\xff" * (20 * MiB)
    with grpc.insecure_channel("unix:" + d.socket, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        raw = channel.unary_unary("/isorun.v1.Runner/Run")

        def refusals(rounds: int) -> list:
            codes = []
            for _ in range(rounds):
                for call in (lambda: stub.Run(bad_root, timeout=30), lambda: stub.Run(no_file, timeout=30),
                             lambda: raw(malformed, timeout=30)):
                    try:
                        call()
                    except grpc.RpcError as e:
                        codes.append(e.code())
            return codes
        assert set(refusals(1)) == {grpc.StatusCode.INVALID_ARGUMENT}
        time.sleep(1.5)  # idle: trimmed
        before = daemon.memory_info().rss
        assert set(refusals(10)) == {grpc.StatusCode.INVALID_ARGUMENT}
        # 40 MiB more while a call holds 40 MiB of the 64 MiB bound: requests_too_large
        slow = stub.Run.future(pb.RunRequest(root=root, file="slow.py", func_name="nap", args=[big, big],
                                             timeout_seconds=30), timeout=60)
        time.sleep(1.0)
        for _ in range(10):
            with pytest.raises(grpc.RpcError) as e:
                stub.Run(pb.RunRequest(root=root, file="index.py", func_name="echo", args=[big, big]), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert slow.cancel()  # its sandbox is killed and its request let go
    time.sleep(1.5)
    grown = (daemon.memory_info().rss - before) / MiB
    assert grown < 100, f"the idle daemon kept {grown:.0f} MiB of 40 refused 20-40 MiB requests"
