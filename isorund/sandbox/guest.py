"""The guest runner: the last step in the sandbox, once every restriction is in place.

It decodes the arguments, imports the call's file through the restricted importer, finds the
function, reports ``running``, calls it (awaiting a coroutine), and sends exactly one outcome.
Console output is streamed while the call runs (``console``); a failure is reported in the
guest's terms, its exception and its own frames, never the runtime's (``failure``).
"""
from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import resource
import signal
import sys
import time
import types
from collections.abc import Callable
# What the runtime calls once the guest's code has run, bound here: a guest that replaced
# them in their modules (`sys.settrace = None`, past the importer) made the failure path
# below retry until the call's timeout. _signal's own functions: signal's wrap each handler
# in an enum, 30 times slower.
from _signal import SIG_BLOCK, SIG_IGN, SIG_UNBLOCK, getsignal, pthread_sigmask
from _signal import signal as set_handler
from os import _exit, getpid
from resource import RLIMIT_AS, getrlimit, setrlimit
from sys import getprofile, gettrace, set_int_max_str_digits, setprofile, setrecursionlimit, settrace

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError, EncodeError

from isorun import _codec
from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2 as sb

from .compiled import Compiled, CompiledBudget
from .console import Console, ConsoleStream
from .failure import Failure, describe_safely, memory_limit, within_bounds
from .import_errors import call_plugin
from .import_policy import ImportPolicy, python_name
from .importer import GuestImporter
from .limits import CpuLimitExceeded


_MISSING = object()  # (a function name the module does not have)
_console: Console | None = None  # the call's (one call per process), made by prepare()
# Its stdout and stderr streams: a line begun on them is sent at the end of the call even if
# the guest has put something else in sys.stdout since (the line was lost).
_streams: tuple[ConsoleStream, ...] = ()


_CALL_PID = 0  # the call's own process (see _end_a_forked_child), set by prepare()


def prepare(sock, registry) -> None:
    """Everything of a call that does not depend on it, done while the sandbox waits in the pool.

    Besides installing the console and the CPU-limit handler, it runs the runtime's own
    path once on a made-up value (codec, compile, the outcome message): the first touch of
    each page inherited from the zygote is a copy-on-write fault, and taking those here keeps
    them off the call's path. Nothing of it is visible to the guest.
    """
    global _console, _streams, _CALL_PID
    _CALL_PID = getpid()
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    _console = Console(sock)
    sys.stdout = ConsoleStream(_console, pb.ConsoleLine.STDOUT)
    sys.stderr = ConsoleStream(_console, pb.ConsoleLine.STDERR)
    _streams = (sys.stdout, sys.stderr)
    # "the real stdout, however sys.stdout was redirected" is the console too: the original
    # streams write to /dev/null, so a guest's print(file=sys.__stderr__) was lost
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    sample = _codec.decode(_codec.encode([1, "warm", {"up": 2.5}], registry), registry)
    namespace = {"__builtins__": dict(vars(builtins))}
    exec(compile("def echo(x):\n    return x\n", "/warm-up.py", "exec", dont_inherit=True), namespace)
    event = pb.RunEvent()
    _codec.encode_into(event.outcome.value, namespace["echo"](sample), registry)
    event.outcome.usage.CopyFrom(_usage(time.monotonic()))
    event.SerializeToString()


