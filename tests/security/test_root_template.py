"""The sandboxes' root template (filesystem.build_template): made once by the zygote and kept in
a mount namespace that holds nothing else, never seen by the host, read-only, never a way for
one call to leave a trace in another's root, and copied by every sandbox whatever the host's
own mount table holds."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from isorun import CodeRunner
from tests.processes import zygote_of

# Reads the mount table of the namespace named by argv[1] as a process in it sees it. That
# namespace has no /proc of its own, so the reader opens this one before it enters.
READ_MOUNTINFO = """
import ctypes, os, sys
proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY)
namespace = os.open(sys.argv[1], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(namespace, 0x20000) != 0:
    sys.exit(f"setns: errno {ctypes.get_errno()}")
with open(os.open("self/mountinfo", os.O_RDONLY, dir_fd=proc)) as f:
    sys.stdout.write(f.read())
"""


def parse_mountinfo(text: str) -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every line of a mountinfo file."""
    return [(line.split()[4], set(line.split()[5].split(","))) for line in text.splitlines()]


def mounts(pid: int | str) -> list[tuple[str, set[str]]]:
    """Every mount process ``pid`` sees."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse_mountinfo(f.read())


def template_namespace(zygote_pid: int) -> str:
    """The zygote's descriptor of its template namespace, as a /proc path: the one mount
    namespace it holds open that is not its own."""
    own = os.readlink(f"/proc/{zygote_pid}/ns/mnt")
    found = []
    for fd in os.listdir(f"/proc/{zygote_pid}/fd"):
        try:
            target = os.readlink(f"/proc/{zygote_pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("mnt:") and target != own:
            found.append(f"/proc/{zygote_pid}/fd/{fd}")
    assert len(found) == 1, found
    return found[0]


def template_mounts(zygote_pid: int) -> list[tuple[str, set[str]]]:
    """Every mount of the template namespace, as a process in it sees them."""
    out = subprocess.run([sys.executable, "-c", READ_MOUNTINFO, template_namespace(zygote_pid)],
                         capture_output=True, text=True, check=True)
    return parse_mountinfo(out.stdout)


def template_points(mount_list) -> list[str]:
    return [point for point, _ in mount_list if "/template/" in point + "/"]


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


def test_the_template_namespace_holds_the_template_alone_and_read_only(secure_daemon):
    zygote = zygote_of(secure_daemon).pid
    template = template_mounts(zygote)
    points = [point for point, _ in template]
    assert "/template/dev" in points and "/template/dev/null" in points and "/template/usr/lib" in points
    # its root is the template's own tmpfs: nothing of the host's mount table but the binds
    assert [point for point in points if point != "/" and not point.startswith("/template/")] == []
    for point, options in template:
        assert "ro" in options, (point, options)
    # the sandboxes' own roots are mounted in their copies, not in the template namespace
    assert "/root" not in points
    # neither the host, nor the daemon, nor the zygote's own namespace holds any of it
    for pid in ("self", secure_daemon.proc.pid, zygote):
        assert template_points(mounts(pid)) == [], pid


def test_the_template_namespace_holds_none_of_the_hosts_other_mounts(start_daemon, secure_daemon, tmp_path):
    """A sandbox's mount namespace is a copy of the template namespace, made and torn down
    mount by mount: the host's own mounts (hundreds on a container host) must not be in it.
    The daemon runs in a namespace of its own holding 60 more mounts."""
    extra = tmp_path / "extra"
    make_mounts = ('for i in $(seq 60); do mkdir -p "$0/$i" && '
                   'mount -t tmpfs -o size=64k isorun-test-extra "$0/$i" || exit 1; done; exec "$@"')
    d = start_daemon(prefix=["unshare", "--mount", "--propagation", "slave", "sh", "-c", make_mounts, str(extra)])
    zygote = zygote_of(d).pid
    assert len([p for p, _ in mounts(zygote) if p.startswith(str(extra) + "/")]) == 60  # it follows the host
    template = template_mounts(zygote)
    assert [point for point, _ in template if point != "/" and not point.startswith("/template/")] == []
    # the same template as a daemon's on the host's own table
    assert sorted(p for p, _ in template) == sorted(p for p, _ in template_mounts(zygote_of(secure_daemon).pid))
    root = tmp_path / "guest"
    root.mkdir(mode=0o755)
    (root / "index.py").write_text("def ping(x):\n    return x + 1\n")
    with CodeRunner(root=str(root), file="index.py", socket=d.socket) as runner:
        assert runner.run("ping", args=[1]) == 2


@pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("nsenter")), reason="needs util-linux")
def test_host_mounts_and_unmounts_reach_the_zygote_and_the_template_never_reaches_the_host(start_daemon, tmp_path):
    """Under systemd the host's mounts are shared. The zygote and the template's binds follow
    the host's mount events (a filesystem the host unmounts is not kept busy by them) and send
    none back (the template never appears in the host's mount table). The daemon runs in a
    namespace of its own whose root is shared, standing in for such a host."""
    d = start_daemon(prefix=["unshare", "--mount", "--propagation", "shared"])
    zygote = zygote_of(d).pid
    assert template_points(mounts(d.pid)) == []
    disk = tmp_path / "disk"
    disk.mkdir()
    in_daemon_ns = ["nsenter", "-t", str(d.pid), "-m", "--"]
    subprocess.run([*in_daemon_ns, "mount", "-t", "tmpfs", "isorun-test-disk", str(disk)], check=True)
    assert _eventually(lambda: str(disk) in {point for point, _ in mounts(zygote)})
    subprocess.run([*in_daemon_ns, "umount", str(disk)], check=True)
    assert _eventually(lambda: str(disk) not in {point for point, _ in mounts(zygote)})
    # a mount inside a bound system folder reaches the template's bind of it, and leaves it
    assert "/template/usr/lib" in {point for point, _ in template_mounts(zygote)}
    inside = Path(tempfile.mkdtemp(dir="/usr/lib", prefix="isorun-test-"))
    try:
        in_template = "/template" + str(inside)
        subprocess.run([*in_daemon_ns, "mount", "-t", "tmpfs", "isorun-test-disk", str(inside)], check=True)
        assert _eventually(lambda: in_template in {point for point, _ in template_mounts(zygote)})
        subprocess.run([*in_daemon_ns, "umount", str(inside)], check=True)
        assert _eventually(lambda: in_template not in {point for point, _ in template_mounts(zygote)})
    finally:
        inside.rmdir()
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
