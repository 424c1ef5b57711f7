"""The import rules and the import hook, without a sandbox: pure Python over a temp folder."""
import builtins
import importlib.util
import marshal
import os
import py_compile
import signal
from pathlib import Path

import pytest

from isorund.sandbox import compiled
from isorund.sandbox import importer as importer_module
from isorund.sandbox.import_policy import REMOVED_BUILTINS, ImportPolicy
from isorund.sandbox.importer import GuestImporter


@pytest.fixture(autouse=True)
def _guest_modules_forgotten():
    """Guest modules enter sys.modules while a guest runs; the sandbox ends after one call,
    these tests do not: each test starts without the previous one's."""
    import sys
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        spec = getattr(sys.modules[name], "__spec__", None)
        if spec is not None and spec.loader is None:  # the importer's modules have no loader
            del sys.modules[name]


def policy(folder, allowed=(), extensions=(".py",), search_paths=()):
    return ImportPolicy(guest_dir=str(folder), extensions=tuple(extensions),
                        allowed=frozenset(allowed), search_paths=tuple(str(p) for p in search_paths))


def write(folder, files):
    for name, source in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_allowed_is_decided_by_the_top_level_name():
    p = ImportPolicy("/guest", (".py",), frozenset({"json", "xml"}))
    assert p.is_allowed("json") and p.is_allowed("xml.etree.ElementTree")
    assert not p.is_allowed("os") and not p.is_allowed("jsonx")


def test_packages_are_preferred_to_modules_and_extensions_keep_their_order():
    p = ImportPolicy("/guest", (".guest", ".py"), frozenset())
    assert p.source_candidates("/guest", "m") == [
        ("/guest/m/__init__.guest", True), ("/guest/m/__init__.py", True),
        ("/guest/m.guest", False), ("/guest/m.py", False)]


def test_guest_paths_are_shown_relative_to_the_guest_folder():
    p = ImportPolicy("/guest", (".py",), frozenset())
    assert p.display_name("/guest/pkg/a.py") == "/pkg/a.py"
    assert p.display_name("/srv/lib/x.py") == "/srv/lib/x.py"
    assert p.display_name("/guestbook/x.py") == "/guestbook/x.py"


def test_a_disallowed_module_is_cannot_find_module(tmp_path):
    write(tmp_path, {"index.py": "import os\n"})
    with pytest.raises(ModuleNotFoundError) as info:
        GuestImporter(policy(tmp_path)).load_main("index.py")
    assert str(info.value) == "Cannot find module 'os'"
    assert info.value.name == "os"


def test_an_allowed_module_that_does_not_exist_is_named(tmp_path):
    write(tmp_path, {"index.py": "import no_such_module_here\n"})
    with pytest.raises(ModuleNotFoundError, match="Cannot find module 'no_such_module_here'"):
        GuestImporter(policy(tmp_path, allowed={"no_such_module_here"})).load_main("index.py")


def test_guest_modules_packages_and_relative_imports(tmp_path):
    write(tmp_path, {
        "index.py": "from pkg.sub import value\nimport pkg\ndef f():\n    return value, pkg.ONE\n",
        "pkg/__init__.py": "from .helper import ONE\n",
        "pkg/helper.py": "ONE = 1\n",
        "pkg/sub.py": "from . import helper\nvalue = helper.ONE + 1\n",
    })
    importer = GuestImporter(policy(tmp_path))
    main = importer.load_main("index.py")
    assert main.f() == (2, 1)
    assert main.__file__ == str(tmp_path / "index.py")  # where it is; its code says "/index.py"
    assert main.f.__code__.co_filename == "/index.py"
    assert set(importer.modules) >= {"index", "pkg", "pkg.helper", "pkg.sub"}


def test_guest_modules_are_in_sys_modules_only_under_free_names_and_only_while_the_guest_runs(tmp_path):
    """dataclasses, typing and enum look a class's module up in sys.modules; a guest module
    must never replace a module the runtime holds, nor outlive the guest's code there."""
    import json
    import sys
    write(tmp_path, {"index.py": "import json_helpers, json\n", "json_helpers.py": "X = 1\n",
                     "json.py": "SHADOW = True\n"})
    importer = GuestImporter(policy(tmp_path))
    main = importer.load_main("index.py")
    assert main.json.SHADOW and sys.modules["json"] is json  # the guest's json is its own
    assert sys.modules["json_helpers"] is main.json_helpers and sys.modules["index"] is main
    assert main.__spec__.name == "index" and main.__spec__.origin == str(tmp_path / "index.py")
    importer.withdraw()
    assert "json_helpers" not in sys.modules and "index" not in sys.modules and sys.modules["json"] is json


