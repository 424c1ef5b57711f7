"""Admission: max_concurrency sandboxes, a bounded queue, RESOURCE_EXHAUSTED past it, queued
calls that honour their client's deadline, and a storm in which every call is answered once."""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from isorun import AsyncCodeRunner, CodeRunner, errors
from isorun._codec import encode
from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc
from notify import NotifyListener
from processes import wait_for_pool, zygote_of

SLEEPY = "def nap(seconds):\n    import time\n    time.sleep(seconds)\n    return seconds\n\n\ndef echo(x):\n    return x\n"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SMALL = 'max_concurrency = 1\nqueue_size = 1\npool_size = 1\nmetrics_address = "127.0.0.1:0"\n'


def in_background(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Runs fn in a thread; the dict gets 'value' or 'error' when it ends."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except Exception as e:  # the test inspects it
            box["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def metric(daemon, name: str) -> float:
    """One unlabelled sample from the daemon's /metrics (it must have metrics_address set)."""
    import urllib.request
    (address,) = [json.loads(t)["address"] for t in daemon.log().splitlines() if '"event": "metrics"' in t]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def wait_until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def running_sleeper(daemon, root: str, seconds: float):
    """Starts a call that holds a sandbox for ``seconds``; returns once it is running."""
    started = threading.Event()
    r = CodeRunner(root=root, file="index.py", socket=daemon.socket, external=["time"])
    thread, box = in_background(r.run, "nap", args=[seconds], timeout=seconds + 10, running=started.set)
    assert started.wait(30), daemon.log()
    return thread, box


def test_a_call_past_the_queue_is_refused_with_the_queue_limit(start_daemon, make_root):
    d = start_daemon(config=SMALL)
    root = make_root({"index.py": SLEEPY})
    first, first_box = running_sleeper(d, root, 2)
    second, second_box = in_background(CodeRunner(root=root, file="index.py", socket=d.socket).run, "echo", args=[2])
    wait_until(lambda: metric(d, "isorun_queue_depth") == 1)
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        with pytest.raises(errors.ResourceLimitError) as e:
            r.run("echo", args=[3])
    assert e.value.limit == "queue" and "queue_size 1" in str(e.value)
    first.join(30), second.join(30)
    assert first_box == {"value": 2} and second_box == {"value": 2}
    outcomes = sorted(line["outcome"] for line in d.calls())
    assert outcomes == ["ok", "ok", "queue_full"]


def test_a_queued_call_leaves_the_queue_when_its_deadline_leaves_no_room_to_run(start_daemon, make_root):
    d = start_daemon(config="max_concurrency = 1\nqueue_size = 4\npool_size = 1\n")
    root = make_root({"index.py": SLEEPY})
    first, _ = running_sleeper(d, root, 4)
    request = pb.RunRequest(root=root, file="index.py", func_name="echo", args=[encode(1)], timeout_seconds=1.0)
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        sent = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Run(request, timeout=1.6)  # 0.6 s of queue, then 1 s to run
        waited = time.monotonic() - sent
    # The daemon answered, not the client's own deadline: the call left the queue after its
    # 0.6 s budget, leaving its 1 s timeout unspent rather than starting a call that would
    # outlive its client.
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "queue" in e.value.details()
    assert 0.5 < waited < 1.5
    first.join(30)
    assert [line["outcome"] for line in d.calls()].count("deadline_in_queue") == 1


def test_a_queued_call_whose_client_leaves_gives_its_place_in_the_queue_back(start_daemon, make_root):
    # One sandbox at a time and one place in the queue: a call whose client cancels it while
    # it waits there must leave it, or the next call would find the queue full.
    d = start_daemon(config=SMALL)
    root = make_root({"index.py": SLEEPY})
    first, first_box = running_sleeper(d, root, 3)
    request = pb.RunRequest(root=root, file="index.py", func_name="echo", args=[encode(1)], timeout_seconds=5.0)
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        left = stub.Run.future(request, timeout=30)
        wait_until(lambda: metric(d, "isorun_queue_depth") == 1)
        left.cancel()
        wait_until(lambda: metric(d, "isorun_queue_depth") == 0)
        assert first.is_alive()  # still running: the next call must queue behind it
        assert stub.Run(request, timeout=30).outcome.WhichOneof("result") == "value"
    first.join(30)
    assert first_box == {"value": 3}
    lines = d.calls()
    assert sorted(line["outcome"] for line in lines) == ["cancelled", "ok", "ok"]
    (cancelled,) = [line for line in lines if line["outcome"] == "cancelled"]
    assert cancelled["queue_ms"] > 0 and cancelled["run_ms"] == 0  # it left from the queue, never ran


@contextlib.contextmanager
def a_stalled_zygote(daemon, request):
    """A stub of ``daemon`` while its zygote is stopped (as one starved of CPU or stuck in the
    kernel would be), the pool's one sandbox already used by ``request``; resumed on leaving."""
    zygote = zygote_of(daemon)
    wait_for_pool(daemon.pid, 1)  # announced to the daemon, not only forked
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        zygote.suspend()
        try:
            assert stub.Run(request, timeout=10).outcome.WhichOneof("result") == "value"
            yield stub
        finally:
            zygote.resume()


def answered(daemon, request) -> bool:
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        return runner_pb2_grpc.RunnerStub(channel).Run(request, timeout=10).outcome.WhichOneof("result") == "value"


def test_a_call_waiting_for_a_sandbox_leaves_when_its_deadline_leaves_no_room_to_run(start_daemon, make_root):
    # The pool empty and the zygote stalled: the wait for a sandbox has the queue's budget.
    # Before, the call waited out its client's whole deadline and was logged as cancelled.
    d = start_daemon(config="pool_size = 1\n")
    request = pb.RunRequest(root=make_root({"index.py": SLEEPY}), file="index.py", func_name="echo",
                            args=[encode(1)], timeout_seconds=1.0)
    with a_stalled_zygote(d, request) as stub:
        sent = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Run(request, timeout=2.6)  # 1.6 s to wait for a sandbox, then 1 s to run
        waited = time.monotonic() - sent
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "not started" in e.value.details()
    assert 1.4 < waited < 2.5
    assert answered(d, request)
    assert [line["outcome"] for line in d.calls()] == ["ok", "deadline_in_queue", "ok"]


def test_calls_that_leave_a_stalled_zygote_leave_no_sandboxes_to_prepare_for_them(start_daemon, make_root):
    # Each call that found the pool empty asked the zygote for a sandbox of its own, even with
    # one already on its way for a call that had left, and the pool killed what arrived once
    # the zygote ran again. One sandbox on its way for each waiting call: at most
    # max_concurrency (8) of them.
    d = start_daemon(config='pool_size = 1\nmetrics_address = "127.0.0.1:0"\n')
    request = pb.RunRequest(root=make_root({"index.py": SLEEPY}), file="index.py", func_name="echo",
                            args=[encode(1)], timeout_seconds=1.0)
    with a_stalled_zygote(d, request) as stub:
        for _ in range(3):  # waves of 8: each call waits its second, then leaves
            calls = [stub.Run.future(request, timeout=1.0) for _ in range(8)]
            assert [call.exception().code() for call in calls] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 8
    assert answered(d, request)
    wait_until(lambda: len(zygote_of(d).children()) == 1)
    time.sleep(2)  # what the zygote still had to prepare arrives, and is discarded
    # 2 at the start (the pool, the self-test's refill), the first call's refill, 8 for the
    # waiting calls, the last call's refill; before, one for each of the 24 calls (28 in all)
    assert metric(d, "isorun_sandboxes_prepared_total") <= 2 + 1 + 8 + 1
    assert metric(d, "isorun_sandboxes_discarded_total") <= 8


def test_calls_whose_deadline_is_their_timeout_still_wait_for_the_next_sandbox(start_daemon, make_root):
    # A plain stub whose deadline is the call's timeout leaves no room to wait in the queue;
    # with the pool empty, waiting the few milliseconds the next sandbox takes is still normal
    # (a first version of the bound above refused 4 of 8 such calls at once).
    d = start_daemon(config="pool_size = 1\n")
    root = make_root({"index.py": SLEEPY})
    request = pb.RunRequest(root=root, file="index.py", func_name="echo", args=[encode(1)], timeout_seconds=5.0)
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        calls = [stub.Run.future(request, timeout=5.0) for _ in range(6)]
        kinds = [call.result().outcome.WhichOneof("result") for call in calls]
    assert kinds == ["value"] * 6
    assert [line["outcome"] for line in d.calls()] == ["ok"] * 6
    assert '"zygote_stalled"' not in d.log()  # waiting a few milliseconds is no stall


def health(daemon) -> int:
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service="isorun.v1.Runner"), timeout=10).status


