"""Guest modules compiled once per file version (``isorund.code_cache``), through the real daemon:
the first call of a file sends its modules, later calls get them, an edit runs at once, and
what the guest sees (results, tracebacks) is what compiled source gives."""
import os

import pytest

from isorun import CodeRunner, errors
from tests.integration.test_ops_observability import scrape

CONFIG = '''
metrics_address = "127.0.0.1:0"
plugin_paths = ["{plugins}"]

[plugins.compilers]
plus-to-times = "test_plugins:plus_to_times"
'''
FILES = {
    "index.py": "import helper\nfrom pkg import util\ndef f(x):\n    import lazy\n    return helper.twice(x) + util.ONE + lazy.ZERO\n"
                "def fail():\n    return helper.fail()\n",
    "lazy.py": "ZERO = 0\n",
    "helper.py": "def twice(x):\n    return 2 * x\ndef fail():\n    raise ValueError('from helper')\n",
    "pkg/__init__.py": "",
    "pkg/util.py": "ONE = 1\n",
}


@pytest.fixture
def cached(start_daemon):
    return start_daemon(config=CONFIG)


def counts(daemon) -> tuple[float, float]:
    samples = scrape(daemon)
    return samples["isorun_code_cache_stored_total"], samples["isorun_code_cache_hits_total"]


def test_a_files_modules_are_compiled_by_its_first_call_and_handed_to_the_next(cached, make_root):
    root = make_root(FILES)
    stored, hits = counts(cached)
    with CodeRunner(root=root, file="index.py", socket=cached.socket) as runner:
        assert runner.run("f", [20]) == 41
        assert counts(cached) == (stored + 5, hits)  # index, helper, pkg/__init__, pkg/util, lazy (in f)
        for x in range(3):
            assert runner.run("f", [x]) == 2 * x + 1
    assert counts(cached) == (stored + 5, hits + 3 * 5)
    samples = scrape(cached)  # the five and the start-up self-test's probe module
    assert samples["isorun_code_cache_modules"] == 6 and 0 < samples["isorun_code_cache_bytes"] < 64 << 10


def test_an_edited_module_runs_at_once_and_is_sent_again(cached, make_root):
    root = make_root(FILES)
    with CodeRunner(root=root, file="index.py", socket=cached.socket) as runner:
        assert runner.run("f", [1]) == 3
        stored, _ = counts(cached)
        with open(os.path.join(root, "helper.py"), "w") as f:  # same size: only its content says so
            f.write(FILES["helper.py"].replace("2 * x", "3 * x"))
        assert runner.run("f", [1]) == 4
        assert counts(cached)[0] == stored + 5  # the call was asked again; it sent all five
        assert runner.run("f", [2]) == 7


def test_a_handed_module_fails_with_its_own_traceback(cached, make_root):
    root = make_root(FILES)
    with CodeRunner(root=root, file="index.py", socket=cached.socket) as runner:
        for _ in range(2):  # compiled in the call, then handed by the daemon
            with pytest.raises(errors.GuestError) as failed:
                runner.run("fail")
            assert 'File "/helper.py", line 4, in fail' in failed.value.traceback
            assert "raise ValueError('from helper')" in failed.value.traceback


def test_calls_with_a_small_result_limit_still_send_their_modules(start_daemon, make_root):
    """The event that carries the modules is read under a bound of its own, not the result's."""
    daemon = start_daemon(config='metrics_address = "127.0.0.1:0"\n[limits]\nresult_bytes = 1024\n')
    root = make_root({"index.py": "import big\ndef f():\n    return len(big.S)\n",
                      "big.py": f"S = '{'s' * 200_000}'\n"})
    stored, hits = counts(daemon)
    with CodeRunner(root=root, file="index.py", socket=daemon.socket) as runner:
        assert runner.run("f") == 200_000
        assert runner.run("f") == 200_000
    assert counts(daemon) == (stored + 2, hits + 2)


def test_no_module_is_kept_for_a_compiler_plugins_calls(cached, make_root):
    root = make_root({"index.py": "def f():\n    return 6 + 7\n"})
    before = counts(cached)
    with CodeRunner(root=root, file="index.py", socket=cached.socket, compiler="plus-to-times") as runner:
        assert runner.run("f") == 42
        assert runner.run("f") == 42
    assert counts(cached) == before


def test_without_a_cache_every_call_compiles_and_runs_the_same(start_daemon, make_root):
    daemon = start_daemon(config='metrics_address = "127.0.0.1:0"\ncode_cache_bytes = 0\n')
    with CodeRunner(root=make_root(FILES), file="index.py", socket=daemon.socket) as runner:
        assert [runner.run("f", [x]) for x in range(3)] == [1, 3, 5]
    assert counts(daemon) == (0, 0)


def _write_pycache(root: str, source_file: str, code_source: str, stamp_source: str | None = None) -> None:
    """A ``__pycache__`` entry for ``source_file`` holding ``code_source``'s code: stamped with
    the file's time and size, or (``stamp_source``) with that source's hash, as a hand could."""
    from importlib import _bootstrap_external as bootstrap, util
    path = os.path.join(root, source_file)
    code = compile(code_source, path, "exec")
    if stamp_source is None:
        st = os.stat(path)
        data = bootstrap._code_to_timestamp_pyc(code, st.st_mtime, st.st_size)
    else:
        data = bootstrap._code_to_hash_pyc(code, util.source_hash(stamp_source.encode()), checked=True)
    cache = util.cache_from_source(path)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache, "wb") as f:
        f.write(data)
    os.chmod(os.path.dirname(cache), 0o755)
    os.chmod(cache, 0o644)


@pytest.mark.parametrize("stamp", ["timestamp", "hash"])
def test_code_from_a_pycache_entry_is_never_kept_for_later_calls(cached, make_root, stamp):
    # An entry whose stamp matches a source it was not made from (an edit that kept the size and
    # the time, or an entry made by hand) ran as Python runs it, and the daemon then kept its
    # code for that source: calls ran it after the entry was deleted, until the file changed.
    old, new = "def f():\n    return 'AAA'\n", "def f():\n    return 'BBB'\n"
    root = make_root({"index.py": old})
    path = os.path.join(root, "index.py")
    if stamp == "timestamp":
        _write_pycache(root, "index.py", old)
        st = os.stat(path)
        with open(path, "w") as f:
            f.write(new)  # the same size; the time put back as it was
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        with open(path, "w") as f:
            f.write(new)
        _write_pycache(root, "index.py", old, stamp_source=new)
    with CodeRunner(root=root, file="index.py", socket=cached.socket) as runner:
        assert runner.run("f") == "AAA"  # the entry is used, as Python's import would
        assert runner.run("f") == "AAA"
        for entry in os.listdir(os.path.join(root, "__pycache__")):
            os.remove(os.path.join(root, "__pycache__", entry))
        assert [runner.run("f") for _ in range(3)] == ["BBB"] * 3
