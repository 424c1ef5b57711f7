"""What the guest raised, as the Failure its client will raise.

The report is in the guest's terms: its exception, its message and its own frames, with
paths relative to its root, never the runtime's. It always fits in an outcome (texts cut in
the middle, tracebacks to their innermost frames) and can always be built (``describe_safely``
falls back to the exception without its traceback).
"""
from __future__ import annotations

import mmap
import traceback
from opcode import opmap

from isorun._proto import runner_pb2 as pb
from isorun.errors import SerializationError

from .console import encodable
from .import_errors import PluginFailure, refused_module
from .limits import CpuLimitExceeded

Failure = pb.Failure
RAISE_VARARGS = opmap["RAISE_VARARGS"]


def describe(e: BaseException, guest_files: set[str], limits=None) -> pb.Failure:
    """Turns what the guest raised into the Failure the client will raise; a memory or CPU
    limit's says the call's limit (``limits``, its plan's) and its key."""
    refused = refused_module(e)
    if refused is not None:
        # where the import was: the guest's frames (a module's `import os` three imports down
        # said only "Cannot find module 'os'")
        _message, traceback_text = guest_report(e, guest_files)
        return _failure(kind=Failure.MODULE_NOT_FOUND, module=refused, message=str(e), traceback=traceback_text)
    if type(e) is MemoryError and not e.args and not _raised_by_the_guests_raise(e, guest_files):
        # an allocation that failed (a guest's own `raise MemoryError`, with a message or not,
        # or of a class of its own, is its exception like any other)
        return _failure(kind=Failure.RESOURCE_LIMIT, limit="memory", message=f"the call went over {memory_limit(limits)}"
                        + ("" if _writable_code_allowed() else _NO_WRITABLE_CODE))
    if isinstance(e, PluginFailure):
        return _failure(kind=Failure.SANDBOX, type_name=e.type_name, message=str(e))
    if isinstance(e, CpuLimitExceeded):
        return _failure(kind=Failure.RESOURCE_LIMIT, limit="cpu", message=f"the call used up {cpu_limit(limits)}")
    if isinstance(e, SerializationError):
        if getattr(e, "limit", None) == "size":
            return _failure(kind=Failure.RESOURCE_LIMIT, limit="result",
                            message=str(e).replace("(limit 'size';", "(limit 'result';"))
        # a result nested past the depth limit (or containing itself) says so, as on the client
        return _failure(kind=Failure.SERIALIZATION, message=str(e), type_name="SerializationError",
                        limit=getattr(e, "limit", None) or "")
    message, traceback_text = guest_report(e, guest_files)
    return _failure(kind=Failure.GUEST_EXCEPTION, type_name=type_name(e), message=message,
                    traceback=traceback_text)


_CLASS_NAME = type.__dict__["__name__"]  # (the name the class was made with, under any metaclass)


def type_name(e: BaseException) -> str:
    """The name of ``e``'s class as the interpreter holds it: a metaclass may make ``__name__``
    anything, a property that raises or returns an int, and the report then failed too and
    the sandbox ended without an outcome (found by a probe)."""
    return _CLASS_NAME.__get__(type(e))


# ctypes raises the same bare MemoryError when it cannot make a callback's code, which needs
# memory both writable and executable: where the host denies that (systemd's
# MemoryDenyWriteExecute=, which sandboxes inherit), every ctypes or cffi callback read as the
# memory limit, with advice (raise it) that could not help. Said beside the limit there.
_NO_WRITABLE_CODE = (" (or it made a ctypes callback: this host denies memory both writable and executable, "
                     "as systemd's MemoryDenyWriteExecute= does)")


def _writable_code_allowed() -> bool:
    """Whether this process may map a page writable and executable (asked once, after a bare
    MemoryError: a refusal is PermissionError, where running out of memory is ENOMEM)."""
    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
    except PermissionError:
        return False
    except (OSError, ValueError):
        pass
    return True


def memory_limit(limits) -> str:
    """"its memory limit of 256 MiB (memory_bytes)": which limit, the daemon's or the call's own
    ("the call went over its memory limit" left the caller to guess), as a timeout's says."""
    return "its memory limit" + ("" if limits is None else f" of {limits.memory_bytes / (1 << 20):g} MiB (memory_bytes)")


def cpu_limit(limits) -> str:
    """"its CPU time of 2 s (cpu_seconds)"; see ``memory_limit``."""
    return "its CPU time" + ("" if limits is None else f" of {limits.cpu_seconds:g} s (cpu_seconds)")


def _raised_by_the_guests_raise(e: BaseException, guest_files: set[str]) -> bool:
    """Whether the innermost frame is the guest's and raised ``e`` with ``raise X`` (an
    allocation the interpreter refused fails at another instruction, a bare ``raise`` passes an
    earlier error on, and the runtime raises its own when a request's values do not fit)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return (_shown(code.co_filename, guest_files) and code.co_code[tb.tb_lasti] == RAISE_VARARGS
            and code.co_code[tb.tb_lasti + 1] > 0)


def describe_safely(e: BaseException, guest_files: set[str], limits=None) -> pb.Failure:
    """``describe(e)``, or if that fails too, ``e`` without its traceback; the sandbox used to
    end without an outcome. Formatting can fail for want of memory (a guest that recursed until
    it ran out still holds every frame), or by what the guest's ``__str__`` raises; the call's
    CPU time can run out on the way, which is then the call's outcome."""
    try:
        return describe(e, guest_files, limits)
    except CpuLimitExceeded as spent:
        return describe(spent, guest_files, limits)
    except BaseException as failed:  # noqa: B036 - anything, a MemoryError most likely
        e.__traceback__ = None  # lets the frames go
        reason = type_name(failed)
        del failed
        return _failure(kind=Failure.GUEST_EXCEPTION, type_name=type_name(e), message=_message(e),
                        traceback=f"(the traceback could not be formatted: {reason})\n")