def test_a_stalled_zygote_turns_health_not_serving_until_it_delivers_again(start_daemon, make_root, tmp_path):
    # It used to show only in the calls that gave up; a stalled zygote is not restarted (that
    # would kill the calls running in its sandboxes), so health, a gauge and systemd's status
    # line say it.
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    d = start_daemon(config='pool_size = 1\nmetrics_address = "127.0.0.1:0"\n', env={"NOTIFY_SOCKET": listener.address})
    request = pb.RunRequest(root=make_root({"index.py": SLEEPY}), file="index.py", func_name="echo",
                            args=[encode(1)], timeout_seconds=1.0)
    with a_stalled_zygote(d, request) as stub:
        asked = time.monotonic()
        with pytest.raises(grpc.RpcError):  # it waits its second for a sandbox, and leaves
            stub.Run(request, timeout=1.0)
        assert health(d) == SERVING and metric(d, "isorun_zygote_stalled") == 0  # 1 s is no stall yet
        wait_until(lambda: health(d) == NOT_SERVING)
        assert time.monotonic() - asked > 2.5  # STALL_SECONDS after the call asked
        assert metric(d, "isorun_zygote_stalled") == 1
        (stalled,) = [json.loads(t) for t in d.log().splitlines() if '"event": "zygote_stalled"' in t]
        assert stalled["waiting_calls"] == 0 and "stopped or starved" in stalled["note"]
        listener.wait_for(lambda m: "ZYGOTE STALLED" in m.get("STATUS", ""))
        seen = len(listener.messages)
    resumed = time.monotonic()  # a_stalled_zygote resumes it on leaving
    wait_until(lambda: health(d) == SERVING)
    wait_until(lambda: any("zygote up" in m.get("STATUS", "") for m in listener.messages[seen:]))
    listener.close()
    assert metric(d, "isorun_zygote_stalled") == 0
    (recovered,) = [json.loads(t) for t in d.log().splitlines() if '"event": "zygote_recovered"' in t]
    # from the call's asking until a sandbox came once the zygote ran again
    assert resumed - asked - 0.5 < recovered["stalled_seconds"] < resumed - asked + 5
    assert answered(d, request)


