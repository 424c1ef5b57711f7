"""isolated-runtime's own test suite, behaviour by behaviour, against a real isorund."""
import threading
import time

import pytest

from isorun import CodeRunner, errors

PRODUCT = "def product(x, y):\n    return x * y\n"


@pytest.mark.parametrize("source", [PRODUCT, "async def product(x, y):\n    return x * y\n"])
def test_sync_and_async_functions_return_their_value(runner, source):
    assert runner({"index.py": source}).run("product", args=[6, 7]) == 42


@pytest.mark.parametrize("prefix", ["", "async "])
def test_sync_and_async_exceptions_come_back_as_guest_errors(runner, prefix):
    r = runner({"index.py": f"{prefix}def product(x, y):\n    raise ArithmeticError('no ' + str(x))\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("product", args=[3, 4])
    assert (info.value.type_name, info.value.message) == ("ArithmeticError", "no 3")
    assert info.value.traceback.rstrip().endswith("ArithmeticError: no 3")


def test_an_external_module_is_refused_until_allowed(runner, make_root):
    lib = make_root({"shapes/__init__.py": "from .area import square\n",
                     "shapes/area.py": "def square(n):\n    return n * n\n"})
    files = {"index.py": "import shapes\ndef area(n):\n    return shapes.square(n)\n"}
    with pytest.raises(errors.ModuleNotFound) as info:
        runner(files, whitelisted_paths=[lib]).run("area", args=[3])
    assert info.value.module == "shapes"
    assert runner(files, whitelisted_paths=[lib], external=["shapes"]).run("area", args=[3]) == 9


def test_a_stdlib_module_outside_the_defaults_needs_external(runner):
    files = {"index.py": "def day():\n    import calendar, zlib\n    return zlib.crc32(b'a')\n"}
    with pytest.raises(errors.ModuleNotFound, match="'zlib'"):
        runner(files).run("day")
    assert runner(files, external=["zlib"]).run("day") == 3904355907


def test_guest_modules_import_each_other_in_both_styles(runner):
    r = runner({"main.py": "import geometry\nfrom geometry.util import twice\n"
                           "def go(n):\n    return geometry.VALUE + twice(n)\n",
                "geometry/__init__.py": "VALUE = 100\n",
                "geometry/util.py": "from . import helpers\ndef twice(n):\n    return helpers.mul(n, 2)\n",
                "geometry/helpers.py": "def mul(a, b):\n    return a * b\n"}, file="main.py")
    assert r.run("go", args=[4]) == 108


@pytest.mark.parametrize("name", ["absent", "CONSTANT"])
def test_a_missing_or_non_callable_function_is_a_type_error(runner, name):
    r = runner({"index.py": "CONSTANT = 42\n"})
    with pytest.raises(TypeError) as info:
        r.run(name)
    assert isinstance(info.value, errors.FunctionNotFound) and name in str(info.value)


def test_context_entries_are_global_names_and_values_keep_their_types(runner):
    r = runner({"index.py": "def describe():\n    return [user, limits['max'], type(when).__name__]\n"})
    import datetime
    assert r.run("describe", context={"user": "ada", "limits": {"max": 3},
                                      "when": datetime.date(2026, 1, 1)}) == ["ada", 3, "date"]


def test_a_custom_source_extension_applies_to_every_guest_module(runner):
    r = runner({"rules.pyx": "import helper\ndef f():\n    return helper.X\n", "helper.pyx": "X = 'x'\n",
                "helper.py": "X = 'wrong file'\n"}, file="rules.pyx", source_extensions=[".pyx"])
    assert r.run("f") == "x"


def test_compiler_plugin_rewrites_the_source(runner):
    assert runner({"index.py": "def f(a, b):\n    return a + b\n"}, compiler="plus-to-times").run("f", args=[6, 7]) == 42


def test_args_resolver_plugin_rewrites_the_arguments(runner):
    assert runner({"index.py": PRODUCT}).run("product", args=[1, 2], args_resolver="add-one") == 6


def test_module_resolver_plugin_with_whitelisted_paths(runner, make_root):
    lib = make_root({"greeter/__init__.py": "def hello(n):\n    return 'hello ' + n\n"})
    r = runner({"index.py": "import greeter\ndef f(n):\n    return greeter.hello(n)\n"},
               whitelisted_paths=[lib], external=["greeter"], resolver="prefix", resolver_options={"base": lib})
    assert r.run("f", args=["ada"]) == "hello ada"


@pytest.mark.parametrize("module", ["os", "sys", "subprocess", "socket", "ctypes", "importlib", "io",
                                    "shutil", "pickle", "marshal", "gc", "inspect", "builtins", "signal"])
@pytest.mark.parametrize("where", ["call", "import"])
def test_host_modules_are_refused_at_call_and_import_time(runner, module, where):
    source = (f"def f():\n    import {module}\n" if where == "call"
              else f"import {module}\ndef f():\n    return 1\n")
    with pytest.raises(errors.ModuleNotFound) as info:
        runner({"index.py": source}).run("f")
    assert str(info.value) == f"Cannot find module '{module}'"


@pytest.mark.parametrize("name", ["open", "input", "exit", "quit", "breakpoint", "help"])
def test_host_builtins_are_absent(runner, name):
    r = runner({"index.py": f"def f():\n    return {name}\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "NameError" and name in info.value.message


def test_globals_and_monkey_patches_do_not_survive_a_call(runner):
    r = runner({"index.py": "import math\nseen = []\n"
                            "def f():\n    seen.append(1)\n    before = math.pi\n    math.pi = 3\n"
                            "    return len(seen), before\n"})
    import math
    assert [r.run("f") for _ in range(3)] == [(1, math.pi)] * 3  # tuples stay tuples


def _printing(runner, source: str, *external: str):
    """A runner of ``source`` as index.py, and the (stream, text) console lines of its calls."""
    lines = []
    return runner({"index.py": source}, external=list(external),
                  on_console=lambda stream, text: lines.append((stream, text))), lines


def test_console_output_is_redirected_to_the_callback(runner):
    r, lines = _printing(runner, "def f():\n    print('a', 1)\n    print('b', end='!\\n')\n    return 0\n")
    r.run("f")
    assert lines == [("stdout", "a 1\n"), ("stdout", "b!\n")]


def test_the_original_streams_are_the_console_too(runner):
    # sys.__stdout__ and sys.__stderr__ wrote to /dev/null: a guest printing "to the real
    # stdout" lost its lines. Bytes written to descriptors 1 and 2 are still discarded (README).
    r, lines = _printing(runner, "import os, sys\n"
                                 "def f():\n"
                                 "    print('original out', file=sys.__stdout__)\n"
                                 "    sys.__stderr__.write('original err\\n')\n"
                                 "    os.write(1, b'descriptor 1\\n')\n"
                                 "    return 0\n", "os", "sys")
    assert r.run("f") == 0
    assert lines == [("stdout", "original out\n"), ("stderr", "original err\n")]


def test_a_line_begun_before_the_guest_swaps_sys_stdout_still_arrives(runner):
    # the runtime flushed whatever sys.stdout and sys.stderr were at the end: the lines begun
    # on its own streams were lost
    r, lines = _printing(runner, "import io, sys\n"
                                 "def f():\n"
                                 "    print('partial', end='')\n"
                                 "    sys.stderr.write('err partial')\n"
                                 "    sys.stdout, sys.stderr = io.StringIO(), None\n"
                                 "    print('into the guest own buffer')\n"
                                 "    return 1\n", "io", "sys")
    assert r.run("f") == 1
    assert sorted(lines) == [("stderr", "err partial"), ("stdout", "partial")]


def test_a_printed_lone_surrogate_is_escaped_not_a_lost_outcome(runner):
    # os.fsdecode of a name that is not UTF-8 makes them; the line, still pending when the
    # outcome was sent, ended the sandbox without one ("exit status 1", 3 calls of 3)
    r, lines = _printing(runner, "def f():\n    print('ok')\n    print('bad \\ud800 name')\n    return 1\n")
    for _ in range(3):
        lines.clear()
        assert r.run("f") == 1
        assert lines == [("stdout", "ok\n"), ("stdout", "bad \\ud800 name\n")]


def test_sys_stdout_has_what_libraries_look_for_on_a_text_stream(runner):
    r, lines = _printing(runner, """
import io, sys
def f():
    out = sys.stdout
    seen = [isinstance(out, io.TextIOBase), out.encoding, out.errors, out.writable(), out.closed]
    try:
        out.fileno()
    except io.UnsupportedOperation:
        seen.append("no fileno")
    out.reconfigure(encoding="utf-8")
    out.writelines(["one\\n", "two\\n"])
    out.buffer.write(b"caf\\xc3")  # a character split across two writes
    out.buffer.write(bytearray(b"\\xa9 \\xff\\n"))  # and a byte that is no UTF-8
    out.close()  # only flushes: the console is the call's
    print("still here")
    return seen
""", "io", "sys")
    assert r.run("f") == [True, "utf-8", "backslashreplace", True, False, "no fileno"]
    assert [text for _, text in lines] == ["one\n", "two\n", "caf\u00e9 \ufffd\n", "still here\n"]


def test_a_character_begun_in_bytes_and_never_finished_is_a_replacement_in_its_place(runner):
    # it was held back: dropped at the end of the call, or sent after the text that followed it
    r, lines = _printing(runner, """
import sys
def f():
    sys.stdout.buffer.write(b"a\\xe2\\x82")  # a euro sign's first two bytes of three
    print("b")
    sys.stdout.buffer.write(b"x\\xe2")
    sys.stdout.buffer.write(b"\\x82")  # joined up across writes: no replacement here
    sys.stdout.buffer.write(b"\\xac y\\n")
    sys.stdout.buffer.write(b"end \\xe2")
    return 1
""", "sys")
    assert r.run("f") == 1
    assert [text for _, text in lines] == ["a\ufffdb\n", "x\u20ac y\n", "end \ufffd"]


def test_a_guest_that_replaced_its_streams_methods_still_gets_its_outcome(runner):
    # the runtime's last flush called the guest's None: no outcome, a SandboxError
    r, lines = _printing(runner, "import sys\n"
                                 "def f():\n"
                                 "    print('partial', end='')\n"
                                 "    sys.stdout.flush = sys.stderr.flush = None\n"
                                 "    return 1\n", "sys")
    assert r.run("f") == 1
    assert lines == [("stdout", "partial")]


def test_tracebacks_show_only_guest_frames_with_root_relative_paths(runner):
    r = runner({"index.py": "import deep\ndef top():\n    return deep.middle()\n",
                "deep.py": "def middle():\n    return bottom()\n\ndef bottom():\n    return 1 / 0\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("top")
    frames = [l.strip() for l in info.value.traceback.splitlines() if l.strip().startswith("File ")]
    assert frames == ['File "/index.py", line 3, in top', 'File "/deep.py", line 2, in middle',
                      'File "/deep.py", line 5, in bottom']
    assert "isorund" not in info.value.traceback and "/tmp" not in info.value.traceback


def test_an_exception_groups_members_show_only_guest_frames_too(runner):
    # the members' tracebacks, and their causes', were shown whole: json's frames, host paths
    r = runner({"index.py": "import json\n"
                            "def parse(text):\n"
                            "    return json.loads(text)\n"
                            "def many():\n"
                            "    found = []\n"
                            "    for text in ('{', '[1,'):\n"
                            "        try:\n"
                            "            parse(text)\n"
                            "        except ValueError as e:\n"
                            "            found.append(e)\n"
                            "    try:\n"
                            "        parse('x')\n"
                            "    except ValueError as e:\n"
                            "        try:\n"
                            "            raise KeyError('wrapped') from e\n"
                            "        except KeyError as k:\n"
                            "            found.append(k)\n"
                            "    raise ExceptionGroup('bad inputs', found)\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("many")
    text = info.value.traceback
    assert text.count("JSONDecodeError") == 3 and "KeyError: 'wrapped'" in text
    files = {line.strip().split('"')[1] for line in text.splitlines() if line.strip().lstrip("| ").startswith("File ")}
    assert files == {"/index.py"}, text
    assert "decoder.py" not in text and "python3" not in text


def test_calls_run_in_parallel(runner):
    r = runner({"index.py": "import time\ndef nap(s):\n    time.sleep(s)\n    return s\n"}, external=["time"])
    results = []
    threads = [threading.Thread(target=lambda: results.append(r.run("nap", args=[1.0]))) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1.0] * 4
    assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("body", ["    time.sleep(60)\n", "    while True:\n        pass\n"])
def test_timeouts_kill_sleeping_and_spinning_guests_and_the_daemon_goes_on(runner, daemon, body):
    r = runner({"index.py": "import time\ndef stuck():\n" + body + "def ok():\n    return 'ok'\n"},
               external=["time"])
    started = time.monotonic()
    with pytest.raises(errors.RuntimeTimeoutError):
        r.run("stuck", timeout=1)
    assert time.monotonic() - started < 4
    assert daemon.proc.poll() is None
    assert r.run("ok") == "ok"


@pytest.mark.parametrize("source", ["def f(:\n    pass\n", "def f():\n  x = 1\n    return x\n"])
def test_syntax_errors_are_guest_errors(runner, source):
    with pytest.raises(errors.GuestError) as info:
        runner({"index.py": source}).run("f")
    assert info.value.type_name in ("SyntaxError", "IndentationError")


def test_a_syntax_error_in_an_imported_guest_module(runner):
    r = runner({"index.py": "import broken\ndef f():\n    return 1\n", "broken.py": "x = (\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "SyntaxError" and "/broken.py" in info.value.traceback


def test_a_missing_daemon_names_the_socket(make_root, tmp_path):
    r = CodeRunner(root=make_root({"index.py": PRODUCT}), file="index.py", socket=str(tmp_path / "absent.sock"))
    with pytest.raises(errors.DaemonUnavailable, match="absent.sock"):
        r.run("product", args=[1, 2], timeout=2)


@pytest.mark.parametrize("file", ["../escape.py", "/etc/hostname", "nope.py", "sub", ""])
def test_bad_files_are_refused_before_any_sandbox(runner, file):
    r = runner({"index.py": PRODUCT, "sub/x.py": ""}, file=file)
    with pytest.raises(errors.InvalidRequest):
        r.run("product", args=[1, 2])
