"""The restricted importer and builtins: the guest's experience of what it may use.

Not a security boundary (the kernel is; see the package docstring): it exists so that a guest
importing ``os`` gets a clear ``ModuleNotFoundError: Cannot find module 'os'`` instead of a
module that fails in confusing ways further on.

The rules (``import_policy.ImportPolicy``) are pure data, unit-tested apart from the hook
(``GuestImporter``):
- a top-level name found as guest source in the guest folder is a guest module (a folder
  without ``__init__`` is a namespace package, as in Python 3, unless the name is allowed);
- any other name must be allowed (``external`` plus the daemon's ``default_external``, plus
  what ``ALWAYS_ALLOWED`` and ``IMPLIED`` add); it is then looked up by the resolver plugin,
  then in the whitelisted folders (as guest source), then by Python's own import system
  (stdlib, site-packages);
- everything else is "Cannot find module".
Guest source (from the guest folder, whitelisted folders or the resolver) is compiled here: the
compiler plugin applies, its globals get the restricted builtins, and its file names are shown
relative to the guest folder ("/rules.py"). Compiling costs 10-25 µs a line in a fresh sandbox,
so it is avoided two ways. A ``__pycache__`` entry this interpreter would have written for
exactly that source (checked by its timestamp and size, or by its hash) is loaded instead, as
Python's own import does: whoever provides the folder may precompile it
(``python -m compileall``), and installed packages in whitelisted folders usually come
precompiled. The sandbox never writes one: the folders are read-only, and a cache a call could
fill would be state shared with the next calls.

And compiled once per file version (``preload``): before any guest code runs, the runtime reads
the call's file and the guest modules its import statements load (and theirs), and takes each
one's code from the daemon's code cache when the source's hash matches, or compiles it; the
modules compiled then go back to the daemon, which hands them to the next calls. Only code made
before the first line of guest code runs is ever handed on: after that the process is the
guest's, and what it sends could be anything. Code loaded from a ``__pycache__`` entry is used
by the call that found it and never handed on: a stamp can match a source the entry was not
made from (a timestamp kept by an edit of the same size, or an entry made by hand), and the
daemon would have kept that code for the source until the file changed, long after the entry
was gone. (The records handed over, the reading of a
module's imports from its bytecode and of ``__pycache__`` entries live in ``compiled``.)
"""
from __future__ import annotations

import builtins
import errno
import importlib.machinery
import importlib.util
import linecache
import marshal
import os
import sys
import tokenize  # noqa: F401  (used by decode_source; loaded here, in the zygote)
import types
from dataclasses import dataclass
from typing import Callable

from .compiled import MAX_PRELOAD, Compiled, cached_code, module_imports, open_regular_file
from .import_errors import PluginFailure, call_plugin, compile_source, module_not_found, undecodable
from .import_policy import REMOVED_BUILTINS, ImportPolicy

@dataclass
class _Loaded:
    """A guest file ``preload`` read; ``code`` is a code object, or the bytes to unmarshal."""
    raw: bytes
    mtime: float
    code: types.CodeType | bytes


