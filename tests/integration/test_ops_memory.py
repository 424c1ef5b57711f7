"""The daemon's own memory: what a burst of large calls used is given back once it is idle."""
from __future__ import annotations

import time

import grpc
import psutil
from google.protobuf import struct_pb2

from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc

MiB = 1 << 20


def test_a_burst_of_large_requests_is_given_back_when_idle(start_daemon, make_root):
    # Four bursts of 8 concurrent 40 MiB requests (refused at the result cap, so nothing large
    # comes back) left an idle daemon 250-320 MiB larger (three runs): glibc kept the freed
    # heaps. Trimmed once idle, 12-80 MiB.
    d = start_daemon()
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
