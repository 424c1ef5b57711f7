"""Guest code that need not be compiled again: the bounds and records of the modules a sandbox
and the daemon's code cache hand each other (``Compiled``), the import statements of a module
read from its bytecode (``module_imports``), and ``__pycache__`` entries (``cached_code``).

Sandbox-side code, used by the importer's ``preload`` and imports; the daemon only takes the
bounds (``isorund.code_cache``). See ``isorund.sandbox.importer`` for when each is used.
"""
from __future__ import annotations

import builtins
import dis
import importlib.util
import marshal
import os
import stat
import types
from dataclasses import dataclass

# Bounds of what ``preload`` reads ahead and hands back: modules, and bytes of their code (the
# daemon's plan and the sandbox's event carry them; see isorund.code_cache).
MAX_PRELOAD = 256
MAX_COMPILED_BYTES = 1 << 20
MODULE_FRAMING_BYTES = 8  # a module's tag and length in the repeated field that carries it


@dataclass(frozen=True)
class Compiled:
    """A guest module's code as ``preload`` compiled (or was handed) it, and what it imports."""
    path: str                   # as the guest sees it: "/pkg/__init__.py"
    source_hash: bytes          # importlib.util.source_hash of the source it was compiled from
    code: bytes                 # marshal.dumps of its code object
    imports: tuple[str, ...]    # guest modules its import statements load (paths as above)
    version: tuple[int, int, int, int]  # (inode, size, mtime_ns, ctime_ns) of the file read


class CompiledBudget:
    """``MAX_COMPILED_BYTES`` of modules, each with its framing: the daemon's plan and the
    sandbox's event keep to the same count, since each side reads the other's under it."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, module_bytes: int) -> bool:
        """Counts a module of ``module_bytes`` if it fits in what is left; False if it does not."""
        cost = module_bytes + MODULE_FRAMING_BYTES
        if self.used + cost > MAX_COMPILED_BYTES:
            return False
        self.used += cost
        return True


def module_imports(code: types.CodeType) -> list[tuple[str, int, tuple | None]]:
    """The import statements in a module's code ((name, level, fromlist), in order): at module
    level and in its classes and functions too. One in a function the call never runs costs a
    read and a hash per call once known; compiling it when the function first runs would
    cost 10-25 µs a line, every call.

    Read straight from the bytecode: ``dis.get_instructions`` took 250 ms over a 6,000-line
    module; a code object without an ``IMPORT_NAME`` is skipped by a byte search."""
    found = []
    raw = code.co_code
    if _IMPORT_NAME in raw[::2]:
        previous: list[tuple[int, int]] = [(-1, 0), (-1, 0)]
        extended = 0
        for i in range(0, len(raw), 2):
            op, arg = raw[i], raw[i + 1] | extended
            extended = arg << 8 if op == _EXTENDED_ARG else 0
            if op in (_EXTENDED_ARG, _CACHE):
                continue
            if op == _IMPORT_NAME and all(p == _LOAD_CONST for p, _ in previous):
                level, fromlist = (code.co_consts[a] for _, a in previous)
                if isinstance(level, int) and (fromlist is None or isinstance(fromlist, tuple)):
                    found.append((code.co_names[arg], level, fromlist))
            previous = [previous[1], (op, arg)]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found.extend(module_imports(const))
    return found


_IMPORT_NAME, _LOAD_CONST = dis.opmap["IMPORT_NAME"], dis.opmap["LOAD_CONST"]
_EXTENDED_ARG, _CACHE = dis.opmap["EXTENDED_ARG"], dis.opmap["CACHE"]


def cached_code(path: str, source: bytes, mtime: float, filename: str) -> types.CodeType | None:
    """The code of the source file ``path`` (its bytes ``source``, last modified at ``mtime``)
    from its ``__pycache__`` entry, named ``filename`` as compiled source would be; None when
    there is no entry this interpreter could have written for exactly this source."""
    fd = open_regular_file(importlib.util.cache_from_source(path)) if path.endswith(".py") else None
    if fd is None:
        return None
    with builtins.open(fd, "rb") as f:
        try:
            if os.fstat(fd).st_size > _largest_entry(source):
                return None  # read whole, it would spend the guest's memory before its first line
            if not _stamp_matches(f.read(16), source, mtime):
                return None  # an entry for another source or interpreter: its code is not read
            body = f.read()
        except OSError:
            return None
    try:
        code = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    return _renamed(code, filename) if isinstance(code, types.CodeType) else None


def _largest_entry(source: bytes) -> int:
    """What a ``__pycache__`` entry of ``source`` may weigh: compiled code takes about as many
    bytes as its source (0.5-2×); one far past that was not made by compiling it."""
    return 64 * 1024 + 32 * len(source)


def _stamp_matches(header: bytes, source: bytes, mtime: float) -> bool:
    """Python's own checks of an entry's header (PEP 552), except that a hash-stamped entry is
    always checked against the source, even one marked not to be: the source is what
    tracebacks show."""
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    flags = int.from_bytes(header[4:8], "little")
    if flags == 0:  # stamped with the source's modification time and size
        stamp = (int(mtime) & 0xFFFFFFFF).to_bytes(4, "little") + (len(source) & 0xFFFFFFFF).to_bytes(4, "little")
    elif flags in (0b01, 0b11):  # stamped with the source's hash
        stamp = importlib.util.source_hash(source)
    else:
        return False
    return header[8:16] == stamp


def open_regular_file(path: str) -> int | None:
    """``path`` opened for reading if it is a regular file: never blocking on a FIFO, never
    reading ``/dev/zero`` through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def _renamed(code: types.CodeType, filename: str) -> types.CodeType:
    """``code`` and the code objects in it (functions, classes, comprehensions) as if compiled
    under ``filename``: the entry holds the path it was compiled at on the host."""
    consts = tuple(_renamed(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)
