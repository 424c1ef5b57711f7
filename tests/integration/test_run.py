"""The run() contract through a real daemon and real sandboxes, beyond the conformance floor."""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from isorun import AsyncCodeRunner, CodeRunner, errors


def test_events_arrive_in_order_running_console_then_outcome(runner):
    events = []
    r = runner({"index.py": "print('imported')\n"
                            "def talk():\n"
                            "    print('out 1')\n"
                            "    print('err 1', file=__import__('sys').stderr)\n"
                            "    print('out 2', end='')\n"
                            "    return 'done'\n"},
               external=["sys"], on_console=lambda stream, text: events.append((stream, text)))
    result = r.run("talk", running=lambda: events.append("running"))
    assert result == "done"
    assert events == [("stdout", "imported\n"), "running", ("stdout", "out 1\n"),
                      ("stderr", "err 1\n"), ("stdout", "out 2")]


def test_console_is_live_not_collected_at_the_end(runner):
    seen_at = []
    r = runner({"index.py": "import time\ndef slow():\n    print('first')\n    time.sleep(1.5)\n    return 1\n"},
               external=["time"], on_console=lambda s, t: seen_at.append(time.monotonic()))
    started = time.monotonic()
    r.run("slow")
    finished = time.monotonic()
    assert len(seen_at) == 1 and finished - seen_at[0] > 1.0, (seen_at[0] - started, finished - started)


def test_console_lines_without_a_callback_do_not_break_the_call(runner):
    r = runner({"index.py": "def f():\n    for i in range(100):\n        print(i)\n    return 'quiet'\n"})
    assert r.run("f") == "quiet"


