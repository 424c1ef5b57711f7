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
    assert str(tree / "pkg" / "sub") in named_pipes._seen
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
    real = named_pipes._read
    monkeypatch.setattr(named_pipes, "_read", lambda folder: reads.append(folder) or real(folder))
    assert named_pipes.find_pipe(str(tree)) is None
    assert reads == []


def test_a_folder_changed_within_the_second_is_read_on_every_call(tree, monkeypatch):
    monkeypatch.setattr(named_pipes, "_seen", {})
    named_pipes.find_pipe(str(tree))
    assert str(tree) not in named_pipes._seen


def test_a_tree_past_the_folder_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(named_pipes, "MAX_FOLDERS", 5)
    for i in range(5):
        (tmp_path / str(i)).mkdir()
    with pytest.raises(named_pipes.TooManyFolders):
        named_pipes.find_pipe(str(tmp_path))
    os.rmdir(tmp_path / "4")
    assert named_pipes.find_pipe(str(tmp_path)) is None
