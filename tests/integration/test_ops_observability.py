"""Observability: one JSON log line per call with stable keys, and a Prometheus endpoint (off by
default) whose counters and gauges move with the calls."""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import grpc
import psutil
import pytest
from google.protobuf import struct_pb2

from escaped import ESCAPED
from isorun import CodeRunner, errors
from isorun._proto import runner_pb2 as pb
from isorun._proto import runner_pb2_grpc
from isorund.metrics import MAX_SCRAPES, SCRAPE_TIMEOUT
from processes import zygote_of

GUEST = '''
def echo(x):
    return x

def boom():
    raise ValueError("Boom!")

def chatty():
    print("hello")
    return [0] * 1000

def nap(s):
    import time
    time.sleep(s)
    return s
'''
LOG_KEYS = {"event", "id", "peer", "root", "file", "function", "outcome", "queue_ms", "run_ms", "total_ms",
            "cpu_ms", "peak_memory_bytes"}


def metrics_address(daemon) -> str:
    (address,) = [json.loads(t)["address"] for t in daemon.log().splitlines() if '"event": "metrics"' in t]
    return address


def scrape(daemon) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{metrics_address(daemon)}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


@pytest.fixture
def metered(start_daemon):
    return start_daemon(config='metrics_address = "127.0.0.1:0"\nmax_concurrency = 2\n')


def test_each_call_writes_one_json_line_with_its_facts(start_daemon, make_root):
    d = start_daemon()
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        assert len(r.run("chatty")) == 1000
        with pytest.raises(errors.GuestError):
            r.run("boom")
    with CodeRunner(root=root, file="../x.py", socket=d.socket) as bad:
        with pytest.raises(errors.InvalidRequest):
            bad.run("echo", args=[1])
    lines = d.calls()
    assert [line["outcome"] for line in lines] == ["ok", "guest_exception", "invalid_argument"]
    for line in lines:
        assert LOG_KEYS <= set(line), line
        assert re.fullmatch(r"[0-9a-f]{16}", line["id"])
    ok = lines[0]
    assert (ok["file"], ok["function"], ok["root"]) == ("index.py", "chatty", root)
    assert ok["run_ms"] > 0 and ok["total_ms"] >= ok["run_ms"] and ok["cpu_ms"] > 0
    assert ok["peak_memory_bytes"] > 1 << 20
    assert len({line["id"] for line in lines}) == 3


def test_every_outcome_carries_the_id_of_its_log_line(start_daemon, make_root):
    # Raw stubs: the id is in the Outcome message, for callers that trace calls by it. The
    # daemon makes the timeout's outcome itself; the guest's runtime makes the other one.
    d = start_daemon()
    root = make_root({"index.py": GUEST})
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        nap = pb.RunRequest(root=root, file="index.py", func_name="nap", timeout_seconds=0.5, external=["time"],
                            args=[struct_pb2.Value(number_value=5)])
        timed_out = stub.Run(nap, timeout=30).outcome
        answered = stub.Run(pb.RunRequest(root=root, file="index.py", func_name="boom"), timeout=30).outcome
    assert timed_out.failure.kind == pb.Failure.TIMEOUT, timed_out.failure
    assert answered.failure.kind == pb.Failure.GUEST_EXCEPTION
    ids = [line["id"] for line in d.calls()]
    assert [timed_out.call_id, answered.call_id] == ids


def test_a_call_its_sandbox_did_not_answer_reports_what_the_kernel_counted(start_daemon, make_root):
    # A guest that spins to its timeout, or leaves without an outcome, reports no usage itself:
    # the log line and the Outcome said 0 ms of CPU and 0 bytes for a guest that had spent its
    # whole second. They are now the kernel's account of the sandbox, as its zygote reaped it.
    d = start_daemon()
    root = make_root({"index.py": ESCAPED + """
        def spin():
            while True:
                pass

        def spin_then_vanish():
            os = _os_globals()["sys"].modules["os"]
            while os.times().user < 0.3:
                pass
            os._exit(5)
    """})
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        timed_out = stub.Run(pb.RunRequest(root=root, file="index.py", func_name="spin", timeout_seconds=1.5),
                             timeout=30).outcome
        vanished = stub.Run(pb.RunRequest(root=root, file="index.py", func_name="spin_then_vanish"), timeout=30).outcome
    assert timed_out.failure.kind == pb.Failure.TIMEOUT, timed_out.failure
    assert vanished.failure.kind == pb.Failure.SANDBOX and "exit status 5" in vanished.failure.message, vanished
    for outcome in (timed_out, vanished):
        assert outcome.usage.cpu_seconds >= 0.3, outcome.usage
        assert outcome.usage.peak_memory_bytes > 1 << 20, outcome.usage
    lines = d.calls()
    assert [line["outcome"] for line in lines] == ["timeout", "sandbox"]
    assert [(line["cpu_ms"], line["peak_memory_bytes"]) for line in lines] == [
        (round(o.usage.cpu_seconds * 1000, 3), o.usage.peak_memory_bytes) for o in (timed_out, vanished)]


