"""The sandbox's tables, checked without a sandbox: the seccomp filter really names every call
the design denies, the rlimits are complete, and /tmp's caps match its size."""
import tempfile

import pytest

from isorund.sandbox import filesystem, limits, seccomp

REQUIRED_DENIED = [
    "execve", "execveat", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
    "pivot_root", "unshare", "setns", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "userfaultfd", "init_module", "finit_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "acct", "quotactl", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "shmget", "shmat", "msgget", "msgsnd", "semget", "memfd_create",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
]


@pytest.fixture(scope="module")
def filter_text():
    with tempfile.TemporaryFile("w+") as f:
        seccomp.build().export_pfc(f)
        f.seek(0)
        return f.read()


@pytest.mark.parametrize("name", REQUIRED_DENIED)
def test_filter_denies_with_eperm(filter_text, name):
    rule = filter_text.split(f'filter for syscall "{name}"', 1)
    assert len(rule) == 2, f"{name} is not in the filter"
    assert rule[1].split("# filter for", 1)[0].strip().endswith("action ERRNO(1);")


def _rule(filter_text, name):
    return filter_text.split(f'filter for syscall "{name}"', 1)[1].split("# filter for", 1)[0]


def test_filter_denies_the_filesystem_ioctls_on_their_low_32_bits_whatever_their_size(filter_text):
    rule = _rule(filter_text, "ioctl")
    # FS_IOC_GETFSMAP, FS_IOC_FIEMAP, EXT4_IOC_GET_ES_CACHE, XFS_IOC_GETBMAPX (as 32 or 48 bytes)
    for request in (0xC0C0583B, 0xC020660B, 0xC020662A, 0xC0305838):
        assert f"if ($a1.lo32 & 0xc000ffff == {request & 0xC000FFFF})\n        action ERRNO(1);" in rule


@pytest.mark.parametrize("name, flags", [("sendto", 3), ("recvfrom", 3), ("sendmsg", 2), ("recvmsg", 2),
                                         ("sendmmsg", 3), ("recvmmsg", 3)])
def test_filter_denies_msg_oob_to_every_call_that_takes_flags(filter_text, name, flags):
    assert f"if ($a{flags}.lo32 & 0x00000001 == 1)\n        action ERRNO(1);" in _rule(filter_text, name)


def test_filter_kills_calls_made_through_other_abis(filter_text):
    assert "# invalid architecture action\naction KILL_PROCESS;" in filter_text


def test_rlimits_include_kernel_memory_caps():
    table = {name: (soft, hard) for name, soft, hard in limits.rlimits(limits.Limits(
        memory_bytes=1 << 28, max_processes=8, max_open_files=64, max_file_bytes=1 << 20, cpu_seconds=1.5))}
    assert table["RLIMIT_CPU"] == (2, 3)
    assert table["RLIMIT_AS"] == ((1 << 28) - (1 << 24), 1 << 28)  # the runtime's reserve: 16 MiB
    assert table["RLIMIT_MEMLOCK"] == table["RLIMIT_MSGQUEUE"] == (0, 0)
    assert set(table) >= {"RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_SIGPENDING"}


def test_tmp_has_an_inode_cap_matching_its_size():
    assert filesystem.tmp_options(16 << 20) == "size=16777216,nr_inodes=4096,mode=1777"
    assert filesystem.tmp_options(0) == "size=4096,nr_inodes=64,mode=1777"


def test_package_folders_inside_bound_folders_are_hidden(tmp_path):
    stdlib = tmp_path / "lib" / "python3.11"
    (stdlib / "site-packages").mkdir(parents=True)
    elsewhere = tmp_path / "venv" / "site-packages"
    elsewhere.mkdir(parents=True)
    plan = filesystem.plan_root("/new-root", [str(stdlib)], [str(stdlib / "site-packages"), str(elsewhere)])
    assert str(stdlib) in plan.system_paths
    assert plan.hidden == (str(stdlib / "site-packages"),)
    assert str(stdlib) in plan.folders and plan.folders.index(str(stdlib.parent)) < plan.folders.index(str(stdlib))


def _denied_names(f) -> set[str]:
    with tempfile.TemporaryFile("w+") as out:
        f.export_pfc(out)
        out.seek(0)
        text = out.read()
    # each rule: the name, then its condition and action, up to the next comment line
    return {part.split('"', 1)[0] for part in text.split('filter for syscall "')[1:]
            if part.split("\n", 1)[1].split("#", 1)[0].strip().endswith("action ERRNO(1);")}


def test_the_two_parts_of_the_filter_deny_what_the_whole_filter_denies():
    """The pool loads build(pool_part=True), the call build_last(); stacked, they are build()."""
    whole, pool, last = (_denied_names(f) for f in (seccomp.build(), seccomp.build(pool_part=True),
                                                     seccomp.build_last()))
    assert last == {*seccomp.CALL_STEPS, "prctl"}
    assert pool | last == whole
    # the pool's part lets the call's own set-up steps through; prctl is in both, for other
    # options: PR_SET_MEMORY_MERGE in the pool's part, PR_SET_SECCOMP in the call's
    assert pool & last == {"prctl"}
    assert {"mount", "move_mount", "umount2", "pivot_root", "unshare"} <= whole


def test_the_roots_folders_come_parents_first_and_cover_every_mountpoint():
    folders = filesystem._folders_to_make(["/usr/lib", "/opt/py/lib/python3.11", "/tmp/venv/lib"],
                                          ["/usr/lib64", "/lib"])
    assert folders.index("/opt") < folders.index("/opt/py") < folders.index("/opt/py/lib/python3.11")
    assert folders.index("/tmp") < folders.index("/tmp/venv") < folders.index("/tmp/venv/lib")
    assert set(folders) == {"/proc", "/tmp", "/dev", "/guest", "/usr", "/usr/lib", "/opt", "/opt/py", "/opt/py/lib",
                            "/opt/py/lib/python3.11", "/tmp/venv", "/tmp/venv/lib"}
    assert len(folders) == len(set(folders))


def test_the_capabilities_the_daemon_keeps_are_the_units_bounding_set():
    """isorund/privileges.py drops every capability but NEEDED, however the daemon is started;
    systemd/isorund.service bounds it to its own list: the two must name the same seven."""
    from pathlib import Path

    from isorund.privileges import NEEDED
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "isorund.service").read_text()
    [line] = [line for line in unit.splitlines() if line.startswith("CapabilityBoundingSet=")]
    assert set(line.split("=", 1)[1].split()) == set(NEEDED)
