"""What the client refuses before it sends anything, and how it maps what the daemon sends back.

No daemon runs here: the runners point at a socket that does not exist, so a call that got
past the client's own checks fails with DaemonUnavailable. Any other error proves the client
refused the call itself, before anything was sent.
"""
from __future__ import annotations

import asyncio
import math
import pathlib
import re
import socket
import types

import pytest

from isorun import AsyncCodeRunner, CodeRunner, errors
from isorun._outcome import raise_failure
from isorun._proto import runner_pb2 as pb
from google.protobuf import struct_pb2

MiB = 1024 * 1024


@pytest.fixture
def runner(tmp_path):
    """A CodeRunner whose socket does not exist."""
    r = CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "none.sock"))
    yield r
    r.close()


# ------------------------------------------------------------------------------- timeout

@pytest.mark.parametrize("timeout", [math.inf, -math.inf, math.nan, 0, -1, 0.0, 10**400,
                                     True, "5", b"5", [5]])
def test_a_timeout_that_is_not_a_finite_number_above_zero_is_an_invalid_request(runner, timeout):
    with pytest.raises(errors.InvalidRequest, match="timeout must be a finite number of seconds > 0"):
        runner.run("f", timeout=timeout)


@pytest.mark.parametrize("timeout", [1e300, 1e12, 10**20])
def test_a_huge_finite_timeout_reaches_the_daemon_instead_of_expiring_at_once(runner, timeout):
    # gRPC's deadline overflowed and expired at once (RuntimeTimeoutError); capped, the call is
    # sent, and here finds no daemon. A real daemon refuses the timeout (integration tests).
    with pytest.raises(errors.DaemonUnavailable):
        runner.run("f", timeout=timeout)


@pytest.mark.parametrize("timeout", [None, 0.5, 3, 2.5e6])
def test_usable_timeouts_pass_the_clients_checks(runner, timeout):
    with pytest.raises(errors.DaemonUnavailable):
        runner.run("f", timeout=timeout)


# ---------------------------------------------------------------------- args and context

def _generator():
    yield 1


@pytest.mark.parametrize("args, type_name", [
    ("abc", "str"), (b"ab", "bytes"), (bytearray(b"ab"), "bytearray"), ({"a": 1}, "dict"),
    ({1, 2}, "set"), (frozenset({1}), "frozenset"), (_generator(), "generator"),
    (iter([1, 2]), "list_iterator"), (5, "int")])
def test_args_that_are_not_a_list_or_tuple_are_refused_naming_their_type(runner, args, type_name):
    with pytest.raises(errors.InvalidRequest) as info:
        runner.run("f", args=args)
    assert str(info.value) == f"args must be a list or tuple of the positional arguments, got {type_name}"


@pytest.mark.parametrize("args", [[1, 2], (1, 2), [], None, range(3)])
def test_lists_tuples_and_other_sequences_are_accepted_as_args(runner, args):
    with pytest.raises(errors.DaemonUnavailable):
        runner.run("f", args=args)


@pytest.mark.parametrize("context", [[("a", 1)], "a=1", 5])
def test_a_context_that_is_not_a_mapping_is_refused(runner, context):
    with pytest.raises(errors.InvalidRequest, match=f"context must be a mapping .*got {type(context).__name__}"):
        runner.run("f", context=context)


@pytest.mark.parametrize("key", [1, None, ("a",), b"a"])
def test_a_context_name_that_is_no_str_is_an_invalid_request(runner, key):
    # it was a SerializationError, which is for values no codec carries, not a request's shape
    with pytest.raises(errors.InvalidRequest, match=f"^context names must be str, got {type(key).__name__} "):
        runner.run("f", context={key: 2})


@pytest.mark.parametrize("option", ["external", "whitelisted_paths", "source_extensions"])
@pytest.mark.parametrize("value, type_name", [("statistics", "str"), (b"os", "bytes"),
                                              ({"json": 1}, "dict"), ({"json"}, "set")])
def test_list_options_given_as_a_bare_string_or_a_set_are_refused(tmp_path, option, value, type_name):
    with pytest.raises(errors.InvalidRequest) as info:
        CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "s"), **{option: value})
    assert str(info.value) == f"{option} must be a list or tuple of strings, got {type_name}"