def test_a_call_never_runs_past_its_clients_deadline(start_daemon, make_root):
    d = start_daemon(config="pool_size = 1\n")
    root = make_root({"index.py": SLEEPY})
    request = pb.RunRequest(root=root, file="index.py", func_name="nap", args=[encode(20)], timeout_seconds=25.0,
                            external=["time"])
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        with pytest.raises(grpc.RpcError) as e:
            runner_pb2_grpc.RunnerStub(channel).Run(request, timeout=1.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: d.calls())
    (line,) = d.calls()
    assert line["outcome"] in ("timeout", "cancelled") and line["total_ms"] < 4000


def test_a_storm_of_calls_gets_exactly_one_answer_each(start_daemon, make_root):
    d = start_daemon(config="max_concurrency = 2\nqueue_size = 8\npool_size = 2\n")
    root = make_root({"index.py": SLEEPY})
    clients, per_client = 4, 50
    answers: dict[int, list] = {}

    async def one(runner: AsyncCodeRunner, n: int) -> None:
        try:
            answers.setdefault(n, []).append(("value", await runner.run("echo", args=[n], timeout=10)))
        except errors.IsorunError as e:
            answers.setdefault(n, []).append((type(e).__name__, getattr(e, "limit", None) or str(e)))

    async def storm() -> None:
        runners = [AsyncCodeRunner(root=root, file="index.py", socket=d.socket) for _ in range(clients)]
        await asyncio.wait_for(asyncio.gather(*(
            one(runners[n % clients], n) for n in range(clients * per_client))), 240)
        for r in runners:
            await r.close()

    asyncio.run(storm())
    assert sorted(answers) == list(range(clients * per_client))
    assert all(len(a) == 1 for a in answers.values()), "a call was answered twice"
    values = {n: a[0] for n, a in answers.items()}
    for n, (kind, detail) in values.items():
        assert (kind, detail) in (("value", n), ("ResourceLimitError", "queue")), (n, kind, detail)
    served = sum(kind == "value" for kind, _ in values.values())
    assert served >= 10, f"only {served} calls were served"
    lines = d.calls()
    assert len(lines) == clients * per_client
    assert sorted({line["outcome"] for line in lines}) <= ["ok", "queue_full"]
    assert sum(line["outcome"] == "ok" for line in lines) == served
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        assert r.run("echo", args=["after"]) == "after"


