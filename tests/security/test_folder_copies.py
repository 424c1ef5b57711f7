"""The daemon's detached copies of a call's folders (filesystem.detach_folders) are cut off
from the host's mount propagation: on a host whose root is shared (systemd's default), a copy
that stayed a peer of it would carry mount events between the host and the sandbox.

Runs the real functions as root in a throwaway mount namespace whose root is made shared."""
import json
import subprocess
import sys
import textwrap
import threading
import time

from isorun import CodeRunner, errors

SCRIPT = textwrap.dedent("""
    import json, re, tempfile
    from isorund.sandbox import _libc, filesystem
    _libc.unshare("test", _libc.CLONE_NEWNS)
    _libc.mount("test", None, "/", None, _libc.MS_REC | (1 << 20))  # MS_SHARED, as under systemd
    source, target = tempfile.mkdtemp(), tempfile.mkdtemp()
    [fd] = filesystem.detach_folders(source, [])
    _libc.move_mount("test", fd, target)
    lines = open("/proc/self/mountinfo").read().splitlines()
    def groups(line):
        return set(re.findall(r"shared:(\\d+)", line))
    source_mount = [l for l in lines if l.split()[4] == "/"][0]
    attached = [l for l in lines if l.split()[4] == target][0]
    print(json.dumps({"host": sorted(groups(source_mount)), "copy": sorted(groups(attached)),
                      "options": attached.split()[5]}))
""")


def test_a_folder_copy_is_not_a_peer_of_the_host_mount_it_came_from():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["host"], "the test's root should be shared"
    assert not set(seen["host"]) & set(seen["copy"]), seen
    assert seen["options"].startswith("ro,nosuid,nodev,noexec"), seen


def test_a_folder_swapped_for_a_symlink_after_its_check_is_not_bound(start_daemon, tmp_path):
    """A tenant who can write in a whitelisted folder's parent swaps the checked folder for a
    link to / while its call waits in the queue: the daemon must not follow it (it used to bind
    the host's whole root into the sandbox, read-only)."""
    d = start_daemon(config="max_concurrency = 1\npool_size = 1\n")
    tenant = tmp_path / "tenant"
    (tenant / "vendor").mkdir(parents=True)
    (tenant / "index.py").write_text("import time\n\ndef nap(s):\n    time.sleep(s)\n\ndef ping():\n    return 1\n")
    for folder in (tmp_path, tenant, tenant / "vendor"):
        folder.chmod(0o755)
    holding = threading.Event()
    holder = threading.Thread(target=lambda: CodeRunner(root=str(tenant), file="index.py", socket=d.socket,
                                                        external=["time"]).run("nap", args=[1.5], running=holding.set))
    holder.start()
    assert holding.wait(30)  # the only slot is taken: the next call is checked, then queued
    box = {}

    def victim():
        with CodeRunner(root=str(tenant), file="index.py", socket=d.socket, external=["time"],
                        whitelisted_paths=[str(tenant / "vendor")]) as r:
            try:
                box["value"] = r.run("ping", timeout=10)
            except errors.IsorunError as e:
                box["error"] = e
    queued = threading.Thread(target=victim)
    queued.start()
    time.sleep(0.5)
    (tenant / "vendor").rmdir()
    (tenant / "vendor").symlink_to("/")
    holder.join(30)
    queued.join(30)
    assert "value" not in box, "the swapped folder was bound"
    assert isinstance(box["error"], errors.SandboxError)
    assert "changed after the request was checked" in str(box["error"])


def test_a_daemon_out_of_descriptors_says_so_rather_than_that_the_folder_changed(tmp_path):
    """It read "… changed after the request was checked (a symbolic link, a file or nothing
    stands in its path now)", for a folder nobody had touched."""
    import pytest
    from isorund.sandbox import SandboxSetupError, filesystem
    from processes import descriptors_left
    deep = tmp_path.joinpath(*"abcd")
    deep.mkdir(parents=True)
    with descriptors_left(1), pytest.raises(SandboxSetupError, match="no file descriptor left to bind"):
        filesystem.detach_folders(str(deep), [])
