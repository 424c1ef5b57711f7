"""The guest's filesystem view: nothing of the host but read-only libraries, a read-only guest
folder, and a private /tmp that vanishes with the call."""
import os
import secrets
import shutil
import sysconfig
import time
from pathlib import Path

import pytest

from isorun import CodeRunner, errors

ATTACKS = Path(__file__).resolve().parent / "attacks"


@pytest.fixture
def host_secret(tmp_path):
    path = tmp_path / "host-secret.txt"
    path.write_text("host secret 91b2")
    path.chmod(0o644)  # readable by anyone on the host: only the view may keep it from a guest
    return path


@pytest.fixture
def other_tenant(tmp_path):
    folder = tmp_path / "tenant-b"
    folder.mkdir(mode=0o755)
    (folder / "rules.py").write_text("SECRET = 'tenant b'\n")
    return folder


def test_host_files_cannot_be_read_by_path(attack, secure_daemon, host_secret, other_tenant):
    paths = [str(host_secret), "/etc/shadow", "/etc/passwd", "/root/.bash_history",
             str(other_tenant / "rules.py"), str(secure_daemon.config), str(secure_daemon.log_path),
             "/proc/self/root/etc/shadow", "/proc/1/root/etc/shadow"]
    results = attack("read_host_files", args=[paths])
    assert results == {path: "ENOENT" for path in paths}


def test_host_folders_cannot_be_listed(attack, secure_daemon, other_tenant):
    paths = ["/etc", "/home", "/var", "/run", "/sys", str(other_tenant), str(secure_daemon.folder)]
    results = attack("read_host_files", "listing", args=[paths])
    assert results == {path: "ENOENT" for path in paths}


def test_the_view_holds_only_what_python_needs(attack):
    view = attack("sandbox_view")
    assert set(view["root"]) <= {"dev", "guest", "proc", "tmp", "usr", "lib", "lib64", "bin", "sbin",
                                 *_top_folders_of_the_interpreter()}
    assert view["dev"] == ["null", "random", "urandom", "zero"]
    for folder in ("etc", "home", "var", "sys"):
        assert view[folder] == "ENOENT"
    assert view["cwd"] == "/guest"  # the guest's folder: relative paths name its files


def test_root_home_shows_no_more_than_the_interpreter_path(attack):
    listing = attack("sandbox_view")["root_home"]
    stdlib = sysconfig.get_paths()["stdlib"]
    if stdlib.startswith("/root/"):
        assert listing == f"ok: {[Path(stdlib).relative_to('/root').parts[0]]!r}"
    else:
        assert listing == "ENOENT"


def test_guest_cannot_write_outside_its_private_tmp(attack, tmp_path):
    whitelisted = tmp_path / "shared-lib"
    whitelisted.mkdir(mode=0o755)
    (whitelisted / "helpers.py").write_text("X = 1\n")
    host_tmp = Path("/tmp") / f"isorun-escape-{secrets.token_hex(4)}"
    targets = {"/guest/planted.py": "EROFS", "/planted": "EROFS", "/usr/lib/planted": "EROFS",
               "/dev/planted": "EROFS", str(whitelisted / "planted.py"): "EROFS", str(host_tmp): None,
               "/tmp/mine": None}
    results = attack("write_everywhere", args=[list(targets)], whitelisted_paths=[str(whitelisted)])
    for path, expected in targets.items():
        if expected:
            assert results[path] == expected, path
    assert results["mkdir /guest/x"] == "EROFS"
    assert results["rename guest file"] == "EROFS"
    assert results["delete guest file"] == "EROFS"
    # /tmp is the call's own: writing there works, and none of it reaches the host.
    assert results["/tmp/mine"].startswith("ok")
    assert results[str(host_tmp)].startswith("ok")
    assert not host_tmp.exists()
    assert sorted(os.listdir(whitelisted)) == ["helpers.py"]
    assert sorted(os.listdir(attack.root)) == ["escape.py", "write_everywhere.py"]


def test_files_do_not_persist_between_calls(attack):
    name = f"left-{secrets.token_hex(4)}"
    assert attack("persist_between_calls", args=[name]) == []
    assert attack("persist_between_calls", args=[name + "-again"]) == []
    assert not Path("/tmp", name).exists()


def test_planted_symlinks_resolve_inside_the_view(attack, host_secret):
    links = {
        "passwd": ("symlink", "/etc/passwd"),
        "secret": ("symlink", str(host_secret)),
        "climb": ("symlink", "../" * 12 + "etc/passwd"),
        "secret_relative": ("symlink", "../" * 12 + str(host_secret).lstrip("/")),
        "linked_module.py": ("symlink", str(host_secret)),
    }
    results = attack("follow_symlinks", args=[[n for n in links if n != "linked_module.py"]], files=links)
    assert results == {"passwd": "ENOENT", "secret": "ENOENT", "climb": "ENOENT", "secret_relative": "ENOENT"}
    with pytest.raises(errors.ModuleNotFound):
        attack("follow_symlinks", "import_linked", files=links)


