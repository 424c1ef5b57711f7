"""The importer's read-ahead (``GuestImporter.preload``): which guest modules a call's file loads,
what code is taken from the daemon and what is compiled, without a sandbox."""
import dataclasses
import dis
import importlib.util
import marshal
import os
import signal
import sysconfig
import types
from pathlib import Path

import pytest

from isorund.sandbox.guest import _within_budget
from isorund.sandbox.compiled import MAX_COMPILED_BYTES, MAX_PRELOAD, MODULE_FRAMING_BYTES, Compiled, module_imports
from isorund.sandbox.import_policy import ImportPolicy
from isorund.sandbox.importer import GuestImporter
from test_importer import _guest_modules_forgotten, write  # noqa: F401  (an autouse fixture)

TREE = {
    "index.py": ("import helper\nfrom pkg import sub\nfrom pkg.ns import deep\nimport json\n"
                 "try:\n    import optional\nexcept ImportError:\n    pass\n"
                 "def f():\n    import lazy\n    return helper.X + sub.Y + deep.Z + other.W + lazy.L\n"
                 "class C:\n    import in_class\n"
                 "from pkg import other\n"),
    "helper.py": "X = 1\n",
    "optional.py": "",
    "lazy.py": "L = 0\n",
    "in_class.py": "",
    "pkg/__init__.py": "from . import other\n",
    "pkg/other.py": "from .sub import Y\nW = Y * 10\n",
    "pkg/sub.py": "Y = 2\n",
    "pkg/ns/deep.py": "Z = 3\n",
}


def importer(folder, **options) -> GuestImporter:
    return GuestImporter(ImportPolicy(guest_dir=str(folder), extensions=(".py",), allowed=frozenset({"json"})),
                         **options)


def test_the_imports_are_found_in_the_modules_code_and_in_its_functions_and_classes():
    code = compile(TREE["index.py"], "/index.py", "exec")
    assert module_imports(code) == [("helper", 0, None), ("pkg", 0, ("sub",)), ("pkg.ns", 0, ("deep",)),
                                    ("json", 0, None), ("optional", 0, None), ("pkg", 0, ("other",)),
                                    ("lazy", 0, None), ("in_class", 0, None)]
    nested = compile("def f():\n    def g():\n        return [__import__ for _ in ()] or __import__('x')\n"
                     "    import deep.er\n", "/n.py", "exec")
    assert module_imports(nested) == [("deep.er", 0, None)]  # a name made at run time is not found
    relative = compile("from . import a\nfrom ..b import c as d\nfrom .e import *\n", "/p/x.py", "exec")
    assert module_imports(relative) == [("", 1, ("a",)), ("b", 2, ("c",)), ("e", 1, ("*",))]


def _imports_by_dis(code):
    """The same, found by the standard library's disassembler (the slow way)."""
    found, previous = [], [None, None]
    for ins in dis.get_instructions(code):
        if ins.opname == "EXTENDED_ARG":  # the next instruction's argument, not an instruction
            continue
        if ins.opname == "IMPORT_NAME" and all(p is not None and p.opname == "LOAD_CONST" for p in previous):
            level, fromlist = (p.argval for p in previous)
            if isinstance(level, int) and (fromlist is None or isinstance(fromlist, tuple)):
                found.append((ins.argval, level, fromlist))
        previous = [previous[1], ins]
    return found + [i for c in code.co_consts if isinstance(c, types.CodeType) for i in _imports_by_dis(c)]


def test_the_bytecode_reader_finds_what_the_disassembler_finds():
    """Over standard library packages, and past 256 names and constants (EXTENDED_ARG)."""
    many = "".join(f"n{i} = {i}.5\n" for i in range(300)) + "import late.name\nfrom . import (a, b)\n"
    sources = [compile(many, "/many.py", "exec")]
    for package in ("json", "email", "asyncio", "importlib"):
        folder = Path(sysconfig.get_paths()["stdlib"]) / package
        sources += [compile(f.read_bytes(), str(f), "exec") for f in sorted(folder.glob("*.py"))]
    assert module_imports(sources[0])[-2:] == [("late.name", 0, None), ("", 1, ("a", "b"))]
    assert sum(len(module_imports(code)) for code in sources) > 300
    for code in sources:
        assert module_imports(code) == _imports_by_dis(code), code.co_filename


