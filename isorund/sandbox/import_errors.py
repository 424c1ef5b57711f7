"""The errors the importer raises in the guest's terms: its refusal of a module (which becomes
the client's ModuleNotFound only as the importer made it), an operator plugin's failure (the
operator's, not the guest's), and source text Python cannot read, said of its file."""
from __future__ import annotations

import types
import weakref

from .limits import CpuLimitExceeded


class GuestModuleNotFound(ModuleNotFoundError):
    """The importer's own refusal. Only an instance the importer made, as it made it, becomes the
    client's ModuleNotFound (``refused_module``): the guest can reach this class (``type(e)``
    of a refusal it caught) and make its own, which are its exceptions like any other, as is a
    ModuleNotFoundError it raises itself. Named as Python's, in the guest's tracebacks too."""


GuestModuleNotFound.__name__ = GuestModuleNotFound.__qualname__ = "ModuleNotFoundError"
GuestModuleNotFound.__module__ = "builtins"
_refusals: weakref.WeakKeyDictionary[GuestModuleNotFound, str] = weakref.WeakKeyDictionary()


class PluginFailure(Exception):
    """An operator plugin (compiler, resolver, args resolver) raised or broke its contract:
    the operator's code failed, not the guest's, and the call says so instead of blaming the
    guest. ``type_name``: what the plugin raised, or TypeError for what it returned."""

    def __init__(self, message: str, type_name: str = "TypeError"):
        super().__init__(message)
        self.type_name = type_name


def undecodable(display: str, raw: bytes, e: UnicodeDecodeError) -> SyntaxError:
    """The error of source bytes its encoding cannot decode, at their line and column, as
    Python's own import reports them (the codec's message gives only an offset in the file)."""
    line_start = raw.rfind(b"\n", 0, e.start) + 1
    line_end = raw.find(b"\n", e.start)
    text = raw[line_start:len(raw) if line_end < 0 else line_end].decode(e.encoding, "replace")
    line = raw.count(b"\n", 0, e.start) + 1
    column = len(raw[line_start:e.start].decode(e.encoding, "replace")) + 1
    return SyntaxError(f"{display} is not valid source text: {e.encoding!r} cannot decode byte "
                       f"{raw[e.start:e.end].hex(' ')} at column {column} ({e.reason})", (display, line, column, text))


def module_not_found(name: str) -> ModuleNotFoundError:
    refusal = GuestModuleNotFound(_refusal_text(name), name=name)
    _refusals[refusal] = name
    return refusal


def refused_module(e: BaseException) -> str | None:
    """The module the importer refused, if ``e`` is a refusal the importer made and the guest
    did not change (a caught refusal raised again unchanged still is one)."""
    name = _refusals.get(e) if isinstance(e, GuestModuleNotFound) else None
    if name is None or e.name != name or e.args != (_refusal_text(name),):
        return None
    return name


def _refusal_text(name: str) -> str:
    return f"Cannot find module '{name}'"


def call_plugin(kind: str, name: str, plugin, *args, returns: tuple[type, ...], expected: str):
    """``plugin(*args)``, with a failure reported as the named plugin's: whatever it raises
    (``SystemExit`` too: a plugin does not end the call as the guest's), and a result that is
    not of a type in ``returns`` (its contract, ``expected`` in words). Except a SyntaxError,
    which is a compiler's verdict on the guest's source and stays the guest's, and the call's
    CPU limit, which is the call's."""
    try:
        result = plugin(*args)
    except (SyntaxError, CpuLimitExceeded):
        raise
    except BaseException as e:
        raise PluginFailure(f"the {kind} plugin {name!r} raised {type(e).__name__}: {e}", type(e).__name__) from e
    if not isinstance(result, returns):
        raise PluginFailure(f"the {kind} plugin {name!r} returned {type(result).__name__}, not {expected}")
    return result


def compile_source(source: str, display: str) -> types.CodeType:
    """Guest source's code. Python's compiler refuses a null byte naming no file ("source code
    string cannot contain null bytes"): said here of the file, at its line and column, as
    undecodable source is (``undecodable``)."""
    at = source.find("\0")
    if at >= 0:
        line_start = source.rfind("\n", 0, at) + 1
        line_end = source.find("\n", at)
        text = source[line_start:len(source) if line_end < 0 else line_end]
        line, column = source.count("\n", 0, at) + 1, at - line_start + 1
        raise SyntaxError(f"{display} is not valid source text: a null byte at column {column}",
                          (display, line, column, text))
    return compile(source, display, "exec", dont_inherit=True)