def test_a_folder_below_another_users_private_folder_is_not_given_to_a_call(secure_daemon, tmp_path):
    """Started outside systemd (``make run``, a shell, a container), the daemon held
    CAP_DAC_OVERRIDE, bound a folder below another user's private (0700) folder, and a caller
    read through its guest a file it could not reach itself (seen). The daemon now keeps only
    the capabilities sandbox set-up needs, however it is started."""
    private = tmp_path / "private"
    inner = private / "inner"
    inner.mkdir(parents=True)
    (inner / "secret.txt").write_text("behind a private folder")
    (inner / "index.py").write_text("def f():\n    return 1\n")
    for path in (inner, inner / "secret.txt", inner / "index.py"):
        path.chmod(0o755)
    os.chown(private, 4242, 4242)
    private.chmod(0o700)
    guest = tmp_path / "guest"
    guest.mkdir(mode=0o755)
    (guest / "index.py").write_text("def read(p):\n    return open(p).read()\n")
    guest.chmod(0o755)
    with CodeRunner(root=str(guest), file="index.py", socket=secure_daemon.socket,
                    whitelisted_paths=[str(inner)]) as r:
        with pytest.raises(errors.InvalidRequest, match="cannot be reached: a folder above it lets no other user"):
            r.run("read", args=[str(inner / "secret.txt")], timeout=20)
    with CodeRunner(root=str(inner), file="index.py", socket=secure_daemon.socket) as r:
        with pytest.raises(errors.InvalidRequest, match="root .* cannot be reached"):
            r.run("f", timeout=20)


def test_the_daemon_and_its_zygote_keep_only_the_capabilities_sandboxes_need(secure_daemon):
    from isorund.privileges import NEEDED_MASK
    from processes import zygote_of

    def sets(status_file):
        with open(status_file) as f:
            return {line.split(":")[0]: int(line.split()[1], 16) for line in f if line.startswith("Cap")}
    tasks = [f"/proc/{secure_daemon.pid}/task/{t}/status" for t in os.listdir(f"/proc/{secure_daemon.pid}/task")]
    for status_file in [*tasks, f"/proc/{zygote_of(secure_daemon).pid}/status"]:
        assert sets(status_file) == {"CapInh": 0, "CapPrm": NEEDED_MASK, "CapEff": NEEDED_MASK,
                                     "CapBnd": NEEDED_MASK, "CapAmb": 0}, status_file


def test_a_call_file_linking_outside_the_root_is_refused(secure_daemon, tmp_path, host_secret):
    root = tmp_path / "linked-root"
    root.mkdir(mode=0o755)
    (root / "index.py").symlink_to(host_secret)
    with CodeRunner(root=str(root), file="index.py", socket=secure_daemon.socket) as runner:
        with pytest.raises(errors.InvalidRequest):
            runner.run("attack")


@pytest.fixture
def host_pipe_reader():
    """host_pipe_reader(path) -> a named pipe at ``path`` (mode 0666) that a host service reads;
    ``.received()`` is what was written into it."""
    opened = []

    def make(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkfifo(path, 0o666)
        os.chmod(path, 0o666)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # as a service waiting on it would
        opened.append(fd)

        def received():
            try:
                return os.read(fd, 4096)
            except BlockingIOError:
                return b""
        make.received = received
        return path
    yield make
    for fd in opened:
        os.close(fd)


def test_a_folder_holding_a_host_services_named_pipe_is_not_given_to_a_call(
        attack, secure_daemon, tmp_path, host_pipe_reader):
    """A pipe opens for writing through a read-only mount: without the daemon's check the guest
    wrote its 14 bytes into the service's pipe, through a whitelisted folder and through /guest."""
    pipe = host_pipe_reader(str(tmp_path / "service" / "run" / "feed"))
    with pytest.raises(errors.InvalidRequest, match="whitelisted_paths.* holds a named pipe, '.*/service/run/feed'"):
        attack("named_pipes", args=[[pipe]], whitelisted_paths=[str(tmp_path / "service")])
    assert host_pipe_reader.received() == b""

    root = tmp_path / "tenant"
    root.mkdir(mode=0o755)
    for name in ("escape.py", "named_pipes.py"):
        shutil.copy(ATTACKS / name, root / name)
    host_pipe_reader(str(root / "run" / "feed"))
    with CodeRunner(root=str(root), file="named_pipes.py", socket=secure_daemon.socket) as runner:
        with pytest.raises(errors.InvalidRequest, match="root .* holds a named pipe, '.*/tenant/run/feed'"):
            runner.run("attack", args=[["/guest/run/feed"]])
    assert host_pipe_reader.received() == b""


def _top_folders_of_the_interpreter():
    stdlib = sysconfig.get_paths()["stdlib"]
    return {Path(stdlib).parts[1]}


def test_a_pipe_made_in_a_root_that_calls_already_use_is_found(secure_daemon, tmp_path, host_pipe_reader):
    """The daemon checks a root it remembers on its event loop, a folder it must read again on
    a thread: the second call below takes the first way, the third the second."""
    root = tmp_path / "settled"
    (root / "run").mkdir(parents=True, mode=0o755)
    for name in ("escape.py", "named_pipes.py"):
        shutil.copy(ATTACKS / name, root / name)
    time.sleep(1.1)  # older than a second: remembered (isorund/named_pipes.py)
    with CodeRunner(root=str(root), file="named_pipes.py", socket=secure_daemon.socket) as runner:
        for _ in range(2):
            assert runner.run("attack", args=[["/guest/run/nothing"]]) is not None
        host_pipe_reader(str(root / "run" / "feed"))
        with pytest.raises(errors.InvalidRequest, match="root .* holds a named pipe, '.*/settled/run/feed'"):
            runner.run("attack", args=[["/guest/run/feed"]])
    assert host_pipe_reader.received() == b""
