"""Faults: a zygote killed mid-call, and a daemon killed outright. Calls in flight get a clear
error, the zygote comes back, and a restarted daemon finds no stale socket or process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time

import psutil
import pytest

from isorun import CodeRunner, errors
from processes import cgroup_around, wait_for_pool, zygote_of

GUEST = "def nap(s):\n    import time\n    time.sleep(s)\n    return s\n\n\ndef echo(x):\n    return x\n"


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(processes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in processes):
        assert time.monotonic() < deadline, [p for p in processes if not gone(p)]
        time.sleep(0.05)


def wait_for_event(daemon, name: str, seconds: float = 30) -> list[dict]:
    """The daemon's log lines of event ``name``, once there is one."""
    deadline = time.monotonic() + seconds
    while not (found := events(daemon, name)):
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    return found


def events(daemon, name: str) -> list[dict]:
    return [json.loads(t) for t in daemon.log().splitlines() if t.startswith("{") and f'"event": "{name}"' in t]


def a_long_call_running(daemon, root: str):
    """Starts a 20 s call in a thread and returns once it runs; the function returned waits
    (at most 20 s) for the call to end and returns the error it raised."""
    running = threading.Event()
    box: dict = {}

    def call():
        with CodeRunner(root=root, file="index.py", socket=daemon.socket, external=["time"]) as r:
            try:
                box["value"] = r.run("nap", args=[20], timeout=25, running=running.set)
            except errors.IsorunError as e:
                box["error"] = e
    thread = threading.Thread(target=call)
    thread.start()
    assert running.wait(30)

    def ended():
        thread.join(20)
        assert not thread.is_alive()
        return box.get("error")
    return ended


def test_a_zygote_killed_mid_call_fails_the_call_clearly_and_comes_back(start_daemon, make_root):
    d = start_daemon(config='max_concurrency = 4\nmetrics_address = "127.0.0.1:0"\n')
    root = make_root({"index.py": GUEST})
    zygote = zygote_of(d)
    ended = a_long_call_running(d, root)
    sandboxes = zygote.children()
    zygote.send_signal(signal.SIGKILL)
    error = ended()
    assert isinstance(error, errors.SandboxError) and "zygote died" in str(error)
    wait_gone(sandboxes)  # every prepared and running sandbox went with its zygote
    wait_for_event(d, "zygote_restarted")
    assert zygote_of(d).pid != zygote.pid
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        assert [r.run("echo", args=[n]) for n in range(5)] == list(range(5))
    assert events(d, "zygote_died") and events(d, "zygote_restarted")[0]["restarts"] == 1


def test_a_sandbox_killed_from_outside_is_not_reported_as_a_cpu_limit(start_daemon, make_root):
    # SIGKILL is also how the kernel ends a guest past its hard CPU limit; a sandbox that used
    # almost no CPU was ended by someone else (an operator, the OOM killer of the host).
    d = start_daemon(config="pool_size = 1\n")
    root = make_root({"index.py": GUEST})
    zygote = zygote_of(d)
    ended = a_long_call_running(d, root)
    # the call's sandbox has dropped to its own host uid; pooled ones are still root
    (sandbox,) = [p for p in zygote.children() if p.uids().real != 0]
    sandbox.send_signal(signal.SIGKILL)
    error = ended()
    assert type(error) is errors.SandboxError, error
    assert "killed from outside the call (SIGKILL, exit status 137)" in str(error)


def test_prepared_sandboxes_that_die_in_the_pool_are_replaced_not_handed_to_calls(start_daemon, make_root):
    d = start_daemon(config="pool_size = 2\n")
    zygote = zygote_of(d)
    deadline = time.monotonic() + 30
    # the pool full and the start-up self-test's sandbox gone: exactly the two prepared ones
    while len(zygote.children()) != 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    pooled = zygote.children()
    assert len(pooled) == 2
    for sandbox in pooled:
        sandbox.kill()  # an operator's kill -9, or the host's OOM killer
    psutil.wait_procs(pooled, timeout=10)
    deadline = time.monotonic() + 10
    while d.log().count("died in the pool before its call") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    with CodeRunner(root=make_root({"index.py": "def f(x):\n    return x\n"}), file="index.py",
                    socket=d.socket) as r:
        assert [r.run("f", args=[i]) for i in range(3)] == [0, 1, 2]  # none got a dead sandbox
    assert d.log().count('"event": "sandbox_lost"') == 2