def test_preload_reaches_every_guest_module_the_file_loads_and_compiles_none_twice(tmp_path):
    write(tmp_path, TREE)
    found = importer(tmp_path).preload("index.py", {}, report=True)
    assert [m.path for m in found] == ["/index.py", "/helper.py", "/pkg/__init__.py", "/pkg/sub.py",
                                       "/pkg/ns/deep.py", "/optional.py", "/pkg/other.py", "/lazy.py", "/in_class.py"]
    by_path = {m.path: m for m in found}
    assert by_path["/index.py"].imports == ("/helper.py", "/pkg/__init__.py", "/pkg/sub.py", "/pkg/ns/deep.py",
                                            "/optional.py", "/pkg/other.py", "/lazy.py", "/in_class.py")
    assert by_path["/pkg/other.py"].imports == ("/pkg/sub.py",)
    source = (tmp_path / "helper.py").read_bytes()
    helper = by_path["/helper.py"]
    assert helper.source_hash == importlib.util.source_hash(source)
    assert marshal.loads(helper.code).co_filename == "/helper.py"
    stat = (tmp_path / "helper.py").stat()
    assert helper.version == (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def test_preloaded_modules_run_as_imported_ones_and_preload_runs_no_guest_code(tmp_path):
    write(tmp_path, {**TREE, "helper.py": "ran.append('helper')\nX = 1\n"})
    ran = []
    imp = importer(tmp_path, context={"ran": ran})
    imp.preload("index.py", {}, report=True)
    assert ran == []
    assert imp.load_main("index.py").f() == 1 + 2 + 3 + 20
    assert ran == ["helper"] and imp._preloaded == {}


def test_the_daemons_code_is_used_only_for_the_source_it_was_compiled_from(tmp_path):
    """The entry's code says something the file does not: only a matching hash makes it run."""
    write(tmp_path, {"index.py": "import helper\ndef f():\n    return helper.X\n", "helper.py": "X = 'source'\n"})
    compiled = {m.path: m for m in importer(tmp_path).preload("index.py", {}, report=True)}
    forged = marshal.dumps(compile("X = 'cached'\n", "/helper.py", "exec"))
    known = {**compiled, "/helper.py": dataclasses.replace(compiled["/helper.py"], code=forged)}
    imp = importer(tmp_path)
    assert imp.preload("index.py", known, report=False) == []
    assert imp.load_main("index.py").f() == "cached"
    stale = {**known, "/helper.py": dataclasses.replace(known["/helper.py"], source_hash=b"\0" * 8)}
    assert importer(tmp_path).load_main("index.py").f() == "source"
    imp = importer(tmp_path)
    imp.preload("index.py", stale, report=False)
    assert imp.load_main("index.py").f() == "source"


def test_without_report_only_modules_the_daemon_knows_are_read_ahead(tmp_path):
    write(tmp_path, TREE)
    known = {m.path: m for m in importer(tmp_path).preload("index.py", {}, report=True)}
    del known["/pkg/sub.py"]
    imp = importer(tmp_path)
    assert imp.preload("index.py", known, report=False) == []
    assert sorted(imp._preloaded) == sorted(str(tmp_path) + p for p in known)
    assert imp.load_main("index.py").f() == 26


def test_with_report_the_imports_are_found_again_and_changed_files_compiled(tmp_path):
    write(tmp_path, TREE)
    known = {m.path: m for m in importer(tmp_path).preload("index.py", {}, report=True)}
    (tmp_path / "helper.py").write_text("import extra\nX = extra.E\n")
    (tmp_path / "extra.py").write_text("E = 5\n")
    found = {m.path: m for m in importer(tmp_path).preload("index.py", known, report=True)}
    assert found["/helper.py"].imports == ("/extra.py",) and "/extra.py" in found
    assert marshal.loads(found["/helper.py"].code).co_names[:1] == ("extra",)
    assert found["/index.py"].code == known["/index.py"].code


def test_a_file_that_does_not_compile_is_left_to_the_import_and_its_error(tmp_path):
    write(tmp_path, {"index.py": "import broken\n", "broken.py": "def (:\n", "other.py": ""})
    imp = importer(tmp_path)
    assert [m.path for m in imp.preload("index.py", {}, report=True)] == ["/index.py"]
    with pytest.raises(SyntaxError) as raised:
        imp.load_main("index.py")
    assert raised.value.filename == "/broken.py"


def test_relative_imports_beyond_the_guest_folder_and_missing_names_load_nothing(tmp_path):
    write(tmp_path, {"index.py": "", "pkg/__init__.py": ""})
    imp = importer(tmp_path)
    assert imp.guest_files_of("/pkg/__init__.py", "x", 3, None) == []
    assert imp.guest_files_of("/index.py", "missing.deeper", 0, None) == []
    assert imp.guest_files_of("/index.py", "pkg", 0, ("missing", "*")) == ["/pkg/__init__.py"]
    assert imp.guest_files_of("/index.py", "json", 0, None) == []


def test_no_read_ahead_with_a_compiler_plugin(tmp_path):
    write(tmp_path, {"index.py": "import helper\n", "helper.py": ""})
    imp = importer(tmp_path, compiler=lambda source, filename: source)
    assert imp.preload("index.py", {}, report=True) == [] and not imp._preloaded


def test_what_goes_back_to_the_daemon_fits_its_bound_and_starts_with_the_calls_file():
    def module(path, size):
        return Compiled(path, b"h" * 8, b"c" * size, (), (1, 2, 3, 4))
    modules = [module("/index.py", 1000), module("/huge.py", MAX_COMPILED_BYTES), module("/small.py", 1000)]
    sent = _within_budget(modules)
    # the one too large goes without its code: the daemon still walks what it imports
    assert [(m.path, len(m.code)) for m in sent] == [("/index.py", 1000), ("/huge.py", 0), ("/small.py", 1000)]
    assert sum(m.ByteSize() + MODULE_FRAMING_BYTES for m in sent) <= MAX_COMPILED_BYTES


def test_a_file_that_is_no_regular_file_is_not_read_ahead_and_nothing_blocks(tmp_path):
    """Modules the daemon recorded, replaced since by a FIFO (a read would wait for a writer
    forever) and a link to /dev/zero (a read would never end): read-ahead skips both; the
    import meets them as it did before read-ahead existed (here it never runs)."""
    write(tmp_path, {"index.py": "if __name__ == 'never':\n    import pipe\n    import zeros\n",
                     "pipe.py": "", "zeros.py": ""})
    known = {m.path: m for m in importer(tmp_path).preload("index.py", {}, report=True)}
    assert known["/index.py"].imports == ("/pipe.py", "/zeros.py")
    os.unlink(tmp_path / "pipe.py")
    os.mkfifo(tmp_path / "pipe.py")
    os.unlink(tmp_path / "zeros.py")
    (tmp_path / "zeros.py").symlink_to("/dev/zero")
    signal.signal(signal.SIGALRM, _stuck)
    signal.alarm(10)
    try:
        for report in (False, True):
            imp = importer(tmp_path)
            imp.preload("index.py", known, report=report)
            assert sorted(imp._preloaded) == [str(tmp_path / "index.py")]
            imp.load_main("index.py")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _stuck(*_):
    raise AssertionError("read-ahead blocked on a file that is not a regular one")


def test_a_cache_entry_whose_bytecode_makes_no_sense_is_left_to_the_import(tmp_path):
    """A ``__pycache__`` entry is the folder owner's to make: one whose IMPORT_NAME points past
    its names costs read-ahead nothing but that module."""
    write(tmp_path, {"index.py": "import helper\n", "helper.py": "import os\n"})
    code = compile("import os\n", "/helper.py", "exec")
    raw = bytearray(code.co_code)
    at = raw[::2].index(dis.opmap["IMPORT_NAME"]) * 2
    raw[at + 1] = 200  # no such name
    source = (tmp_path / "helper.py").read_bytes()
    entry = Path(importlib.util.cache_from_source(str(tmp_path / "helper.py")))
    entry.parent.mkdir()
    entry.write_bytes(importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
                      + importlib.util.source_hash(source) + marshal.dumps(code.replace(co_code=bytes(raw))))
    imp = importer(tmp_path)
    assert [m.path for m in imp.preload("index.py", {}, report=True)] == ["/index.py"]


def test_read_ahead_stops_at_its_bound_of_modules(tmp_path):
    """A file importing more than MAX_PRELOAD modules: the first ones are read ahead, the rest
    are left to the import, which still loads every one."""
    count = MAX_PRELOAD + 20
    write(tmp_path, {"index.py": "".join(f"import m{i}\n" for i in range(count))
                     + f"def f():\n    return sum(m.ONE for m in ({', '.join(f'm{i}' for i in range(count))}))\n",
                     **{f"m{i}.py": "ONE = 1\n" for i in range(count)}})
    imp = importer(tmp_path)
    found = imp.preload("index.py", {}, report=True)
    assert len(found) == len(imp._preloaded) == MAX_PRELOAD
    assert imp.load_main("index.py").f() == count


def test_a_file_in_a_package_reads_its_packages_ahead_as_its_imports(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/sub/__init__.py": "from . import helper\n",
                     "pkg/sub/helper.py": "", "pkg/sub/mod.py": "from .. import other\n", "pkg/other.py": ""})
    found = importer(tmp_path).preload("pkg/sub/mod.py", {}, report=True)
    by_path = {m.path: m for m in found}
    assert found[0].path == "/pkg/sub/mod.py"
    assert by_path["/pkg/sub/mod.py"].imports == ("/pkg/__init__.py", "/pkg/sub/__init__.py", "/pkg/other.py")
    assert set(by_path) == {"/pkg/sub/mod.py", "/pkg/__init__.py", "/pkg/sub/__init__.py", "/pkg/sub/helper.py",
                            "/pkg/other.py"}
    # handed back by the daemon, they are all read ahead and none is compiled again
    known = {m.path: m for m in found}
    imp = importer(tmp_path)
    assert imp.preload("pkg/sub/mod.py", known, report=False) == []
    assert {os.path.relpath(p, tmp_path) for p in imp._preloaded} == {p.lstrip("/") for p in known}
    imp.load_main("pkg/sub/mod.py")
    assert not imp._preloaded  # each one used by the import


