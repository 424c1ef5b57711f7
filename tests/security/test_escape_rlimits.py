"""The rlimits of a call's guest that bound kernel resources rather than its memory or CPU
(those: test_escape_processes.py): open files as configured and as a call lowers them, queued
signals, and no real-time priority or niceness, whatever the daemon itself was granted
(systemd's LimitRTPRIO=, LimitNICE=; where the daemon has none, as here without
CAP_SYS_RESOURCE to grant it any, (0, 0) is what it would pass on anyway). RLIMIT_AS is left to
test_escape_processes.py: its soft limit keeps a reserve below the hard one."""
import shutil
from pathlib import Path

from isorun import CodeRunner

ATTACKS = Path(__file__).resolve().parent / "attacks"
# limits.max_open_files when the config does not set it (README, "Configuration")
DEFAULT_OPEN_FILES = 64


def open_files(daemon) -> int:
    return daemon.limits.get("max_open_files", DEFAULT_OPEN_FILES)


def kernel_view(socket: str, folder: Path, **run_options) -> dict:
    """attacks/kernel_view.py run on the daemon at ``socket`` (the ``attack`` fixture runs on
    the battery's daemon and hands options to the runner, not to the call)."""
    folder.chmod(0o755)
    for name in ("escape.py", "kernel_view.py"):
        shutil.copy(ATTACKS / name, folder / name)
    with CodeRunner(root=str(folder), file="kernel_view.py", socket=socket) as runner:
        return runner.run("attack", timeout=20, **run_options)


def rlimits(view: dict) -> dict:
    return {name: tuple(value) for name, value in view["rlimits"].items()}


def test_open_files_queued_signals_and_priorities_are_the_calls(attack, secure_daemon):
    limits = rlimits(attack("kernel_view"))
    assert limits["RLIMIT_NOFILE"] == (open_files(secure_daemon),) * 2
    assert limits["RLIMIT_SIGPENDING"] == (64, 64)  # isorund/sandbox/limits.py, SIGNALS_PENDING
    assert limits["RLIMIT_RTPRIO"] == (0, 0)
    assert limits["RLIMIT_NICE"] == (0, 0)


def test_a_call_that_lowers_its_open_files_gets_that_limit(secure_daemon, tmp_path):
    lowered = open_files(secure_daemon) // 2
    assert rlimits(kernel_view(secure_daemon.socket, tmp_path, limits={"max_open_files": lowered}))[
        "RLIMIT_NOFILE"] == (lowered, lowered)
    # and the next call has the daemon's again
    assert rlimits(kernel_view(secure_daemon.socket, tmp_path))["RLIMIT_NOFILE"] == (open_files(secure_daemon),) * 2

