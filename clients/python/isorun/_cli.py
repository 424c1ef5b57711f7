"""``isorun call --root DIR --file F FUNC [JSON_ARG ...]``: one call from the shell.

Prints the result as strict JSON on stdout (``_as_json`` says how values JSON has no form for
are written); console lines of the guest go to stderr. On failure prints the error on stderr
and exits 1 (2 for a usage error, the daemon's InvalidRequest included, 3 when no daemon
answers, 130 on Ctrl-C, 141 when the reader of stdout went away, as for a shell tool killed by
SIGPIPE).
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import sys
from typing import Any, Sequence

from . import __version__, _inputs, errors
from ._sync import CodeRunner


class TooDeep(ValueError):
    """A JSON text nested deeper than Python's recursion limit lets ``json`` parse."""


def _loads(text: str) -> Any:
    """``json.loads``, whose RecursionError on a text nested ~1,000 deep was a traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep(f"nested too deeply for Python's json to parse (about {sys.getrecursionlimit()} levels; "
                      "a call's values may nest far less deeply)") from None


def _json_option(text: str) -> Any:
    """An option's JSON value; argparse said only "invalid loads value" of a bad one."""
    try:
        return _loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text[:80]!r}") from None
    except TooDeep as e:
        raise argparse.ArgumentTypeError(f"{e}: {text[:80]!r}") from None


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser (for help and usage errors) and its ``call`` parser."""
    parser = argparse.ArgumentParser(prog="isorun", description="Client of the isorun daemon.")
    parser.add_argument("--version", action="version", version=f"isorun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call", help="call one function and print its result as JSON")
    call.add_argument("--root", required=True, help="folder holding the guest code (a relative path is taken "
                                                    "from the current folder)")
    call.add_argument("--file", required=True, help="file, relative to root, that holds FUNC")
    call.add_argument("--external", action="append", default=[], metavar="MODULE",
                      help="allow importing MODULE (repeatable)")
    call.add_argument("--whitelisted-path", action="append", default=[], metavar="DIR",
                      help="folder guest modules may import from (repeatable; relative as --root)")
    call.add_argument("--source-extension", action="append", default=None, metavar="EXT",
                      help="which files count as guest source (repeatable; default .py)")
    call.add_argument("--compiler", metavar="PLUGIN", help="source-transform plugin of the daemon's config")
    call.add_argument("--resolver", metavar="PLUGIN", help="module-resolver plugin of the daemon's config")
    call.add_argument("--resolver-options", type=_json_option, default=None, metavar="JSON",
                      help="a JSON object handed to the resolver plugin")
    call.add_argument("--args-resolver", metavar="PLUGIN", help="args-resolver plugin of the daemon's config")
    call.add_argument("--context", type=_json_option, default=None, metavar="JSON",
                      help="a JSON object whose entries become global names")
    call.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="wall-clock timeout of the call (default: the daemon's)")
    call.add_argument("--socket", default=None, help="daemon socket (default: $ISORUN_SOCKET, else the "
                                                     "daemon's default, as for CodeRunner)")
    call.add_argument("func", metavar="FUNC", help="the function of --file to call")
    call.add_argument("args", nargs="*", metavar="JSON_ARG", help="arguments, each one JSON value")
    return parser, call


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options may come after FUNC and its arguments too (``isorun call f 1 --timeout 2 3``):
    a plain parse would take FUNC's arguments only up to the first option, and refuse the
    rest as unrecognized. argparse mixes them only without subcommands, so ``call``'s own
    parser reads what follows it."""
    parser, call = _parsers()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["call"]:
        return call.parse_intermixed_args(argv[1:])
    return parser.parse_args(argv)


# What a terminal acts on rather than shows: C0 controls but tab and newline, DEL, C1 controls
# (0x9b alone is a CSI) and the bidirectional overrides, which reorder what is shown. A guest
# chooses its console lines, its exceptions' messages and its result: written raw, they cleared
# or rewrote the screen and set the window's title (seen), and on terminals that honour it the
# clipboard (OSC 52). The JSON encoder already escapes C0 controls.
_ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_ACTIVE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _inert(text: str) -> str:
    """``text`` with what a terminal would act on written as escapes (``\\x1b``)."""
    return _ACTIVE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def _say(message: str) -> None:
    _to_stderr(f"isorun: {_inert(message)}\n")


def _print_console(stream: str, text: str) -> None:
    text = _inert(text)
    _to_stderr(text if text.endswith("\n") else text + "\n")


def _to_stderr(text: str) -> None:
    """Writes on stderr; one that cannot be written (its reader left, a full disk) is given up
    for the rest of the call, which goes on: its result still goes to stdout. (The error
    escaped as a traceback, and the call was cancelled: found by a probe.)"""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        sys.stderr = open(os.devnull, "w")  # (also quiets the interpreter's flush at exit)