@pytest.mark.parametrize("runner_class", [CodeRunner, AsyncCodeRunner])
@pytest.mark.parametrize("extension", ["", ".", "py"])
def test_a_source_extension_that_is_not_a_dot_and_more_is_refused(tmp_path, runner_class, extension):
    # "" and "." were sent; the daemon took "." as an extension, and Node's "" became "."
    with pytest.raises(errors.InvalidRequest) as info:
        runner_class(root=str(tmp_path), file="index.py", socket=str(tmp_path / "s"),
                     source_extensions=[".py", extension])
    assert str(info.value) == (f"source_extensions[1] must look like '.py' (a dot and at least one character), "
                               f"got {extension!r}")


@pytest.mark.parametrize("option", ["external", "whitelisted_paths", "source_extensions"])
def test_list_options_must_hold_strings(tmp_path, option):
    with pytest.raises(errors.InvalidRequest, match=f"{option} must be a list or tuple of strings, "
                                                    "got an item of type int"):
        AsyncCodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "s"), **{option: ["a", 3]})


def test_list_options_take_lists_tuples_and_paths_for_whitelisted_paths(tmp_path):
    r = CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "s"),
                   external=("json", "statistics"), whitelisted_paths=[pathlib.Path("/opt/lib"), "/srv"],
                   source_extensions=[".py", ".pyx"])
    assert list(r._template.external) == ["json", "statistics"]
    assert list(r._template.whitelisted_paths) == ["/opt/lib", "/srv"]
    r.close()


@pytest.mark.parametrize("runner_class", [CodeRunner, AsyncCodeRunner])
@pytest.mark.parametrize("option, value, type_name", [("root", None, "NoneType"), ("file", None, "NoneType"),
                                                      ("root", 5, "int"), ("file", ["index.py"], "list")])
def test_a_root_or_file_that_is_no_path_is_refused_naming_it(tmp_path, runner_class, option, value, type_name):
    # it was os.fspath's bare TypeError, naming neither (the Node client refuses them the same way)
    paths = {"root": str(tmp_path), "file": "index.py", option: value}
    with pytest.raises(errors.InvalidRequest) as info:
        runner_class(socket=str(tmp_path / "s"), **paths)
    assert str(info.value) == f"{option} must be a path (a str or os.PathLike), got {type_name}"


@pytest.mark.parametrize("runner_class", [CodeRunner, AsyncCodeRunner])
@pytest.mark.parametrize("option, value, message", [
    ("compiler", 5, "compiler must be the name of a plugin in the daemon's config (a str), got int"),
    ("resolver", len, "resolver must be the name of a plugin in the daemon's config (a str), got builtin_function_or_method"),
    ("on_console", "print", "on_console must be callable or None, got str"),
    ("socket", 5, "socket must be a path (a str or os.PathLike), got int"),
    ("registry", {}, "registry must be an isorun.TypeRegistry, got dict"),
])
def test_an_option_of_the_wrong_type_is_refused_naming_it(tmp_path, runner_class, option, value, message):
    # they were bare AttributeErrors or TypeErrors ('int' object has no attribute 'isascii'),
    # or (on_console) accepted, to fail at the call's first printed line; registry={} was
    # quietly replaced by the process-wide registry
    options = {"socket": str(tmp_path / "s"), option: value}
    with pytest.raises(errors.InvalidRequest) as info:
        runner_class(root=str(tmp_path), file="index.py", **options)
    assert str(info.value) == message


def test_a_socket_given_as_bytes_is_decoded_as_a_path(tmp_path):
    r = CodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "s.sock").encode())
    assert r.socket == str(tmp_path / "s.sock")
    with pytest.raises(errors.DaemonUnavailable):  # (it was a TypeError concatenating str and bytes)
        r.run("f")
    r.close()


@pytest.mark.parametrize("call", [{"args_resolver": 5}, {"running": 5}])
def test_a_call_option_of_the_wrong_type_is_refused_before_anything_is_sent(runner, tmp_path, call):
    with pytest.raises(errors.InvalidRequest, match="^(args_resolver must be the name of a plugin|running must be callable)"):
        runner.run("f", **call)
    r = AsyncCodeRunner(root=str(tmp_path), file="index.py", socket=str(tmp_path / "none.sock"))
    with pytest.raises(errors.InvalidRequest, match="^(args_resolver must be the name of a plugin|running must be callable)"):
        asyncio.run(r.run("f", **call))


def test_root_and_file_take_paths_and_bytes(tmp_path):
    r = CodeRunner(root=tmp_path, file=b"pkg/index.py", socket=str(tmp_path / "s"))
    assert (r.root, r.file) == (str(tmp_path), "pkg/index.py")
    r.close()


