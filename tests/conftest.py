"""Fixtures shared by every test: a real isorund on a temporary socket, and guest folders.

``start_daemon(config="...toml text...", args=[...])`` starts one daemon, waits until its
socket answers, and stops it at the end of the test (or session, for ``daemon``). When a test
fails, the daemon's log is printed with the failure, which is usually where the reason is: the
whole log of a daemon of its own, and of a daemon shared by the session (``daemon``,
``secure_daemon``, …) the lines written while the test ran.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from isorund import logs

PLUGINS = '''
import os

def plus_to_times(source, filename):
    return source.replace("+", "*")

def prefix_resolver(options):
    base = options["base"]
    def resolve(name):
        candidate = os.path.join(base, name)
        return candidate if os.path.exists(candidate) else None
    return resolve

def add_one(args):
    return [a + 1 for a in args]
'''

DEFAULT_CONFIG = '''
plugin_paths = ["{plugins}"]

[plugins.compilers]
plus-to-times = "test_plugins:plus_to_times"

[plugins.resolvers]
prefix = "test_plugins:prefix_resolver"

[plugins.args_resolvers]
add-one = "test_plugins:add_one"
'''


class Daemon:
    """One running isorund; ``socket``, ``proc``, ``folder`` and ``log()`` for the test.
    ``shared``: started for the whole session (see ``pytest_runtest_makereport``)."""

    shared = False

    def __init__(self, folder: Path, config_text: str, args: list[str], env: dict | None,
                 prefix: list[str] = ()):
        self.folder = folder
        self.socket = str(folder / "isorund.sock")
        plugins = folder / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "test_plugins.py").write_text(PLUGINS)
        self.config = folder / "isorund.toml"
        self.config.write_text(textwrap.dedent(config_text).replace("{plugins}", str(plugins)))
        self.log_path = folder / "daemon.log"
        self._log = open(self.log_path, "wb")
        # prefix: a program that execs the daemon (``unshare …``), so that its pid stays the daemon's
        command = [*prefix, sys.executable, "-m", "isorund", "--socket", self.socket,
                   "--config", str(self.config), *args]
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})))
        self.pid = self.proc.pid

    def wait_ready(self, seconds: float = 30) -> None:
        """Until the daemon logs "ready": its socket exists a little earlier, before its mode
        and group are set and before its self-test call."""
        deadline = time.monotonic() + seconds
        while not (os.path.exists(self.socket) and '"event": "ready"' in self.log()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("isorund did not start:\n" + self.log())
            time.sleep(0.02)

    def log(self) -> str:
        """Its log so far, once the lines being written have landed: the daemon writes them
        from a thread of its own (isorund/logs.py), a moment after the answers they are about,
        and that thread rests ``REST_SECONDS`` between batches: unchanged over a longer wait."""
        text = self.log_path.read_text(errors="replace")
        for _ in range(100):
            time.sleep(logs.REST_SECONDS + 0.025)
            again = self.log_path.read_text(errors="replace")
            if again == text:
                break
            text = again
        return text

    def calls(self, function: str | None = None, self_test: bool = False) -> list[dict]:
        """The log lines of its calls (of ``function`` when named), its self-test's only when asked."""
        lines = [json.loads(t) for t in self.log().splitlines() if t.startswith('{"event": "call"')]
        return [line for line in lines if (self_test or line["peer"] != "self-test")
                and function in (None, line["function"])]

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def _daemons(tmp_path_factory, show_logs_if=lambda: False):
    """Yields start(config=..., args=..., env=..., wait=..., prefix=..., folder=...) -> Daemon;
    stops them all after. ``folder``: a stopped daemon's, to start another on its socket."""
    started: list[Daemon] = []

    def start(config: str = DEFAULT_CONFIG, args: list[str] = (), env: dict | None = None,
              wait: bool = True, prefix: list[str] = (), folder: Path | None = None) -> Daemon:
        d = Daemon(folder or tmp_path_factory.mktemp("isorund"), config, list(args), env, list(prefix))
        started.append(d)
        if wait:
            d.wait_ready()
        return d
    yield start
    for d in started:
        d.stop()
        if show_logs_if():
            print(f"--- log of isorund at {d.socket} ---\n{d.log()}")


@pytest.fixture(scope="session")
def start_daemon_session(tmp_path_factory):
    """Daemons shared by the whole session; stopped when it ends. A failing test that used one
    shows the lines it logged meanwhile (``pytest_runtest_makereport``)."""
    for start in _daemons(tmp_path_factory):
        def start_shared(*args, **kwargs) -> Daemon:
            d = start(*args, **kwargs)
            d.shared = True
            return d
        yield start_shared


@pytest.fixture
def start_daemon(tmp_path_factory, request):
    """A daemon of the test's own (custom config, flags); stopped when the test ends, and its
    log printed when the test failed."""
    yield from _daemons(tmp_path_factory, lambda: getattr(getattr(request.node, "rep_call", None),
                                                          "failed", False))


@pytest.fixture(scope="session")
def daemon(start_daemon_session):
    """The shared daemon, default config plus the test plugins."""
    return start_daemon_session()


@pytest.fixture
def make_root(tmp_path):
    """make_root({relative path: source}) -> absolute path of a fresh guest folder."""
    def make(files: dict[str, str]) -> str:
        root = Path(tempfile.mkdtemp(dir=tmp_path, prefix="root"))
        os.chmod(root, 0o755)
        for name, source in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return str(root)
    return make


@pytest.fixture
def runner(daemon, make_root):
    """runner({files}, file="index.py", **options) -> CodeRunner on the shared daemon."""
    from isorun import CodeRunner
    made = []

    def make(files, file="index.py", **options):
        r = CodeRunner(root=make_root(files), file=file, socket=daemon.socket, **options)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# At most this many of a shared daemon's lines are shown with a failure (the last ones).
SHARED_LOG_LINES = 100


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps the call's report for ``start_daemon``; for every daemon shared by the session that
    the test used (its own fixtures' or theirs: ``item.funcargs``), notes where its log stood
    once the test was set up and, if the test failed, adds the lines written since to the
    report (if any), a section pytest prints with the failure only."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
    shared = [d for d in getattr(item, "funcargs", {}).values() if isinstance(d, Daemon) and d.shared]
    starts = item.__dict__.setdefault("shared_log_starts", {})
    if report.when == "setup":
        for d in shared:
            starts[d.socket] = d.log_path.stat().st_size
    if report.failed:
        for d in shared:
            d.log()  # until the lines being written have landed
            lines = d.log_path.read_bytes()[starts.get(d.socket, 0):].decode(errors="replace").splitlines()
            if lines:
                cut = f", the last {SHARED_LOG_LINES} of {len(lines)}" if len(lines) > SHARED_LOG_LINES else ""
                report.sections.append((f"isorund log at {d.socket} during the test ({report.when}{cut})",
                                        "\n".join(lines[-SHARED_LOG_LINES:])))
