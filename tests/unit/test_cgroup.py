"""The pure half of per-call cgroup v2 limits: finding the delegated folder, judging it, and
reading what the kernel reports. (The half that writes to cgroupfs needs a host whose memory,
pids and cpu controllers are on cgroup v2; see docs/security.md.)"""
import pytest

from isorund.sandbox import cgroup

SYSTEMD_CGROUP = "0::/system.slice/isorund.service\n"
HYBRID_CGROUP = "9:name=systemd:/\n4:memory:/process_api/190d\n1:cpu:/\n0::/\n"
V1_ONLY_CGROUP = "4:memory:/user.slice\n1:cpu,cpuacct:/user.slice\n"

UNIFIED_MOUNTINFO = (
    "24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
)
HYBRID_MOUNTINFO = (
    "24 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def test_own_cgroup_is_the_v2_line():
    assert cgroup.own_cgroup(SYSTEMD_CGROUP) == "/system.slice/isorund.service"
    assert cgroup.own_cgroup(HYBRID_CGROUP) == "/"
    assert cgroup.own_cgroup(V1_ONLY_CGROUP) is None


def test_cgroup2_mount_is_found_with_optional_fields_and_escapes():
    assert cgroup.cgroup2_mount(UNIFIED_MOUNTINFO) == "/sys/fs/cgroup"
    assert cgroup.cgroup2_mount(HYBRID_MOUNTINFO) == "/sys/fs/cgroup/unified"
    escaped = "40 30 0:35 / /mnt/my\\040cgroups rw - cgroup2 cgroup2 rw\n"
    assert cgroup.cgroup2_mount(escaped) == "/mnt/my cgroups"
    assert cgroup.cgroup2_mount("24 1 254:0 / / rw - ext4 /dev/vda rw\n") is None


def test_a_cgroup2_mount_of_a_subtree_is_not_taken_for_the_root():
    inner = "40 30 0:35 /some/where /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroup.cgroup2_mount(inner) is None


def test_locate_autodetects_the_daemons_own_cgroup():
    assert cgroup.locate("", SYSTEMD_CGROUP, UNIFIED_MOUNTINFO) == "/sys/fs/cgroup/system.slice/isorund.service"


def test_locate_takes_the_configured_folder():
    assert cgroup.locate("/sys/fs/cgroup/isorun/", "", "") == "/sys/fs/cgroup/isorun"


@pytest.mark.parametrize("setting, proc_cgroup, mountinfo, reason", [
    ("off", SYSTEMD_CGROUP, UNIFIED_MOUNTINFO, "turned off"),
    ("relative/path", SYSTEMD_CGROUP, UNIFIED_MOUNTINFO, "absolute path"),
    ("", SYSTEMD_CGROUP, "24 1 254:0 / / rw - ext4 /dev/vda rw\n", "no cgroup2 filesystem"),
    ("", V1_ONLY_CGROUP, HYBRID_MOUNTINFO, "cgroup v1 only"),
    ("", HYBRID_CGROUP, HYBRID_MOUNTINFO, "root cgroup"),
])
def test_locate_says_why_limits_stay_off(setting, proc_cgroup, mountinfo, reason):
    with pytest.raises(cgroup.Unavailable, match=reason):
        cgroup.locate(setting, proc_cgroup, mountinfo)


def test_missing_controllers_are_named():
    assert cgroup.missing_controllers("cpuset cpu io memory hugetlb pids rdma misc\n") == []
    assert cgroup.missing_controllers("hugetlb\n") == ["memory", "pids", "cpu"]
    assert cgroup.missing_controllers("") == ["memory", "pids", "cpu"]
    assert cgroup.missing_controllers("cpuset memory") == ["pids", "cpu"]


def test_oom_kills_are_read_from_memory_events():
    events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 1\n"
    assert cgroup.oom_kills(events) == 1
    assert cgroup.oom_kills("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n") == 0
    assert cgroup.oom_kills("") == 0


def test_call_values_cover_the_whole_call():
    values = cgroup.call_values(memory_bytes=256 << 20, tmp_bytes=16 << 20, max_processes=32)
    assert values == {"memory.max": str((256 + 16) << 20), "memory.swap.max": "0",
                      "memory.oom.group": "1", "pids.max": "32", "cpu.max": "100000 100000"}


def test_setup_refuses_a_folder_that_is_not_a_cgroup(tmp_path):
    with pytest.raises(cgroup.Unavailable, match="not a cgroup v2 folder"):
        cgroup.setup(str(tmp_path), {1})


def test_setup_refuses_missing_controllers_without_touching_anything(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    with pytest.raises(cgroup.Unavailable, match="memory, pids, cpu"):
        cgroup.setup(str(tmp_path), {1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cgroup.controllers"]


def test_setup_refuses_a_cgroup_shared_with_other_processes(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("\n")
    (tmp_path / "cgroup.procs").write_text("10\n11\n999\n")
    with pytest.raises(cgroup.Unavailable, match="other than isorund's"):
        cgroup.setup(str(tmp_path), {10, 11})
    assert not (tmp_path / cgroup.DAEMON_LEAF).exists()