def test_a_dataclass_with_string_annotations_works_in_a_guest_module(tmp_path):
    write(tmp_path, {"index.py": "import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: 'int'\n"
                                 "    y: 'int' = 0\ndef f():\n    return dataclasses.astuple(P(1, 2))\n"})
    importer = GuestImporter(policy(tmp_path, allowed=frozenset({"dataclasses"})))
    try:
        assert importer.load_main("index.py").f() == (1, 2)
    finally:
        importer.withdraw()


def test_a_module_that_fails_to_import_leaves_sys_modules(tmp_path):
    import sys
    write(tmp_path, {"index.py": "import broken_helper\n", "broken_helper.py": "raise ValueError('no')\n"})
    with pytest.raises(ValueError):
        GuestImporter(policy(tmp_path)).load_main("index.py")
    assert "broken_helper" not in sys.modules and "index" not in sys.modules


def test_only_files_with_a_source_extension_are_guest_source(tmp_path):
    write(tmp_path, {"index.guest": "import other\n", "other.py": "X = 1\n"})
    with pytest.raises(ModuleNotFoundError, match="'other'"):
        GuestImporter(policy(tmp_path, extensions=(".guest",))).load_main("index.guest")


def test_whitelisted_folders_serve_only_allowed_names(tmp_path):
    guest, libs = tmp_path / "guest", tmp_path / "libs"
    write(guest, {"index.py": "import mathlib\nresult = mathlib.double(4)\n"})
    write(libs, {"mathlib/__init__.py": "def double(x):\n    return 2 * x\n"})
    with pytest.raises(ModuleNotFoundError, match="'mathlib'"):
        GuestImporter(policy(guest, search_paths=[libs])).load_main("index.py")
    main = GuestImporter(policy(guest, allowed={"mathlib"}, search_paths=[libs])).load_main("index.py")
    assert main.result == 8


def test_the_resolver_is_asked_before_the_whitelisted_folders(tmp_path):
    guest, elsewhere = tmp_path / "guest", tmp_path / "elsewhere"
    write(guest, {"index.py": "import lib\nresult = lib.WHO\n"})
    write(elsewhere, {"lib.py": "WHO = 'resolver'\n"})
    asked = []

    def resolve(name):
        asked.append(name)
        return str(elsewhere / "lib.py")
    main = GuestImporter(policy(guest, allowed={"lib"}), resolver=resolve).load_main("index.py")
    assert main.result == "resolver" and asked == ["lib"]


def test_the_compiler_transforms_every_guest_file(tmp_path):
    write(tmp_path, {"index.py": "import two\nresult = 3 + two.TWO\n", "two.py": "TWO = 1 + 1\n"})
    seen = []

    def compiler(source, filename):
        seen.append(filename)
        return source.replace("+", "*")
    main = GuestImporter(policy(tmp_path), compiler=compiler).load_main("index.py")
    assert main.result == 3 * 1
    assert sorted(seen) == ["/index.py", "/two.py"]


def test_guest_builtins_lack_the_host_ones_and_carry_the_context(tmp_path):
    write(tmp_path, {"index.py": "def f():\n    return tenant\n"
                                 "def g():\n    return open\n"})
    importer = GuestImporter(policy(tmp_path), context={"tenant": "acme"})
    main = importer.load_main("index.py")
    assert main.f() == "acme"
    with pytest.raises(NameError):
        main.g()
    assert REMOVED_BUILTINS.isdisjoint(importer.builtins)
    assert {"open", "exit", "quit", "input", "breakpoint", "help"} <= REMOVED_BUILTINS
    assert builtins.open is not None  # the host's builtins module itself is untouched


def test_a_failed_module_is_not_left_half_imported(tmp_path):
    write(tmp_path, {"index.py": "try:\n    import bad\nexcept ZeroDivisionError:\n    pass\nimport bad\n",
                     "bad.py": "x = 1 / 0\n"})
    importer = GuestImporter(policy(tmp_path))
    with pytest.raises(ZeroDivisionError):
        importer.load_main("index.py")
    assert "bad" not in importer.modules


