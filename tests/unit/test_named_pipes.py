"""The daemon's search for named pipes in a call's folders (a pipe is writable through a
read-only mount, so a folder holding one is refused: tests/security/test_escape_filesystem.py)."""
import os
import socket
import time

import pytest

from isorund import named_pipes


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "mod.py").write_text("x = 1\n")
    (tmp_path / "index.py").write_text("def f(): return 1\n")
    os.symlink("/", tmp_path / "up")
    os.symlink(tmp_path / "pkg", tmp_path / "again")
    return tmp_path


@pytest.fixture(autouse=True)
def no_refusals_remembered(monkeypatch):
    """Each test starts with no tree remembered as too large."""
    monkeypatch.setattr(named_pipes, "_refused", {})


@pytest.fixture
def remembered(monkeypatch):
    """Folders are remembered at once, not a second after their last change."""
    monkeypatch.setattr(named_pipes, "_SETTLED_NS", -10**12)
    monkeypatch.setattr(named_pipes, "_seen", {})


def test_a_tree_without_pipes_has_none(tree):
    assert named_pipes.find_pipe(str(tree)) is None


def test_a_pipe_deep_in_the_tree_is_found(tree):
    os.mkfifo(tree / "pkg" / "sub" / "feed")
    assert named_pipes.find_pipe(str(tree)) == str(tree / "pkg" / "sub" / "feed")


def test_sockets_and_links_to_pipes_are_not_pipes(tree, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.mkfifo(elsewhere / "feed")
    os.symlink(elsewhere / "feed", tree / "feed")  # resolves in the sandbox, where only bound folders are
    os.symlink(elsewhere, tree / "out")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tree / "service.sock"))
        assert named_pipes.find_pipe(str(tree)) is None


def test_a_pipe_made_after_the_tree_was_remembered_is_found(tree, remembered):
    assert named_pipes.find_pipe(str(tree)) is None
    sub = os.stat(tree / "pkg" / "sub")
    assert (sub.st_dev, sub.st_ino) in named_pipes._seen
    time.sleep(0.05)  # past the tick of the folders' times
    os.mkfifo(tree / "pkg" / "sub" / "feed")
    assert named_pipes.find_pipe(str(tree)) == str(tree / "pkg" / "sub" / "feed")


