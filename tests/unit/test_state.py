"""The state folder's lock: what a starting daemon removes under its parent, and what it leaves."""
from __future__ import annotations

import os

import pytest

from isorund import state


def test_a_folder_is_removed_once_its_lock_is_let_go_and_kept_while_held(tmp_path):
    folder, lock = state.create(str(tmp_path))
    (tmp_path / os.path.basename(folder) / "probe").mkdir()
    assert os.path.basename(folder).startswith(state.PREFIX)
    assert state.remove_stale(str(tmp_path)) == []  # held (by this process's other descriptor)
    assert os.path.isdir(folder)
    os.close(lock)  # what the kernel does for a daemon that was killed
    assert state.remove_stale(str(tmp_path)) == [folder]
    assert not os.path.exists(folder)


def test_folders_it_did_not_make_are_left_alone(tmp_path):
    no_lock = tmp_path / "isorund-nolock"  # an older daemon's, or not a daemon's at all
    no_lock.mkdir()
    foreign = tmp_path / "isorund-foreign"  # another user's
    foreign.mkdir()
    (foreign / "lock").touch()
    os.chown(foreign, 65534, 65534)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "lock").touch()
    (tmp_path / "isorund-link").symlink_to(target)
    (tmp_path / "isorund-file").write_text("not a folder")
    lock_link = tmp_path / "isorund-locklink"  # its lock a link to someone else's file
    lock_link.mkdir()
    (lock_link / "lock").symlink_to(target / "lock")
    other = tmp_path / "unrelated"
    other.mkdir()
    (other / "lock").touch()

    assert state.remove_stale(str(tmp_path)) == []
    for path in (no_lock, foreign, target / "lock", tmp_path / "isorund-link", tmp_path / "isorund-file",
                 lock_link, other):
        assert os.path.lexists(path), path


def test_a_missing_parent_is_not_an_error(tmp_path):
    assert state.remove_stale(str(tmp_path / "missing")) == []


def test_a_folder_being_made_is_never_taken_for_a_dead_daemons(tmp_path, monkeypatch):
    """The lock file gets its name only once it is held: a daemon starting at that moment
    finds no lock in the new folder (left alone), never an unheld one (removed)."""
    seen = []
    real_flock = state.fcntl.flock

    def flock_while_another_daemon_starts(fd, operation):
        [folder] = [p for p in tmp_path.iterdir() if p.name.startswith(state.PREFIX)]
        seen.append((folder.name, state.remove_stale(str(tmp_path)), (folder / state.LOCK).exists()))
        real_flock(fd, operation)
    monkeypatch.setattr(state.fcntl, "flock", flock_while_another_daemon_starts)
    folder, lock = state.create(str(tmp_path))
    assert seen == [(os.path.basename(folder), [], False)]
    assert os.path.isdir(folder) and os.path.exists(os.path.join(folder, state.LOCK))
    os.close(lock)


def test_the_folder_goes_where_tmpdir_says_or_the_start_fails(tmp_path, monkeypatch):
    # tempfile.gettempdir() passed over a $TMPDIR it could not write to (a full one) for /tmp
    # without a word (seen)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    folder, fd = state.create(None)
    os.close(fd)
    assert os.path.dirname(folder) == str(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        state.create(None)


def test_a_relative_tmpdir_is_taken_from_the_current_folder(tmp_path, monkeypatch):
    # the folder's path stayed relative, and the self-test call's root was refused as not
    # absolute: a traceback instead of a start (found by a probe)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    monkeypatch.setenv("TMPDIR", "rel")
    folder, fd = state.create(None)
    os.close(fd)
    assert os.path.dirname(folder) == str(tmp_path / "rel")