def test_the_metrics_endpoint_is_off_by_default(daemon):
    assert '"event": "metrics"' not in daemon.log()


def test_the_metrics_counters_move_with_the_calls(metered, make_root):
    d = metered
    before = scrape(d)
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket, external=["time"]) as r:
        for n in range(3):
            assert r.run("echo", args=[n]) == n
        with pytest.raises(errors.GuestError):
            r.run("boom")
        with pytest.raises(errors.RuntimeTimeoutError):
            r.run("nap", args=[5], timeout=0.5)
    after = scrape(d)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)
    assert moved('isorun_calls_total{outcome="ok"}') == 3
    assert moved('isorun_calls_total{outcome="guest_exception"}') == 1
    assert moved('isorun_calls_total{outcome="timeout"}') == 1
    assert moved("isorun_call_duration_seconds_count") == 5
    assert moved('isorun_call_duration_seconds_bucket{le="60.0"}') == 5
    assert moved("isorun_queue_wait_seconds_count") == 5
    assert after["isorun_zygote_up"] == 1 and after["isorun_zygote_restarts_total"] == 0
    assert after["isorun_max_concurrency"] == 2 and after["isorun_sandboxes_ready"] >= 0


def test_the_endpoint_serves_only_the_documented_series_and_only_at_metrics(metered):
    # Any path answered the metrics, and each counter and histogram had a *_created series
    # beside it, which the documentation does not list.
    samples = scrape(metered)
    assert "isorun_zygote_up" in samples and not [name for name in samples if "_created" in name]
    for path in ("/", "/metric", "/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{metrics_address(metered)}{path}", timeout=10)
        assert info.value.code == 404


def test_a_fresh_daemon_counts_no_call_its_self_test_is_only_logged(metered):
    samples = scrape(metered)
    assert [line["peer"] for line in metered.calls(self_test=True)] == ["self-test"]
    counted = {name: value for name, value in samples.items()
               if name.startswith(("isorun_calls_total", "isorun_call_duration_seconds_count",
                                   "isorun_queue_wait_seconds_count"))}
    assert counted and not any(counted.values()), counted


def test_a_run_whose_bytes_are_no_request_still_leaves_a_line_and_a_count(metered, make_root):
    d = metered
    before = scrape(d)
    root = make_root({"index.py": GUEST})
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/isorun.v1.Runner/Run")(b"\xff\xff\xff", timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError):  # refused before the queue: no queue wait either
            runner_pb2_grpc.RunnerStub(channel).Run(pb.RunRequest(root=root, file="../x.py", func_name="f"),
                                                    timeout=10)
    garbage, bad_path = d.calls()[-2:]
    assert garbage["outcome"] == "invalid_argument" and "not a valid isorun.v1.RunRequest" in garbage["error"]
    assert bad_path["outcome"] == "invalid_argument" and bad_path["queue_ms"] == 0.0
    assert "file" in bad_path["error"] and "../x.py" in bad_path["error"]  # why, for the operator
    after = scrape(d)
    assert after['isorun_calls_total{outcome="invalid_argument"}'] - before.get(
        'isorun_calls_total{outcome="invalid_argument"}', 0) == 2
    # refused before the queue: no wait is counted (as 0 s, they pulled the histogram down)
    assert after["isorun_queue_wait_seconds_count"] == before.get("isorun_queue_wait_seconds_count", 0)


def test_the_gauges_show_live_sandboxes_and_queue_depth(metered, make_root):
    d = metered
    root = make_root({"index.py": GUEST})
    threads = []
    for _ in range(3):  # two run, one waits in the queue
        r = CodeRunner(root=root, file="index.py", socket=d.socket, external=["time"])
        threads.append(threading.Thread(target=r.run, args=("nap", [2]), kwargs={"timeout": 10}))
        threads[-1].start()
    deadline = time.monotonic() + 20
    while (s := scrape(d))["isorun_sandboxes_live"] != 2 or s["isorun_queue_depth"] != 1:
        assert time.monotonic() < deadline, s
        time.sleep(0.05)
    for t in threads:
        t.join(30)
    s = scrape(d)
    assert (s["isorun_sandboxes_live"], s["isorun_queue_depth"]) == (0, 0)


