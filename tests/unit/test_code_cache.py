"""The daemon's code cache (``isorund.code_cache``): what goes in a call's plan, when a sandbox is
asked for its modules, what is kept and for how long. Modules are made by the importer's own
read-ahead over real files, as a sandbox makes them."""
import gc
import os

import psutil
import pytest

from isorun._proto import sandbox_pb2 as sb
from isorund.code_cache import ENTRY_OVERHEAD, RECHECK_SECONDS, CodeCache
from isorund.sandbox.guest import _within_budget
from isorund.sandbox.compiled import MAX_COMPILED_BYTES, MAX_PRELOAD, MODULE_FRAMING_BYTES
from isorund.sandbox.import_policy import ImportPolicy
from isorund.sandbox.importer import GuestImporter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def compiled(root, file="index.py") -> sb.CompiledModules:
    importer = GuestImporter(ImportPolicy(guest_dir=str(root), extensions=(".py",), allowed=frozenset()))
    return sb.CompiledModules(modules=_within_budget(importer.preload(file, {}, report=True)))


def plan(root, file="index.py") -> sb.CallPlan:
    return sb.CallPlan(root=str(root), file=file)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "index.py").write_text("import helper\ndef f():\n    return helper.X\n")
    (tmp_path / "helper.py").write_text("X = 1\n")
    return tmp_path


def test_an_unknown_file_gets_no_code_and_its_sandbox_is_asked(root):
    cache = CodeCache(1 << 20)
    p = plan(root)
    cache.fill(p)
    assert p.report_compiled and not p.modules


def test_a_known_file_gets_its_code_and_its_imports_and_nothing_is_asked(root):
    cache = CodeCache(1 << 20)
    cache.store(str(root), compiled(root))
    p = plan(root)
    cache.fill(p)
    assert not p.report_compiled
    assert [m.path for m in p.modules] == ["/index.py", "/helper.py"] and cache.hits == 2
    other_root = plan(root.parent)  # the same path in another folder is another file
    cache.fill(other_root)
    assert other_root.report_compiled and not other_root.modules


def test_a_changed_module_is_not_handed_out_and_the_sandbox_is_asked_again(root):
    cache = CodeCache(1 << 20)
    cache.store(str(root), compiled(root))
    (root / "helper.py").write_text("X = 22\n")
    p = plan(root)
    cache.fill(p)
    assert p.report_compiled and [m.path for m in p.modules] == ["/index.py"]
    cache.store(str(root), compiled(root))
    p = plan(root)
    cache.fill(p)
    assert not p.report_compiled and [m.path for m in p.modules] == ["/index.py", "/helper.py"]


def test_a_module_that_is_gone_or_was_never_sent_asks_nothing_but_gets_nothing(root):
    cache = CodeCache(1 << 20)
    modules = compiled(root)
    del modules.modules[1]  # /helper.py: did not fit, or did not compile
    cache.store(str(root), modules)
    p = plan(root)
    cache.fill(p)
    assert not p.report_compiled and [m.path for m in p.modules] == ["/index.py"]
    os.unlink(root / "index.py")
    p = plan(root)
    cache.fill(p)
    assert p.report_compiled and not p.modules


def test_every_recheck_period_a_sandbox_is_asked_again(root):
    clock = Clock()
    cache = CodeCache(1 << 20, clock=clock)
    cache.store(str(root), compiled(root))
    clock.now += RECHECK_SECONDS - 1
    p = plan(root)
    cache.fill(p)
    assert not p.report_compiled
    clock.now += 2
    p = plan(root)
    cache.fill(p)
    assert p.report_compiled and len(p.modules) == 2  # still handed out meanwhile


def test_the_least_recently_used_modules_go_past_the_size_bound(tmp_path):
    roots = []
    for i in range(3):
        root = tmp_path / f"r{i}"
        root.mkdir()
        (root / "index.py").write_text(f"X = {i}\n")
        roots.append(root)
    sizes = [compiled(r).modules[0].ByteSize() + ENTRY_OVERHEAD for r in roots]
    cache = CodeCache(sizes[0] + sizes[1])
    cache.store(str(roots[0]), compiled(roots[0]))
    cache.store(str(roots[1]), compiled(roots[1]))
    cache.fill(plan(roots[0]))  # used: roots[1] is now the least recently used
    cache.store(str(roots[2]), compiled(roots[2]))
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    for root, kept in zip(roots, (True, False, True)):
        p = plan(root)
        cache.fill(p)
        assert bool(p.modules) == kept, root