def test_relative_import_beyond_the_top_is_an_import_error(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/mod.py": "from ... import x\n"})
    with pytest.raises(ImportError, match="^attempted relative import beyond top-level package$"):
        GuestImporter(policy(tmp_path)).load_main("pkg/mod.py")


@pytest.mark.parametrize("file", ["index.py", "my-rules/index.py"])
@pytest.mark.parametrize("statement", ["from . import x", "from .. import x", "from .x import y"])
def test_a_relative_import_in_a_top_level_module_has_no_parent_package_as_in_python(tmp_path, file, statement):
    """Python's words when ``__package__`` is empty; the importer said "beyond top-level package"."""
    write(tmp_path, {file: statement + "\n", "x.py": "y = 1\n"})
    with pytest.raises(ImportError, match="^attempted relative import with no known parent package$"):
        GuestImporter(policy(tmp_path)).load_main(file)


def test_a_folder_without_init_is_a_namespace_package_as_in_python(tmp_path):
    write(tmp_path, {"index.py": "import lib.util\nfrom lib.deeper import leaf\nfrom lib import util as u\n"
                                 "def f():\n    return lib.util.V, leaf.W, u.V\n",
                     "lib/util.py": "V = 'util'\n", "lib/deeper/leaf.py": "W = 'leaf'\n"})
    main = GuestImporter(policy(tmp_path)).load_main("index.py")
    assert main.f() == ("util", "leaf", "util")
    assert main.lib.__file__ is None and main.lib.__path__ == [str(tmp_path / "lib")]


def test_a_folder_does_not_hide_an_allowed_module_of_its_name(tmp_path):
    write(tmp_path, {"index.py": "import json\ndef f():\n    return json.dumps([1])\n", "json/notes.txt": "x\n"})
    assert GuestImporter(policy(tmp_path, allowed={"json"})).load_main("index.py").f() == "[1]"


def test_a_missing_name_is_still_not_found_next_to_folders(tmp_path):
    write(tmp_path, {"index.py": "import lib.nothing\n", "lib/util.py": "V = 1\n"})
    with pytest.raises(ModuleNotFoundError, match="'lib.nothing'"):
        GuestImporter(policy(tmp_path)).load_main("index.py")


# -- cached bytecode (__pycache__) -----------------------------------------------------------
def precompile(path, mode=py_compile.PycInvalidationMode.TIMESTAMP):
    py_compile.compile(str(path), cfile=importlib.util.cache_from_source(str(path)), doraise=True,
                       invalidation_mode=mode)


def same_size_edit(path, new_source):
    """Replaces the source with text of the same size and keeps its modification time: what a
    timestamp-stamped entry cannot tell apart, so its code shows whether the entry was used."""
    stat = path.stat()
    assert len(new_source) == stat.st_size
    path.write_text(new_source)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def load(folder, name="m", **options):
    return GuestImporter(policy(folder), **options).load_main(f"{name}.py")


def test_a_precompiled_module_is_loaded_from_its_cache_under_its_guest_name(tmp_path):
    write(tmp_path, {"m.py": "class K:\n    def f(self):\n        return (lambda: 'cached')()\n"})
    precompile(tmp_path / "m.py")
    same_size_edit(tmp_path / "m.py", "class K:\n    def f(self):\n        return (lambda: 'source')()\n")
    module = load(tmp_path)
    assert module.K().f() == "cached"
    # every code object in it is named as compiled guest source is, not by its host path
    method = module.K.f.__code__
    lam = next(c for c in method.co_consts if hasattr(c, "co_filename"))
    assert {module.K.f.__code__.co_filename, lam.co_filename} == {"/m.py"}


def test_an_entry_for_another_version_of_the_source_is_not_used(tmp_path):
    write(tmp_path, {"m.py": "X = 'old'\n"})
    precompile(tmp_path / "m.py")
    (tmp_path / "m.py").write_text("X = 'new, longer'\n")
    assert load(tmp_path).X == "new, longer"


@pytest.mark.parametrize("mode", [py_compile.PycInvalidationMode.CHECKED_HASH,
                                  py_compile.PycInvalidationMode.UNCHECKED_HASH])
def test_a_hash_stamped_entry_is_used_only_for_the_source_it_was_made_from(tmp_path, monkeypatch, mode):
    write(tmp_path, {"m.py": "X = 'a'\n"})
    precompile(tmp_path / "m.py", mode)
    with monkeypatch.context() as m:
        m.setattr(importer_module, "compile", _no_compile, raising=False)
        assert load(tmp_path).X == "a"  # from the cache: nothing was compiled
    # an edit of the same size and time: the hash tells, even for an entry Python would not check
    same_size_edit(tmp_path / "m.py", "X = 'b'\n")
    assert load(tmp_path).X == "b"


@pytest.mark.parametrize("entry", [b"", b"garbage", importlib.util.MAGIC_NUMBER + b"\0" * 8,
                                   b"\0\0\0\0" + b"\0" * 12 + marshal.dumps(compile("X = 1", "m", "exec")),
                                   "valid header, no code", "valid header, bad flags"])
def test_an_entry_that_is_not_this_interpreters_code_for_the_source_is_ignored(tmp_path, entry):
    write(tmp_path, {"m.py": "X = 'source'\n"})
    precompile(tmp_path / "m.py")
    cache = Path(importlib.util.cache_from_source(str(tmp_path / "m.py")))
    header = cache.read_bytes()[:16]
    if entry == "valid header, no code":
        entry = header + marshal.dumps(42)
    elif entry == "valid header, bad flags":
        entry = header[:4] + b"\x04\0\0\0" + header[8:] + marshal.dumps(compile("X = 'cache'", "m", "exec"))
    cache.write_bytes(entry)
    assert load(tmp_path).X == "source"


def test_no_cache_is_read_for_a_compiler_plugins_sources_or_other_extensions(tmp_path):
    write(tmp_path, {"m.py": "X = 'cached'\n", "g.guest": "X = 'guest'\n"})
    precompile(tmp_path / "m.py")
    same_size_edit(tmp_path / "m.py", "X = 'source'\n")
    assert load(tmp_path, compiler=lambda source, name: source).X == "source"
    assert load(tmp_path).X == "cached"
    assert compiled.cached_code(str(tmp_path / "g.guest"), b"X = 'guest'\n", 0, "/g.guest") is None


def test_a_cache_entry_far_larger_than_its_source_is_not_read(tmp_path):
    # A sparse 700 MiB entry with a matching stamp was read whole: the call ran out of memory
    # before its first line. Compiled code weighs about what its source does.
    write(tmp_path, {"m.py": "X = 'cached'\n"})
    precompile(tmp_path / "m.py")
    entry = importlib.util.cache_from_source(str(tmp_path / "m.py"))
    same_size_edit(tmp_path / "m.py", "X = 'source'\n")
    assert load(tmp_path).X == "cached"
    with open(entry, "r+b") as f:
        f.truncate(700 << 20)  # (marshal ignores what follows the code; a hole takes no disk)
    source = (tmp_path / "m.py").read_bytes()
    assert compiled.cached_code(str(tmp_path / "m.py"), source, (tmp_path / "m.py").stat().st_mtime, "/m.py") is None
    assert load(tmp_path).X == "source"


def _no_compile(*args, **kwargs):
    raise AssertionError("compiled, though a valid cache entry was there")


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "folder"])
def test_an_entry_that_is_no_regular_file_is_ignored_without_blocking_or_reading_it(tmp_path, kind):
    write(tmp_path, {"m.py": "X = 'source'\n"})
    cache = Path(importlib.util.cache_from_source(str(tmp_path / "m.py")))
    cache.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(cache)  # opening it to read would wait for a writer forever
    elif kind == "folder":
        cache.mkdir()
    else:
        cache.symlink_to("/dev/zero")  # reading it would never end
    signal.signal(signal.SIGALRM, _stuck)
    signal.alarm(10)  # a reader that blocks or reads forever fails here instead of hanging
    try:
        assert load(tmp_path).X == "source"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _stuck(*_):
    raise AssertionError("the importer blocked on, or kept reading, a cache entry")