# ------------------------------------------------------------------------------- socket

def _socket_path(tmp_path, size: int) -> str:
    folder = str(tmp_path)
    return folder + "/" + "s" * (size - len(folder) - 1)


def test_a_socket_path_too_long_for_a_unix_address_is_daemon_unavailable_naming_it(tmp_path):
    path = _socket_path(tmp_path, 108)
    r = CodeRunner(root=str(tmp_path), file="index.py", socket=path)
    for call in (lambda: r.run("f"), r.capabilities):
        with pytest.raises(errors.DaemonUnavailable) as info:
            call()
        assert path in str(info.value) and "at most 107 bytes and this one has 108" in str(info.value)
    r.close()


def test_the_async_runner_names_a_socket_path_too_long_too(tmp_path):
    path = _socket_path(tmp_path, 200)

    async def main():
        async with AsyncCodeRunner(root=str(tmp_path), file="index.py", socket=path) as r:
            await r.run("f")
    with pytest.raises(errors.DaemonUnavailable, match="at most 107 bytes and this one has 200"):
        asyncio.run(main())


def test_a_socket_path_of_107_bytes_is_tried(tmp_path):
    r = CodeRunner(root=str(tmp_path), file="index.py", socket=_socket_path(tmp_path, 107))
    with pytest.raises(errors.DaemonUnavailable, match="the socket does not exist"):
        r.run("f")
    r.close()


def test_a_socket_file_nothing_listens_on_is_named_as_such(tmp_path):
    # (a daemon killed outright leaves its socket file: gRPC said "Connection refused")
    path = str(tmp_path / "isorund.sock")
    socket.socket(socket.AF_UNIX).bind(path)
    with CodeRunner(root=str(tmp_path), file="index.py", socket=path) as r:
        with pytest.raises(errors.DaemonUnavailable, match="nothing listens on the socket file"):
            r.run("f")


@pytest.mark.parametrize("kind", ["a regular file", "a folder"])
def test_a_socket_path_that_is_a_file_or_a_folder_is_named_as_such(tmp_path, kind):
    # (a config file or the daemon's folder given as the socket: gRPC said "connection refused")
    where = tmp_path / "isorund.toml"
    where.mkdir() if kind == "a folder" else where.write_text("")
    with CodeRunner(root=str(tmp_path), file="index.py", socket=str(where)) as r:
        with pytest.raises(errors.DaemonUnavailable) as info:
            r.run("f")
    assert str(info.value) == f"no isorun daemon at {where}: it is {kind}, not a Unix socket"


# ------------------------------------------------------------------------- request size

def test_arguments_share_one_size_budget_and_an_oversized_request_is_not_sent(runner):
    big = "x" * (40 * MiB)
    with pytest.raises(errors.SerializationError) as info:
        runner.run("f", args=[big, big])
    assert info.value.limit == "size"
    assert str(info.value).startswith("argument 1: the arguments and context are too large")


def test_arguments_and_context_share_the_size_budget(runner):
    big = "x" * (40 * MiB)
    with pytest.raises(errors.SerializationError) as info:
        runner.run("f", args=[big], context={"more": big})
    assert info.value.limit == "size" and str(info.value).startswith("context 'more': ")


def test_a_request_under_the_budget_is_sent(runner):
    with pytest.raises(errors.DaemonUnavailable):
        runner.run("f", args=["x" * (20 * MiB)], context={"more": "y" * (20 * MiB)})


# ------------------------------------------------------------------ failures from the daemon

@pytest.mark.parametrize("limit, expected", [("depth", "depth"), ("size", "size"), ("", None)])
def test_a_serialization_failure_keeps_the_limit_the_daemon_names(limit, expected):
    failure = pb.Failure(kind=pb.Failure.SERIALIZATION, message="value is nested too deeply", limit=limit)
    with pytest.raises(errors.SerializationError, match="nested too deeply") as info:
        raise_failure(failure)
    assert info.value.limit == expected


