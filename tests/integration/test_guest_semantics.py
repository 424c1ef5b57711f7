"""Guest code as people write it, end to end: methods as entry points, dates, future
statements, typed dataclasses, source encodings, and errors that say whose fault they are.
Each case was found failing by a black-box review against the contract."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from escaped import ESCAPED
from isorun import errors


def test_a_bound_method_a_classmethod_and_a_callable_object_are_called_like_functions(runner):
    r = runner({"index.py": """
        class Handler:
            def handle(self, a, b):
                return [a, b]
            @classmethod
            def build(cls, a, b):
                return [a, b]
            def __call__(self, a, b=7):
                return [a, b]
        handle = Handler().handle
        build = Handler.build
        instance = Handler()
    """})
    assert r.run("handle", args=[1, 2]) == [1, 2]
    assert r.run("build", args=[1, 2]) == [1, 2]
    # missing arguments are None for these too, counted without self / cls; defaults kept
    assert r.run("handle", args=[1]) == [1, None]
    assert r.run("build") == [None, None]
    assert r.run("instance") == [None, 7]


def test_datetime_formats_parses_and_reads_the_clock_with_the_default_modules(runner):
    r = runner({"index.py": """
        import datetime
        def f():
            d = datetime.date(2020, 1, 2)
            return [d.strftime('%d/%m/%Y'), f"{d:%Y}",
                    datetime.datetime.strptime('2020-01-02', '%Y-%m-%d').isoformat(),
                    datetime.date.today().year > 2000, d.timetuple().tm_yday]
    """})
    assert r.run("f") == ["02/01/2020", "2020", "2020-01-02T00:00:00", True, 2]


@pytest.mark.skipif(not os.path.isdir("/usr/share/zoneinfo"), reason="this host has no time-zone database")
def test_time_zones_are_known_to_a_guest_that_imports_zoneinfo(runner):
    """The host's time-zone database is bound read-only; without it every ZoneInfo(...) failed
    with ZoneInfoNotFoundError."""
    r = runner({"index.py": """
        from datetime import datetime
        from zoneinfo import ZoneInfo
        def offsets():
            paris = ZoneInfo("Europe/Paris")
            return [datetime(2026, 1, 15, 12, tzinfo=paris).utcoffset().seconds,
                    datetime(2026, 7, 15, 12, tzinfo=paris).utcoffset().seconds]
    """}, external=["zoneinfo"])
    assert r.run("offsets") == [3600, 7200]


def test_time_comes_with_datetime_and_not_without_it(daemon, start_daemon, make_root):
    from isorun import CodeRunner
    root = make_root({"index.py": "import time\ndef f():\n    return 1\n"})
    with CodeRunner(root=root, file="index.py", socket=daemon.socket) as r:
        assert r.run("f") == 1  # datetime is a default module, so time is importable too
    without_datetime = start_daemon(config='default_external = ["json"]\n')
    with CodeRunner(root=root, file="index.py", socket=without_datetime.socket) as r:
        with pytest.raises(errors.ModuleNotFound) as info:
            r.run("f")
    assert info.value.module == "time"


def test_future_statements_and_dataclasses_with_string_annotations_work(runner):
    r = runner({"index.py": """
        from __future__ import annotations
        import dataclasses
        from helper import Point

        @dataclasses.dataclass
        class Box:
            corner: Point
            label: 'str' = 'box'

        def f():
            return dataclasses.astuple(Box(Point(1, 2)))
    """, "helper.py": """
        from __future__ import annotations
        import dataclasses
        @dataclasses.dataclass(frozen=True)
        class Point:
            x: int
            y: int
    """})
    assert r.run("f") == ((1, 2), "box")


def test_source_is_decoded_as_python_decodes_it(runner):
    r = runner({"index.py": "import latin, bom\ndef f():\n    return [latin.E, bom.B]\n"})
    with open(os.path.join(r.root, "latin.py"), "wb") as f:
        f.write("# -*- coding: latin-1 -*-\nE = 'é'\n".encode("latin-1"))
    with open(os.path.join(r.root, "bom.py"), "wb") as f:
        f.write(b"\xef\xbb\xbfB = 'bom'\n")
    assert r.run("f") == ["é", "bom"]


def test_a_file_that_is_not_text_in_its_encoding_is_a_syntax_error_at_its_line_and_column(runner):
    """The codec's message gave only the byte's offset in the file ("in position 31")."""
    r = runner({"index.py": "import helper\ndef f():\n    return 1\n"})
    with open(os.path.join(r.root, "helper.py"), "wb") as f:
        f.write(b"def f():\n    return 1\n\nX = 'caf\xe9'\n")
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "SyntaxError"
    assert str(info.value).endswith("/helper.py is not valid source text: 'utf-8' cannot decode byte e9 at "
                                    "column 9 (invalid continuation byte) (helper.py, line 4)")
    assert 'File "/helper.py", line 4' in info.value.traceback


def test_a_refusal_the_guest_forges_or_alters_is_its_own_error(runner):
    """The refusal's class is reachable (``type(e)``): a new instance of it made the caller's
    ModuleNotFound name a module nobody imported, and the guest's tracebacks named the class
    isorund.sandbox.import_errors.GuestModuleNotFound."""
    r = runner({"index.py": """
        def forged():
            try:
                import os
            except ImportError as e:
                raise type(e)("Cannot find module 'fake'", name="fake")
        def altered():
            try:
                import os
            except ImportError as e:
                e.name = "fake"
                raise
        def again():
            try:
                import os
            except ImportError as e:
                caught = e
            raise caught
        def named():
            try:
                import os
            except ImportError as e:
                return [type(e).__name__, type(e).__module__]
    """})
    for func in ("forged", "altered"):
        with pytest.raises(errors.GuestError) as info:
            r.run(func)
        assert info.value.type_name == "ModuleNotFoundError", func
        assert "isorund" not in info.value.traceback and "GuestModuleNotFound" not in info.value.traceback
    with pytest.raises(errors.ModuleNotFound) as refused:
        r.run("again")  # the importer's own refusal, raised again unchanged, still is one
    assert refused.value.module == "os"
    assert r.run("named") == ["ModuleNotFoundError", "builtins"]


def test_imports_python_itself_would_treat_so(runner):
    """Each of these differed from Python's own import before."""
    r = runner({
        "index.py": """
            def star():
                import starred
                return starred.NAMES
            def replaced():
                import repl
                return repl.V
            def empty():
                __import__("")
            def circular():
                import cy1
            def bad_all():
                import badstar
        """,
        "pb/__init__.py": "__all__ = [1]\n",
        "badstar.py": "from pb import *\n",
        "pa/__init__.py": "__all__ = ['subm', 'Z']\nZ = 1\n",
        "pa/subm.py": "S = 'sub'\n",
        "starred.py": "from pa import *\nNAMES = [subm.S, Z]\n",
        "repl.py": "import sys\nclass R:\n    V = 'replaced'\nsys.modules[__name__] = R()\n",
        "cy1.py": "from cy2 import B\nA = 1\n",
        "cy2.py": "from cy1 import A\nB = 2\n",
    }, external=["sys"])
    assert r.run("star") == ["sub", 1]  # was: AttributeError, module 'pa' has no attribute 'subm'
    assert r.run("replaced") == "replaced"  # was: AttributeError, the module rather than its replacement
    with pytest.raises(errors.GuestError) as info:
        r.run("empty")  # was: ModuleNotFound "Cannot find module ''"
    assert info.value.type_name == "ValueError" and "Empty module name" in str(info.value)
    with pytest.raises(errors.GuestError) as info:
        r.run("circular")  # the hint was missing
    assert "from partially initialized module 'cy1' (most likely due to a circular import)" in str(info.value)
    with pytest.raises(errors.GuestError) as info:
        r.run("bad_all")  # Python's own words for an __all__ that is not all names
    assert info.value.type_name == "TypeError" and "Item in pb.__all__ must be str, not int" in str(info.value)