def test_a_file_in_a_package_is_imported_by_its_dotted_name_after_its_packages(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "LOADED = True\n",
                     "pkg/sub/__init__.py": "",
                     "pkg/sub/mod.py": "from . import helper\nfrom .. import LOADED\nfrom ..other import back\n"
                                       "def f():\n    return __name__, __package__, helper.H, LOADED, back()\n",
                     "pkg/sub/helper.py": "H = 'helper'\n",
                     "pkg/other.py": "def back():\n    import pkg.sub.mod\n    return pkg.sub.mod\n",
                     "ns/mod.py": "from .helper import H\ndef f():\n    return __name__, H\n",
                     "ns/helper.py": "H = 'ns helper'\n"})
    importer = GuestImporter(policy(tmp_path))
    main = importer.load_main("pkg/sub/mod.py")
    name, package, helper, loaded, same = main.f()
    assert (name, package, helper, loaded) == ("pkg.sub.mod", "pkg.sub", "helper", True)
    assert same is main  # one module, whoever imports it
    assert GuestImporter(policy(tmp_path)).load_main("ns/mod.py").f() == ("ns.mod", "ns helper")  # a namespace package
    assert GuestImporter(policy(tmp_path)).load_main("pkg/__init__.py").__name__ == "pkg"


@pytest.mark.parametrize(("files", "file"), [
    ({"my-rules/mod.py": ""}, "my-rules/mod.py"),        # a folder that is no name
    ({"pkg/my-mod.py": "", "pkg/__init__.py": ""}, "pkg/my-mod.py"),
    ({"pkg.py": "", "pkg/mod.py": ""}, "pkg/mod.py"),       # `import pkg` finds the module pkg.py
    ({"json/mod.py": ""}, "json/mod.py"),                   # `import json` is the allowed module
])
def test_a_file_its_dotted_name_would_not_reach_is_a_top_level_module(tmp_path, files, file):
    write(tmp_path, files)
    importer = GuestImporter(policy(tmp_path, allowed={"json"}))
    module = importer.load_main(file)
    assert module.__name__ == os.path.splitext(os.path.basename(file))[0] and module.__package__ == ""
    assert module.__file__ == str(tmp_path / file)