def test_a_result_tagged_with_a_type_this_client_lacks_says_so_and_how_to_register_one(runner):
    # it read "cannot decode a value tagged 'acme.Money': no resolver for it; available type
    # names: …", which did not say it was the result, nor that the names were this client's
    value = struct_pb2.Value()
    value.list_value.values.add().struct_value.update({"$type": "acme.Money", "$value": ["1.25", "EUR"]})
    with pytest.raises(errors.SerializationError) as info:
        runner._result(pb.Outcome(value=value))
    assert str(info.value).startswith(
        "the result: cannot decode a value tagged 'acme.Money' at [0]: no resolver is registered for it here "
        "(isorun.register_type, or the runner's registry); this client decodes Decimal, UUID, bytearray, ")
    assert info.value.limit is None


def test_a_result_too_deep_says_it_is_the_result_and_keeps_its_limit(runner):
    value = struct_pb2.Value()
    inner = value
    for _ in range(50):
        inner = inner.list_value.values.add()
    with pytest.raises(errors.SerializationError, match="^the result: value is nested too deeply") as info:
        runner._result(pb.Outcome(value=value))
    assert info.value.limit == "depth"


@pytest.mark.parametrize("options, message", [
    (5, "resolver_options must be a dict of JSON values, got int"),
    ([1, 2], "resolver_options must be a dict of JSON values, got list"),
    ({1: 2}, "resolver_options has a key that is no str: 1"),
    ({"a": {"b": [1, b"x"]}}, "resolver_options['a']['b'][1] is of type bytes; resolver_options hold only JSON values"),
    ({"a": float("nan")}, "resolver_options['a'] is nan, which JSON has no form for"),
    # a mapping that is no dict inside: protobuf said "Unexpected type" (a ValueError, no IsorunError)
    ({"a": types.MappingProxyType({"b": 1})}, "resolver_options['a'] is of type mappingproxy"),
    # an int past 2**53 arrived as the nearest float: 2**53 + 1 as 9007199254740992
    ({"big": 2**53 + 1}, "resolver_options['big'] is 9007199254740993, an int beyond ±2**53"),
    ({"a": [-(2**70)]}, "resolver_options['a'][0] is -1180591620717411303424, an int beyond ±2**53"),
])
def test_resolver_options_that_are_not_json_are_refused_naming_the_place(options, message):
    # protobuf's own words were "'int' object is not iterable", "Unexpected type", "bad
    # argument type for built-in operation": neither what nor where
    with pytest.raises(errors.SerializationError) as info:
        CodeRunner(root="/r", file="f.py", resolver="r", resolver_options=options)
    assert str(info.value).startswith(message)


def test_json_resolver_options_are_kept():
    runner = CodeRunner(root="/r", file="f.py", resolver="r", resolver_options={"base": "/lib", "n": [1, 2.5, None, True]})
    request, _ = runner._request("f", [], None, None, None)
    assert dict(request.resolver_options) == {"base": "/lib", "n": [1, 2.5, None, True]}


def test_resolver_options_ints_up_to_2_53_and_dollar_keys_are_kept():
    # the daemon reads them as plain JSON: a "$type" key is a key, not a tagged value
    options = {"n": [2**53, -(2**53), True], "$value": 1, "type": "x", "$type": "tuple", "a": [{"$type": "x"}]}
    runner = CodeRunner(root="/r", file="f.py", resolver="r", resolver_options=options)
    request, _ = runner._request("f", [], None, None, None)
    assert dict(request.resolver_options) == options


