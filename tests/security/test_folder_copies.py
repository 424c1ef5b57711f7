"""The daemon's detached copies of a call's folders (filesystem.detach_folders) are cut off
from the host's mount propagation: on a host whose root is shared (systemd's default), a copy
that stayed a peer of it would carry mount events between the host and the sandbox.

Runs the real functions as root in a throwaway mount namespace whose root is made shared."""
import json
import subprocess
import sys
import textwrap

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