def test_system_exit_is_a_guest_error(runner):
    r = runner({"index.py": "def leave():\n    raise SystemExit(3)\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("leave")
    assert info.value.type_name == "SystemExit" and info.value.message == "3"


def test_an_error_while_importing_the_file_shows_its_line(runner):
    r = runner({"index.py": "x = 1\nraise RuntimeError('at import')\ndef f():\n    return 1\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    assert info.value.type_name == "RuntimeError"
    assert 'File "/index.py", line 2, in <module>' in info.value.traceback


def test_traceback_crosses_guest_modules_with_root_relative_paths(runner):
    r = runner({"index.py": "from lib.helpers import fail\ndef f():\n    fail()\n",
                "lib/__init__.py": "", "lib/helpers.py": "def fail():\n    {}['missing']\n"})
    with pytest.raises(errors.GuestError) as info:
        r.run("f")
    tb = info.value.traceback
    assert info.value.type_name == "KeyError"
    assert 'File "/index.py", line 3, in f' in tb and 'File "/lib/helpers.py", line 2, in fail' in tb
    assert "{}['missing']" in tb  # source lines are shown, from the guest's own files


def test_a_non_callable_or_missing_name_is_function_not_found(runner):
    r = runner({"index.py": "VALUE = 3\nclass Thing:\n    pass\n"})
    with pytest.raises(errors.FunctionNotFound, match="VALUE"):
        r.run("VALUE")
    with pytest.raises(errors.SerializationError, match="Thing"):
        r.run("Thing")  # a class is callable; its instance has no codec


def test_names_are_found_as_the_guests_source_spells_them(runner):
    # Python reads "ℌ" in source as "H" (NFKC): the function and the context entry the caller
    # named as the source spells them were never found ("function ℌello was not found", a
    # NameError for ℌ).
    r = runner({"index.py": "def \u210cello():\n    return \u210c\nNONE = None\n"})
    assert r.run("\u210cello", context={"\u210c": "fraktur"}) == "fraktur"
    assert r.run("Hello", context={"H": "plain"}) == "plain"
    with pytest.raises(errors.FunctionNotFound, match="\uff2eONE is not a function"):
        r.run("\uff2eONE")  # (full-width N): found, and not callable
    with pytest.raises(errors.InvalidRequest, match="are one name, 'H'"):
        r.run("Hello", context={"H": 1, "\u210c": 2})


def test_private_and_dunder_names_are_found_like_any_other(runner):
    r = runner({"index.py": "def _helper():\n    return 'private'\n"})
    assert r.run("_helper") == "private"


def test_missing_positional_arguments_are_none_like_javascript_undefined(runner):
    r = runner({"index.py": "def f(a, b, c=3):\n    return [a, b, c]\n"})
    assert r.run("f", args=[1]) == [1, None, 3]
    with pytest.raises(errors.GuestError) as info:
        r.run("f", args=[1, 2, 3, 4])
    assert info.value.type_name == "TypeError"


def test_async_functions_may_await(runner):
    r = runner({"index.py": "async def inner(x):\n    return x * 2\n"
                            "async def outer(x):\n    return await inner(x) + 1\n"})
    assert r.run("outer", args=[20]) == 41


def test_a_coroutine_an_async_function_returns_is_awaited_too(runner):
    """As a JavaScript promise resolves through a promise it returns; it was a SerializationError
    ('coroutine') and a 'never awaited' warning."""
    r = runner({"index.py": "async def inner(x):\n    return x * 2\n"
                            "async def outer(x):\n    return inner(x)\n"
                            "def plain(x):\n    return outer(x)\n"})
    assert r.run("outer", args=[20]) == 40
    assert r.run("plain", args=[21]) == 42


def test_a_generator_result_is_a_serialization_error_saying_it_was_the_result(runner):
    # (it did not say: arguments are named "argument 0: …")
    r = runner({"index.py": "def gen():\n    yield 1\n"})
    with pytest.raises(errors.SerializationError, match="^the result: cannot encode a value of type 'generator'"):
        r.run("gen")


def test_timeout_is_reported_and_bounded(runner):
    r = runner({"index.py": "def spin():\n    while True:\n        pass\n"})
    started = time.monotonic()
    with pytest.raises(errors.RuntimeTimeoutError):
        r.run("spin", timeout=0.5)
    assert time.monotonic() - started < 4


def test_flooding_the_console_is_an_output_limit(runner):
    r = runner({"index.py": "def flood():\n    while True:\n        print('x' * 10000)\n"})
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run("flood", timeout=10)
    assert info.value.limit == "output"


def test_the_lines_within_the_output_cap_arrive_before_the_output_limit(start_daemon, make_root):
    """A batch of lines that went over the cap took all of its lines with it: of 100 lines of
    9 bytes against a 1,000-byte cap, 1 arrived. Each line costs its bytes and ~10 of framing."""
    d = start_daemon(config="[limits]\noutput_bytes = 1000\n")
    lines = []
    source = "def chatty():\n    for i in range(100):\n        print(f'line {i:03}')\n"
    with CodeRunner(root=make_root({"index.py": source}), file="index.py", socket=d.socket,
                    on_console=lambda stream, text: lines.append(text)) as r:
        with pytest.raises(errors.ResourceLimitError) as info:
            r.run("chatty", timeout=20)
    assert info.value.limit == "output"
    assert lines == [f"line {i:03}\n" for i in range(len(lines))]  # in order, none skipped
    assert 40 <= len(lines) < 100, len(lines)


def test_a_line_printed_in_many_parts_costs_what_its_parts_do(runner):
    """print(x, end="") in a loop grew one str by copying it: 100,000 parts of 6 characters
    took 14 s, 900,000 of one character longer than the call's timeout."""
    lines = []
    r = runner({"index.py": "def dots(n):\n"
                            "    for _ in range(n):\n"
                            "        print('a', end='')\n"
                            "    print()\n"
                            "    return n\n"}, on_console=lambda stream, text: lines.append(text))
    assert r.run("dots", args=[900_000], timeout=20) == 900_000
    assert lines == ["a" * 900_000 + "\n"]


@pytest.mark.parametrize("body", [
    "print('y' * (50 << 20))",  # one line of 50 MiB: sent whole, larger than any event the daemon reads
    "for _ in range(100):\n        print('z' * (1 << 20), end='')",  # a line never ended, held until memory ran out
    "print('\\u20ac' * (1 << 19))",  # 1.5 MiB of 3-byte characters: cut, it must stay over the cap
])
def test_one_line_over_the_console_cap_is_an_output_limit(runner, body):
    r = runner({"index.py": f"def shout():\n    {body}\n    return 1\n"})
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run("shout", timeout=20)
    assert info.value.limit == "output"


def test_a_line_longer_than_the_result_cap_arrives_whole_within_the_console_cap(start_daemon, make_root):
    """The daemon read no event larger than the result cap, console lines included."""
    d = start_daemon(config="[limits]\nresult_bytes = 65536\noutput_bytes = 1048576\n")
    lines = []
    with CodeRunner(root=make_root({"index.py": "def long():\n    print('w' * (512 << 10))\n    return 1\n"}),
                    file="index.py", socket=d.socket, on_console=lambda stream, text: lines.append(text)) as r:
        assert r.run("long") == 1
    assert lines == ["w" * (512 << 10) + "\n"]


def test_hogging_memory_is_a_memory_limit(runner):
    r = runner({"index.py": "def hog():\n    return bytearray(2 << 30)\n"})
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run("hog")
    assert info.value.limit == "memory"


def test_a_call_may_lower_the_daemons_limits_for_itself(runner):
    """The request's limits were reachable only through a plain gRPC stub."""
    r = runner({"index.py": "def hold(mib):\n    return len(bytearray(mib << 20))\n"})
    assert r.run("hold", args=[200]) == 200 << 20  # within the daemon's 512 MiB
    with pytest.raises(errors.ResourceLimitError) as info:
        r.run("hold", args=[200], limits={"memory_bytes": 96 << 20})
    assert info.value.limit == "memory"
    assert r.run("hold", args=[1], limits={"memory_bytes": 96 << 20, "cpu_seconds": 2.5}) == 1 << 20
    with pytest.raises(errors.InvalidRequest, match="memory_bytes"):  # not above the daemon's
        r.run("hold", args=[1], limits={"memory_bytes": 1 << 40})


def test_an_async_call_may_lower_the_daemons_limits_too(daemon, make_root):
    root = make_root({"index.py": "def hold(mib):\n    return len(bytearray(mib << 20))\n"})

    async def main():
        async with AsyncCodeRunner(root=root, file="index.py", socket=daemon.socket) as r:
            with pytest.raises(errors.ResourceLimitError) as info:
                await r.run("hold", args=[200], limits={"memory_bytes": 96 << 20})
            return info.value.limit
    assert asyncio.run(main()) == "memory"


@pytest.mark.parametrize("limits, match", [
    ({"memory": 1 << 20}, "unknown limit 'memory'; known are cpu_seconds, max_file_bytes, max_open_files"),
    ({"memory_bytes": -1}, r"limits\['memory_bytes'\] must be a whole number >= 0, got -1"),
    ({"memory_bytes": 1.5}, "a whole number"),
    ({"max_processes": True}, "a whole number"),
    ({"cpu_seconds": float("nan")}, "a number of seconds"),
    ({"max_processes": 1 << 40}, "out of range"),
    ([("memory_bytes", 1)], "limits must be"),
])
def test_a_calls_limits_are_checked_before_anything_is_sent(runner, limits, match):
    r = runner({"index.py": "def f():\n    return 1\n"})
    with pytest.raises(errors.InvalidRequest, match=match):
        r.run("f", limits=limits)


@pytest.mark.parametrize("kwargs, match", [
    ({"func_name": "__init__"}, "func_name .* is a name Python reserves"),
    ({"func_name": "f", "timeout": 10_000}, "timeout"),
])
def test_bad_requests_are_invalid_request(runner, kwargs, match):
    r = runner({"index.py": "def f():\n    return 1\n"})
    with pytest.raises(errors.InvalidRequest, match=match):
        r.run(**kwargs)


def test_unknown_plugins_are_invalid_requests_naming_the_configured_ones(runner):
    r = runner({"index.py": "def f():\n    return 1\n"}, compiler="nope")
    with pytest.raises(errors.InvalidRequest, match="plus-to-times"):
        r.run("f")


def test_state_never_survives_a_call(runner):
    r = runner({"index.py": "import json\nCOUNT = []\n"
                            "def f():\n    COUNT.append(1)\n    json.loads = None\n    return len(COUNT)\n"})
    assert [r.run("f") for _ in range(5)] == [1] * 5


def test_capabilities_describe_the_daemon(runner):
    r = runner({"index.py": ""})
    caps = r.capabilities()
    assert caps.isolation == caps.KERNEL
    assert "bytes" in caps.type_names and "plus-to-times" in caps.compilers
    assert caps.default_timeout_seconds == 5 and "json" in caps.default_external


def test_async_runner_streams_to_coroutine_callbacks(daemon, make_root):
    root = make_root({"index.py": "def f(x):\n    print('hello', x)\n    return x\n"})
    lines, running = [], []

    async def on_console(stream, text):
        lines.append((stream, text))

    async def main():
        async with AsyncCodeRunner(root=root, file="index.py", socket=daemon.socket,
                                   on_console=on_console) as r:
            return await r.run("f", args=[7], running=lambda: running.append(1))
    assert asyncio.run(main()) == 7
    assert lines == [("stdout", "hello 7\n")] and running == [1]


def test_async_runner_raises_the_same_errors(daemon, make_root):
    root = make_root({"index.py": "import os\n"})

    async def main():
        async with AsyncCodeRunner(root=root, file="index.py", socket=daemon.socket) as r:
            await r.run("f")
    with pytest.raises(errors.ModuleNotFound):
        asyncio.run(main())


def test_async_runner_without_daemon_names_the_socket(make_root, tmp_path):
    async def main():
        async with AsyncCodeRunner(root=make_root({"index.py": ""}), file="index.py",
                                   socket=str(tmp_path / "gone.sock")) as r:
            await r.run("f", timeout=1)
    with pytest.raises(errors.DaemonUnavailable, match="gone.sock"):
        asyncio.run(main())


def test_a_closed_runner_refuses_calls(daemon, make_root):
    r = CodeRunner(root=make_root({"index.py": "def f():\n    return 1\n"}), file="index.py",
                   socket=daemon.socket)
    assert r.run("f") == 1
    r.close()
    with pytest.raises(errors.IsorunError, match="closed"):
        r.run("f")


def cli(*args, socket, cwd=None):
    return subprocess.run([sys.executable, "-m", "isorun", "call", "--socket", socket, *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def test_cli_prints_the_result_as_json_and_console_to_stderr(daemon, make_root):
    root = make_root({"rules.py": "def multiply(a, b):\n    print('multiplying')\n    return {'product': a * b}\n"})
    done = cli("--root", root, "--file", "rules.py", "multiply", "4", "5", socket=daemon.socket)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"product": 20}
    assert "multiplying" in done.stderr


def test_cli_takes_relative_folders_from_the_current_one(daemon, make_root):
    # "--root ." was refused: "root must be an absolute folder path, got '.'"
    root = make_root({"rules.py": "import shapes\ndef area(n):\n    return shapes.square(n)\n"})
    lib = make_root({"shapes.py": "def square(n):\n    return n * n\n"})
    done = cli("--root", ".", "--file", "rules.py", "--whitelisted-path", os.path.relpath(lib, root),
               "--external", "shapes", "area", "3", socket=daemon.socket, cwd=root)
    assert done.returncode == 0 and json.loads(done.stdout) == 9, done.stderr


def test_cli_prints_strict_json_for_values_json_has_no_form_for(daemon, make_root):
    # It crashed on a dict key that is no string, and printed NaN, which strict parsers refuse.
    root = make_root({"rules.py": (
        "import datetime\n"
        "def odd():\n"
        "    return {(1, 2): 3, b'k': b'\\x00\\xff', 'f': [float('nan'), float('-inf')],\n"
        "            'd': datetime.date(2020, 1, 2), 't': (1, {2}), 1: True, None: None}\n")})
    done = cli("--root", root, "--file", "rules.py", "odd", socket=daemon.socket)
    assert done.returncode == 0, done.stderr

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    assert json.loads(done.stdout, parse_constant=refuse) == {
        "[1, 2]": 3, "aw==": "AP8=", "f": ["NaN", "-Infinity"], "d": "2020-01-02", "t": [1, [2]],
        "1": True, "null": None}


def test_cli_takes_options_after_the_function_and_its_arguments(daemon, make_root):
    # "unrecognized arguments: 5" before: FUNC's arguments ended at the first option
    root = make_root({"rules.py": "def multiply(a, b):\n    return a * b * factor\n"})
    done = cli("--root", root, "multiply", "4", "--context", '{"factor": 10}', "5", "--file", "rules.py",
               socket=daemon.socket)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == 200
    negative = cli("--root", root, "--file", "rules.py", "multiply", "-4", "--context", '{"factor": 1}', "-5",
                   socket=daemon.socket)
    assert negative.returncode == 0 and json.loads(negative.stdout) == 20, negative.stderr


def test_cli_reports_errors_with_a_non_zero_status(daemon, make_root, tmp_path):
    root = make_root({"rules.py": "def boom():\n    raise ValueError('Boom!')\n"})
    done = cli("--root", root, "--file", "rules.py", "boom", socket=daemon.socket)
    assert done.returncode == 1 and "GuestError: ValueError: Boom!" in done.stderr and done.stdout == ""
    bad = cli("--root", root, "--file", "rules.py", "boom", "1", "hello", socket=daemon.socket)
    assert bad.returncode == 2 and "argument 2 ('hello') is not valid JSON" in bad.stderr, bad.stderr
    assert "keeps its quotes" in bad.stderr
    # what the daemon refuses of the command line is a usage error too (it was 1)
    missing = cli("--root", root, "--file", "nowhere.py", "boom", socket=daemon.socket)
    assert missing.returncode == 2 and "InvalidRequest: file 'nowhere.py' does not exist" in missing.stderr
    gone = cli("--root", root, "--file", "rules.py", "boom", socket=str(tmp_path / "none.sock"))
    assert gone.returncode == 3 and "none.sock" in gone.stderr


def test_cli_writes_what_a_terminal_would_act_on_as_escapes(daemon, make_root):
    """A guest's console lines, its exception's message and traceback, and its result were
    written raw: escape sequences cleared the screen, set the window title (seen). The result
    stays JSON that reads back as the same value."""
    active = "A\x1b]0;TITLE\x07B\x1b[2J\r\x9b31m\u202eZ\x7f"
    root = make_root({"rules.py": f"def f():\n    print({active!r})\n    return {active!r}\n"
                                  f"def g():\n    raise ValueError({active!r})\n"})
    done = cli("--root", root, "--file", "rules.py", "f", socket=daemon.socket)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == active
    shown = "A\\x1b]0;TITLE\\x07B\\x1b[2J\\x0d\\x9b31m\\u202eZ\\x7f"
    assert shown in done.stderr
    failed = cli("--root", root, "--file", "rules.py", "g", socket=daemon.socket)
    assert failed.returncode == 1 and f"ValueError: {shown}" in failed.stderr, failed.stderr
    for output in (done.stdout, done.stderr, failed.stderr):
        assert not set(output) & {"\x1b", "\x07", "\r", "\x9b", "\u202e", "\x7f"}, output


def test_cli_whose_stderr_cannot_be_written_still_prints_the_result(daemon, make_root):
    # a console line to a stderr whose reader left (or a full disk) escaped as a traceback, and
    # the call was cancelled (found by a probe)
    root = make_root({"rules.py": "def chatty(n):\n    for i in range(n):\n        print('line', i)\n    return n\n"})
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "isorun", "call", "--socket", daemon.socket, "--root", root,
                               "--file", "rules.py", "chatty", "3"], stdout=subprocess.PIPE, stderr=full,
                              text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == 3


def test_cli_with_a_stdout_that_cannot_carry_the_text_prints_the_same_json_escaped(daemon, make_root):
    # PYTHONIOENCODING=ascii: a UnicodeEncodeError traceback (found by a probe)
    root = make_root({"rules.py": "def echo(x):\n    return x\n"})
    done = subprocess.run([sys.executable, "-m", "isorun", "call", "--socket", daemon.socket, "--root", root,
                           "--file", "rules.py", "echo", '"é 🎉"'], capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b'"\\u00e9 \\ud83c\\udf89"\n' and json.loads(done.stdout) == "é 🎉"


def test_cli_refuses_a_result_whose_keys_are_equal_as_json_text(daemon, make_root):
    # It printed {"1": "text"}: the entry of the key 1 was lost without a word.
    root = make_root({"rules.py": "def both():\n    return {'k': {1: 'int', '1': 'text'}}\n"})
    done = cli("--root", root, "--file", "rules.py", "both", socket=daemon.socket)
    assert done.returncode == 1 and done.stdout == "", done
    assert "cannot be printed as JSON: its keys 1 and '1' are both written \"1\"" in done.stderr, done.stderr


def _cli_process(*args, socket, **popen):
    return subprocess.Popen([sys.executable, "-m", "isorun._cli", "call", "--socket", socket, *args],
                            stderr=subprocess.PIPE, text=True, **popen)


def test_cli_whose_reader_went_away_exits_quietly_as_a_killed_pipe_writer(daemon, make_root):
    # It showed a Python traceback (BrokenPipeError) when its reader had left (``| head -c1``).
    root = make_root({"rules.py": "import time\ndef late():\n    time.sleep(0.5)\n    return 'x' * 100000\n"})
    reader, writer = os.pipe()
    os.close(reader)  # no one will read the result
    try:
        process = _cli_process("--root", root, "--file", "rules.py", "--external", "time", "late",
                               socket=daemon.socket, stdout=writer)
    finally:
        os.close(writer)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == "", stderr


def test_cli_whose_reader_leaves_in_the_middle_of_a_large_result_says_so_by_its_status(daemon, make_root):
    # The reader read 10 bytes of 10 MB and left: the pipe's partial write was taken for the
    # whole, and the status said 0 for a result cut at 64 KiB.
    root = make_root({"rules.py": "def big():\n    return 'x' * 10_000_000\n"})
    process = _cli_process("--root", root, "--file", "rules.py", "big", socket=daemon.socket, stdout=subprocess.PIPE)
    assert process.stdout.read(10) == '"xxxxxxxxx'
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == "", stderr


def test_cli_that_cannot_write_its_result_says_why(daemon, make_root):
    # A full disk was a traceback: "OSError: [Errno 28] No space left on device".
    root = make_root({"rules.py": "def f():\n    return 'x' * 100000\n"})
    with open("/dev/full", "w") as full:
        process = _cli_process("--root", root, "--file", "rules.py", "f", socket=daemon.socket, stdout=full)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert stderr.startswith("isorun: cannot write the result: [Errno 28] No space left on device"), stderr
    assert "Traceback" not in stderr


def test_cli_with_stdout_closed_refuses_before_making_the_call(daemon, make_root):
    # It exited 0 and printed nothing: the result went nowhere, the call was made.
    root = make_root({"rules.py": "def unseen_by_cli():\n    return 1\n"})
    process = _cli_process("--root", root, "--file", "rules.py", "unseen_by_cli", socket=daemon.socket,
                           preexec_fn=lambda: os.close(1))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and "standard output is closed" in stderr, stderr
    assert daemon.calls("unseen_by_cli") == []


def test_cli_with_stderr_closed_keeps_its_messages_off_stdout(daemon, make_root, tmp_path):
    # print(file=sys.stderr) with stderr closed (None) writes on stdout: a guest's console line
    # or an error message would have been read as the result.
    root = make_root({"rules.py": "def chatty():\n    print('a console line')\n    return 1\n"
                                  "def boom():\n    raise ValueError('boom')\n"})
    for func, status, stdout in [("chatty", 0, "1\n"), ("boom", 1, "")]:
        process = subprocess.Popen([sys.executable, "-m", "isorun._cli", "call", "--socket", daemon.socket,
                                    "--root", root, "--file", "rules.py", func],
                                   stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(2))
        out, _ = process.communicate(timeout=60)
        assert (process.returncode, out) == (status, stdout), func


def test_cli_interrupted_during_a_call_cancels_it_without_a_traceback(daemon, make_root):
    # Ctrl-C showed a KeyboardInterrupt traceback.
    root = make_root({"rules.py": "import time\ndef slow_for_ctrl_c():\n    print('started', flush=True)\n"
                                  "    time.sleep(30)\n"})
    # As from a terminal: a shell without job control starts a background command (pytest
    # itself, in CI) with SIGINT ignored, which Python then leaves ignored in the CLI.
    process = _cli_process("--root", root, "--file", "rules.py", "--external", "time", "slow_for_ctrl_c",
                           socket=daemon.socket, stdout=subprocess.PIPE,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stderr.readline() == "started\n"  # the guest is running
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=20)
    assert process.returncode == 130 and stdout == "", stderr
    assert stderr == "isorun: interrupted\n"
    deadline = time.monotonic() + 10
    while not daemon.calls("slow_for_ctrl_c") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line["outcome"] for line in daemon.calls("slow_for_ctrl_c")] == ["cancelled"]


CHATTY = "def chatty(n):\n    for i in range(n):\n        print('line', i)\n    return n\n"


def test_a_burst_of_console_lines_arrives_complete_and_in_order(runner):
    lines = []
    r = runner({"index.py": CHATTY}, on_console=lambda stream, text: lines.append(text))
    assert r.run("chatty", args=[3000]) == 3000
    assert lines == [f"line {i}\n" for i in range(3000)]


def test_bursts_travel_as_batches_not_one_message_per_line(daemon, make_root):
    import grpc
    from isorun import _codec
    from isorun._proto import runner_pb2 as pb, runner_pb2_grpc
    root = make_root({"index.py": CHATTY})
    with grpc.insecure_channel("unix:" + daemon.socket) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        request = pb.RunRequest(root=root, file="index.py", func_name="chatty", args=[_codec.encode(3000)])
        events = list(stub.RunStream(request, timeout=60))
        texts = []
        for e in events:
            if e.WhichOneof("event") == "console":
                texts.append(e.console.text)
            elif e.WhichOneof("event") == "console_batch":
                texts.extend(line.text for line in e.console_batch.lines)
        assert texts == [f"line {i}\n" for i in range(3000)]
        assert len(events) < 3000 / 2, "console lines were not batched"
        unary = stub.Run(request, timeout=60)
        assert [line.text for line in unary.console] == [f"line {i}\n" for i in range(3000)]


def test_a_stream_its_client_leaves_unread_still_ends_with_the_outcome(start_daemon, make_root):
    """The timeout interrupted the daemon's wait on a console write held back by the unread
    stream; its write of the outcome then met that write still pending in gRPC's core
    (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, a traceback in the log), and the client, reading at
    last, got the console lines and no outcome until its own deadline."""
    import grpc
    from isorun._proto import runner_pb2 as pb, runner_pb2_grpc
    d = start_daemon(config=f"[limits]\noutput_bytes = {16 << 20}\n")
    root = make_root({"index.py": "def flood():\n    while True:\n        print('y' * 500)\n"})
    with grpc.insecure_channel("unix:" + d.socket) as channel:
        request = pb.RunRequest(root=root, file="index.py", func_name="flood", timeout_seconds=2)
        events = runner_pb2_grpc.RunnerStub(channel).RunStream(request, timeout=60)
        time.sleep(4)  # not reading, past the call's timeout
        last = None
        for last in events:
            pass
    assert last is not None and last.WhichOneof("event") == "outcome", last
    assert last.outcome.failure.kind == pb.Failure.TIMEOUT
    assert "Traceback" not in d.log() and "TOO_MANY_OPERATIONS" not in d.log()


BURST_THEN_WAIT = """
import time
def burst_then(how, lines):
    for i in range(lines):
        print('line', i)
    started = time.monotonic()
    if how == 'sleep':
        time.sleep(1.5)
    else:
        while time.monotonic() - started < 1.5:
            pass
    return lines
"""


@pytest.mark.parametrize("how", ["sleep", "compute"])
def test_the_tail_of_a_burst_arrives_while_the_guest_goes_on(runner, how):
    """The sandbox holds the lines of a burst back for a few ms to send them together: they
    must still arrive while the guest sleeps or computes, not with its outcome."""
    seen = []
    r = runner({"index.py": BURST_THEN_WAIT}, external=["time"],
               on_console=lambda stream, text: seen.append((text, time.monotonic())))
    assert r.run("burst_then", args=[how, 200]) == 200
    finished = time.monotonic()
    assert [text for text, _ in seen] == [f"line {i}\n" for i in range(200)]
    assert finished - seen[-1][1] > 1.0, finished - seen[-1][1]


def test_lines_still_arrive_live_when_the_call_has_no_room_for_the_console_thread(start_daemon, make_root):
    d = start_daemon(config="[limits]\nmax_processes = 1\n")
    seen = []
    with CodeRunner(root=make_root({"index.py": BURST_THEN_WAIT}), file="index.py", socket=d.socket,
                    external=["time"], on_console=lambda stream, text: seen.append((text, time.monotonic()))) as r:
        assert r.run("burst_then", args=["sleep", 200]) == 200
    finished = time.monotonic()
    assert [text for text, _ in seen] == [f"line {i}\n" for i in range(200)]
    assert finished - seen[-1][1] > 1.0, finished - seen[-1][1]


@pytest.mark.parametrize("flush, every", [(False, 0.0002), (True, 0.001)])
def test_a_signal_handler_may_print_while_the_code_it_interrupted_prints(runner, flush, every):
    # With flush=True the handler's flush took its text in the middle of the interrupted
    # write's: the guest's print() raised the runtime's IndexError, or a line was garbled.
    # (Each flush is an event through the daemon: every 0.2 ms, handlers outlast their interval
    # and nest until the guest's RecursionError, as any handler slower than its timer would.)
    lines = []
    r = runner({"index.py": "import signal\n"
                            "def ticking(n):\n"
                            f"    signal.signal(signal.SIGALRM, lambda *_: print('tick', flush={flush}))\n"
                            f"    signal.setitimer(signal.ITIMER_REAL, {every}, {every})\n"
                            "    for i in range(n):\n"
                            "        print('line', i)\n"
                            "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
                            "    return n\n"},
               external=["signal"], on_console=lambda stream, text: lines.append(text))
    assert r.run("ticking", args=[20000], timeout=20) == 20000  # no deadlock on the console
    text = "".join(lines)
    # a tick may land inside a line (between print()'s parts) or inside another tick, as on a
    # terminal; with the ticks taken out, every line is there, in order
    assert "tick" in text
    assert text.replace("tick", "").replace("\n", "") == "".join(f"line {i}" for i in range(20000))


def test_a_signal_handler_printing_amid_a_long_lines_send_does_not_break_its_frame(runner):
    # sendall runs signal handlers when a signal interrupts it: a handler's flushed line was
    # sent in the middle of a 300 KB line's frame, and the daemon read garbage (an event of
    # 808464432 bytes, the text's "0000" taken for a length) in 15 calls of 15
    lines = []
    r = runner({"index.py": "import signal\n"
                            "def big_lines(n, size):\n"
                            "    signal.signal(signal.SIGALRM, lambda *_: print('tick', flush=True))\n"
                            "    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)\n"
                            "    for i in range(n):\n"
                            "        print(str(i) * size)\n"
                            "    signal.setitimer(signal.ITIMER_REAL, 0)\n"
                            "    return n\n"},
               external=["signal"], on_console=lambda stream, text: lines.append(text))
    assert r.run("big_lines", args=[3, 300_000], timeout=20) == 3
    text = "".join(lines)
    assert "tick" in text
    assert text.replace("tick", "").replace("\n", "") == "".join(str(i) * 300_000 for i in range(3))


def test_a_signal_handler_printing_while_the_result_is_sent_does_not_break_its_frame(runner):
    # the same inside the runtime's send of an 8 MiB result: "the sandbox sent an invalid
    # event" in 10 calls of 10 without the console's guard against sending from inside a send
    r = runner({"index.py": "import signal\n"
                            "def big_result(size):\n"
                            "    signal.signal(signal.SIGALRM, lambda *_: print('tick', flush=True))\n"
                            "    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)\n"
                            "    return b'x' * size\n"},
               external=["signal"], on_console=lambda stream, text: None)
    assert r.run("big_result", args=[8 << 20], timeout=20) == b"x" * (8 << 20)


def test_a_guests_handler_due_as_its_exception_unwinds_leaves_the_failure_reported(runner):
    # The handler raises, the guest's frames unwind (freeing 8 MB buffers takes a while), and
    # the next tick's handler ran at the runtime's first call: the sandbox ended without an
    # outcome in 18 calls of 20. Three timers, three signals, so that several can be due.
    r = runner({"index.py": "import signal\n"
                            "def boom(size):\n"
                            "    def handler(number, frame):\n"
                            "        raise ValueError('from the handler')\n"
                            "    for which, number in ((signal.ITIMER_REAL, signal.SIGALRM),\n"
                            "                          (signal.ITIMER_PROF, signal.SIGPROF),\n"
                            "                          (signal.ITIMER_VIRTUAL, signal.SIGVTALRM)):\n"
                            "        signal.signal(number, handler)\n"
                            "        signal.setitimer(which, 0.0001, 0.0001)\n"
                            "    data = []\n"
                            "    while True:\n"
                            "        data.append(b'x' * size)\n"},
               external=["signal"])
    for _ in range(6):
        with pytest.raises(errors.GuestError) as info:
            r.run("boom", args=[8_000_000], timeout=20)
        assert (info.value.type_name, info.value.message) == ("ValueError", "from the handler")


def test_a_sync_callback_that_returns_a_coroutine_fails_the_call_instead_of_losing_its_lines(runner):
    async def keep(text):
        lines.append(text)
    lines = []
    r = runner({"index.py": CHATTY}, on_console=lambda stream, text: keep(text))
    with pytest.raises(errors.InvalidRequest, match="^a callback .* returned an awaitable: CodeRunner does not await"):
        r.run("chatty", args=[3])
    assert lines == []


def test_a_sync_running_callback_that_returns_an_awaitable_that_is_no_coroutine_fails_the_call_too(runner):
    class Later:  # a Future, a Task or a library's own awaitable: nothing to close, only refused
        def __await__(self):
            yield
    r = runner({"index.py": CHATTY})
    with pytest.raises(errors.InvalidRequest, match="^a callback .* returned an awaitable: CodeRunner does not await"):
        r.run("chatty", args=[3], running=lambda: Later())
    assert r.run("chatty", args=[1], running=lambda: None) == 1  # and the runner goes on


def test_a_forked_childs_lines_arrive_though_it_exits_at_once(runner):
    lines = []
    r = runner({"index.py": "import os\n"
                            "def fork_and_print():\n"
                            "    pid = os.fork()\n"
                            "    if pid == 0:\n"
                            "        for i in range(50):\n"
                            "            print('child', i)\n"
                            "        os._exit(0)\n"
                            "    os.waitpid(pid, 0)\n"
                            "    return 'parent'\n"},
               external=["os"], on_console=lambda stream, text: lines.append(text))
    assert r.run("fork_and_print") == "parent"
    assert lines == [f"child {i}\n" for i in range(50)]


def test_a_whitelisted_folder_outside_tmp_is_mounted_at_its_own_path(runner):
    """Its mountpoint must be made in the sandbox's read-only root (not in its /tmp), once."""
    folder = tempfile.mkdtemp(dir="/var/tmp", prefix="isorun-lib-")
    try:
        os.chmod(folder, 0o755)
        with open(os.path.join(folder, "shapes.py"), "w") as f:
            f.write("def square(n):\n    return n * n\n")
        files = {"index.py": "import os, shapes\ndef area(n):\n    return [shapes.square(n), shapes.__file__,"
                             " os.access(os.path.dirname(shapes.__file__), os.W_OK)]\n"}
        r = runner(files, whitelisted_paths=[folder], external=["shapes", "os"])
        assert r.run("area", args=[3]) == [9, os.path.join(folder, "shapes.py"), False]
        assert r.run("area", args=[4])[0] == 16  # the next sandbox makes its own mountpoint
    finally:
        shutil.rmtree(folder)


def test_module_not_found_says_where_the_import_was(runner):
    """A module's `import os` three imports down said only "Cannot find module 'os'"."""
    r = runner({"index.py": "import a\ndef f():\n    return 1\n", "a.py": "import b\n",
                "b.py": "X = 1\nimport os\n"})
    with pytest.raises(errors.ModuleNotFound) as info:
        r.run("f")
    assert str(info.value) == "Cannot find module 'os'" and info.value.module == "os"
    assert 'File "/index.py", line 1' in info.value.traceback
    assert 'File "/b.py", line 2, in <module>' in info.value.traceback
    assert "isorund" not in info.value.traceback