def test_the_cli_reports_an_option_the_runner_refuses_as_a_usage_error(capsys):
    # resolver options that are not a JSON object used to end in a traceback (exit status 1)
    from isorun import _cli
    status = _cli.main(["call", "--root", "/tmp", "--file", "x.py", "--resolver-options", "[1]", "f"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("isorun: SerializationError: resolver_options") and "Traceback" not in err


@pytest.mark.parametrize("option, message", [
    (["--timeout", "0"], "timeout must be a finite number of seconds > 0"),
    (["--timeout", "nan"], "timeout must be a finite number of seconds > 0"),
    (["--context", "[1]"], "context must be a mapping"),
])
def test_the_cli_reports_a_bad_timeout_or_context_as_a_usage_error(capsys, option, message):
    # they were checked only by run(), and left with status 1, as a failed call does
    from isorun import _cli
    status = _cli.main(["call", "--root", "/tmp", "--file", "x.py", "--socket", "/nonexistent.sock", "f", *option])
    assert status == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--context", "--resolver-options"])
def test_the_cli_says_what_is_wrong_with_an_options_json(capsys, option):
    # argparse named the function: "invalid loads value: '{bad'"
    from isorun import _cli
    with pytest.raises(SystemExit) as done:
        _cli.main(["call", "--root", "/tmp", "--file", "x.py", "f", option, "{bad"])
    assert done.value.code == 2
    assert (f"argument {option}: not valid JSON (Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)): '{bad'") in capsys.readouterr().err


async def _async_callback(*_):
    pass


def test_the_sync_runner_refuses_coroutine_functions_as_callbacks(runner, tmp_path):
    # CodeRunner calls them without awaiting: each line was lost with a "never awaited" warning
    with pytest.raises(errors.InvalidRequest, match="^on_console is a coroutine function: CodeRunner does not await"):
        CodeRunner(root=str(tmp_path), file="index.py", on_console=_async_callback)
    with pytest.raises(errors.InvalidRequest, match="^running is a coroutine function: .* use AsyncCodeRunner"):
        runner.run("f", running=_async_callback)
    # the async runner awaits them
    AsyncCodeRunner(root=str(tmp_path), file="index.py", on_console=_async_callback)


def test_both_commands_say_their_version(capsys):
    import isorun
    import isorund
    from isorun import _cli
    from isorund import cli
    for parse, expected in ((lambda: _cli.main(["--version"]), f"isorun {isorun.__version__}\n"),
                            (lambda: cli.parse_args(["--version"]), f"isorund {isorund.__version__}\n")):
        with pytest.raises(SystemExit) as done:
            parse()
        assert done.value.code == 0 and capsys.readouterr().out == expected


@pytest.mark.parametrize("options, call, message", [
    ({}, {"func_name": "ec\ud800ho"}, "func_name holds '\\ud800' at 2, a lone surrogate"),
    ({"root": "/tmp/r\udcffp"}, {}, "root holds '\\udcff' at 6"),
    ({"root": b"/tmp/r\xffp"}, {}, "root holds '\\udcff' at 6"),  # os.fsdecode of a name that is no UTF-8
    ({"file": "i\ud800.py"}, {}, "file holds"),
    ({"external": ["json", "x\ud800"]}, {}, "external[1] holds"),
    ({"whitelisted_paths": ["/tmp/\udc80"]}, {}, "whitelisted_paths[0] holds"),
    ({"source_extensions": [".p\ud800"]}, {}, "source_extensions[0] holds"),
    ({"compiler": "c\ud800"}, {}, "compiler holds"),
    ({"resolver": "r\ud800"}, {}, "resolver holds"),
    ({}, {"args_resolver": "\udc80"}, "args_resolver holds"),
    ({}, {"context": {"k\ud800": 1}}, "a context name holds"),
])
def test_a_lone_surrogate_in_a_name_or_path_is_refused_naming_the_option(tmp_path, options, call, message):
    # protobuf raised a bare UnicodeEncodeError, no IsorunError, naming nothing
    with pytest.raises(errors.InvalidRequest, match="^" + re.escape(message)):
        r = CodeRunner(**{"root": str(tmp_path), "file": "index.py", "socket": str(tmp_path / "none.sock"), **options})
        r.run(call.pop("func_name", "f"), **call)


@pytest.mark.parametrize("options, message", [
    ({"a": ["x\ud800"]}, "resolver_options['a'][0] holds a lone surrogate at 1"),
    ({"k\ud800": 1}, "resolver_options has a key holding a lone surrogate"),
])
def test_a_lone_surrogate_in_resolver_options_is_refused_naming_its_place(tmp_path, options, message):
    with pytest.raises(errors.SerializationError, match="^" + re.escape(message)):
        CodeRunner(root=str(tmp_path), file="index.py", resolver_options=options)


@pytest.mark.parametrize("runner", [CodeRunner, AsyncCodeRunner])
@pytest.mark.parametrize("option, hint", [
    ("resolve", "unexpected keyword argument 'resolve': isolated-runtime's resolve function is resolver= here"),
    ("resolveArguments", "is run(args_resolver=...) here"),
    ("onConsole", "unexpected keyword argument 'onConsole': did you mean 'on_console'?"),
    ("timout", "known are external, whitelisted_paths, source_extensions, compiler, resolver"),
])
def test_an_unknown_option_names_the_runner_and_what_isorun_calls_it(tmp_path, runner, option, hint):
    # It said "_Base.__init__() got an unexpected keyword argument 'resolve'".
    with pytest.raises(TypeError, match=f"^{runner.__name__}\\(\\) got an unexpected keyword argument") as info:
        runner(root=str(tmp_path), file="index.py", **{option: None})
    assert hint in str(info.value)