def test_a_submodule_in_external_is_refused_rather_than_widened(runner):
    r = runner({"index.py": "def f():\n    return 1\n"}, external=["os.path"])
    with pytest.raises(errors.InvalidRequest, match="cannot be allowed without all of 'os'; name 'os'"):
        r.run("f")


def test_a_module_not_found_error_the_guest_raises_is_its_own(runner):
    r = runner({"index.py": """
        def f():
            raise ModuleNotFoundError("the 'fancy' backend is not configured")
        def g():
            import yaml_that_is_not_here
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "ModuleNotFoundError" and "'fancy' backend" in str(info.value)
    assert "index.py" in info.value.traceback
    with pytest.raises(errors.ModuleNotFound) as refused:  # the importer's refusal is still one
        r.run("g")
    assert refused.value.module == "yaml_that_is_not_here"


def test_a_memory_error_the_guest_raises_is_its_own_and_a_large_result_says_result(runner):
    r = runner({"index.py": """
        def f(n):
            raise MemoryError('order too large to price: ' + str(n))
        def big():
            return 'x' * (17 * 1024 * 1024)
        def big_bytes():
            return b'x' * (13 * 1024 * 1024)
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("f", args=[5000])
    assert info.value.type_name == "MemoryError" and "order too large to price: 5000" in str(info.value)
    with pytest.raises(errors.ResourceLimitError) as limit:
        r.run("big")
    assert limit.value.limit == "result" and "(limit 'result';" in str(limit.value)
    # 13 MiB of bytes under a 16 MiB limit: the message says why it is over
    with pytest.raises(errors.ResourceLimitError) as limit:
        r.run("big_bytes")
    assert limit.value.limit == "result"
    assert "more than 16777216 bytes once encoded (limit 'result'; bytes take 4/3 of their length" in str(limit.value)


def test_frames_of_code_the_guest_compiled_itself_are_in_its_traceback(runner):
    """They were dropped with the runtime's: the traceback of an error in exec'd code ended at
    the exec line, without the line that failed."""
    r = runner({"index.py": """
        def f():
            exec("def g():\\n    raise ValueError('in exec')\\ng()")
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert 'File "<string>", line 2, in g' in info.value.traceback, info.value.traceback
    assert 'File "/index.py", line 3, in f' in info.value.traceback
    assert "frozen" not in info.value.traceback and "isorund" not in info.value.traceback

def test_a_memory_error_the_guest_raises_without_a_message_is_its_own_too(runner):
    """Both were ResourceLimitError('memory'), "the call went over its memory limit"."""
    r = runner({"index.py": """
        class Exhausted(MemoryError):
            pass
        def bare():
            raise MemoryError
        def own_class():
            raise Exhausted()
        def allocation():
            return bytearray(1 << 40)
        def passed_on():
            try:
                bytearray(1 << 40)
            except MemoryError:
                raise
        def in_code_it_compiled():
            exec("raise MemoryError")
    """})
    for func, type_name in (("bare", "MemoryError"), ("own_class", "Exhausted"), ("in_code_it_compiled", "MemoryError")):
        with pytest.raises(errors.GuestError) as info:
            r.run(func)
        assert info.value.type_name == type_name and "index.py" in info.value.traceback
    for func in ("allocation", "passed_on"):  # the interpreter's refusal, and it passed on
        with pytest.raises(errors.ResourceLimitError) as limit:
            r.run(func, limits={"memory_bytes": 256 << 20})
        assert limit.value.limit == "memory"
        assert str(limit.value) == "the call went over its memory limit of 256 MiB (memory_bytes)"


def test_an_exception_whose_class_hides_its_name_is_still_the_guests(runner):
    """A metaclass made the class's __name__ a property that raises, or an int: the report
    failed on it and the sandbox ended without an outcome (a SandboxError)."""
    r = runner({"index.py": """
        class RaisingName(type):
            @property
            def __name__(cls):
                raise RuntimeError("no name")
        class IntName(type):
            @property
            def __name__(cls):
                return 42
        class Hidden(Exception, metaclass=RaisingName):
            pass
        class Numbered(Exception, metaclass=IntName):
            pass
        def hidden():
            raise Hidden("boom")
        def numbered():
            raise Numbered("bang")
    """})
    for func, type_name, message in (("hidden", "Hidden", "boom"), ("numbered", "Numbered", "bang")):
        with pytest.raises(errors.GuestError) as info:
            r.run(func)
        assert (info.value.type_name, info.value.message) == (type_name, message)


def test_a_failing_operator_plugin_is_a_sandbox_error_naming_it_not_the_guests(runner):
    r = runner({"index.py": "def f(a):\n    return a\n"})
    with pytest.raises(errors.SandboxError, match="the args_resolver plugin 'add-one' raised TypeError"):
        r.run("f", args=["a"], args_resolver="add-one")
    resolved = runner({"index.py": "def f(a):\n    return a\n"}, resolver="prefix", resolver_options={})
    with pytest.raises(errors.SandboxError, match="the resolver plugin 'prefix' raised KeyError"):
        resolved.run("f", args=[1])



BROKEN_PLUGINS = """
import sys

def compiler_exits(source, filename):
    sys.exit(3)

def compiler_raises_base(source, filename):
    raise BaseException("base")

def compiler_none(source, filename):
    return None

def compiler_bytes(source, filename):
    return source.encode()

def args_exit(args):
    sys.exit(0)

def args_int(args):
    return 5

def args_dict(args):
    return {"a": 1}

def args_generator(args):
    yield 1
    raise ValueError("gen boom")

def resolver_five(options):
    return 5

def resolver_of(options):
    return lambda name: options["path"]

def resolver_chatty(options):
    print("resolver made with", options["path"])
    def resolve(name):
        print("resolving", name)
        return options["path"]
    return resolve

def compiler_chatty(source, filename):
    print("compiling", filename)
    return source

def resolver_if_plain(options):
    plain = options == {"path": options["path"], "n": 3, "tag": {"$type": "bytes", "$value": "AP8="}}
    return lambda name: options["path"] if plain and type(options["n"]) is int else None
"""
BROKEN_CONFIG = """
plugin_paths = ["{plugins}", "%s"]

[plugins.compilers]
exits = "broken_plugins:compiler_exits"
base = "broken_plugins:compiler_raises_base"
none = "broken_plugins:compiler_none"
bytes = "broken_plugins:compiler_bytes"
chatty = "broken_plugins:compiler_chatty"

[plugins.args_resolvers]
exits = "broken_plugins:args_exit"
int = "broken_plugins:args_int"
dict = "broken_plugins:args_dict"
generator = "broken_plugins:args_generator"

[plugins.resolvers]
five = "broken_plugins:resolver_five"
path = "broken_plugins:resolver_of"
plain = "broken_plugins:resolver_if_plain"
chatty = "broken_plugins:resolver_chatty"
"""


@pytest.fixture(scope="module")
def broken_plugins(start_daemon_session, tmp_path_factory):
    """A daemon configured with the plugins above."""
    folder = tmp_path_factory.mktemp("broken_plugins")
    (folder / "broken_plugins.py").write_text(BROKEN_PLUGINS)
    return start_daemon_session(config=BROKEN_CONFIG % folder)


def test_plugins_that_print_are_heard_and_their_calls_go_on(broken_plugins, make_root):
    """The operator's plugins run before the guest's modules are compiled; lines they printed
    came before the sandbox's 'compiled' event, which the daemon then took for something the
    guest wrote to its channel: every such call was a SandboxError, and as the modules were
    never stored, so was the next."""
    from isorun import CodeRunner
    root = make_root({"index.py": "import mylib\ndef f():\n    return mylib.V\n", "vendor/mylib.py": "V = 7\n"})
    heard = []
    with CodeRunner(root=root, file="index.py", socket=broken_plugins.socket, external=["mylib"],
                    resolver="chatty", resolver_options={"path": "/guest/vendor/mylib.py"},
                    on_console=lambda stream, line: heard.append(line)) as r:
        for _ in range(2):
            heard.clear()
            assert r.run("f") == 7
            assert heard == ["resolver made with /guest/vendor/mylib.py\n", "resolving mylib\n"], heard
    # a compiler's output is compiled in each call (never cached), its lines heard as well
    with CodeRunner(root=make_root({"index.py": "def f():\n    return 8\n"}), file="index.py",
                    socket=broken_plugins.socket, compiler="chatty",
                    on_console=lambda stream, line: heard.append(line)) as r:
        heard.clear()
        assert r.run("f") == 8
        assert heard == ["compiling /index.py\n"], heard


@pytest.mark.parametrize("options, message", [
    # SystemExit and BaseException were the guest's GuestError; None or bytes from a compiler a
    # TypeError of the guest's with no frame, or a traceback that could not be formatted
    ({"compiler": "exits"}, "the compiler plugin 'exits' raised SystemExit: 3"),
    ({"compiler": "base"}, "the compiler plugin 'base' raised BaseException: base"),
    ({"compiler": "none"}, "the compiler plugin 'none' returned NoneType, not the source as a str"),
    ({"compiler": "bytes"}, "the compiler plugin 'bytes' returned bytes, not the source as a str"),
    # a dict or a generator was taken apart into the guest's arguments, an int the guest's TypeError
    ({"args_resolver": "exits"}, "the args_resolver plugin 'exits' raised SystemExit: 0"),
    ({"args_resolver": "int"}, "the args_resolver plugin 'int' returned int, not the arguments as a list"),
    ({"args_resolver": "dict"}, "the args_resolver plugin 'dict' returned dict, not the arguments as a list"),
    ({"args_resolver": "generator"}, "the args_resolver plugin 'generator' returned generator, not the"),
    # a list was the guest's TypeError at its import line; a path with no source was passed
    # over for the whitelisted folders or Python's own modules
    ({"resolver": "five"}, "the resolver plugin 'five' returned int, not a function resolve"),
    ({"resolver": "path", "resolver_options": {"path": ["/a"]}}, "the resolver plugin 'path' returned list, not a path"),
    ({"resolver": "path", "resolver_options": {"path": "/nonexistent/mylib.py"}},
     "the resolver plugin 'path' resolved 'mylib' to '/nonexistent/mylib.py', where the sandbox finds no source"),
    ({"resolver": "path", "resolver_options": {"path": "mylib.py"}}, "resolved 'mylib' to 'mylib.py', where"),
])
def test_a_plugin_that_breaks_its_contract_is_a_sandbox_error_naming_it(broken_plugins, make_root, options, message):
    from isorun import CodeRunner
    root = make_root({"index.py": "def f(a, b=None):\n    import mylib\n    return [a, b]\ndef g(a):\n    return a\n",
                      "vendor/mylib.py": ""})
    per_call = {"args_resolver": options["args_resolver"]} if "args_resolver" in options else {}
    per_runner = {key: value for key, value in options.items() if key not in per_call}
    with CodeRunner(root=root, file="index.py", socket=broken_plugins.socket, external=["mylib"], **per_runner) as r:
        with pytest.raises(errors.SandboxError) as failure:
            r.run("f", args=[1], **per_call)
        assert message in str(failure.value)
    with CodeRunner(root=root, file="index.py", socket=broken_plugins.socket) as plain:
        assert plain.run("g", args=[1]) == 1  # the daemon and its zygote go on


def test_a_resolver_names_a_guest_module_by_its_path_in_the_sandbox(broken_plugins, make_root):
    from isorun import CodeRunner
    with CodeRunner(root=make_root({"index.py": "import mylib\ndef f():\n    return [mylib.V, mylib.__file__]\n",
                                    "vendor/mylib.py": "V = 'vendored'\n"}),
                    file="index.py", socket=broken_plugins.socket, external=["mylib"], resolver="path",
                    resolver_options={"path": "/guest/vendor/mylib.py"}) as r:
        assert r.run("f") == ["vendored", "/guest/vendor/mylib.py"]


def test_resolver_options_reach_the_plugin_as_plain_json(broken_plugins, make_root):
    """docs/values.md: resolver_options are plain JSON, read with the number rules of values.
    The sandbox read them as values: a "$type" key made them a tagged value (bytes, a tuple,
    or a SerializationError for an unknown name) before the plugin saw them. Sent by a raw stub,
    as a client of any language may; a "$type" key is just a key."""
    import grpc
    from google.protobuf import struct_pb2
    from isorun._proto import runner_pb2 as pb
    from isorun._proto import runner_pb2_grpc
    root = make_root({"index.py": "import mylib\ndef f():\n    return mylib.V\n", "vendor/mylib.py": "V = 'plain'\n"})
    options = struct_pb2.Struct()
    options.update({"path": "/guest/vendor/mylib.py", "n": 3, "tag": {"$type": "bytes", "$value": "AP8="}})
    request = pb.RunRequest(root=root, file="index.py", func_name="f", external=["mylib"], resolver="plain",
                            resolver_options=options, timeout_seconds=5)
    with grpc.insecure_channel(f"unix:{broken_plugins.socket}") as channel:
        answer = runner_pb2_grpc.RunnerStub(channel).Run(request, timeout=30)
    assert answer.outcome.WhichOneof("result") == "value", answer.outcome
    assert answer.outcome.value.string_value == "plain"


@pytest.mark.parametrize("closed, mode", [("", 0o700), ("index.py", 0o600)])
def test_a_call_file_the_sandbox_may_not_read_is_an_invalid_request_saying_so(runner, closed, mode):
    # It was "Cannot find module 'index'": the daemon (root) found the file, the guest's user
    # could not read it.
    r = runner({"index.py": "def f():\n    return 1\n"})
    os.chmod(os.path.join(r.root, closed), mode)
    with pytest.raises(errors.InvalidRequest, match="file 'index.py' cannot be read by the sandbox's user"):
        r.run("f")


def test_a_module_the_sandbox_may_not_read_is_a_permission_error_not_a_missing_module(runner):
    # "Cannot find module 'pkg.sub'": the file is there, its mode keeps the guest's user out
    r = runner({"index.py": "def f():\n    import pkg.sub\n", "pkg/__init__.py": "", "pkg/sub.py": "X = 1\n"})
    os.chmod(os.path.join(r.root, "pkg", "sub.py"), 0o600)
    with pytest.raises(errors.GuestError) as failure:
        r.run("f")
    assert failure.value.type_name == "PermissionError"
    assert "the sandbox's user may not read it" in failure.value.message and "/pkg/sub.py" in failure.value.message


def test_a_subfolder_without_init_is_importable_as_in_python_3(runner):
    r = runner({"index.py": "import lib.util\ndef f():\n    return lib.util.V\n", "lib/util.py": "V = 'util'\n"})
    assert r.run("f") == "util"


def test_a_guest_reads_the_files_beside_its_code_as_python_code_does_and_its_traceback_stays_root_relative(runner):
    """``Path(__file__).with_name(...)`` and a relative path both reach the guest's folder (the
    working folder); ``__file__`` was ``/rules.py``, where nothing is, and the working folder
    ``/``. Tracebacks still name the file as the user knows it."""
    files = {"index.py": "from pathlib import Path\n"
                         "def beside():\n    return Path(__file__).with_name('rates.txt').read_text()\n"
                         "def relative():\n    return [Path('data/rates.txt').read_text(), str(Path.cwd())]\n"
                         "def fail():\n    raise ValueError('no')\n",
             "rates.txt": "beside", "data/rates.txt": "below"}
    r = runner(files, external=["pathlib"])
    assert r.run("beside") == "beside"
    assert r.run("relative") == ["below", "/guest"]
    with pytest.raises(errors.GuestError) as raised:
        r.run("fail")
    assert 'File "/index.py", line 7, in fail' in raised.value.traceback


def test_the_function_is_an_attribute_of_the_module_or_of_what_it_put_in_its_place(runner):
    """It was looked up in the module's ``__dict__`` only: a module's ``__getattr__`` (PEP 562)
    and an object that replaced the module in sys.modules (which README promises) gave
    FunctionNotFound, and a replacement without a ``__dict__`` the runtime's own AttributeError."""
    lazy = runner({"index.py": "def __getattr__(name):\n    if name == 'lazy':\n        return lambda x: ['lazy', x]\n"
                               "    raise AttributeError(name)\n"})
    assert lazy.run("lazy", args=[1]) == ["lazy", 1]
    with pytest.raises(errors.FunctionNotFound, match="function other was not found in /index.py"):
        lazy.run("other")
    replaced = runner({"index.py": "import sys\nclass Rules:\n    def f(self, x):\n        return ['rules', x]\n"
                                   "    rate = 3\nsys.modules[__name__] = Rules()\n"}, external=["sys"])
    assert replaced.run("f", args=[2]) == ["rules", 2]
    with pytest.raises(errors.FunctionNotFound, match="rate is not a function in /index.py"):
        replaced.run("rate")
    number = runner({"index.py": "import sys\nsys.modules[__name__] = 42\n"}, external=["sys"])
    with pytest.raises(errors.FunctionNotFound, match="function f was not found in /index.py"):
        number.run("f")
    failing = runner({"index.py": "def __getattr__(name):\n    raise KeyError(name)\n"})
    with pytest.raises(errors.GuestError, match="KeyError") as raised:  # its own code's error
        failing.run("f")
    assert 'File "/index.py", line 2, in __getattr__' in raised.value.traceback


def test_copying_a_file_and_sending_one_work_without_sendfile(runner):
    """sendfile is denied (it pins page-cache pages in a socket's queue): shutil's copies and
    socket.sendfile fall back to read and write, as Python's own code does when it fails."""
    r = runner({"index.py": """
        import shutil, socket
        from pathlib import Path
        def copy():
            Path("/tmp/a").write_bytes(b"x" * 100_000)
            shutil.copyfile("/tmp/a", "/tmp/b")
            left, right = socket.socketpair()
            with Path("/tmp/b").open("rb") as f:
                sent = left.sendfile(f, count=1000)
            return [Path("/tmp/b").stat().st_size, sent, len(right.recv(2000))]
    """}, external=["shutil", "socket", "pathlib"])
    assert r.run("copy") == [100_000, 1000, 1000]


def test_a_crash_names_its_signal_and_an_exit_code_does_not_pass_for_one(runner):
    """Both read "exit status 139": a segfault and a guest's os._exit(139) could not be told apart."""
    r = runner({"index.py": ESCAPED + """
        import ctypes
        def crash():
            ctypes.string_at(0)
        def leave():
            _os_globals()["_exit"](139)
    """}, external=["ctypes"])
    with pytest.raises(errors.SandboxError, match=r"\(SIGSEGV, exit status 139\)"):
        r.run("crash")
    with pytest.raises(errors.SandboxError) as left:
        r.run("leave")
    assert "(exit status 139)" in str(left.value) and "SIGSEGV" not in str(left.value)


def test_pythons_own_import_system_does_not_find_the_guests_folder(runner):
    """README: with importlib allowed, importlib.import_module is Python's own import system,
    which finds a guest module only once the guest imported it. The zygote's start folder,
    "/", was first on sys.path: "guest.helper" found /guest/helper.py."""
    r = runner({"index.py": """
        import importlib
        def find(name):
            try:
                return importlib.import_module(name).__name__
            except ModuleNotFoundError as e:
                return f"not found: {e.name}"
    """, "helper.py": "X = 1\n"}, external=["importlib"])
    assert r.run("find", args=["guest.helper"]) == "not found: guest"
    assert r.run("find", args=["helper"]) == "not found: helper"
    assert r.run("find", args=["json"]) == "json"


def test_a_file_in_a_package_is_imported_as_python_would_so_its_relative_imports_work(runner):
    """``file="rules/pricing.py"`` is the module ``rules.pricing``, loaded after ``rules`` (as
    ``import rules.pricing`` would): ``from . import`` works, as a require('./x') does in
    isolated-runtime. It was a top-level module ``pricing``, whose relative imports failed."""
    files = {"rules/__init__.py": "RATE = 3\n", "rules/tax.py": "def tax(x):\n    return x // 10\n",
             "rules/pricing.py": "from . import RATE\nfrom .tax import tax\n"
                                 "def price(x):\n    return [__name__, x * RATE + tax(x)]\n"}
    r = runner(files, file="rules/pricing.py")
    for _ in range(2):  # the second from the daemon's code cache, the packages included
        assert r.run("price", args=[100]) == ["rules.pricing", 310]
    with pytest.raises(errors.GuestError, match="beyond top-level package"):  # as in Python
        runner({"tools/up.py": "from .. import x\n"}, file="tools/up.py").run("f")


def test_a_precompiled_guest_folder_is_loaded_from_its_cache_and_keeps_its_guest_names(runner):
    """``python -m compileall`` on the folder: the sandbox loads each module's cached code
    instead of compiling its source on every call. Shown with an edit the timestamped entry
    cannot tell apart (the same size, the time put back): the call runs the cached code."""
    r = runner({"index.py": "import helper\ndef f():\n    return helper.WHO\ndef g():\n    return helper.fail()\n",
                "helper.py": "WHO = 'cached'\ndef fail():\n    raise ValueError('from the cache')\n"})
    helper = os.path.join(r.root, "helper.py")
    assert subprocess.run([sys.executable, "-m", "compileall", "-q", r.root]).returncode == 0
    stat = os.stat(helper)
    with open(helper, "w") as f:
        f.write("WHO = 'source'\ndef fail():\n    raise ValueError('from the cache')\n")
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert r.run("f") == "cached"
    with pytest.raises(errors.GuestError) as info:
        r.run("g")
    # named as guest source is: by its path in the guest folder, with its line
    assert 'File "/helper.py", line 3, in fail' in info.value.traceback, info.value.traceback
    assert "raise ValueError('from the cache')" in info.value.traceback


def test_an_exception_with_a_huge_message_is_the_guests_error_cut_in_the_middle(runner):
    """50 MB of message was reported as an outcome too large for the daemon (limit 'result')."""
    r = runner({"index.py": """
        def shout():
            raise ValueError("a" * (25 << 20) + "z" * (25 << 20))
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("shout")
    e = info.value
    assert e.type_name == "ValueError"
    assert e.message.startswith("aaaa") and e.message.endswith("zzzz")
    assert "characters cut" in e.message and len(e.message) < 300_000
    assert e.traceback.startswith("Traceback (most recent call last):")
    assert '/index.py", line 3, in shout' in e.traceback
    assert e.traceback.endswith("zzzz\n") and len(e.traceback) < 300_000


def test_lone_surrogates_in_what_the_guest_raises_are_escaped_not_a_lost_outcome(runner):
    """No protobuf string may hold "\\ud800": the sandbox died building the failure, and the
    call ended as a SandboxError without the guest's exception."""
    r = runner({"index.py": """
        def bad_text():
            raise ValueError("bad \\ud800 text")
        def bad_module():
            __import__("odd\\udfffname")
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("bad_text")
    assert info.value.type_name == "ValueError"
    assert info.value.message == "bad \\ud800 text"
    assert "ValueError: bad \\ud800 text" in info.value.traceback
    with pytest.raises(errors.ModuleNotFound) as info:
        r.run("bad_module")
    assert info.value.module == "odd\\udfffname"



def test_an_exception_that_breaks_traceback_formatting_is_still_reported(runner):
    """A guest's exception whose ``__notes__`` raises makes Python's traceback module raise
    too: the sandbox ended without an outcome."""
    r = runner({"index.py": """
        class Odd(Exception):
            @property
            def __notes__(self):
                raise ValueError("no notes")
        def f():
            raise Odd("odd one")
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "Odd"
    assert info.value.message == "odd one"
    assert info.value.traceback == "(the traceback could not be formatted: ValueError)\n"


def test_a_guest_that_escaped_and_recursed_a_million_deep_gets_its_recursion_error(runner):
    """Python formats every frame of a traceback: a million of them took the runtime longer
    than the call's timeout, so the guest got a timeout instead of its RecursionError."""
    r = runner({"index.py": ESCAPED + """
        def dive():
            _os_globals()["sys"].setrecursionlimit(1_000_000)
            def down(n):
                return down(n + 1)
            return down(0)
    """})
    with pytest.raises(errors.GuestError) as info:
        r.run("dive", timeout=25)
    assert info.value.type_name == "RecursionError"
    assert 0 < info.value.traceback.count('/index.py"') <= 2000
    # and it says that more came before (the runtime's own frame is not counted)
    left_out = re.search(r"\[… ([\d,]+) earlier frames not shown …\]", info.value.traceback)
    assert left_out and 900_000 < int(left_out.group(1).replace(",", "")) < 1_000_000, info.value.traceback[:300]


def test_extra_arguments_are_the_guests_type_error_not_dropped(runner):
    """Missing arguments are None (JavaScript's undefined); extra ones are not dropped as
    JavaScript would: Python's TypeError names the mistake (decided, README)."""
    r = runner({"index.py": "def one(a):\n    return a\n"})
    assert r.run("one", args=[]) is None
    with pytest.raises(errors.GuestError) as info:
        r.run("one", args=[1, 2])
    assert info.value.type_name == "TypeError"
    assert "takes 1 positional argument but 2 were given" in info.value.message


def test_a_signal_handler_left_running_does_not_break_the_report_of_a_returned_call(runner):
    """A guest's timer still firing after its function returned raised the handler's error in
    the middle of the runtime's encoding of the result (or, while sending it, ended the
    sandbox without an outcome): the function had returned, its handlers are ignored after."""
    r = runner({"index.py": """
        import signal
        def leaves_a_timer(n):
            def handler(*_):
                raise ValueError("from the handler")
            signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, 0.1, 0.01)
            return list(range(n))  # encoding it takes longer than the timer's first 0.1 s
    """}, external=["signal"])
    assert r.run("leaves_a_timer", args=[400_000], timeout=20) == list(range(400_000))


def test_the_guests_interpreter_settings_do_not_reach_the_runtimes_work(runner):
    """The runtime encodes the result and formats the failure after the guest's function is
    done, with the guest's interpreter settings: a recursion limit lowered to 60 made a
    result 40 lists deep a SerializationError, a limit of 640 int digits made 10**1000 one, and
    a trace function ran on the runtime's frames (here it raised in them)."""
    r = runner({"index.py": """
        import sys
        def _runtime_frames_fail():
            def trace(frame, event, arg):
                if event == "call" and frame.f_code.co_filename != "/index.py":
                    raise RuntimeError("traced " + frame.f_code.co_name)
            sys.settrace(trace)
        def nested(depth):
            sys.setrecursionlimit(60)
            _runtime_frames_fail()
            value = []
            for _ in range(depth):
                value = [value]
            return value
        def fails():
            sys.setrecursionlimit(60)
            _runtime_frames_fail()
            raise ValueError("its own")
        def big():
            sys.set_int_max_str_digits(640)  # the encoder writes ints of up to 4,300 digits
            return 10 ** 1000
    """}, external=["sys"])
    expected = []
    for _ in range(40):
        expected = [expected]
    assert r.run("nested", args=[40]) == expected
    assert r.run("big") == 10 ** 1000
    with pytest.raises(errors.GuestError) as info:
        r.run("fails")
    assert (info.value.type_name, info.value.message) == ("ValueError", "its own")


def test_a_trace_function_set_by_the_modules_code_traces_the_guests_frames_not_the_runtimes(runner):
    """The import ran the module's code, which set a trace function that raises in the
    runtime's frames: asked for a function it does not have, the call ended without an outcome
    (a SandboxError) instead of a FunctionNotFound, and a function it has failed with "traced
    python_name". The function itself is traced. (No timer here: one whose handler raises may
    fire during the import or the function, which is then the guest's error; the failure
    path's handling of such handlers: test_a_signal_handler_left_running_….)"""
    r = runner({"index.py": """
        import sys
        calls = []
        def trace(frame, event, arg):
            if event == "call" and frame.f_code.co_filename != "/index.py":
                raise RuntimeError("traced " + frame.f_code.co_name)
            calls.append(frame.f_code.co_name)
        sys.settrace(trace)
        not_callable = 3
        def traced():
            def inner():
                pass
            inner()
            return calls
    """}, external=["sys"])
    assert r.run("traced") == ["traced", "inner"]
    with pytest.raises(errors.FunctionNotFound, match="function missing was not found in /index.py"):
        r.run("missing")
    with pytest.raises(errors.FunctionNotFound, match="not_callable is not a function in /index.py"):
        r.run("not_callable")


def test_a_guest_that_deletes_the_real_builtins_still_gets_its_outcome(runner):
    """The runtime's own code after the guest's function runs on the interpreter's builtins: a
    guest that reached them (past the importer) and deleted `isinstance` or `len` ended its
    sandbox without an outcome, and without `callable` the failure path retried until the
    call's timeout."""
    r = runner({"index.py": ESCAPED + """
        def deletes(names):
            real = _os_globals()["__builtins__"]
            for name in names:
                del real[name]
            return names
        def deletes_and_fails(names):
            deletes(names)
            raise ValueError("its own")
        def clears():
            _os_globals()["__builtins__"].clear()
            return [1, {"a": b"x"}]
        def replaces_import():
            _os_globals()["__builtins__"]["__import__"] = None
            return "replaced"
    """})
    for names in (["isinstance"], ["len"], ["callable"], ["isinstance", "len", "callable", "getattr"]):
        assert r.run("deletes", args=[names], timeout=20) == names
        with pytest.raises(errors.GuestError) as info:
            r.run("deletes_and_fails", args=[names], timeout=20)
        assert (info.value.type_name, info.value.message) == ("ValueError", "its own")
    assert r.run("clears", timeout=20) == [1, {"a": b"x"}]
    assert r.run("replaces_import", timeout=20) == "replaced"


def test_a_guest_that_replaces_the_interpreters_functions_the_runtime_calls_still_gets_its_outcome(runner):
    """After the guest's function the runtime unsets trace functions, holds signals and puts
    the interpreter's settings back: a guest that replaced those functions in their modules
    (`sys.settrace = None`) got, when it raised, a failure path that retried until the call's
    timeout, and when it returned, a sandbox ended without an outcome."""
    r = runner({"index.py": ESCAPED + """
        def replaces(module, names, fail):
            target = _os_globals()["sys"].modules[module]
            for name in names:
                setattr(target, name, None)
            if fail:
                raise ValueError("its own")
            return names
    """})
    for module, names in (("sys", ["settrace", "setprofile", "setrecursionlimit", "set_int_max_str_digits"]),
                          ("_signal", ["getsignal", "signal", "pthread_sigmask"])):
        assert r.run("replaces", args=[module, names, False], timeout=20) == names
        with pytest.raises(errors.GuestError) as info:
            r.run("replaces", args=[module, names, True], timeout=20)
        assert (info.value.type_name, info.value.message) == ("ValueError", "its own")


def test_the_guest_starts_with_the_default_action_for_the_signals_the_zygote_ignores(runner):
    # the zygote ignores SIGTTOU (a background process group of the daemon's terminal) and the
    # signals meant for the daemon (`pkill -f isorund`); its sandboxes put the defaults back
    # rather than hand the guest dispositions it did not set (SIGINT too: with Python's own
    # handler, a host's `pkill -INT -f isorund` reached every guest, see test_ops_shutdown)
    r = runner({"index.py": "import signal\n"
                            "def f():\n"
                            "    return {s.name: signal.getsignal(s) == signal.SIG_DFL for s in (\n"
                            "        signal.SIGTTOU, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT,\n"
                            "        signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)}\n"},
               external=["signal"])
    assert r.run("f") == dict.fromkeys(["SIGTTOU", "SIGCHLD", "SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2"], True)


def test_a_result_whose_own_code_raises_while_it_is_encoded_is_the_guests_error(runner):
    # the client's codec names such a value a SerializationError; in the sandbox it is the
    # guest's code that raised, reported with its traceback
    r = runner({"index.py": """
        import datetime
        class Boom(datetime.tzinfo):
            def utcoffset(self, when):
                raise RuntimeError("tz boom")
        def f():
            return {"when": datetime.datetime(2020, 1, 1, tzinfo=Boom())}
    """}, external=["datetime"])
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert (info.value.type_name, info.value.message) == ("RuntimeError", "tz boom")
    assert 'File "/index.py", line 5, in utcoffset' in info.value.traceback


def test_an_exceptions_str_runs_once_and_one_that_fails_reads_as_python_prints_it(runner):
    lines = []
    r = runner({"index.py": """
        class Loud(Exception):
            def __str__(self):
                print("formatting")
                return "loud"
        class Broken(Exception):
            def __str__(self):
                raise RuntimeError("no")
        def loud():
            raise Loud()
        def broken():
            raise Broken()
    """}, on_console=lambda stream, text: lines.append(text))
    with pytest.raises(errors.GuestError) as info:
        r.run("loud")
    assert info.value.message == "loud" and info.value.traceback.endswith("Loud: loud\n")
    assert lines == ["formatting\n"]  # the message and the traceback come from one str()
    with pytest.raises(errors.GuestError) as info:
        r.run("broken")
    assert info.value.message == "<exception str() failed>"
    assert info.value.traceback.endswith("Broken: <exception str() failed>\n")


def test_a_call_file_reached_through_a_link_is_the_module_its_guest_modules_import(daemon, make_root):
    """rules.py -> releases/v3.py: the call's module was named v3, so a guest module that
    imported rules ran the file a second time, with state of its own (found by review)."""
    from isorun import CodeRunner
    root = make_root({"releases/v3.py": "import helper\nSTATE = []\ndef f():\n    STATE.append(1)\n"
                                        "    return [__name__, helper.seen()]\n",
                      "helper.py": "def seen():\n    import rules\n    return [rules.__name__, len(rules.STATE)]\n"})
    os.symlink("releases/v3.py", os.path.join(root, "rules.py"))
    with CodeRunner(root=root, file="rules.py", socket=daemon.socket) as r:
        assert r.run("f") == ["rules", ["rules", 1]]
    assert daemon.calls("f")[-1]["file"] == "rules.py"


def test_a_guest_that_holds_nearly_all_its_memory_still_gets_its_result_or_its_error(runner):
    """The runtime encodes and sends the outcome with the memory the guest left: a guest that
    held all but a few MiB of its limit and returned a 2 MiB string (or raised) ended its call
    without an outcome, a SandboxError. The last sixteenth of the limit is kept for the report."""
    r = runner({"index.py": """
        KEEP = []
        def fill():
            try:
                while True:
                    KEEP.append(bytearray(1 << 18))
            except MemoryError:
                pass
        def fill_then_return(leave_mib):
            result = "x" * (2 << 20)
            fill()
            del KEEP[:4 * leave_mib]
            return result
        def fill_then_raise():
            error = ValueError("after filling " + "y" * 100_000)
            fill()
            raise error
    """})
    for leave_mib in (0, 1, 2, 4, 8):
        assert len(r.run("fill_then_return", args=[leave_mib], limits={"memory_bytes": 128 << 20})) == 2 << 20
    with pytest.raises(errors.GuestError, match="after filling y+"):
        r.run("fill_then_raise", limits={"memory_bytes": 128 << 20})


@pytest.mark.parametrize("func, size", [("as_bytes", 8), ("as_bytes", 10), ("as_list", 400_000), ("as_list", 600_000),
                                        ("as_lists", 6000)])
def test_a_result_too_large_for_the_memory_left_is_the_memory_limit_not_a_crash(runner, func, size):
    """protobuf's message code ends the process with a fault where an allocation fails: an 8 MiB
    bytes result, a list of 400,000 ints, or 6,000 lists of 100 (each too small to be asked
    for room alone), under a 64 MiB limit ended the sandbox with SIGSEGV (a SandboxError) where
    the memory limit was due."""
    r = runner({"index.py": """
        def as_bytes(mib):
            return bytes(mib << 20)
        def as_list(n):
            return list(range(n))
        def as_lists(n):
            return [list(range(100)) for _ in range(n)]
    """})
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run(func, args=[size], limits={"memory_bytes": 64 << 20})
    assert info.value.limit == "memory"


def test_only_the_calls_own_process_reports_an_outcome_not_one_the_guest_forked(runner):
    """A child the guest forked comes back into the runtime when the function returns in both
    processes: its outcome was taken for the call's, whichever came first (the child's value,
    or its exception while the parent returned). Its console lines still reach the caller."""
    lines = []
    files = {"index.py": """
        import os, time
        def child_returns_first():
            pid = os.fork()
            if pid:
                time.sleep(0.3)
            print("returning from", "the child" if pid == 0 else "the parent")
            return "from the " + ("child" if pid == 0 else "parent")
        def child_raises():
            if os.fork() == 0:
                raise ValueError("the child failed")
            time.sleep(0.3)
            return "parent ok"
        class Told(Exception):
            def __str__(self):
                if os.fork() == 0:
                    return "the child's message"
                time.sleep(0.3)
                return "the parent's message"
        def forks_in_its_message():
            raise Told()
    """, "at_import.py": """
        import os, time
        WHO = "child" if os.fork() == 0 else "parent"
        if WHO == "parent":
            time.sleep(0.3)
        def f():
            return WHO
    """}
    r = runner(files, external=["os", "time"], on_console=lambda stream, text: lines.append(text))
    assert r.run("child_returns_first") == "from the parent"
    assert sorted(lines) == ["returning from the child\n", "returning from the parent\n"]
    assert r.run("child_raises") == "parent ok"
    assert runner(files, file="at_import.py", external=["os", "time"]).run("f") == "parent"
    # forked by guest code the runtime runs while it reports: an exception's __str__
    with pytest.raises(errors.GuestError, match="the parent's message"):
        r.run("forks_in_its_message")



def test_a_ctypes_callback_where_writable_code_is_denied_says_so_beside_the_memory_limit(runner):
    """ctypes raises a bare MemoryError when it cannot make a callback's code (memory writable
    and executable): under systemd's MemoryDenyWriteExecute=, which guests inherit, every
    callback read as the memory limit alone. PR_SET_MDWE, set by the guest, is what systemd
    sets where the kernel has it."""
    r = runner({"index.py": """
        import ctypes
        def callback():
            if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
                return "no MDWE on this kernel"
            ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)
            return "made"
    """}, external=["ctypes"])
    with pytest.raises(errors.ResourceLimitError) as info:
        made = r.run("callback", limits={"memory_bytes": 256 << 20})
        if made == "no MDWE on this kernel":  # (before 6.3): systemd uses a filter there instead
            pytest.skip(made)
    assert info.value.limit == "memory"
    assert str(info.value) == (
        "the call went over its memory limit of 256 MiB (memory_bytes) (or it made a ctypes callback: this host "
        "denies memory both writable and executable, as systemd's MemoryDenyWriteExecute= does)")


def test_a_function_name_that_is_no_identifier_is_looked_up_as_any_other(runner):
    """isolated-runtime's funcName was any key of module.exports: a name that is no Python
    identifier was an InvalidRequest, where the contract says a missing function is a
    FunctionNotFound; a module may hold such a name (globals()["my-rule"])."""
    r = runner({"index.py": """
        globals()["my-rule"] = lambda x: x * 2
    """})
    assert r.run("my-rule", args=[21]) == 42
    for name in ("math.sqrt", "not an identifier"):
        with pytest.raises(errors.FunctionNotFound, match=f"function {name} was not found in /index.py"):
            r.run(name)