def run(plan, request_bytes: bytes, plugins, registry, guest_dir: str) -> None:
    """Runs the call described by ``plan`` and the client's request, and sends its events on
    the channel ``prepare`` gave the console (after the lines printed before each of them)."""
    started, cpu_before = time.monotonic(), _cpu_seconds()
    _console.cap = plan.limits.output_bytes
    last_resort = _out_of_memory_outcome(plan)
    importer = None
    # The result is encoded straight into the event that carries it: a large result is then
    # built once, not copied into an Outcome and again into a RunEvent.
    event = pb.RunEvent()
    outcome = event.outcome
    failure = None
    try:
        request = _request_of(request_bytes)
        args = [_decoded(v, registry, f"args[{i}]") for i, v in enumerate(request.args)]
        context = {python_name(k): _decoded(v, registry, f"context[{k!r}]") for k, v in request.context.items()}
        importer = _importer_for(plan, request, context, plugins, guest_dir)
        _check_readable(guest_dir, plan.file)
        _preload(importer, plan)
        module = importer.load_main(plan.file)
        # A trace or profile function the module's code set is the guest's, for the guest's
        # frames: held off the runtime's own until the function is called (it raised in them,
        # and the call failed with an error of the runtime's names). C calls: nothing traced.
        trace, profile = gettrace(), getprofile()
        settrace(None)
        setprofile(None)
        func = _function_of(module, request.func_name, plan.file)
        _end_a_forked_child(0)  # (one the module's code forked, back from the import)
        _console.send_after_lines(pb.RunEvent(running=pb.Running()))
        if request.args_resolver:
            args = list(call_plugin("args_resolver", request.args_resolver,
                                    plugins.args_resolvers[request.args_resolver], args,
                                    returns=(list, tuple), expected="the arguments as a list"))
        args = _padded(func, args)
        settrace(trace)
        setprofile(profile)
        result = func(*args)
        _BUILTINS.update(_BUILTINS_AS_LEFT)  # (a C call: see _BUILTINS_AS_LEFT)
        # (inspect's test, with no frame to trace); a coroutine that returns another's is
        # awaited through, as a JavaScript promise resolves to what a promise it returns does
        while isinstance(result, types.CoroutineType):
            result = asyncio.run(result)
            _BUILTINS.update(_BUILTINS_AS_LEFT)
        settrace(None)  # before any frame of the runtime's: see _interpreter_settings_back
        setprofile(None)
        _silence_guest_handlers()
        _interpreter_settings_back()
        importer.withdraw()
        _encoded_result(outcome.value, result, registry, plan.limits.result_bytes)
    except InvalidRequest as e:
        _console.send_after_lines(sb.SandboxEvent(invalid_request=str(e)))
        return
    except BaseException as e:  # noqa: B036 - everything the guest raises is its outcome
        # A handler of the guest's may still be due (a timer's signal that arrived as its
        # exception unwound): Python runs it at the next call or loop, here, and its error
        # ended the sandbox without an outcome. Signals are held first (a C call, so nothing
        # runs before it), after which only handlers already due can run, each once; the
        # guest's failure is what is reported. Not closed: with two or more due, one may run
        # at the loop's jump back, outside the try; a guest thread may still take a signal.
        for _ in _TRIES:
            try:
                pthread_sigmask(SIG_BLOCK, _SIGNALS)
                _BUILTINS.update(_BUILTINS_AS_LEFT)
                settrace(None)
                setprofile(None)
                _silence_guest_handlers()
                break
            except BaseException:  # noqa: B036 - a late handler's error: the call already ended
                pass
        pthread_sigmask(SIG_UNBLOCK, _SIGNALS)
        _interpreter_settings_back()
        if importer is not None:
            importer.withdraw()
        failure = e.failure if type(e) is _NotAFunction else \
            describe_safely(e, importer.guest_files if importer else set(), plan.limits)
    for stream in _streams:
        ConsoleStream.finish(stream)  # (from the class: the guest may have replaced its methods)
    try:
        _finish_outcome(outcome, failure, plan, started, cpu_before)
        data = event.SerializeToString()
    except (MemoryError, EncodeError):  # (protobuf's words for an allocation it could not make)
        # out of memory with the reserve given back (a result of hundreds of MiB): a
        # message made before the guest ran, which needs nothing more to be sent
        data = last_resort
    _end_a_forked_child(0 if failure is None else 1)  # (forked by the function, or by code the report ran)
    _console.send_after_lines(data)


def _importer_for(plan, request: pb.RunRequest, context: dict, plugins, guest_dir: str) -> GuestImporter:
    """The call's importer: its policy, and the plugins the request names (the resolver is
    made here, from its options: its failure is the plugin's, before any guest code)."""
    policy = ImportPolicy(guest_dir=guest_dir, extensions=tuple(plan.extensions),
                          allowed=frozenset(plan.allowed), search_paths=tuple(plan.search_paths))
    resolver = None
    if request.resolver:
        options = _codec.decode_plain(struct_pb2.Value(struct_value=request.resolver_options))
        resolver = call_plugin("resolver", request.resolver, plugins.resolvers[request.resolver], options,
                               returns=(Callable,), expected="a function resolve(name) -> path | None")
    return GuestImporter(policy, context=context, resolver=resolver,
                         compiler=plugins.compilers.get(request.compiler) if request.compiler else None,
                         plugin_names=(request.compiler, request.resolver))


