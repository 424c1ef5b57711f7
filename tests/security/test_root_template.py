"""The sandboxes' root template (filesystem.build_template): made once by the zygote in a mount
namespace of its own, never seen by the host, read-only, and never a way for one call to leave
a trace in another's root."""
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from isorun import CodeRunner
from tests.processes import zygote_of


def mounts(pid: int | str) -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount process ``pid`` sees."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [(line.split()[4], set(line.split()[5].split(","))) for line in f]


def template_of(zygote_pid: int) -> tuple[str, list[tuple[str, set[str]]]]:
    """The folder the zygote made its template in, and the mounts under it."""
    seen = mounts(zygote_pid)
    [folder] = [point[:-len("/template/dev")] for point, _ in seen if point.endswith("/template/dev")]
    return folder, [(point, options) for point, options in seen if point.startswith(folder + "/")]


def test_a_mountpoint_made_for_one_call_is_not_in_the_next_calls_root(attack):
    """A whitelisted folder outside /tmp needs a mountpoint in the root: it is made in that
    sandbox's own root, never in anything another sandbox's root shares."""
    folder = tempfile.mkdtemp(dir="/var/tmp", prefix="isorun-template-")
    try:
        Path(folder).chmod(0o755)
        assert attack("sandbox_view", whitelisted_paths=[folder])["var"] == "ok: ['tmp']"
        assert attack("sandbox_view")["var"] == "ENOENT"
        assert attack("sandbox_view")["var"] == "ENOENT"
    finally:
        shutil.rmtree(folder)


def test_the_template_is_read_only_and_only_in_the_zygotes_mount_namespace(secure_daemon):
    folder, template = template_of(zygote_of(secure_daemon).pid)
    points = {point for point, _ in template}
    assert folder + "/template/dev" in points and folder + "/template/dev/null" in points
    assert folder + "/template/usr/lib" in points
    for point, options in template:
        assert "ro" in options, (point, options)
    # the sandboxes' own roots are mounted in their namespaces, not the zygote's
    assert folder + "/root" not in points
    # the host sees an empty folder, and none of those mounts
    assert not [point for point, _ in mounts("self") if point.startswith(folder)]
    assert list(Path(folder).iterdir()) == []


@pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("nsenter")), reason="needs util-linux")
def test_host_mounts_and_unmounts_reach_the_zygote_and_the_template_never_reaches_the_host(start_daemon, tmp_path):
    """Under systemd the host's mounts are shared. The zygote follows the host's mount events
    (a filesystem the host unmounts is not kept busy by it) and sends none back (its template
    never appears in the host's mount table). The daemon runs in a namespace of its own whose
    root is shared, standing in for such a host."""
    d = start_daemon(prefix=["unshare", "--mount", "--propagation", "shared"])
    zygote = zygote_of(d).pid
    folder, _ = template_of(zygote)
    assert not [point for point, _ in mounts(d.pid) if point.startswith(folder)]
    disk = tmp_path / "disk"
    disk.mkdir()
    in_daemon_ns = ["nsenter", "-t", str(d.pid), "-m", "--"]
    subprocess.run([*in_daemon_ns, "mount", "-t", "tmpfs", "isorun-test-disk", str(disk)], check=True)
    assert _eventually(lambda: str(disk) in {point for point, _ in mounts(zygote)})
    subprocess.run([*in_daemon_ns, "umount", str(disk)], check=True)
    assert _eventually(lambda: str(disk) not in {point for point, _ in mounts(zygote)})
    root = tmp_path / "guest"
    root.mkdir(mode=0o755)
    (root / "index.py").write_text("def ping(x):\n    return x + 1\n")
    with CodeRunner(root=str(root), file="index.py", socket=d.socket) as runner:
        assert runner.run("ping", args=[1]) == 2


def _eventually(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