def _as_json(value: Any) -> Any:
    """``value`` as strict JSON can carry it, for a program reading the output (``jq`` refuses
    ``NaN``): bytes as base64 and non-finite floats as "NaN", "Infinity", "-Infinity", as
    protobuf's JSON mapping writes them; sets and tuples as arrays; a dict key that is no
    string as the text of its JSON (``(1, 2)`` is "[1, 2]"); anything else (dates, Decimal,
    UUID, complex) as its ``str()``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return _object(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_as_json(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    return str(value)


class Unprintable(Exception):
    """The result has no JSON form that keeps all of it."""


def _object(value: dict) -> dict:
    """A JSON object of ``value``; two keys whose texts are equal (``1`` and ``"1"``) would
    leave one entry standing for both, so they are refused rather than one silently lost."""
    converted: dict[str, Any] = {}
    keys: dict[str, Any] = {}
    for key, item in value.items():
        text = _key_text(key)
        if text in keys:
            raise Unprintable(f"its keys {keys[text]!r} and {key!r} are both written {json.dumps(text)} "
                              f"in JSON, and one entry would be lost")
        keys[text] = key
        converted[text] = _as_json(item)
    return converted


def _key_text(key: Any) -> str:
    converted = _as_json(key)
    return converted if isinstance(converted, str) else json.dumps(converted, ensure_ascii=False)


def _print_result(result: Any) -> int:
    """Write the result on stdout; the status says whether it got there."""
    try:
        value = _as_json(result)
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except Unprintable as e:
        _say(f"the call returned a result that cannot be printed as JSON: {e}")
        return 1
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except UnicodeEncodeError:  # a stdout that cannot carry it (PYTHONIOENCODING=ascii): the same
        text = json.dumps(value, allow_nan=False)  # JSON, its other characters as \u escapes
    # (only inside strings, where the escape means the same character)
    text = _ACTIVE_IN_JSON.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
    try:
        _write_whole(text + "\n")
    except BrokenPipeError:
        # The reader left (``| head -c1``): quiet, as a shell tool killed by SIGPIPE, and
        # stdout pointed at /dev/null so the interpreter's flush at exit does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a full disk, a closed terminal
        _say(f"cannot write the result: {e}")
        return 1
    return 0


def _write_whole(text: str) -> None:
    """Writes ``text`` to stdout's descriptor until all of it is written. Python's own stdout
    took a pipe's partial write, made when its reader left mid-result (``| head -c 10`` of a
    10 MB result), for the whole: the result was cut at 64 KiB and the status said 0."""
    sys.stdout.flush()
    data = memoryview(text.encode(sys.stdout.encoding or "utf-8", sys.stdout.errors or "strict"))
    while data:
        data = data[os.write(sys.stdout.fileno(), data):]


def main(argv: Sequence[str] | None = None) -> int:
    if sys.stderr is None:  # started with stderr closed: print(file=None) would write on stdout
        sys.stderr = open(os.devnull, "w")
    try:
        return _call(_parse(argv))
    except KeyboardInterrupt:  # the call, if one was running, was cancelled by the runner's close
        _say("interrupted")
        return 130


def _call(options: argparse.Namespace) -> int:
    if sys.stdout is None:  # started with stdout closed (``>&-``): the result would go nowhere
        print("isorun: standard output is closed, so the result could not be printed; "
              "the call was not made", file=sys.stderr)
        return 2
    args = []
    for number, text in enumerate(options.args, 1):
        try:
            args.append(_loads(text))
        except json.JSONDecodeError as e:
            # the usual slip: a string without the quotes JSON needs, which the shell removed
            _say(f"argument {number} ({text[:80]!r}) is not valid JSON: {e}; a JSON string keeps its "
                 f"quotes, which the shell takes: '\"text\"'")
            return 2
        except TooDeep as e:
            _say(f"argument {number} ({text[:80]!r}) is {e}")
            return 2
    try:
        runner = CodeRunner(
            # The daemon resolves nothing against the caller's folder: a shell user's "--root ."
            # is made absolute here (the libraries keep asking for absolute paths).
            root=os.path.abspath(options.root), file=options.file, external=options.external,
            whitelisted_paths=[os.path.abspath(p) for p in options.whitelisted_path],
            source_extensions=options.source_extension or [".py"], compiler=options.compiler,
            resolver=options.resolver, resolver_options=options.resolver_options,
            on_console=_print_console, socket=options.socket)
        # checked by run() too, but there they would read as the call's failure (status 1)
        _inputs.timeout_seconds(options.timeout)
        if options.context is not None:
            _inputs.mapping("context", options.context, "global names to values")
    except errors.IsorunError as e:  # an option the runner refuses: a usage error
        _say(f"{type(e).__name__}: {e}")
        return 2
    try:
        result = runner.run(options.func, args=args, context=options.context,
                            timeout=options.timeout, args_resolver=options.args_resolver)
    except errors.DaemonUnavailable as e:
        _say(str(e))
        return 3
    except errors.InvalidRequest as e:  # what the daemon refuses of the command line: a usage error
        _say(f"{type(e).__name__}: {e}")
        return 2
    except errors.IsorunError as e:
        _say(f"{type(e).__name__}: {e}")
        if isinstance(e, errors.GuestError) and e.traceback:
            _to_stderr(_inert(e.traceback.rstrip()) + "\n")
        return 1
    finally:
        runner.close()
    return _print_result(result)


if __name__ == "__main__":
    sys.exit(main())