def _function_of(module, func_name: str, file: str):
    """The call's function: an attribute, as ``module.exports[funcName]`` is in isolated-runtime
    (a module's ``__getattr__`` and an object the module put in its own place in sys.modules
    answer too). One missing or not callable raises _NotAFunction, which takes the failure
    path: the module's code has run, and what it left (a trace function, signal handlers) is
    undone there as after any guest failure (left in place, a trace function raised inside the
    report and no outcome was sent)."""
    func = getattr(module, python_name(func_name), _MISSING)
    if not callable(func):
        raise _NotAFunction(Failure(kind=Failure.FUNCTION_NOT_FOUND, type_name="TypeError", message=(
            f"{func_name} is not a function in /{file}" if func is not _MISSING
            else f"function {func_name} was not found in /{file}")))
    return func


def _finish_outcome(outcome: pb.Outcome, failure: Failure | None, plan, started: float, cpu_before: float) -> None:
    """The outcome's id, usage and failure, if any (the result oneof: a value begun is dropped)."""
    outcome.call_id = plan.call_id
    outcome.usage.CopyFrom(_usage(started, cpu_before))
    if failure is not None:
        outcome.failure.CopyFrom(within_bounds(failure, plan.limits.result_bytes))


def _out_of_memory_outcome(plan) -> bytes:
    """The event sent when even the outcome cannot be encoded, made before the guest runs."""
    return pb.RunEvent(outcome=pb.Outcome(call_id=plan.call_id, failure=Failure(
        kind=Failure.RESOURCE_LIMIT, limit="memory",
        message=f"the call went over {memory_limit(plan.limits)}: its outcome could not be encoded"))
    ).SerializeToString()


def _preload(importer: GuestImporter, plan) -> None:
    """Gets the guest's modules ready from the daemon's code cache, before any guest code runs;
    when the daemon asked, sends it the modules, first of all events: the only moment the
    process holds nothing but the runtime's own work (see isorund.code_cache)."""
    compiled = importer.preload(plan.file, {m.path: m for m in plan.modules}, plan.report_compiled)
    if plan.report_compiled:
        _console.send_after_lines(sb.SandboxEvent(compiled=sb.CompiledModules(modules=_within_budget(compiled))))


def _within_budget(modules: list[Compiled]) -> list[sb.CompiledModule]:
    """The modules that fit in ``MAX_COMPILED_BYTES``, in the order found (the call's file
    first): the daemon reads the event under that bound. One too large for what is left goes
    without its code: the daemon still learns what it imports, and hands those on (a call file
    of over a megabyte, left out, turned the cache off for every module it imports)."""
    out, budget = [], CompiledBudget()
    for m in modules:
        message = sb.CompiledModule(path=m.path, source_hash=m.source_hash, code=m.code, imports=m.imports,
                                    inode=m.version[0], size=m.version[1], mtime_ns=m.version[2],
                                    ctime_ns=m.version[3])
        if not budget.take(message.ByteSize()):
            message.code = b""
            if not budget.take(message.ByteSize()):
                continue
        out.append(message)
    return out


class _NotAFunction(Exception):
    """The call's function is not in its module, or not callable: ``failure`` says which."""

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure


class InvalidRequest(Exception):
    """The client's request holds values that do not parse; the daemon answers INVALID_ARGUMENT."""


def _check_readable(guest_dir: str, file: str) -> None:
    """The daemon, as root, found the call's file; the guest's user may still be kept out of it
    (a folder of mode 700, a file of 600), which the import would report as a module it cannot
    find, under a name the caller may never have used."""
    if not os.access(os.path.join(guest_dir, file), os.R_OK):
        raise InvalidRequest(f"file {file!r} cannot be read by the sandbox's user: the folder, its subfolders "
                             f"and files must be readable by every user (chmod -R a+rX), and the folders "
                             f"above it searchable")


def _decoded(value: struct_pb2.Value, registry, where: str):
    """A value of the request, decoded; its error says where in the request the value was."""
    with _codec.said_of(where):
        return _codec.decode(value, registry)


def _encoded_result(into, result, registry, max_bytes: int) -> None:
    """Encodes the function's result; its SerializationError says it was the result, as the
    clients' say which argument (the guest's own code raising while it is read is its error)."""
    with _codec.said_of("the result"):
        _codec.encode_into(into, result, registry, max_bytes=max_bytes, wrap_read_errors=False)


