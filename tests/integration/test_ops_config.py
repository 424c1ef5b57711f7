"""Configuration, end to end: a real daemon refuses a bad config at start naming the key,
`--print-config` shows the effective config, and flags override the file."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from isorun import CodeRunner, errors
from processes import zygote_of

REPO = Path(__file__).resolve().parents[2]


def isorund(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isorund", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config, message", [
    ("max_concurency = 4\n", "unknown config key 'max_concurency'"),
    ("[limits]\nmemory = 1\n", "unknown config key 'limits.memory'"),
    ('queue_size = "lots"\n', "config key 'queue_size' must be an int, got 'lots'"),
    ("max_timeout = 1.0\n", "config key 'max_timeout' must be >= default_timeout (5.0) and <= 1e+06, got 1.0"),
    # less than the runtime maps: the self-test below said so only when it had to allocate
    ("[limits]\nmemory_bytes = 16777216\n", "config key 'limits.memory_bytes' must be >= 50331648, got 16777216"),
    # --print-config passed these; the zygote's type registry refused them at start (status 1)
    ('[types]\n"int" = "a:b"\n', "config key 'types' must be a table of names other than the 15 built-in ones"),
    ('[types]\n"1bad" = "a:b"\n', "config key 'types' must be a table whose names are"),
    ("[limits]\noutput_bytes = 67108864\n", "config key 'limits.output_bytes' must be < max_request_bytes - 64 KiB"),
])
def test_a_daemon_with_a_bad_config_does_not_start_and_names_the_key(start_daemon, config, message):
    assert f"isorund: {message}" in refused_start(start_daemon, config, status=2)


@pytest.mark.parametrize("config, key", [
    # --print-config said 0 for each, then the start died with a raw "ValueError: Value out of
    # range" (the request's protobuf field), "Python int too large to convert to C long" or a
    # setrlimit EINVAL blamed on the host
    (f"[limits]\nmemory_bytes = {2**64}\n", "limits.memory_bytes"),
    (f"[limits]\nmemory_bytes = {2**63}\n", "limits.memory_bytes"),
    (f"[limits]\nmax_processes = {2**32}\n", "limits.max_processes"),
    (f"[limits]\ntmp_bytes = {2**64}\n", "limits.tmp_bytes"),
    ("[limits]\nmax_open_files = 100000000\n", "limits.max_open_files"),
])
def test_a_limit_too_large_for_the_sandbox_stops_the_start_naming_the_key(start_daemon, config, key):
    d = start_daemon(config=config, wait=False)
    assert d.proc.wait(60) == 2, d.log()
    assert f"isorund: config key '{key}' must be <= " in d.log() and "Traceback" not in d.log()
    printed = isorund("--config", str(d.config), "--print-config")
    assert printed.returncode == 2 and f"config key '{key}'" in printed.stderr


def refused_start(start_daemon, config: str, status: int) -> str:
    """The log of a daemon that must exit with ``status`` at start, leaving no socket."""
    d = start_daemon(config=config, wait=False)
    assert d.proc.wait(60) == status
    assert not (d.folder / "isorund.sock").exists()
    return d.log()


def test_an_address_space_the_plugins_leave_no_room_in_stops_the_start_naming_the_key(start_daemon, tmp_path):
    """A sandbox maps what the zygote imported, plugins included, before its guest allocates
    anything: with less room than the self-test's 8 MiB, the daemon started (its self-test had
    needed no new memory) and calls that allocate failed."""
    (tmp_path / "heavy.py").write_text("BALLAST = bytearray(64 << 20)\n\ndef compile(source, filename):\n"
                                       "    return source\n")
    log = refused_start(start_daemon, f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nts = "heavy:compile"\n'
                                      "[limits]\nmemory_bytes = 67108864\n", status=1)
    assert "config key 'limits.memory_bytes' (67108864) leaves a call no memory" in log


@pytest.mark.parametrize("config, message", [
    # it said "cannot build a sandbox on this host"
    ("default_timeout = 0.001\n", "the self-test call did not finish within default_timeout (0.001 s)"),
    # it said "cannot build a sandbox on this host: value is too large …"
    ("[limits]\nresult_bytes = 1\n", "config key 'limits.result_bytes' (1) is too small for even the self-test call"),
])
def test_limits_that_leave_a_call_nothing_stop_the_start_naming_the_key(start_daemon, config, message):
    assert message in refused_start(start_daemon, config, status=1)


def test_a_plugin_that_exits_on_import_stops_the_start_naming_it(start_daemon, tmp_path):
    """sys.exit() is not an Exception: it used to end the zygote silently, and the daemon could
    only say that its zygote exited."""
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nts = "quits:compile"\n', wait=False)
    assert d.proc.wait(60) != 0
    assert "cannot load plugins.compilers.ts 'quits:compile': SystemExit: 3" in d.log()


def test_a_plugin_whose_import_never_returns_stops_the_start_naming_it(start_daemon, tmp_path):
    """Without start_timeout the daemon waited for its zygote for ever (systemd would kill it
    after TimeoutStartSec with nothing in the log to say why)."""
    (tmp_path / "fine.py").write_text("def compile(source, filename):\n    return source\n")
    (tmp_path / "stuck.py").write_text("import time\ntime.sleep(3600)\n")
    d = start_daemon(config=f'start_timeout = 2\nplugin_paths = ["{tmp_path}"]\n[plugins.compilers]\n'
                            'a = "fine:compile"\nb = "stuck:compile"\n', wait=False)
    stuck_zygote = zygote_of(d)
    assert d.proc.wait(60) != 0
    assert ("the zygote did not start within 2 s (start_timeout); it was still importing "
            "plugins.compilers.b = 'stuck:compile'") in d.log()
    assert not stuck_zygote.is_running()  # killed, not left importing for an hour


def test_a_socket_path_that_is_a_file_is_refused_not_replaced(tmp_path):
    """The daemon removes a stale socket it finds at its path; a file there (a typo in the
    path) used to be removed just the same."""
    precious = tmp_path / "notes.txt"
    precious.write_text("precious data\n")
    out = isorund("--socket", str(precious))
    assert out.returncode == 1 and "exists and is not a socket; isorund will not replace it" in out.stderr
    assert precious.read_text() == "precious data\n"


def test_a_socket_path_through_a_file_stops_the_start_naming_the_key(tmp_path):
    """It was {"event": "fatal", "error": "NotADirectoryError: …"}, naming no key."""
    (tmp_path / "notes.txt").write_text("")
    out = isorund("--socket", str(tmp_path / "notes.txt" / "s.sock"))
    assert out.returncode == 2 and "config key 'socket' must be a path under folders" \
        in out.stderr and "NotADirectoryError" not in out.stderr


FAKE_PYTHON = """#!/bin/sh
# stands in for `python3 -m venv --clear VENV`: a venv whose python installs nothing
mkdir -p "$4/bin" && printf '#!/bin/sh\\n' > "$4/bin/python" && chmod +x "$4/bin/python" && : > "$4/bin/activate"
"""


def test_install_names_the_config_where_it_put_it_in_the_units_execstart(tmp_path):
    """`make install CONFDIR=/srv/x` put the config there, and the unit still read
    /etc/isorund/isorund.toml."""
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    stage = tmp_path / "stage"
    out = subprocess.run(["sh", "tools/install.sh"], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, DESTDIR=str(stage), PYTHON=str(python), PREFIX="/srv/isorun",
                                  CONFDIR="/srv/x"))
    assert out.returncode == 0, out.stderr
    assert (stage / "srv/x/isorund.toml").exists()
    (execstart,) = [line for line in (stage / "etc/systemd/system/isorund.service").read_text().splitlines()
                    if line.startswith("ExecStart=")]
    assert execstart == "ExecStart=/srv/isorun/bin/isorund --config /srv/x/isorund.toml"
    assert "--config /srv/x/isorund.toml" in out.stdout


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux) to drop CAP_SYS_ADMIN")
def test_a_host_that_refuses_namespaces_stops_the_start_with_one_fatal_line_naming_the_step(tmp_path):
    """Root without CAP_SYS_ADMIN (a default container): the zygote cannot make the mount
    namespace that holds its sandboxes' template (the first namespace it needs). The start used
    to end in two raw tracebacks and 'retry the call'."""
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-m", "isorund",
                          "--socket", str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    fatal = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('{"event": "fatal"')]
    assert len(fatal) == 1 and "cannot build a sandbox on this host" in fatal[0]["error"]
    assert "step 'filesystem template'" in fatal[0]["error"] and "EPERM" in fatal[0]["error"]
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux) to drop CAP_SYS_CHROOT")
def test_a_daemon_without_cap_sys_chroot_says_it_needs_it(tmp_path):
    """Each sandbox enters the zygote's template mount namespace, and setns() into a mount
    namespace asks for CAP_SYS_CHROOT too: a unit or container that leaves it out is named
    the capability, not only EPERM."""
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_chroot", sys.executable, "-m", "isorund",
                          "--socket", str(tmp_path / "s.sock")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    fatal = [json.loads(line) for line in out.stderr.splitlines() if line.startswith('{"event": "fatal"')]
    assert len(fatal) == 1 and "needs CAP_SYS_CHROOT besides CAP_SYS_ADMIN" in fatal[0]["error"], out.stderr
    assert "Traceback" not in out.stderr


def test_a_zygote_still_importing_plugins_dies_with_a_killed_daemon(start_daemon, tmp_path):
    inside = tmp_path / "inside-the-import"
    (tmp_path / "stuck.py").write_text(f"import pathlib, time\npathlib.Path({str(inside)!r}).touch()\ntime.sleep(3600)\n")
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nb = "stuck:compile"\n', wait=False)
    importing = zygote_of(d)
    deadline = time.monotonic() + 30
    while not inside.exists():  # the zygote is inside the plugin's import
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.02)
    d.proc.kill()
    d.proc.wait(10)
    assert psutil.wait_procs([importing], timeout=10)[1] == []  # none left alive


def test_sigterm_as_soon_as_the_daemon_can_catch_it_is_a_clean_stop(start_daemon):
    """Sent the moment the daemon catches SIGTERM at all (its status's SigCgt), as a service
    manager stopping it at once would. Its handlers used to go in after its imports, and a
    probe's SIGTERM at 0.03-0.08 s ended it with -15 and no log line (SIGINT with a traceback);
    the first handler now goes in before them. (It passes without that too: it then catches
    SIGTERM only from its own handlers on; it guards the documented outcome.)"""
    d = start_daemon(wait=False)
    deadline = time.monotonic() + 30
    while not _catches(d.pid, signal.SIGTERM):
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.log()
    assert '{"event": "stopped", "note": "stopped during start-up"}' in d.log()
    assert "Traceback" not in d.log()


def _catches(pid: int, sig: int) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def test_sigterm_during_a_slow_start_stops_the_daemon_at_once(start_daemon, tmp_path):
    """It used to be acted on only once the start ended: with a plugin slow to import, after
    start_timeout (60 s by default, longer than systemd's TimeoutStopSec) and as a failure."""
    (tmp_path / "stuck.py").write_text("import time\ntime.sleep(3600)\n")
    d = start_daemon(config=f'plugin_paths = ["{tmp_path}"]\n[plugins.compilers]\nb = "stuck:compile"\n', wait=False)
    importing = zygote_of(d)
    time.sleep(0.5)
    signalled = time.monotonic()
    os.kill(d.pid, signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert time.monotonic() - signalled < 10
    assert "stopped during start-up" in d.log()
    assert psutil.wait_procs([importing], timeout=10)[1] == []


def test_sighup_and_sigusr_are_logged_and_ignored_not_an_unclean_stop(start_daemon, make_root):
    # SIGUSR1's and SIGUSR2's default ended the daemon at once: no drain, no log line, a stale
    # socket left behind (a log rotation's postrotate may send either, or SIGHUP)
    from isorun import CodeRunner
    d = start_daemon()
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(d.pid, sig)
    time.sleep(0.5)
    with CodeRunner(root=make_root({"index.py": "def f():\n    return 1\n"}), file="index.py", socket=d.socket) as r:
        assert r.run("f") == 1
    assert d.proc.poll() is None
    for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
        assert f'"event": "signal_ignored", "signal": "{name}"' in d.log()


def test_a_bad_flag_value_is_refused_like_a_bad_key(tmp_path):
    out = isorund("--socket", str(tmp_path / "s.sock"), "--max-concurrency", "0")
    assert out.returncode == 2 and "config key 'max_concurrency' must be >= 1, got 0" in out.stderr


def test_a_missing_config_file_is_refused_with_its_path(tmp_path):
    out = isorund("--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "cannot read config file" in out.stderr and "nope.toml" in out.stderr


@pytest.mark.parametrize("make", ["fifo", "/dev/zero"])
def test_a_config_that_is_no_regular_file_stops_the_start_at_once_naming_it(tmp_path, make):
    """A named pipe with no writer held the start for ever, SIGTERM or not; /dev/zero was read
    until the daemon held gigabytes."""
    path = make
    if make == "fifo":
        path = str(tmp_path / "isorund.toml")
        os.mkfifo(path)
    started = time.monotonic()
    out = isorund("--config", path, "--socket", str(tmp_path / "s.sock"))
    assert out.returncode == 2 and f"isorund: config file {path} is not a regular file" in out.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "s.sock").exists()


def test_a_config_file_over_a_mebibyte_stops_the_start_naming_the_cap(tmp_path):
    path = tmp_path / "isorund.toml"
    path.write_text("queue_size = 5\n" + "#\n" * (1 << 20))
    out = isorund("--config", str(path), "--socket", str(tmp_path / "s.sock"))
    assert out.returncode == 2 and f"config file {path} is larger than 1 MiB" in out.stderr


def test_the_sockets_missing_folders_are_made_0755_whatever_the_umask(start_daemon, tmp_path):
    """Under the unit's UMask=0077 they were 0700: members of socket_group got EACCES from a
    socket whose mode let them in. A folder that exists is left as it is."""
    kept = tmp_path / "kept"
    kept.mkdir(mode=0o711)
    os.chmod(kept, 0o711)
    socket = kept / "a" / "b" / "s.sock"
    d = start_daemon(args=["--socket", str(socket)], wait=False,
                     prefix=["sh", "-c", 'umask 077 && exec "$0" "$@"'])
    d.socket = str(socket)
    d.wait_ready()
    assert [oct(p.stat().st_mode & 0o7777) for p in (kept, kept / "a", kept / "a" / "b")] == ["0o711", "0o755", "0o755"]
    assert oct(socket.stat().st_mode & 0o777) == "0o660"


def test_print_config_shows_file_flags_and_defaults_as_toml(tmp_path):
    config = tmp_path / "isorund.toml"
    config.write_text('queue_size = 3\nsocket_group = "root"\n[limits]\noutput_bytes = 4096\n')
    out = isorund("--config", str(config), "--socket", str(tmp_path / "s.sock"), "--shutdown-grace", "2.5",
                  "--print-config")
    assert out.returncode == 0, out.stderr
    effective = tomllib.loads(out.stdout)
    assert effective["queue_size"] == 3 and effective["socket_group"] == "root"
    assert effective["socket"] == str(tmp_path / "s.sock") and effective["shutdown_grace"] == 2.5
    assert effective["limits"]["output_bytes"] == 4096 and effective["limits"]["tmp_bytes"] == 16 << 20
    assert "socket_mode = 0o660" in out.stdout
    assert not (tmp_path / "s.sock").exists(), "--print-config must not start anything"


def test_the_config_reference_lists_every_key(tmp_path):
    out = isorund("--config-reference")
    assert out.returncode == 0
    for key in ("`socket`", "`allowed_uids`", "`max_concurrency`", "`queue_size`", "`shutdown_grace`",
                "`metrics_address`", "`limits.memory_bytes`", "`plugins.compilers`"):
        assert key in out.stdout


def test_log_level_error_keeps_the_zygotes_lines_out_too(start_daemon, make_root):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from isorun import CodeRunner
    d = start_daemon(config='log_level = "error"\n', wait=False)  # no "ready" line to wait for
    deadline = time.monotonic() + 30
    while True:
        try:
            with grpc.insecure_channel("unix:" + d.socket) as channel:
                if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status \
                        == health_pb2.HealthCheckResponse.SERVING:
                    break
        except grpc.RpcError:
            pass
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
        time.sleep(0.1)
    with CodeRunner(root=make_root({"index.py": "def f():\n    return 1\n"}), file="index.py", socket=d.socket) as r:
        assert r.run("f") == 1
    d.stop()
    log = d.log()
    # the zygote's cgroup line (a warning here, limits off) and every info line are below 'error'
    assert '"event": "cgroup"' not in log and '"event": "call"' not in log and '"event": "ready"' not in log


def test_a_default_external_module_that_is_not_installed_is_named_at_start(start_daemon, make_root):
    # it was skipped without a word: a typo showed only as guests' ModuleNotFound
    d = start_daemon(config='default_external = ["json", "jsno_typo"]\n')
    (line,) = [json.loads(t) for t in d.log().splitlines() if '"event": "default_external_missing"' in t]
    assert line["module"] == "jsno_typo" and "default_external" in line["note"]
    root = make_root({"index.py": "def f():\n    import json\n    import jsno_typo\n"})
    with CodeRunner(root=root, file="index.py", socket=d.socket) as r:
        with pytest.raises(errors.ModuleNotFound, match="jsno_typo"):
            r.run("f")