BOMB = """
import os, time

def bomb():
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError as e:
        time.sleep(3)
        return [n, e.strerror]

def nap(s):
    time.sleep(s)
    return s
"""


@pytest.fixture
def pids_cgroup():
    """A pids cgroup of the test's own: its folder, and a prefix that starts the daemon in it
    (asked for before ``start_daemon``, it is removed after the daemon has stopped)."""
    with cgroup_around("pids") as made:
        yield made


def test_a_guest_that_uses_up_the_daemons_tasks_limit_takes_no_other_call_down(pids_cgroup, start_daemon, make_root):
    """Under a tasks limit the daemon's calls share (a pids cgroup: systemd's TasksMax, a
    container's), one guest's fork bomb made the zygote's next fork fail with EAGAIN; the
    zygote died of it and took every call in flight with it (seen). It is told to ask again."""
    folder, prefix = pids_cgroup
    d = start_daemon(config="pool_size = 2\nmax_concurrency = 4\n[limits]\nmax_processes = 1000\n", prefix=prefix)
    wait_for_pool(d.pid, 2)
    with open(os.path.join(folder, "pids.current")) as f:
        tasks = int(f.read())
    with open(os.path.join(folder, "pids.max"), "w") as f:
        f.write(str(tasks + 30))
    root = make_root({"index.py": BOMB})
    answers = {}

    def call(name, function, args, delay):
        time.sleep(delay)
        with CodeRunner(root=root, file="index.py", socket=d.socket, external=["os", "time"]) as r:
            try:
                answers[name] = r.run(function, args=args, timeout=30)
            except errors.IsorunError as e:
                answers[name] = e
    threads = [threading.Thread(target=call, args=a) for a in
               (("innocent", "nap", [4], 0), ("bomb", "bomb", [], 0.3), ("later", "nap", [0], 1.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["innocent"] == 4, answers
    assert answers["bomb"][0] > 0 and answers["bomb"][1] == "Resource temporarily unavailable", answers
    assert answers["later"] == 0, answers  # its sandbox came once the bomb's call had ended
    assert events(d, "sandbox_spawn_failed") and not events(d, "zygote_died"), d.log()
    with CodeRunner(root=root, file="index.py", socket=d.socket, external=["os", "time"]) as r:
        assert r.run("nap", args=[0]) == 0


def test_a_range_of_host_ids_at_its_minimum_serves_calls_without_the_zygote_dying(start_daemon, make_root):
    """With sandbox_uid_count at its least (max_concurrency + pool_size + 1), replacements
    asked for as calls ended found every id held by sandboxes still exiting: the zygote died of
    it (IndexError) and took the calls in flight with it, again and again (seen: 17 of 160
    calls answered). Ids come back as sandboxes are reaped; until then the zygote asks again."""
    d = start_daemon(config="max_concurrency = 4\npool_size = 2\nsandbox_uid_count = 7\n")
    root = make_root({"index.py": GUEST})
    answers = []

    def caller(n):
        with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
            for i in range(30):
                answers.append(r.run("echo", args=[n * 100 + i], timeout=20))
    threads = [threading.Thread(target=caller, args=[n]) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == sorted(n * 100 + i for n in range(4) for i in range(30))
    assert not events(d, "zygote_failed") and not events(d, "zygote_died"), d.log()


def test_calls_during_a_zygote_restart_fail_fast_not_hang(start_daemon, make_root):
    d = start_daemon(config="pool_size = 1\n")
    root = make_root({"index.py": GUEST})
    zygote_of(d).send_signal(signal.SIGKILL)
    answers = []
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        for n in range(20):
            try:
                answers.append(r.run("echo", args=[n], timeout=5))
            except (errors.DaemonUnavailable, errors.SandboxError) as e:
                answers.append(type(e).__name__)
            time.sleep(0.05)
    assert answers[-1] == 19, answers  # back to normal by the end
    assert set(answers) - set(range(20)) <= {"DaemonUnavailable", "SandboxError"}


def test_a_call_waiting_for_a_sandbox_when_the_zygote_dies_is_answered_at_once(start_daemon, make_root):
    # The pool empty and the zygote stopped, a call waits for the sandbox it asked for; the
    # zygote's death ends that wait with UNAVAILABLE, not the call's whole deadline (65 s).
    d = start_daemon(config="pool_size = 1\n")
    root = make_root({"index.py": GUEST})
    zygote = zygote_of(d)
    wait_for_pool(d.pid, 1)  # the pool's one sandbox, announced to the daemon
    box: dict = {}
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        zygote.suspend()
        assert r.run("echo", args=[1]) == 1  # the pool's one sandbox; none comes after it

        def call():
            try:
                box["value"] = r.run("echo", args=[2], timeout=5)
            except errors.IsorunError as e:
                box["error"] = e
        waiting = threading.Thread(target=call)
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive()
        killed = time.monotonic()
        zygote.kill()
        waiting.join(10)
        assert not waiting.is_alive() and time.monotonic() - killed < 5
        assert isinstance(box.get("error"), errors.DaemonUnavailable), box
        assert "zygote died before this call got a sandbox" in str(box["error"])
        wait_for_event(d, "zygote_restarted")
        assert r.run("echo", args=[3]) == 3
    outcomes = [line["outcome"] for line in d.calls()]
    assert outcomes == ["ok", "unavailable", "ok"]


def test_a_zygote_that_fails_to_restart_is_retried_until_it_starts(start_daemon, make_root, tmp_path):
    # A transient failure at restart (here a plugin whose import fails while a flag file
    # exists) must not end the daemon or leave it without a zygote for good: it retries, with
    # a backoff, calls meanwhile are refused at once, and it serves again once a start works.
    flag = tmp_path / "broken"
    (tmp_path / "flaky.py").write_text(f"import os\nif os.path.exists({str(flag)!r}):\n"
                                       "    raise RuntimeError('the plugin cannot load now')\n"
                                       "def compile(source, filename):\n    return source\n")
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nflaky = "flaky:compile"\n')
    root = make_root({"index.py": GUEST})
    flag.write_text("")
    zygote_of(d).kill()
    deadline = time.monotonic() + 30
    while len(events(d, "zygote_restart_failed")) < 3:
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
        time.sleep(0.05)
    assert "the plugin cannot load now" in events(d, "zygote_restart_failed")[0]["error"]
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        asked = time.monotonic()
        with pytest.raises(errors.DaemonUnavailable, match="zygote is restarting"):
            r.run("echo", args=[1])
        assert time.monotonic() - asked < 5
        flag.unlink()
        wait_for_event(d, "zygote_restarted")
        assert r.run("echo", args=[2]) == 2
    assert d.proc.poll() is None


def spawns_failing_while(flag, error: tuple[int, str] = (1, "Operation not permitted (test)")) -> str:
    """A plugin module that makes the zygote's every spawn fail (its socketpair) while ``flag``
    exists, by default with an error that does not pass (not one of zygote.TRANSIENT, which
    the daemon asks again after); the daemon imports it too, untouched."""
    return (f"import os, socket, sys\n"
            f"if 'isorund.zygote' in sys.orig_argv:\n"
            f"    real = socket.socketpair\n"
            f"    def socketpair(*args, **kwargs):\n"
            f"        if os.path.exists({str(flag)!r}):\n"
            f"            raise OSError{error!r}\n"
            f"        return real(*args, **kwargs)\n"
            f"    socket.socketpair = socketpair\n"
            f"def compile(source, filename):\n"
            f"    return source\n")


def test_a_zygote_that_dies_soon_after_each_restart_is_restarted_with_a_growing_delay(start_daemon, make_root,
                                                                                     tmp_path):
    # It said why it died (a 'fatal' from the running zygote), and was restarted at once, four
    # times a second, each restart a new interpreter importing everything.
    flag = tmp_path / "failing"
    (tmp_path / "spawnfail.py").write_text(spawns_failing_while(flag))
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nsf = "spawnfail:compile"\n')
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        assert r.run("echo", args=[1]) == 1
        wait_for_pool(d.pid, 4)  # its replacement made before spawns fail
        flag.write_text("")
        assert r.run("echo", args=[2]) == 2  # a pooled one was ready; its replacement's spawn fails
        time.sleep(6)
        failed = events(d, "zygote_failed")
        assert failed and failed[0]["error"] == "PermissionError: [Errno 1] Operation not permitted (test)"
        delays = [e["restart_in_seconds"] for e in events(d, "zygote_died")]
        assert 3 <= len(delays) <= 9, delays  # 0.05, 0.1, 0.2, … s, each restart ~0.3 s: at once, ~20
        waited = [delay for delay in delays if delay]  # (the first zygote may have lived 10 s)
        assert delays == sorted(delays) and waited[1] == 2 * waited[0], delays
        with pytest.raises(errors.DaemonUnavailable, match="zygote is restarting"):
            r.run("echo", args=[3])
        flag.unlink()
        deadline = time.monotonic() + 30
        while True:  # at most the longest delay (5 s) and a start
            try:
                assert r.run("echo", args=[4]) == 4
                break
            except errors.DaemonUnavailable:
                assert time.monotonic() < deadline, d.log()
                time.sleep(0.1)
    assert d.proc.poll() is None


def test_sandboxes_that_die_as_soon_as_made_are_not_replaced_in_a_loop(start_daemon, make_root, tmp_path):
    # A host that kills every new sandbox (here a plugin's fork hook in the zygote, while a flag
    # exists): each one lost from the pool was asked for again at once, 350 forks and log lines
    # a second. Calls still get an answer, and once sandboxes live again the pool is refilled.
    flag = tmp_path / "dying"
    (tmp_path / "childdie.py").write_text(
        f"import os, sys\n"
        f"if 'isorund.zygote' in sys.orig_argv:\n"
        f"    os.register_at_fork(after_in_child=lambda: os.path.exists({str(flag)!r}) and os._exit(7))\n"
        f"def compile(source, filename):\n"
        f"    return source\n")
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\ncd = "childdie:compile"\n')
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        flag.write_text("")
        assert r.run("echo", args=[1]) == 1  # a pooled sandbox, made before; its replacement dies
        time.sleep(5)
        lost = events(d, "sandbox_lost")
        assert 1 <= len(lost) <= 6, len(lost)  # asked again after 1, 2 s, …: at once, ~1,700
        assert lost[0]["reason"] == "it died in the pool before its call (exit status 7)"
        flag.unlink()
        assert r.run("echo", args=[2]) == 2
    wait_for_pool(d.pid, 4)


def test_a_zygote_dying_during_the_self_test_stops_the_start_saying_why(start_daemon, tmp_path):
    flag = tmp_path / "failing"
    flag.write_text("")
    (tmp_path / "spawnfail.py").write_text(spawns_failing_while(flag))
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nsf = "spawnfail:compile"\n',
                     wait=False)
    assert d.proc.wait(60) == 1
    assert not (d.folder / "isorund.sock").exists()
    assert ("isorund cannot build a sandbox on this host: the zygote died preparing it: "
            "PermissionError: [Errno 1] Operation not permitted (test)") in d.log()


def test_a_sandbox_the_kernel_refuses_during_the_self_test_stops_the_start_at_once(start_daemon, tmp_path):
    # a refusal that passes (here EMFILE) is asked again after once the daemon serves; its
    # start does not wait for that: the host cannot give it a sandbox now
    flag = tmp_path / "failing"
    flag.write_text("")
    (tmp_path / "spawnfail.py").write_text(spawns_failing_while(flag, (24, "Too many open files (test)")))
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nsf = "spawnfail:compile"\n',
                     wait=False)
    assert d.proc.wait(60) == 1
    assert ("isorund cannot build a sandbox on this host: the kernel refused the zygote a sandbox: "
            "OSError: [Errno 24] Too many open files (test)") in d.log()


def test_a_daemon_killed_outright_leaves_no_process_and_its_socket_is_reclaimed(start_daemon, make_root):
    first = start_daemon()
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=first.socket) as r:
        assert r.run("echo", args=[1]) == 1
    family = psutil.Process(first.pid).children(recursive=True)
    assert len(family) >= 2, "a zygote and its prepared sandboxes"
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    wait_gone(family)  # the zygote sees its control socket close; sandboxes have PDEATHSIG
    assert os.path.exists(first.socket)  # stale: nobody listens
    with socket.socket(socket.AF_UNIX) as s, pytest.raises(ConnectionRefusedError):
        s.connect(first.socket)

    second = start_daemon(args=["--socket", first.socket], wait=False)
    deadline = time.monotonic() + 60
    while not events(second, "ready"):
        assert second.proc.poll() is None and time.monotonic() < deadline, second.log()
        time.sleep(0.05)
    with CodeRunner(root=root, file="index.py", socket=first.socket) as r:
        assert r.run("echo", args=[2]) == 2
    assert second.stop() == 0
    assert not os.path.exists(first.socket)


def state_folder(daemon) -> str:
    """The daemon's state folder: where the lock it holds open lives."""
    locks = [f.path for f in psutil.Process(daemon.pid).open_files() if f.path.endswith("/lock")]
    assert len(locks) == 1, locks
    return os.path.dirname(locks[0])


def test_a_killed_daemons_state_folder_is_removed_by_the_next_start_not_a_live_ones(start_daemon, make_root,
                                                                                  tmp_path):
    parent = tmp_path / "state"
    parent.mkdir()
    env = {"TMPDIR": str(parent)}
    live, killed = start_daemon(env=env), start_daemon(env=env)
    live_folder, killed_folder = state_folder(live), state_folder(killed)
    assert os.path.dirname(killed_folder) == str(parent) and live_folder != killed_folder
    family = psutil.Process(killed.pid).children(recursive=True)
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait()
    wait_gone(family)
    assert os.path.isdir(killed_folder)  # nothing could remove it on the way out

    third = start_daemon(env=env)
    assert not os.path.exists(killed_folder)
    assert [e["folder"] for e in events(third, "stale_state_removed")] == [killed_folder]
    assert os.path.isdir(live_folder) and os.path.isdir(state_folder(third))
    root = make_root({"index.py": GUEST})
    for d in (live, third):  # the live daemon kept its sandboxes' root
        with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
            assert r.run("echo", args=[3]) == 3
    assert live.stop() == 0
    assert not os.path.exists(live_folder)  # a clean stop removes its own


def test_a_live_daemons_state_folder_removed_from_under_it_takes_no_call_down(start_daemon, make_root):
    """A /tmp cleaner or an operator may remove the folder while the daemon runs. The
    sandboxes' roots are built in the zygote's template namespace, whose root no longer hangs
    on any host folder: before, the zygote's template lived at a folder in it, and every call
    after the pool drained failed its set-up (ENOENT at the root's mountpoint). (With an
    allowlist, gRPC's private socket lives there too: see isorund/state.py.)"""
    d = start_daemon()
    shutil.rmtree(state_folder(d))
    root = make_root({"index.py": GUEST})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        for i in range(12):  # three times the pool: every sandbox made after the removal
            assert r.run("echo", args=[i]) == i
        # a zygote restarted now builds its template again (it needs a mountpoint for that)
        killed = zygote_of(d)
        killed.kill()
        wait_for_event(d, "zygote_restarted")
        assert zygote_of(d).pid != killed.pid
        assert r.run("echo", args=[7]) == 7
    assert d.stop() == 0
    assert "Traceback" not in d.log()


def test_a_socket_in_a_folder_the_daemon_may_not_write_in_is_refused_naming_the_key(start_daemon, tmp_path):
    # without CAP_DAC_OVERRIDE (it keeps only what sandboxes need) another user's folder is not
    # writable to the daemon: gRPC's refusal said only "Failed to bind to address"
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    d = start_daemon(args=["--socket", str(folder / "s.sock")], wait=False)
    assert d.proc.wait(60) == 1
    assert f"isorund may not make its socket in {folder} (config key 'socket')" in d.log()


def test_a_second_daemon_refuses_to_steal_a_live_socket(daemon, start_daemon):
    thief = start_daemon(args=["--socket", daemon.socket], wait=False)
    assert thief.proc.wait(60) == 1
    assert "already serving" in thief.log()
    # refused before it built anything: it started no zygote and ran no self-test call
    assert '"peer": "self-test"' not in thief.log()
    assert os.path.exists(daemon.socket)