def test_each_module_counts_what_it_holds_of_the_daemons_memory_not_only_its_bytes(tmp_path):
    # counted by the module's bytes alone, a full 32 MiB cache of small modules held ~200 MiB
    (tmp_path / "index.py").write_text("X = 1\n")
    cache = CodeCache(1 << 20)
    cache.store(str(tmp_path), compiled(tmp_path))
    assert cache.bytes == compiled(tmp_path).modules[0].ByteSize() + ENTRY_OVERHEAD


def test_a_plan_carries_at_most_the_bound_of_code(tmp_path):
    (tmp_path / "index.py").write_text("import a\nimport b\n")
    (tmp_path / "a.py").write_text(f"S = '{'a' * 600_000}'\n")  # code of ~600 kB each
    (tmp_path / "b.py").write_text(f"S = '{'b' * 600_000}'\n")
    modules = compiled(tmp_path)
    # b did not fit the event: sent without its code, for what it imports
    assert [(m.path, bool(m.code)) for m in modules.modules] == [("/index.py", True), ("/a.py", True), ("/b.py", False)]
    cache = CodeCache(8 << 20)
    cache.store(str(tmp_path), modules)
    p = plan(tmp_path)
    cache.fill(p)
    assert [m.path for m in p.modules] == ["/index.py", "/a.py"] and not p.report_compiled
    assert sum(m.ByteSize() + MODULE_FRAMING_BYTES for m in p.modules) <= MAX_COMPILED_BYTES


@pytest.mark.parametrize("change", [
    {"path": "../etc/passwd"}, {"path": "helper.py"}, {"path": "/a/../helper.py"}, {"path": "/"},
    {"path": "/x\0"}, {"source_hash": b"short"}, {"imports": ["relative.py"]},
])
def test_a_module_unlike_those_the_runtime_makes_is_not_kept(root, change):
    modules = compiled(root)
    module = modules.modules[0]
    for key, value in change.items():
        if key == "imports":
            module.ClearField("imports")
            module.imports.extend(value)
        else:
            setattr(module, key, value)
    cache = CodeCache(1 << 20)
    cache.store(str(root), modules)
    assert len(cache) == 1 and cache.stored == 1  # only /helper.py


def test_a_cache_of_no_bytes_keeps_nothing_and_asks_nothing(root):
    cache = CodeCache(0)
    cache.store(str(root), compiled(root))
    p = plan(root)
    cache.fill(p)
    assert len(cache) == 0 and not p.report_compiled and not p.modules


def test_a_kept_module_does_not_hold_the_memory_of_the_event_it_came_in(root):
    """A part of a parsed message keeps the whole message's memory alive: kept as it came, one
    small module held every byte of the event around it (measured: 4 events of 50 MB, 200 MB)."""
    modules = compiled(root)
    modules.modules.add(path="dropped", source_hash=b"h" * 8, code=b"x" * (64 << 20))  # not kept: bad path
    data = sb.SandboxEvent(compiled=modules).SerializeToString()
    del modules
    cache = CodeCache(1 << 20)
    before = psutil.Process().memory_info().rss
    for _ in range(3):
        event = sb.SandboxEvent.FromString(data)
        cache.store(str(root), event.compiled)
        del event
    gc.collect()
    assert len(cache) == 2
    assert psutil.Process().memory_info().rss - before < 32 << 20


def test_a_plan_carries_at_most_the_bound_of_modules(tmp_path):
    count = MAX_PRELOAD + 20
    (tmp_path / "index.py").write_text("import m0\n")
    for i in range(count):
        (tmp_path / f"m{i}.py").write_text(f"import m{i + 1}\n" if i + 1 < count else "")
    modules = compiled(tmp_path)
    assert len(modules.modules) == MAX_PRELOAD  # index.py, m0 … m254
    cache = CodeCache(8 << 20)
    cache.store(str(tmp_path), modules)
    cache.store(str(tmp_path), compiled(tmp_path, "m200.py"))  # and m200 … m275: the whole chain known
    assert len(cache) == count + 1
    p = plan(tmp_path)
    cache.fill(p)
    assert len(p.modules) == MAX_PRELOAD and not p.report_compiled


def test_a_call_file_too_large_for_the_event_still_has_its_imports_handed_on(tmp_path):
    """Left out of the event, a call file of over a megabyte left the cache nothing to start
    its walk from: every call was asked to report, compiled its imports and sent them again."""
    (tmp_path / "index.py").write_text(f"import small\nS = '{'x' * 1_100_000}'\n")
    (tmp_path / "small.py").write_text("ONE = 1\n")
    modules = compiled(tmp_path)
    assert [(m.path, bool(m.code)) for m in modules.modules] == [("/index.py", False), ("/small.py", True)]
    cache = CodeCache(8 << 20)
    cache.store(str(tmp_path), modules)
    p = plan(tmp_path)
    cache.fill(p)
    assert [m.path for m in p.modules] == ["/small.py"] and not p.report_compiled