def _failure(**fields) -> pb.Failure:
    """A Failure whose texts may hold what the guest made: a lone surrogate (``"\\ud800"``),
    which no protobuf string may hold, is written as its escape, as Python's stderr writes it
    (the guest's ``raise ValueError("\\ud800")`` ended the sandbox without an outcome)."""
    return Failure(**{name: encodable(value) if isinstance(value, str) else value
                      for name, value in fields.items()})


# The innermost frames a traceback is made of: Python would format them all, and a guest that
# raised the recursion limit (after escaping to sys) to a million made its outcome take longer
# than any timeout. The frames dropped are the outermost: the runtime's own, then the guest's first
# (the traceback says how many of the guest's, see _Shortened).
TRACEBACK_FRAMES = 2000
# Characters of a failure's message, and of its traceback, sent at most (see within_bounds).
FAILURE_TEXT_CHARS = 256 << 10


def guest_report(e: BaseException, guest_files: set[str]) -> tuple[str, str]:
    """The exception's message and its traceback as Python prints it, keeping only frames of
    guest source. The guest's ``__str__`` runs once, as when Python prints a traceback (it ran
    a second time for the message: a print in it showed twice, and one that failed gave two
    different texts); one that fails reads ``<exception str() failed>``, Python's words."""
    te = traceback.TracebackException.from_exception(e, limit=-TRACEBACK_FRAMES)
    if CpuLimitExceeded.raised:
        # the standard library's formatting swallows whatever a __str__ raises (a bare
        # except), the CPU limit's exception too: the call's outcome is still that limit
        raise CpuLimitExceeded()
    for part in _parts(te):
        part.stack = traceback.StackSummary.from_list([f for f in part.stack if _shown(f.filename, guest_files)])
    left_out = _guest_frames_left_out(e.__traceback__, guest_files)
    if left_out:
        te.stack = _Shortened(te.stack, left_out)
    return te._str, "".join(te.format())  # _str: the text the traceback ends with


class _Shortened(traceback.StackSummary):
    """A stack whose outermost guest frames were left out, saying how many (without it a
    traceback cut to its innermost frames read as if it began where it was cut)."""

    def __init__(self, frames, left_out: int):
        super().__init__(frames)
        self.left_out = left_out

    def format(self) -> list[str]:
        return [f"  [… {self.left_out:,} earlier frames not shown …]\n", *super().format()]


def _guest_frames_left_out(tb, guest_files: set[str]) -> int:
    """How many of the guest's frames lie beyond the innermost ``TRACEBACK_FRAMES`` of ``tb``."""
    depth, entry = 0, tb
    while entry is not None:
        depth, entry = depth + 1, entry.tb_next
    left_out, entry = 0, tb
    for _ in range(depth - TRACEBACK_FRAMES):
        left_out += _shown(entry.tb_frame.f_code.co_filename, guest_files)
        entry = entry.tb_next
    return left_out


def _shown(filename: str, guest_files: set[str]) -> bool:
    """A frame of the guest's source, or of code it compiled itself (``exec``, and what
    dataclasses and namedtuple generate: ``<string>``), as Python shows it; never the
    runtime's, the standard library's (host paths) or a frozen module's."""
    return filename in guest_files or (filename.startswith("<") and not filename.startswith("<frozen "))


def within_bounds(failure: pb.Failure, result_bytes: int) -> pb.Failure:
    """``failure`` with a long message, traceback or type name cut in the middle, so that
    ``raise ValueError(huge)`` (or ``import`` of a huge name) is reported as such, not as an
    outcome too large for the daemon to read. Message and traceback get at most a sixteenth of the result's bytes
    each (4 bytes a character at worst), and never less than 1,024 characters."""
    chars = max(1024, min(FAILURE_TEXT_CHARS, result_bytes // 16))
    failure.message = _cut_in_middle(failure.message, chars)
    failure.traceback = _cut_in_middle(failure.traceback, chars)
    failure.type_name = _cut_in_middle(failure.type_name, 1024)
    failure.module = _cut_in_middle(failure.module, 1024)  # (a 2 MB name was the result limit)
    return failure


def _cut_in_middle(text: str, chars: int) -> str:
    """``text`` if it has at most ``chars`` characters, else its start and end around a
    note of what was cut (a traceback's end holds the innermost frame and the exception)."""
    if len(text) <= chars:
        return text
    half = chars // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters cut …]\n{text[-half:]}"


def _parts(te):
    """Every exception the report of ``te`` may show: its cause or context, theirs, and the
    members of an exception group with theirs (whose frames, the standard library's with
    their host paths, were shown in full)."""
    seen, todo = set(), [te]
    while todo:
        part = todo.pop()
        if part is None or id(part) in seen:
            continue
        seen.add(id(part))
        yield part
        todo += [part.__cause__, part.__context__, *(part.exceptions or ())]


def _message(e: BaseException) -> str:
    """The message when the traceback could not be formatted."""
    try:
        return str(e)
    except CpuLimitExceeded:
        raise
    except BaseException:  # a guest exception whose __str__ itself fails
        return "<exception str() failed>"
