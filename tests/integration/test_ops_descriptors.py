"""The daemon's own open-file limit: raised to the hard limit at start, and a hard limit the
config cannot live within refuses the start. A shell's soft limit of 1024 is below the default
``max_connections`` alone: a daemon that ran out refused calls as the caller's
INVALID_ARGUMENT and left new clients waiting 20 s (seen)."""
from __future__ import annotations

import json
import shutil

import pytest

from isorund import descriptors

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux's prlimit")


def open_file_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        (line,) = [line for line in f if line.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_soft_limit_is_raised_to_the_hard_one(start_daemon, make_root):
    from isorun import CodeRunner
    d = start_daemon(prefix=["prlimit", "--nofile=1024:8192", "--"])
    assert open_file_limits(d.pid) == (8192, 8192)
    with CodeRunner(root=make_root({"index.py": "def f():\n    return 1\n"}), file="index.py", socket=d.socket) as r:
        assert r.run("f") == 1


def test_a_hard_limit_below_what_the_config_needs_refuses_the_start_naming_both(start_daemon):
    config = "max_connections = 1024\nmax_concurrency = 4\npool_size = 4\n"
    want = descriptors.needed(1024, 8, allowlist=False)
    d = start_daemon(config=config, prefix=["prlimit", f"--nofile=1024:{want - 1}", "--"], wait=False)
    assert d.proc.wait(60) == 1
    (fatal,) = [json.loads(line) for line in d.log().splitlines() if '"fatal"' in line]
    assert f"up to {want} open files with max_connections = 1024" in fatal["error"]
    assert f"may open {want - 1}" in fatal["error"] and "LimitNOFILE=" in fatal["error"]
    assert "or lower max_connections to at most 1023" in fatal["error"]  # the most that fits


def test_connections_through_the_allowlist_count_three_descriptors(start_daemon):
    config = "max_connections = 1000\nmax_concurrency = 2\npool_size = 2\nallowed_uids = [0]\n"
    want = descriptors.needed(1000, 4, allowlist=True)
    assert want > 3000
    d = start_daemon(config=config, prefix=["prlimit", f"--nofile=1024:{want - 1}", "--"], wait=False)
    assert d.proc.wait(60) == 1
    assert "(3 each, with allowed_uids or allowed_gids)" in d.log()


def test_a_hard_limit_the_fixed_part_alone_is_over_says_lowering_max_connections_cannot_help(start_daemon):
    """With the defaults, about 1,100 descriptors are needed whatever max_connections is: under
    a hard limit of 1024 the refusal advised "or lower max_connections" even at 1 (seen)."""
    d = start_daemon(config="max_connections = 1\n", prefix=["prlimit", "--nofile=1024:1024", "--"], wait=False)
    assert d.proc.wait(60) == 1
    (fatal,) = [json.loads(line) for line in d.log().splitlines() if '"fatal"' in line]
    fixed = descriptors.needed(0, 12, allowlist=False)
    assert fixed > 1024
    assert f"even max_connections = 1 does not fit, since {fixed} are needed whatever it is" in fatal["error"]
    most = (1024 - descriptors.needed(1, 0, allowlist=False)) // descriptors.PER_SANDBOX
    assert f"or lower max_concurrency + pool_size to at most {most}" in fatal["error"]
    assert "lower max_connections" not in fatal["error"] and "LimitNOFILE=" in fatal["error"]