def test_read_ahead_compiles_only_files_the_import_loads(tmp_path):
    """Read-ahead's view of the guest folder is the import's own lookup: an allowed name's folder
    (``json/``, no ``__init__``) is no package the import loads, and a relative import past the
    importer's package (any, from a module named at the top) loads nothing; read-ahead compiled
    each of these files, which the call never ran."""
    guarded = "try:\n    {}\nexcept ImportError:\n    pass\n"
    write(tmp_path, {"index.py": "import json.decoder\nfrom json import tool\n"
                                 + guarded.format("from . import helper"),
                     "json/decoder.py": "", "json/tool.py": "", "helper.py": "",
                     "pkg/__init__.py": "", "pkg/mod.py": guarded.format("from .. import helper"),
                     "my-rules/index.py": guarded.format("from . import sibling"), "my-rules/sibling.py": ""})
    for file in ("index.py", "pkg/mod.py", "my-rules/index.py"):
        imp = importer(tmp_path)
        found = imp.preload(file, {}, report=True)
        imp.load_main(file)  # each import there fails or loads no guest file: none was read ahead for it
        loaded = {f"/{file}", *imp.guest_files}
        assert {m.path for m in found} <= loaded and set(imp._preloaded) == set(), file
    imp = importer(tmp_path)
    assert imp.guest_files_of("/index.py", "json.decoder", 0, None) == []
    assert imp.guest_files_of("/index.py", "", 1, ("helper",)) == []
    assert imp.guest_files_of("/pkg/mod.py", "", 2, ("helper",)) == []
    assert imp.guest_files_of("/pkg/mod.py", "", 1, ("mod",)) == ["/pkg/mod.py"]