class GuestImporter:
    """Loads guest source into a module table of its own, apart from ``sys.modules``, so a
    guest module can never replace a module the runtime itself relies on."""

    def __init__(self, policy: ImportPolicy, *, context: dict | None = None,
                 compiler: Callable[[str, str], str] | None = None,
                 resolver: Callable[[str], str | None] | None = None,
                 plugin_names: tuple[str, str] = ("", "")):
        self.policy = policy
        self.compiler = compiler
        self.resolver = resolver
        self.plugin_names = plugin_names  # (compiler, resolver), for their failures' messages
        self.modules: dict[str, types.ModuleType] = {}
        self._found: dict[str, tuple[str, bool] | None] = {}
        self._preloaded: dict[str, _Loaded] = {}
        self.guest_files: set[str] = set()
        self.builtins = {k: v for k, v in vars(builtins).items() if k not in REMOVED_BUILTINS}
        self.builtins["__import__"] = self.import_
        self.builtins.update(context or {})

    # -- entry points -------------------------------------------------------------------
    def load_main(self, relative_file: str) -> types.ModuleType:
        """Imports the call's file. One in a package of the guest folder is imported as Python
        would import it from there, by its dotted name after its packages (``pkg/mod.py`` is
        ``pkg.mod``), so that its relative imports work and a module importing it gets this
        same module; any other file is a top-level module named by its stem.

        One in a subfolder (``my-rules/helpers.py``) is not what ``import helpers`` finds there:
        when that name is a guest module of the guest folder or an allowed one, the import still
        finds that module (as a script run by Python is ``__main__``, its stem left to the
        import), and the call's file is recorded under no name. Under a name nothing else
        holds it is recorded, so that ``import`` and dataclasses or pickle find it by its name."""
        dotted = self._dotted_name(relative_file)
        if dotted is not None:
            return self._import_guest(dotted)
        path = os.path.join(self.policy.guest_dir, relative_file)
        name = os.path.splitext(os.path.basename(relative_file))[0]
        # (is_allowed first: an allowed name is never asked of the resolver here)
        taken = "/" in os.path.normpath(relative_file) and (
            self.policy.is_allowed(name) or self._find_guest(name.partition(".")[0]) is not None)
        return self._execute(name, path, package="", record=not taken)

    def _dotted_name(self, relative_file: str) -> str | None:
        """``pkg.mod`` for ``pkg/mod.py`` (``pkg`` for ``pkg/__init__.py``) when importing that
        name from the guest folder would load this very file; None for a file at the top or
        one that name would not reach: a part that is not an identifier, or a name the import
        finds elsewhere first (``pkg.py`` beside a ``pkg/`` without ``__init__``, an allowed
        module's name)."""
        parts = os.path.splitext(os.path.normpath(relative_file))[0].split("/")
        if len(parts) < 2:
            return None
        if parts[-1] == "__init__":
            parts.pop()
        if not all(part.isidentifier() for part in parts):
            return None
        found = self._find_guest(parts[0])
        for part in parts[1:]:
            if found is None or not found[1]:
                return None  # not a package: nothing below it
            # the folder _execute gives the package as its __path__ (a namespace's is its own)
            found = self._find_in([found[0] if os.path.isdir(found[0]) else os.path.dirname(found[0])], part)
        wanted = os.path.join(self.policy.guest_dir, os.path.normpath(relative_file))
        return ".".join(parts) if found is not None and found[0] == wanted else None

    def preload(self, relative_file: str, known: dict, report: bool) -> list[Compiled]:
        """Reads the call's file and the guest modules its import statements load, and
        theirs, and gets each one's code ready before any guest code runs; returns them as
        ``Compiled`` when ``report`` (the daemon asked for them), else nothing.

        ``known`` maps a guest path to the daemon's code for it (anything with ``Compiled``'s
        fields), used only if the source read has its hash. Without ``report``, only modules the
        daemon knows are read ahead, by the imports it recorded; with it, each one's imports are
        found again in its code and every module reached is compiled if need be. A file that
        cannot be read or compiled is left for the import, whose error is then the guest's as
        before. Never runs guest code.
        """
        if self.compiler is not None:
            return []  # a compiler plugin's output is compiled where it is made, every call
        out: list[Compiled] = []
        main = "/" + relative_file
        dotted = self._dotted_name(relative_file)
        # A file in a package loads after its packages' __init__ files: they count as its imports.
        parents = tuple(p for p in self.guest_files_of("/", dotted, 0, ()) if p != main) if dotted else ()
        queue, seen = [main], set()
        while queue and len(seen) < MAX_PRELOAD:
            display = queue.pop(0)
            if display in seen:
                continue
            seen.add(display)
            entry = known.get(display)
            if entry is None and not report:
                continue  # left to the import: nothing to check it against
            path = os.path.join(self.policy.guest_dir, display.lstrip("/"))
            fd = open_regular_file(path)  # never blocked by a FIFO the import itself might not open
            if fd is None:
                continue
            try:
                with builtins.open(fd, "rb") as f:
                    st, raw = os.fstat(f.fileno()), f.read()
                source_hash = importlib.util.source_hash(raw)
                if entry is not None and entry.source_hash == source_hash and not report:
                    self._preloaded[path] = _Loaded(raw, st.st_mtime, entry.code)
                    queue.extend(entry.imports)
                    continue
                if not report:
                    continue
                from_pycache = None
                if entry is not None and entry.source_hash == source_hash:
                    code = marshal.loads(entry.code)
                else:
                    from_pycache = cached_code(path, raw, st.st_mtime, display)
                    code = from_pycache or self._compiled(raw, display)
                imports = tuple(dict.fromkeys([*(parents if display == main else ()),
                                               *(p for name, level, fromlist in module_imports(code)
                                                 # (a call's file named by its stem has no package)
                                                 if not (level and display == main and dotted is None)
                                                 for p in self.guest_files_of(display, name, level, fromlist))]))
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError, RecursionError, EOFError, TypeError,
                    IndexError):  # (IndexError: bytecode of a __pycache__ entry made by hand)
                continue
            self._preloaded[path] = _Loaded(raw, st.st_mtime, code)
            queue.extend(imports)
            if from_pycache is None:  # (see the module's docstring: what a __pycache__ entry holds)
                out.append(Compiled(display, source_hash, marshal.dumps(code), imports,
                                    (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)))
        return out

    def guest_files_of(self, importer: str, name: str, level: int, fromlist) -> list[str]:
        """The guest source files (guest paths) that ``from <level dots><name> import
        <fromlist>`` in guest file ``importer`` would load, found as the import would find them
        in the guest folder: each package's ``__init__`` on the way, the module, and the
        submodules named in ``fromlist``. Names found elsewhere (allowed modules, whitelisted
        folders) load no guest file of the call's folder. ``importer`` was loaded by the name its
        path makes (its package is its folder's path): a relative import going past that
        package's top (from a module at the top: any) loads nothing, as in ``_absolute``."""
        folder = "/"
        if level:
            packages = os.path.dirname(importer).strip("/").split("/")
            if len(packages) < level or packages == [""]:
                return []
            folder = "/" + "/".join(packages[:len(packages) - level + 1])
        files: list[str] = []
        for part in name.split(".") if name else ():
            found = self._guest_source(folder, part)
            if found is None:
                return files
            file, folder = found
            if file:
                files.append(file)
            if folder is None:  # a module, not a package: nothing below it
                return files
        for item in fromlist or ():
            if item != "*" and (found := self._guest_source(folder, item)) and found[0]:
                files.append(found[0])
        return files

    def _guest_source(self, folder: str, name: str) -> tuple[str | None, str | None] | None:
        """Guest module ``name`` in guest folder ``folder``: (its file or None for a namespace
        package, its package folder or None for a plain module), or None. Found by the import's
        own lookups (``_in_guest_folder`` at the top, ``_find_in`` below), so that read-ahead
        never compiles a file the import would not load."""
        if not name.isidentifier():
            return None
        host_folder = os.path.join(self.policy.guest_dir, folder.lstrip("/"))
        found = self._in_guest_folder(name) if folder == "/" else self._find_in([host_folder], name)
        if found is None:
            return None
        path, is_package = found
        display = self.policy.display_name(path)
        if os.path.isdir(path):
            return None, display
        return display, os.path.dirname(display) if is_package else None

    def import_(self, name, globals=None, locals=None, fromlist=(), level=0):
        """The guest's ``__import__``: same contract as the builtin one."""
        _sane(name, level)
        if level:
            name = self._absolute(name, globals, level)
        top = name.partition(".")[0]
        is_guest = top in self.modules or self._find_guest(top) is not None
        if not is_guest and not self.policy.is_allowed(top):
            raise module_not_found(top)
        if is_guest:
            leaf = self._import_guest(name)
            self._import_listed(leaf, name, fromlist or ())
            return leaf if fromlist else self.modules[top]
        try:
            return _real_import(name, globals, locals, fromlist, 0)
        except ModuleNotFoundError as e:
            raise module_not_found(e.name or name) from None

    def _import_listed(self, package, name: str, fromlist, from_all: bool = False) -> None:
        """As Python's import: each name in ``fromlist`` that a package lacks is imported as its
        submodule if there is one; ``*`` stands for the package's ``__all__`` (once: not in it)."""
        if not hasattr(package, "__path__"):
            return
        for item in fromlist:
            if not isinstance(item, str):
                where = f"{name}.__all__" if from_all else "``from list''"
                raise TypeError(f"Item in {where} must be str, not {type(item).__name__}")
            if item == "*":
                if not from_all and hasattr(package, "__all__"):
                    self._import_listed(package, name, package.__all__, from_all=True)
            elif not hasattr(package, item):
                self._import_guest(f"{name}.{item}", missing_ok=True)

    # -- guest source ---------------------------------------------------------------------
    def _find_guest(self, top: str) -> tuple[str, bool] | None:
        """Where guest source for top-level ``top`` lives, or None. Remembered: the guest's
        folders are read-only for the whole call, and the resolver is asked once per name."""
        if top not in self._found:
            self._found[top] = self._search_guest(top)
        return self._found[top]

    def _search_guest(self, top: str) -> tuple[str, bool] | None:
        found = self._in_guest_folder(top)
        if found is not None or not self.policy.is_allowed(top):
            return found
        if self.resolver is not None:
            found = call_plugin("resolver", self.plugin_names[1], self.resolver, top,
                                returns=(str, type(None)), expected="a path or None")
            if found is not None:
                return self._resolved(top, found)
        for folder in self.policy.search_paths:
            for path, is_package in self.policy.source_candidates(folder, top):
                if os.path.isfile(path):
                    return path, is_package
        return None

    def _in_guest_folder(self, top: str) -> tuple[str, bool] | None:
        """What the guest folder holds for ``top``, where the import looks first: its source
        file, else a folder without one as a namespace package, except for an allowed name (a
        folder does not hide the module of that name, which is looked up next)."""
        for path, is_package in self.policy.source_candidates(self.policy.guest_dir, top):
            if os.path.isfile(path):
                return path, is_package
        return None if self.policy.is_allowed(top) else _namespace(self.policy.guest_dir, top)

    def _resolved(self, top: str, found: str) -> tuple[str, bool]:
        """The source the resolver named for ``top``: a module's file, or a package's folder.
        A path with none is the plugin's mistake, said rather than passed over for the next
        place to look (which would load another module of that name, or none)."""
        candidates = (self.policy.source_candidates(os.path.dirname(found), top) if os.path.isdir(found)
                      else [(found, False)])
        for path, is_package in candidates:
            if os.path.isabs(path) and os.path.isfile(path):
                return path, is_package
        raise PluginFailure(
            f"the resolver plugin {self.plugin_names[1]!r} resolved {top!r} to {found!r}, where the sandbox "
            f"finds no source of it: it sees the call's folder at {self.policy.guest_dir}, whitelisted folders "
            f"at their own paths, and the Python installation", "FileNotFoundError")

    def _import_guest(self, name: str, missing_ok: bool = False):
        parts = name.split(".")
        module = None
        for depth in range(1, len(parts) + 1):
            current = ".".join(parts[:depth])
            if current in self.modules:
                module = self.modules[current]
                continue
            found = self._find_guest(current) if depth == 1 else self._find_sub(module, parts[depth - 1])
            if found is None:
                if missing_ok:
                    return None
                raise module_not_found(current)
            path, is_package = found
            module = self._execute(current, path, package=current if is_package else ".".join(parts[:depth - 1]),
                                   is_package=is_package)
            if depth > 1:
                setattr(self.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
        return module

    def _find_sub(self, parent, child: str) -> tuple[str, bool] | None:
        return self._find_in(getattr(parent, "__path__", None) or (), child)

    def _find_in(self, folders, child: str) -> tuple[str, bool] | None:
        """Module ``child`` of a package whose ``__path__`` is ``folders``: (path, is_package)."""
        for folder in folders:
            for path, is_package in self.policy.source_candidates(folder, child):
                if os.path.isfile(path):
                    return path, is_package
        for folder in folders:
            if found := _namespace(folder, child):
                return found
        return None

    def _execute(self, name: str, path: str, package: str, is_package: bool = False, record: bool = True):
        """Runs guest source as module ``name``; ``record``: kept under that name (in the module
        table, and in sys.modules when the name is free there) for later imports to get."""
        if os.path.isdir(path):
            return self._namespace_package(name, path)
        display = self.policy.display_name(path)
        loaded = self._preloaded.pop(path, None)
        try:
            if loaded is not None:
                mtime, raw = loaded.mtime, loaded.raw
            else:
                with _read_only_file(path) as f:
                    mtime, raw = os.fstat(f.fileno()).st_mtime, f.read()
        except PermissionError:  # (Python's own import says so too, not that the module is missing)
            raise PermissionError(errno.EACCES, "the sandbox's user may not read it (guest code must be "
                                  "readable by every user)", display) from None
        except OSError:
            raise module_not_found(name) from None
        try:
            # as Python reads source: UTF-8 unless a coding declaration says otherwise, a
            # byte-order mark dropped
            source = importlib.util.decode_source(raw)
        except UnicodeDecodeError as e:
            raise undecodable(display, raw, e) from None
        except SyntaxError as e:  # a coding declaration naming no codec, or one the BOM contradicts
            raise SyntaxError(f"{display} is not valid source text: {e}") from None
        if self.compiler is not None:
            source = call_plugin("compiler", self.plugin_names[0], self.compiler, source, display,
                                 returns=(str,), expected="the source as a str")
        linecache.cache[display] = (len(source), None, source.splitlines(True), display)
        self.guest_files.add(display)
        if loaded is not None:
            code = marshal.loads(loaded.code) if isinstance(loaded.code, bytes) else loaded.code
        elif self.compiler is not None:
            code = compile_source(source, display)
        else:
            code = self._code_of(path, raw, mtime, display, source)
        module = types.ModuleType(name)
        # Where the file is in the sandbox (``/guest/rules.py``), so that the guest reaches the
        # files beside it as Python code does (``Path(__file__).with_name("rates.json")``);
        # its code and tracebacks name it as the user knows it (``/rules.py``).
        module.__file__ = path
        module.__package__ = package
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=path, is_package=is_package)
        module.__builtins__ = self.builtins
        if is_package:
            module.__path__ = [os.path.dirname(path)]
        if record:
            self.modules[name] = module
        # Visible in sys.modules while the guest runs, under a name no module holds yet (never
        # replacing one): dataclasses, typing and enum look a class's module up there.
        listed = record and sys.modules.setdefault(name, module) is module
        module.__spec__._initializing = True  # (so a circular import's error says so, as Python's)
        try:
            exec(code, module.__dict__)
        except BaseException:
            if record:
                del self.modules[name]
            if sys.modules.get(name) is module:
                del sys.modules[name]
            raise
        finally:
            module.__spec__._initializing = False
        if listed and sys.modules.get(name, module) is not module:
            # the module put another object in its place, which its importers get, as in Python
            self.modules[name] = module = sys.modules[name]
        return module

    @staticmethod
    def _code_of(path: str, raw: bytes, mtime: float, display: str, source: str | None = None) -> types.CodeType:
        """Guest source's code: its ``__pycache__`` entry if its stamp matches this source (as
        Python trusts it), else compiled."""
        return cached_code(path, raw, mtime, display) or GuestImporter._compiled(raw, display, source)

    @staticmethod
    def _compiled(raw: bytes, display: str, source: str | None = None) -> types.CodeType:
        return compile_source(importlib.util.decode_source(raw) if source is None else source, display)

    def _namespace_package(self, name: str, folder: str):
        """A guest folder without ``__init__``: a package with no code of its own, as Python 3
        imports it (``import lib.util`` from ``lib/util.py``)."""
        module = types.ModuleType(name)
        module.__file__ = None
        module.__package__ = name
        module.__path__ = [folder]
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__spec__.submodule_search_locations = [folder]
        self.modules[name] = module
        sys.modules.setdefault(name, module)
        return module

    def withdraw(self) -> None:
        """Takes the guest's modules out of sys.modules once its code has run, so that nothing
        the runtime imports after it (reporting the outcome) can be a guest module."""
        for name, module in self.modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]

    def _absolute(self, name: str, globals, level: int) -> str:
        package = (globals or {}).get("__package__") or ""
        if not package:  # (a top-level module: Python's words for it)
            raise ImportError("attempted relative import with no known parent package")
        bits = package.rsplit(".", level - 1)
        if len(bits) < level:
            raise ImportError("attempted relative import beyond top-level package")
        base = bits[0]
        return f"{base}.{name}" if name else base


_real_import = builtins.__import__


def _sane(name, level) -> None:
    """The arguments Python's own ``__import__`` refuses, refused with its errors."""
    if not isinstance(name, str):
        raise TypeError(f"module name must be str, not {type(name).__name__}")
    if level < 0:
        raise ValueError("level must be >= 0")
    if not name and level == 0:
        raise ValueError("Empty module name")


def _namespace(folder: str, name: str) -> tuple[str, bool] | None:
    """A folder ``name`` in ``folder`` with no source of its own: a namespace package, found
    only after every regular module (as in Python, where any module of that name wins)."""
    path = os.path.join(folder, name)
    return (path, True) if name.isidentifier() and os.path.isdir(path) else None


def _read_only_file(path: str):
    # The guest's builtins have no open(); the importer itself may read.
    return builtins.open(path, "rb")