def _request_of(data: bytes) -> pb.RunRequest:
    """The client's request, parsed here: the daemon relays it with its values unparsed."""
    try:
        return pb.RunRequest.FromString(data)
    except DecodeError as e:
        if "alloc failed" in str(e):  # upb's words when its arena meets the call's memory limit
            raise MemoryError() from None
        raise InvalidRequest(f"the request's values (args, context, resolver_options) are not valid "
                             f"protobuf messages: {e}") from None


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _usage(started: float, cpu_before: float = 0.0) -> pb.Usage:
    """The call's own usage: CPU spent in the pool, before the call, is not the guest's."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return pb.Usage(wall_seconds=time.monotonic() - started, cpu_seconds=max(0.0, _cpu_seconds() - cpu_before),
                    peak_memory_bytes=max(own.ru_maxrss, children.ru_maxrss) * 1024)


def _on_sigxcpu(signum, frame):
    raise CpuLimitExceeded()


_SIGNALS = tuple(int(number) for number in signal.valid_signals())
_SIGXCPU = int(signal.SIGXCPU)
# The failure path's tries at holding signals: each due handler runs once, and the bound is a
# backstop against a step the guest broke (a range made here: the guest may delete `range`).
_TRIES = range(len(_SIGNALS) + 1)
# The interpreter's builtins as the zygote left them, put back after the guest's code ran (~2
# µs). A guest that reached the real module (past the importer, as the isolation tests assume)
# and deleted `isinstance` or `len` broke the runtime's own code that follows: its sandbox
# ended without an outcome; without `callable`, the failure path retried until the timeout.
_BUILTINS, _BUILTINS_AS_LEFT = vars(builtins), dict(vars(builtins))
# (the zygote's, which every sandbox starts with)
_RECURSION_LIMIT, _INT_MAX_STR_DIGITS = sys.getrecursionlimit(), sys.get_int_max_str_digits()


def _silence_guest_handlers() -> None:
    """Once the guest's function has returned or raised, its signal handlers have nothing left
    to do: one still called (by a timer left running) raised inside the runtime's report, and
    the sandbox ended without an outcome. They are ignored from here on, the CPU limit's own
    handler put back (~3 µs)."""
    for number in _SIGNALS:
        handler = getsignal(number)
        if callable(handler) and handler is not _on_sigxcpu:
            set_handler(number, SIG_IGN)
    if getsignal(_SIGXCPU) is not _on_sigxcpu:
        set_handler(_SIGXCPU, _on_sigxcpu)


def _interpreter_settings_back() -> None:
    """The runtime's own work after the guest's (encoding its result, formatting its failure)
    runs with the interpreter's settings, not the guest's: a recursion limit it lowered made
    a result 40 lists deep a SerializationError, and a lower limit on int digits made a big
    int result one. A trace or profile function the guest set ran on every frame of the
    runtime (and its error became the call's): they are unset where this is called, inline,
    as calling this would be traced already. The address space the guest ran without
    (``limits.memory_reserve``) is the runtime's from here."""
    setrecursionlimit(_RECURSION_LIMIT)
    set_int_max_str_digits(_INT_MAX_STR_DIGITS)
    try:
        hard = getrlimit(RLIMIT_AS)[1]
        setrlimit(RLIMIT_AS, (hard, hard))
    except (OSError, ValueError):
        pass  # (insecure mode's daemon may hold no such limit to give)


def _end_a_forked_child(status: int) -> None:
    """A process the guest forked that comes back into the runtime (its function returned in
    both processes) exits here, its lines sent: only the call's own process reports. The
    child's outcome was taken for the call's, whichever process sent first (a probe saw the
    child's value returned, or its exception raised while the parent returned)."""
    if getpid() != _CALL_PID:
        for stream in _streams:
            ConsoleStream.finish(stream)
        _exit(status)


def _padded(func, args: list) -> list:
    """Fills missing positional parameters (those without defaults) with None.

    isolated-runtime called JavaScript functions, which tolerate missing arguments (they are
    ``undefined``); guests ported from it, and the contract's tests, call ``f(a, b)`` with
    fewer arguments and expect the body to run. The parameters are the call's as Python sees
    them: a bound method's or a callable object's without ``self``, a partial's without the
    ones it binds. A callable whose signature cannot be read (some builtins) gets its
    arguments as given.
    """
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return args
    required = 0
    for p in parameters:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty:
            break
        required += 1
    if len(args) >= required:
        return args
    return list(args) + [None] * (required - len(args))

