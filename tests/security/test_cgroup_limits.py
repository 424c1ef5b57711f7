"""Per-call cgroup v2 limits. The decision is made and logged once when the zygote starts; a
configured ``cgroup_root`` that cannot be used stops the daemon (fail closed). The live limit
test needs a host whose memory, pids and cpu controllers are on cgroup v2, and is skipped
elsewhere (for instance on a cgroup v1 / hybrid host like the one this was written on)."""
import json
import os
import secrets

import pytest

from isorun import errors
from isorund.sandbox import cgroup


def _events(daemon, name):
    events = []
    for line in daemon.log().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == name:
            events.append(event)
    return events


def test_the_cgroup_decision_is_logged_once_at_start(secure_daemon):
    events = _events(secure_daemon, "cgroup")
    assert len(events) == 1, events
    assert events[0]["enabled"] or events[0]["reason"]


def test_a_configured_cgroup_root_that_cannot_be_used_stops_the_start(start_daemon, tmp_path):
    daemon = start_daemon(config=f'cgroup_root = "{tmp_path}"\n', wait=False)
    assert daemon.proc.wait(60) != 0
    fatal = [json.loads(line) for line in daemon.log().splitlines() if line.startswith('{"event": "fatal"')]
    # one line, the reason whole, not wrapped in class names ("RuntimeError: RuntimeError: …")
    assert len(fatal) == 1 and fatal[0]["error"].startswith(f"cgroup_root '{tmp_path}' cannot be used: "), fatal
    assert "not a cgroup v2 folder" in fatal[0]["error"]


def _v2_root_with_controllers() -> str | None:
    """A cgroup2 mount whose root offers memory, pids and cpu to its children, or None."""
    with open("/proc/self/mountinfo") as f:
        mount = cgroup.cgroup2_mount(f.read())
    if mount is None or os.geteuid() != 0:
        return None
    try:
        with open(os.path.join(mount, "cgroup.subtree_control")) as f:
            enabled = f.read()
    except OSError:
        return None
    return None if cgroup.missing_controllers(enabled) else mount


@pytest.fixture
def delegated_cgroup():
    mount = _v2_root_with_controllers()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy with the memory, pids and cpu controllers on this host")
    folder = os.path.join(mount, f"isorun-test-{os.getpid()}-{secrets.token_hex(2)}")
    os.mkdir(folder)
    yield folder
    for name in os.listdir(folder):
        if os.path.isdir(os.path.join(folder, name)):
            os.rmdir(os.path.join(folder, name))
    os.rmdir(folder)


def test_memory_spread_over_processes_is_a_memory_limit_error(start_daemon, delegated_cgroup, tmp_path):
    daemon = start_daemon(config=f'cgroup_root = "{delegated_cgroup}"\n\n[limits]\n'
                                 f"memory_bytes = {256 << 20}\nmax_processes = 16\n")
    assert _events(daemon, "cgroup")[0]["enabled"] is True
    root = tmp_path / "guest"
    root.mkdir(mode=0o755)
    attacks = os.path.join(os.path.dirname(__file__), "attacks")
    for name in ("escape.py", "memory_bomb.py"):
        with open(os.path.join(attacks, name)) as src:
            (root / name).write_text(src.read())
    from isorun import CodeRunner
    with CodeRunner(root=str(root), file="memory_bomb.py", socket=daemon.socket) as runner:
        with pytest.raises(errors.ResourceLimitError) as raised:
            runner.run("attack_in_children", args=[8, 128 << 20], timeout=20)
    assert raised.value.limit == "memory"