def test_a_pipe_moved_in_from_elsewhere_is_found(tree, remembered, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.mkfifo(elsewhere / "feed")
    assert named_pipes.find_pipe(str(tree)) is None
    time.sleep(0.05)
    os.rename(elsewhere / "feed", tree / "pkg" / "feed")
    assert named_pipes.find_pipe(str(tree)) == str(tree / "pkg" / "feed")


def test_a_remembered_tree_is_not_read_again(tree, remembered, monkeypatch):
    named_pipes.find_pipe(str(tree))
    reads = []
    real = named_pipes._Walk.read
    monkeypatch.setattr(named_pipes._Walk, "read", lambda walk, fd: reads.append(fd) or real(walk, fd))
    assert named_pipes.find_pipe(str(tree)) is None
    assert reads == []


def test_a_quick_check_reads_no_folder_and_gives_up_where_it_would_have_to(tree, remembered, monkeypatch):
    """The quick check runs on the daemon's event loop: it may only confirm what is remembered."""
    with pytest.raises(named_pipes.NotRemembered):
        named_pipes.find_pipe(str(tree), named_pipes.Quick())  # never seen
    assert named_pipes.find_pipe(str(tree)) is None
    monkeypatch.setattr(named_pipes._Walk, "read", lambda walk, fd: pytest.fail("a quick check read a folder"))
    assert named_pipes.find_pipe(str(tree), named_pipes.Quick()) is None
    time.sleep(0.05)
    os.mkfifo(tree / "pkg" / "sub" / "feed")
    with pytest.raises(named_pipes.NotRemembered):
        named_pipes.find_pipe(str(tree), named_pipes.Quick())


def test_a_quick_check_gives_up_past_its_folders(tmp_path, remembered, monkeypatch):
    for i in range(named_pipes.QUICK_FOLDERS):
        (tmp_path / f"d{i}").mkdir()
    assert named_pipes.find_pipe(str(tmp_path)) is None  # remembered: the top and 32 below it
    with pytest.raises(named_pipes.NotRemembered, match=f"more than {named_pipes.QUICK_FOLDERS} folders"):
        named_pipes.find_pipe(str(tmp_path), named_pipes.Quick())
    (tmp_path / "d0").rmdir()
    time.sleep(0.05)
    assert named_pipes.find_pipe(str(tmp_path)) is None
    assert named_pipes.find_pipe(str(tmp_path), named_pipes.Quick()) is None


def test_a_tree_refused_as_too_large_is_refused_by_a_quick_check_too(tree, monkeypatch):
    monkeypatch.setattr(named_pipes, "MAX_FOLDERS", 1)
    with pytest.raises(named_pipes.TooLarge):
        named_pipes.find_pipe(str(tree))
    with pytest.raises(named_pipes.TooLarge, match="as found"):
        named_pipes.find_pipe(str(tree), named_pipes.Quick())


def test_a_folder_changed_within_the_second_is_read_on_every_call(tree, monkeypatch):
    monkeypatch.setattr(named_pipes, "_seen", {})
    named_pipes.find_pipe(str(tree))
    top = os.stat(tree)
    assert (top.st_dev, top.st_ino) not in named_pipes._seen


def test_a_pipe_deeper_than_a_path_can_name_is_found(tmp_path):
    """Looked up by its full path, a folder past PATH_MAX (4,096) was skipped, and a pipe at the
    bottom of 20 folders of 250-character names reached the guest (a probe wrote into it)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            fd, parent = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
        os.mkfifo("feed", dir_fd=fd)
    finally:
        os.close(fd)
    found = named_pipes.find_pipe(str(tmp_path))
    assert found is not None and found.endswith("/feed") and len(found) > 5000


@pytest.mark.parametrize("bound, make, words", [
    ("MAX_FOLDERS", lambda top: [(top / str(i)).mkdir() for i in range(6)], "more than 5 folders"),
    ("MAX_DEPTH", lambda top: (top / "a/b/c/d/e/f").mkdir(parents=True), "nested more than 5 deep"),
    ("MAX_ENTRIES", lambda top: [(top / f"f{i}").touch() for i in range(6)], "more than 5 entries"),
])
def test_a_tree_past_a_bound_is_refused_naming_it(tmp_path, monkeypatch, bound, make, words):
    monkeypatch.setattr(named_pipes, bound, 5)
    make(tmp_path)
    with pytest.raises(named_pipes.TooLarge, match=words):
        named_pipes.find_pipe(str(tmp_path))


def test_a_check_that_takes_too_long_is_refused(tree, monkeypatch):
    monkeypatch.setattr(named_pipes, "MAX_SECONDS", -1)
    with pytest.raises(named_pipes.TooLarge, match="s of checking"):
        named_pipes.find_pipe(str(tree))


def test_what_is_remembered_is_bounded_by_names(tmp_path, remembered, monkeypatch):
    monkeypatch.setattr(named_pipes, "_MAX_REMEMBERED_NAMES", 10)
    monkeypatch.setattr(named_pipes, "_remembered_names", 0)
    for i in range(8):
        (tmp_path / "a" / str(i)).mkdir(parents=True)
        (tmp_path / "b" / str(i)).mkdir(parents=True)
    assert named_pipes.find_pipe(str(tmp_path)) is None
    assert named_pipes._remembered_names <= 10


def test_a_tree_refused_as_too_large_is_refused_again_without_a_walk_for_a_while(tmp_path, monkeypatch):
    """16 callers naming /usr (over MAX_FOLDERS) again and again held every other call ~0.9 s:
    each refusal walked 10,000 folders again, in tens of milliseconds."""
    monkeypatch.setattr(named_pipes, "MAX_FOLDERS", 5)
    for i in range(6):
        (tmp_path / str(i)).mkdir()
    with pytest.raises(named_pipes.TooLarge, match="more than 5 folders"):
        named_pipes.find_pipe(str(tmp_path))
    walks = []
    monkeypatch.setattr(named_pipes._Walk, "folder", lambda *args: walks.append(args))
    with pytest.raises(named_pipes.TooLarge, match=r"more than 5 folders \(as found 0 s ago; looked at again 10 s after\)"):
        named_pipes.find_pipe(str(tmp_path))
    assert walks == []
    monkeypatch.setattr(named_pipes, "REFUSAL_REMEMBERED_SECONDS", 0)  # once it is forgotten
    assert named_pipes.find_pipe(str(tmp_path)) is None and len(walks) == 1


def test_a_subfolder_it_has_no_descriptor_for_fails_the_check_rather_than_hiding_a_pipe(tmp_path, remembered):
    """Out of descriptors, a subfolder that could not be opened was skipped as if gone: with
    its parents' entries remembered (no listing needs a descriptor then), a pipe six levels
    down went unseen and the call bound the folder with it (seen)."""
    import errno

    from processes import descriptors_left
    deep = tmp_path.joinpath(*"abcdef")
    deep.mkdir(parents=True)
    os.mkfifo(deep / "p")
    assert named_pipes.find_pipe(str(tmp_path)).endswith("/a/b/c/d/e/f/p")  # and the listings remembered
    with descriptors_left(3), pytest.raises(OSError) as raised:
        named_pipes.find_pipe(str(tmp_path))
    assert raised.value.errno == errno.EMFILE


@pytest.mark.parametrize("mode, found", [(0o711, "refused"), (0o700, "skipped")])
def test_a_folder_the_daemon_may_not_read_fails_the_check_if_a_guest_may_pass_through_it(tmp_path, mode, found):
    """Without CAP_DAC_OVERRIDE (the systemd unit's daemon), another user's folder of mode
    0711 could not be listed and was skipped, though a guest reaches a pipe in it by its name."""
    import shutil
    import subprocess
    import sys
    if shutil.which("capsh") is None:
        pytest.skip("needs capsh to run without CAP_DAC_OVERRIDE")
    tmp_path.chmod(0o755)
    closed = tmp_path / "closed"
    closed.mkdir()
    os.mkfifo(closed / "feed")
    os.chown(closed, 4321, 4321)
    closed.chmod(mode)
    script = ("import sys; from isorund import named_pipes\n"
              "try:\n    print('found' if named_pipes.find_pipe(sys.argv[1]) else 'skipped')\n"
              "except OSError as e:\n    print('refused', e.errno)\n")
    done = subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--",
                           "-c", f'exec "{sys.executable}" -c "$0" "$1"', script, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split()[:1] == [found], (done.stdout, done.stderr)