def test_zygote_restarts_are_counted(metered):
    import signal
    d = metered
    zygote = zygote_of(d)
    zygote.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while scrape(d)["isorun_zygote_restarts_total"] != 1:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    assert scrape(d)["isorun_zygote_up"] == 1


def test_silent_connections_to_the_metrics_endpoint_neither_pile_up_threads_nor_hold_it(metered, make_root):
    host, _, port = metrics_address(metered).rpartition(":")
    with CodeRunner(root=make_root({"index.py": GUEST}), file="index.py", socket=metered.socket) as r:
        assert r.run("echo", args=[1]) == 1  # grpc's own threads are there before the count
    threads = psutil.Process(metered.pid).num_threads()
    silent = []
    for _ in range(20):  # connect and send nothing, as a slow or hostile peer would
        silent.append(socket.create_connection((host, int(port)), timeout=5))
        time.sleep(0.01)
    time.sleep(0.5)
    closed = 0
    for s in silent:
        s.settimeout(0.1)
        try:
            closed += s.recv(1) == b""
        except TimeoutError:
            pass  # held: one of the connections being served
    assert closed == len(silent) - MAX_SCRAPES
    assert psutil.Process(metered.pid).num_threads() <= threads + MAX_SCRAPES
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        scrape(metered)  # every slot is taken: refused at once, not queued behind them
    with CodeRunner(root=make_root({"index.py": GUEST}), file="index.py", socket=metered.socket) as r:
        assert r.run("echo", args=[1]) == 1  # calls do not notice

    time.sleep(SCRAPE_TIMEOUT + 1)  # the silent ones are dropped by then
    assert scrape(metered)["isorun_calls_total{outcome=\"ok\"}"] >= 1
    for s in silent:
        assert s.recv(1) == b""
        s.close()
    deadline = time.monotonic() + 5  # a thread that dropped its peer may still be ending
    while psutil.Process(metered.pid).num_threads() > threads:
        assert time.monotonic() < deadline, (psutil.Process(metered.pid).num_threads(), threads)
        time.sleep(0.1)
    assert "Traceback" not in metered.log()  # a dropped peer is not an error of the daemon's


def test_peers_that_trickle_their_request_hold_the_metrics_endpoint_for_seconds_at_most(metered):
    # The socket's timeout bounds each wait for a byte, not the connection: four peers sending
    # a byte every three seconds held every slot for as long as they went on (seen).
    host, _, port = metrics_address(metered).rpartition(":")
    lasted = []

    def trickle():
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=5) as s:
            try:
                for byte in b"GET /metrics HTTP/1.1\r\n" + b"X-Slow: 1\r\n" * 100:
                    s.sendall(bytes([byte]))
                    time.sleep(0.5)
            except OSError:
                pass  # cut by the daemon
        lasted.append(time.monotonic() - started)
    tricklers = [threading.Thread(target=trickle) for _ in range(MAX_SCRAPES)]
    for t in tricklers:
        t.start()
    time.sleep(1.0)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        scrape(metered)  # every slot is held meanwhile
    time.sleep(SCRAPE_TIMEOUT + 1)
    assert scrape(metered)["isorun_zygote_up"] == 1  # served again
    for t in tricklers:
        t.join(10)
    assert len(lasted) == MAX_SCRAPES and max(lasted) < SCRAPE_TIMEOUT + 3, lasted
    assert "Traceback" not in metered.log()


def test_a_taken_metrics_port_stops_the_start_naming_the_key(start_daemon):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = start_daemon(config=f'metrics_address = "127.0.0.1:{port}"\n', wait=False)
        assert d.proc.wait(60) == 1
    assert "metrics_address" in d.log() and "cannot serve metrics" in d.log()


