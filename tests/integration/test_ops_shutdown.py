"""Graceful shutdown on SIGTERM/SIGINT: stop accepting, let in-flight calls finish within
shutdown_grace, kill what is left (each such call still gets an answer saying why), remove
the socket, exit 0."""
from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import sys
import termios
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from isorun import CodeRunner, errors

from processes import zygote_of

GUEST = "def nap(s):\n    import time\n    time.sleep(s)\n    return s\n\n\ndef echo(x):\n    return x\n"


def start_call(daemon, root: str, func: str, args: list, timeout: float = 30):
    """Starts a call in a thread; returns (thread, box, started event)."""
    box: dict = {}
    started = threading.Event()

    def run():
        with CodeRunner(root=root, file="index.py", socket=daemon.socket, external=["time"]) as r:
            try:
                box["value"] = r.run(func, args=args, timeout=timeout, running=started.set)
            except errors.IsorunError as e:
                box["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box, started


def descendants(daemon) -> list[psutil.Process]:
    return psutil.Process(daemon.pid).children(recursive=True)


def all_gone(processes) -> bool:
    def dead(p):
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return all(dead(p) for p in processes)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_call_that_ends_within_the_grace_completes_and_the_daemon_exits_0(start_daemon, make_root, sig):
    d = start_daemon(config="shutdown_grace = 15\n")
    thread, box, started = start_call(d, make_root({"index.py": GUEST}), "nap", [2])
    assert started.wait(30)
    family = descendants(d)
    os.kill(d.pid, sig)
    thread.join(30)
    assert box == {"value": 2}
    assert d.proc.wait(30) == 0, d.log()
    assert not os.path.exists(d.socket)
    assert all_gone(family)
    assert '"event": "stopped"' in d.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signalled_to_the_daemons_whole_process_group_still_lets_calls_finish(start_daemon, make_root, sig):
    # `kill -- -PGID`, `timeout`, dumb-init and supervisord's killasgroup signal the group:
    # the zygote was in it, died at once and took the call with it (a SandboxError)
    d = start_daemon(config="shutdown_grace = 15\n", prefix=["setsid"])  # the daemon leads its group
    assert os.getpgid(d.pid) == d.pid
    thread, box, started = start_call(d, make_root({"index.py": GUEST}), "nap", [2])
    assert started.wait(30)
    os.killpg(d.pid, sig)
    thread.join(30)
    assert box == {"value": 2}
    assert d.proc.wait(30) == 0, d.log()
    assert "zygote_died" not in d.log()


def signal_every_process_of(daemon, sig) -> None:
    """As `pkill -SIG -f isorund` does: the daemon, its zygote and the sandboxes (forks of the
    zygote, with its command line) all get the signal at once."""
    for process in [psutil.Process(daemon.pid), *descendants(daemon)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signalled_by_name_to_every_isorund_process_still_lets_calls_finish(start_daemon, make_root, sig):
    # `pkill -f isorund` reached the zygote as well as the daemon: it died at once and took the
    # call with it (a SandboxError saying a new zygote was being started, in a daemon stopping)
    d = start_daemon(config="shutdown_grace = 15\n")
    thread, box, started = start_call(d, make_root({"index.py": GUEST}), "nap", [2])
    assert started.wait(30)
    signal_every_process_of(d, sig)
    thread.join(30)
    assert box == {"value": 2}
    assert d.proc.wait(30) == 0, d.log()
    assert "zygote_died" not in d.log()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_a_signal_the_daemon_ignores_ends_none_of_its_processes(start_daemon, make_root, sig):
    # a log rotation's `pkill -HUP -f isorund`: the daemon logged it and went on, its zygote
    # died (the default action) and the call in flight with it
    d = start_daemon()
    zygote = zygote_of(d)
    thread, box, started = start_call(d, make_root({"index.py": GUEST}), "nap", [1])
    assert started.wait(30)
    signal_every_process_of(d, sig)
    thread.join(30)
    assert box == {"value": 1}
    assert zygote.is_running() and zygote_of(d).pid == zygote.pid
    assert "zygote_died" not in d.log()
    with CodeRunner(root=make_root({"index.py": GUEST}), file="index.py", socket=d.socket) as r:
        assert r.run("echo", args=[7]) == 7


def test_a_daemon_run_in_a_terminal_with_tostop_starts_though_its_zygote_is_a_background_group(tmp_path):
    # The zygote's own process group is a background group of the daemon's terminal: with
    # `stty tostop` its first log line (a missing default_external) stopped it with SIGTTOU,
    # and the daemon's start hung until it gave up.
    config = tmp_path / "isorund.toml"
    config.write_text('default_external = ["json", "no_such_module_for_isorun"]\n')
    sock = str(tmp_path / "isorund.sock")
    pid, terminal = pty.fork()  # the child leads a session whose controlling terminal is the pty
    if pid == 0:
        try:
            attributes = termios.tcgetattr(0)
            attributes[3] |= termios.TOSTOP
            termios.tcsetattr(0, termios.TCSANOW, attributes)
            os.execv(sys.executable, [sys.executable, "-m", "isorund", "--socket", sock, "--config", str(config)])
        finally:
            os._exit(127)
    output, deadline = b"", time.monotonic() + 60
    try:
        while b'"event": "ready"' not in output and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                try:
                    output += os.read(terminal, 65536)
                except OSError:  # the daemon exited: the pty has no reader left
                    break
        assert b'"event": "ready"' in output, output.decode(errors="replace")
        assert b"default_external_missing" in output
    finally:
        os.kill(pid, signal.SIGTERM)
        stop_by = time.monotonic() + 30
        while os.waitpid(pid, os.WNOHANG) == (0, 0):  # (the pty must be read for it to go on)
            if time.monotonic() > stop_by:
                os.kill(pid, signal.SIGKILL)
            if select.select([terminal], [], [], 0.1)[0]:
                try:
                    os.read(terminal, 65536)
                except OSError:
                    pass
        os.close(terminal)


def test_a_call_past_the_grace_is_killed_with_a_clear_error(start_daemon, make_root):
    d = start_daemon(config="shutdown_grace = 1\nmax_concurrency = 1\nqueue_size = 4\n")
    root = make_root({"index.py": GUEST})
    thread, box, started = start_call(d, root, "nap", [25])
    assert started.wait(30)
    queued, queued_box, _ = start_call(d, root, "echo", [1])
    time.sleep(0.5)  # let the second call reach the queue
    family = descendants(d)
    signalled = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    thread.join(30)
    queued.join(30)
    assert isinstance(box.get("error"), errors.SandboxError), box
    assert "shutdown_grace of 1 s" in str(box["error"])
    # The queued call never started; it is told the daemon is going away, not left hanging.
    assert isinstance(queued_box.get("error"), errors.DaemonUnavailable), queued_box
    assert '"outcome": "unavailable"' in d.log()
    assert d.proc.wait(30) == 0, d.log()
    assert time.monotonic() - signalled < 10
    assert not os.path.exists(d.socket)
    deadline = time.monotonic() + 10
    while not all_gone(family):
        assert time.monotonic() < deadline, "a sandbox outlived the daemon"
        time.sleep(0.05)
    assert '"event": "grace_expired", "killed_calls": 1' in d.log()
    # what the killed call's sandbox used is the kernel's account (it reported none itself)
    [killed] = d.calls("nap")
    assert killed["outcome"] == "sandbox" and killed["peak_memory_bytes"] > 1 << 20, killed


def test_a_zygote_that_dies_during_the_grace_is_not_started_again_and_its_calls_say_why(start_daemon, make_root):
    # they were told "a new zygote is being started, retry the call", and the stopping daemon
    # started one it never used (found by a probe)
    d = start_daemon(config="shutdown_grace = 5\n")
    root = make_root({"index.py": GUEST})
    thread, box, started = start_call(d, root, "nap", [25])
    assert started.wait(30)
    zygote = zygote_of(d)
    os.kill(d.pid, signal.SIGTERM)
    time.sleep(0.5)
    zygote.kill()
    thread.join(30)
    assert isinstance(box.get("error"), errors.SandboxError), box
    assert "died while isorund was shutting down" in str(box["error"]) and "retry" not in str(box["error"])
    assert d.proc.wait(30) == 0, d.log()
    assert "zygote_restarted" not in d.log() and "not started again" in d.log()


def test_no_new_call_is_accepted_once_shutdown_begins(start_daemon, make_root):
    d = start_daemon(config="shutdown_grace = 5\n")
    root = make_root({"index.py": GUEST})
    thread, box, started = start_call(d, root, "nap", [3])
    assert started.wait(30)
    os.kill(d.pid, signal.SIGTERM)
    time.sleep(0.3)
    with CodeRunner(root=root, file="index.py", socket=d.socket) as late:
        with pytest.raises(errors.DaemonUnavailable, match="shutting down"):
            late.run("echo", args=[1], timeout=5)
    # the socket stays while calls drain: a health check is told NOT_SERVING, not "no daemon"
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    thread.join(30)
    assert box == {"value": 3}
    assert d.proc.wait(30) == 0
    assert '"outcome": "unavailable"' in d.log()  # the refused call left its line


def test_an_idle_daemon_watched_by_a_health_stream_still_stops_at_once(start_daemon):
    """A health Watch (what a supervisor holds open) never ends by itself; the drain used to
    wait for it the whole grace period and report the grace as expired."""
    d = start_daemon(config="shutdown_grace = 20\n")
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        signalled = time.monotonic()
        os.kill(d.pid, signal.SIGTERM)
        assert d.proc.wait(30) == 0
        assert time.monotonic() - signalled < 8
    assert "grace_expired" not in d.log()


def test_an_idle_daemon_stops_at_once(start_daemon):
    d = start_daemon(config="shutdown_grace = 30\n")
    signalled = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert time.monotonic() - signalled < 5
    assert not os.path.exists(d.socket)
    # the zygote (which ignores SIGTERM) ended when its control socket closed, not killed later
    assert "zygote_killed" not in d.log()