@pytest.mark.parametrize("file", ["my-rules/helpers.py", "jobs-2024/json.py", "2024/helpers.py"])
def test_a_call_file_named_by_its_stem_takes_no_name_the_import_finds_elsewhere(tmp_path, file):
    """``my-rules/helpers.py`` is the module ``helpers``: recorded under that name, it was what
    every ``import helpers`` of the call got, so root's helpers.py (or the standard library's
    json, allowed) could no longer be reached."""
    stem = os.path.splitext(os.path.basename(file))[0]
    write(tmp_path, {file: f"import fmt, {stem}\nCALL_FILE = True\ndef f():\n    return fmt.show([1]), {stem}\n",
                     "fmt.py": "import json\ndef show(x):\n    return json.dumps(x)\n",
                     "helpers.py": "ROOT = True\n"})
    importer = GuestImporter(policy(tmp_path, allowed={"json"}))
    try:
        main = importer.load_main(file)
        shown, other = main.f()
        assert shown == "[1]" and other is not main and not hasattr(other, "CALL_FILE")
        assert main.__name__ == stem and main.__package__ == ""  # still named by its stem
        assert importer.modules.get(stem) is (other if stem == "helpers" else None)  # json: Python's own
    finally:
        importer.withdraw()


def test_a_call_file_named_by_its_stem_keeps_a_name_nothing_else_holds(tmp_path):
    """As before: ``import rules`` gets the call's file, and dataclasses and pickle find its
    classes by their module's name."""
    import pickle
    write(tmp_path, {"my-rules/rules.py": "import dataclasses, pickle\n@dataclasses.dataclass\nclass P:\n"
                                          "    x: 'int'\ndef f():\n    import rules\n"
                                          "    return rules, pickle.loads(pickle.dumps(P(1)))\n"})
    importer = GuestImporter(policy(tmp_path, allowed={"dataclasses", "pickle"}))
    try:
        main = importer.load_main("my-rules/rules.py")
        same, copy = main.f()
        assert same is main and importer.modules["rules"] is main and copy == main.P(1)
        assert pickle.loads(pickle.dumps(main.P(2))) == main.P(2)
    finally:
        importer.withdraw()


@pytest.mark.parametrize("null_at", ["index.py", "helper.py"])
def test_a_null_byte_in_guest_source_is_a_syntax_error_naming_the_file(tmp_path, null_at):
    """Python's compiler says "source code string cannot contain null bytes", naming no file."""
    write(tmp_path, {"index.py": "import helper\n", "helper.py": "X = 1\n"})
    (tmp_path / null_at).write_bytes((tmp_path / null_at).read_bytes() + b"Y = 'a\0b'\n")
    with pytest.raises(SyntaxError) as info:
        GuestImporter(policy(tmp_path)).load_main("index.py")
    assert type(info.value) is SyntaxError
    assert info.value.msg == f"/{null_at} is not valid source text: a null byte at column 7"
    assert (info.value.filename, info.value.lineno, info.value.offset) == (f"/{null_at}", 2, 7)