@pytest.mark.parametrize(("open_rpcs", "calls"), [(4096, 3000), (16, 600)])
def test_a_burst_of_calls_gets_one_clear_answer_each_also_past_grpcs_own_bounds(start_daemon, make_root,
                                                                                 open_rpcs, calls):
    """gRPC holds calls that arrive faster than the server takes them in a queue of its own,
    and by default cancelled some past 1,000 and all past 3,000: of 2,000 calls sent at once,
    56 came back CANCELLED, a SandboxError in the clients, with no log line. Up to max_open_rpcs
    every call now reaches the daemon's queue and its answer (and its log line); past it, what
    gRPC refuses or cancels is a ResourceLimitError('queue') too, as the daemon's queue says."""
    d = start_daemon(config=f"max_concurrency = 2\nqueue_size = 8\npool_size = 2\nmax_open_rpcs = {open_rpcs}\n")
    root = make_root({"index.py": SLEEPY})
    answers: list = []

    async def one(runner: AsyncCodeRunner, n: int) -> None:
        try:
            answers.append(("value", await runner.run("echo", args=[n], timeout=30) == n, ""))
        except errors.IsorunError as e:
            answers.append((type(e).__name__, getattr(e, "limit", None), str(e)))

    async def burst() -> None:
        runner = AsyncCodeRunner(root=root, file="index.py", socket=d.socket)
        await asyncio.wait_for(asyncio.gather(*(one(runner, n) for n in range(calls))), 240)
        await runner.close()

    asyncio.run(burst())
    kinds = {(kind, detail) for kind, detail, _ in answers}
    assert kinds <= {("value", True), ("ResourceLimitError", "queue")}, [a for a in answers if a[0] != "value"][:3]
    if open_rpcs > calls:
        assert len(d.calls()) == calls
    else:  # still a burst that gRPC itself cancels some of
        assert any("did not take the call: gRPC cancelled it" in message for _, _, message in answers)
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        assert r.run("echo", args=["after"]) == "after"


def test_calls_that_leave_before_their_sandbox_arrives_do_not_grow_the_pool(start_daemon, make_root):
    # With the pool empty, a call asks the zygote for a sandbox; when the call is cancelled
    # before it arrives, that sandbox must not stay on top of a refilled pool.
    d = start_daemon(config="max_concurrency = 8\npool_size = 1\n")
    root = make_root({"index.py": SLEEPY})
    request = pb.RunRequest(root=root, file="index.py", func_name="nap", args=[encode(5)], external=["time"])
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        for _ in range(3):
            calls = [stub.Run.future(request, timeout=10) for _ in range(8)]
            time.sleep(0.05)
            for call in calls:
                call.cancel()
    zygote = zygote_of(d)

    def pooled() -> int:
        return len(zygote.children())
    # (a call cancelled before the daemon saw it leaves no log line: count sandboxes, not lines)
    wait_until(lambda: pooled() == 1, timeout=30)
    # Sandboxes the zygote still had to make (at the lowest priority, late on a loaded machine)
    # may arrive after this: each is killed as it arrives, so the pool comes back to 1. Before
    # the fix they stayed, and the pool never came back.
    time.sleep(3)
    wait_until(lambda: pooled() == 1, timeout=30)


SIZED = "def size(data, seconds):\n    import time\n    time.sleep(seconds)\n    return len(data)\n"
SMALL_MESSAGES = ("max_request_bytes = 2097152\nmax_held_request_bytes = 2097152\n\n"
                  "[limits]\nresult_bytes = 524288\n")


def test_a_request_past_the_bytes_the_daemon_may_hold_is_refused_and_later_ones_run(start_daemon, make_root):
    """The daemon holds a few copies of every request it has taken, queued or running (24
    requests of 40 MiB at once took it to 3.1 GiB): past max_held_request_bytes a call is
    refused at once, with the bound in its message, and small calls, and large ones once the
    held ones end, still run."""
    d = start_daemon(config=SMALL_MESSAGES)
    root = make_root({"index.py": SIZED})
    large = b"x" * (1 << 20)  # ~1.3 MiB on the socket: one fits in 2 MiB, two do not
    started = threading.Event()
    runner = CodeRunner(root=root, file="index.py", socket=d.socket, external=["time"])
    first, first_box = in_background(runner.run, "size", args=[large, 2], timeout=15, running=started.set)
    assert started.wait(30), d.log()
    with CodeRunner(root=root, file="index.py", socket=d.socket, external=["time"]) as r:
        with pytest.raises(errors.ResourceLimitError) as e:
            r.run("size", args=[large, 0])
        assert e.value.limit == "queue" and "max_held_request_bytes 2 MiB" in str(e.value), str(e.value)
        assert r.run("size", args=[b"small", 0]) == 5
        first.join(30)
        assert first_box == {"value": 1 << 20}
        assert r.run("size", args=[large, 0]) == 1 << 20
    refused = [line for line in d.calls() if line["outcome"] == "requests_too_large"]
    assert len(refused) == 1 and "max_held_request_bytes" in refused[0]["error"]