def test_a_log_reader_that_stops_reading_holds_no_call(tmp_path, make_root):
    """The daemon wrote its lines from its event loop: once a pipe its stderr went to was full
    (a stalled log shipper), every call hung and health did not answer (seen). Lines wait in a
    queue of their own now, and all of them arrive once the reader reads again."""
    import subprocess
    import sys
    socket_path = str(tmp_path / "isorund.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "isorund", "--socket", socket_path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while b'"event": "ready"' not in daemon.stderr.readline():
            assert daemon.poll() is None, "the daemon did not start"
        # from here on nobody reads: the pipe (64 KiB) holds ~160 call lines
        root = make_root({"index.py": GUEST})
        with CodeRunner(root=root, file="index.py", socket=socket_path) as r:
            assert [r.run("echo", args=[i], timeout=10) for i in range(400)] == list(range(400))
        daemon.terminate()
        _, written = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    calls = [json.loads(line) for line in written.splitlines() if line.startswith(b'{"event": "call"')]
    assert len(calls) == 400 and all(c["outcome"] == "ok" for c in calls)


def test_a_log_reader_that_stops_reading_holds_no_zygote_restart_and_no_stop(tmp_path, make_root):
    """With stderr unread: a restarted zygote printed its first line there and blocked for
    good, so no call was served; and a stop waited, at exit, on the lock of the thread blocked
    writing (ten minutes in a probe). The zygote's lines go through the daemon's queue now, and
    the writer holds no lock of Python's."""
    import subprocess
    import sys
    from processes import zygote_of
    socket_path = str(tmp_path / "isorund.sock")
    daemon = subprocess.Popen([sys.executable, "-m", "isorund", "--socket", socket_path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    daemon.socket, daemon.log = socket_path, lambda: ""
    try:
        while b'"event": "ready"' not in daemon.stderr.readline():
            assert daemon.poll() is None, "the daemon did not start"
        root = make_root({"index.py": GUEST})
        with CodeRunner(root=root, file="index.py", socket=socket_path) as r:
            for i in range(400):  # the pipe's 64 KiB are full long before
                r.run("echo", args=[i], timeout=10)
            zygote_of(daemon).kill()
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert r.run("echo", args=["back"], timeout=10) == "back"
                    break
                except (errors.DaemonUnavailable, errors.SandboxError):  # (a call the old zygote took with it)
                    assert time.monotonic() < deadline, "no call served after the zygote's restart"
                    time.sleep(0.2)
        daemon.terminate()
        assert daemon.wait(20) == 0  # still unread
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        daemon.stderr.close()



def test_the_pool_gauges_and_counters_follow_the_pool(start_daemon, make_root):
    # docs/operations.md: isorun_sandboxes_ready, "sandboxes prepared ahead";
    # isorun_sandboxes_prepared_total, every sandbox prepared and handed over, the pool's or a
    # call's; isorun_sandboxes_discarded_total, those killed unused: asked for by calls that left
    # before one arrived, with the pool full again
    pool_size, calls = 3, 4
    d = start_daemon(config=f'metrics_address = "127.0.0.1:0"\npool_size = {pool_size}\n')

    def pool_full() -> dict[str, float]:
        deadline = time.monotonic() + 20
        while (s := scrape(d))["isorun_sandboxes_ready"] != pool_size:
            assert time.monotonic() < deadline, s
            time.sleep(0.05)
        return s
    before = pool_full()
    assert before["isorun_sandboxes_prepared_total"] >= pool_size  # the pool's own, at least
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        for n in range(calls):
            assert r.run("echo", args=[n]) == n
    after = pool_full()  # each call took a prepared sandbox; the pool is made whole again
    assert after["isorun_sandboxes_prepared_total"] - before["isorun_sandboxes_prepared_total"] >= calls
    assert after["isorun_sandboxes_discarded_total"] == 0
    # the zygote stopped: the pool's sandboxes serve calls, two more calls ask for sandboxes of
    # their own and leave at their deadline; once it runs again, what it made beyond the pool goes
    request = pb.RunRequest(root=root, file="index.py", func_name="echo", args=[struct_pb2.Value(number_value=1)],
                            timeout_seconds=1.0)
    zygote = zygote_of(d)
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        zygote.suspend()
        try:
            for _ in range(pool_size):
                assert stub.Run(request, timeout=10).outcome.WhichOneof("result") == "value"
            leaving = [stub.Run.future(request, timeout=1.0) for _ in range(2)]
            assert [call.exception().code() for call in leaving] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
        finally:
            zygote.resume()
    deadline = time.monotonic() + 20
    while (s := scrape(d))["isorun_sandboxes_discarded_total"] < 1 or s["isorun_sandboxes_ready"] != pool_size:
        assert time.monotonic() < deadline, s
        time.sleep(0.05)
