"""Health and discovery: grpc.health.v1 says SERVING only while calls can be served, and server
reflection lists the services, so grpcurl and load balancers need no extra files."""
from __future__ import annotations

import os
import queue
import signal
import threading

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from isorun import CodeRunner
from processes import zygote_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RUNNER = "isorun.v1.Runner"


def test_health_is_serving_for_the_server_and_the_runner_service(daemon):
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", RUNNER):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
        try:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
            raise AssertionError("an unknown service must not be reported healthy")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_describes_the_runner(daemon):
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {RUNNER, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        runner = pool.FindServiceByName(RUNNER)
        assert {m.name for m in runner.methods} == {"Run", "RunStream", "GetCapabilities"}
        assert pool.FindMessageTypeByName("isorun.v1.RunRequest").fields_by_name["root"].number == 1


def test_reflection_answers_a_raw_list_services_request(daemon):
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert RUNNER in {s.name for s in response.list_services_response.service}


def test_health_goes_not_serving_while_the_zygote_is_down_and_back(start_daemon, make_root):
    d = start_daemon()
    seen: queue.Queue = queue.Queue()
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=RUNNER))

        def follow():
            try:
                for update in watch:
                    seen.put(update.status)
            except grpc.RpcError:
                pass  # cancelled below, once the test has seen enough
        threading.Thread(target=follow, daemon=True).start()
        assert seen.get(timeout=10) == SERVING
        zygote_of(d).send_signal(signal.SIGKILL)
        assert seen.get(timeout=20) == NOT_SERVING
        assert seen.get(timeout=30) == SERVING
        watch.cancel()
    with CodeRunner(root=make_root({"index.py": "def f():\n    return 'back'\n"}), file="index.py",
                    socket=d.socket) as r:
        assert r.run("f") == "back"


def test_health_is_not_serving_once_shutdown_begins(start_daemon, make_root):
    d = start_daemon(config="shutdown_grace = 10\n")
    root = make_root({"index.py": "def nap(s):\n    import time\n    time.sleep(s)\n    return s\n"})
    started = threading.Event()
    r = CodeRunner(root=root, file="index.py", socket=d.socket, external=["time"])
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("v", r.run("nap", args=[3], timeout=10, running=started.set)))
    t.start()
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == SERVING
        assert started.wait(30)
        os.kill(d.pid, signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        watch.cancel()
    t.join(30)
    assert result == {"v": 3}
    assert d.proc.wait(30) == 0
