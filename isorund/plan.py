"""Turns a client's RunRequest into a CallPlan, or refuses it with a message naming the field.

Everything a sandbox needs is resolved here, in the daemon, before the sandbox is touched:
real paths, the file inside the root, effective limits and timeout, the importable names and
the host folders to bind. Errors raised here reach the client as INVALID_ARGUMENT; nothing
that can be checked up front is left to fail inside a child.
"""
from __future__ import annotations

import errno
import importlib.machinery
import keyword
import math
import os
import stat
import secrets
import site
from functools import lru_cache

from isorun._proto import runner_pb2 as pb
from isorun._proto import sandbox_pb2
from isorund import named_pipes
from isorund.admission import OutOfDescriptors
from isorund.config import MIN_LIMITS, runtime_module
from isorund.sandbox import filesystem
from isorund.sandbox.import_policy import python_name

MAX_NAME = 256
CPU_GRACE_SECONDS = 1.0
MAX_LIST = 256
MAX_PATH = 4096      # PATH_MAX: the kernel resolves no longer path
MAX_EXTENSION = 32
# Sandbox paths a whitelisted folder may not cover or sit in. Folders under the host's /tmp are
# fine: they are bound on top of the call's private /tmp, which only /tmp itself would hide.
RESERVED = ("/proc", "/dev", "/guest", "/sys")  # /sys: the host's devices, network, kernel (a probe)
UNBINDABLE = ("/", "/tmp")
# The host's runtime folder holds the sockets of its services (D-Bus, container engines, …): a
# read-only bind does not stop connect() on a socket file, so binding it would let the guest
# talk to them, whatever its network namespace.
HOST_RUNTIME = ("/run", "/var/run")


class RequestError(ValueError):
    """The request is malformed; the message says which field and what was expected."""


def build(request: sandbox_pb2.RelayedRunRequest, config) -> sandbox_pb2.CallPlan:
    """The call's plan. The request itself follows it to the sandbox as its bytes, its values
    unparsed (see ``RelayedRunRequest``): the sandbox parses them."""
    root = _root(request.root)
    file = _file(root, request.file, _extensions(request.source_extensions))
    _function_name(request.func_name)
    _context_names(request.context)
    external = _modules(request.external)
    whitelisted = [_folder(p, f"whitelisted_paths[{i}]") for i, p in enumerate(_bounded(request.whitelisted_paths, "whitelisted_paths"))]
    _plugin(request.compiler, config.plugins.compilers, "compiler")
    _plugin(request.resolver, config.plugins.resolvers, "resolver")
    _plugin(request.args_resolver, config.plugins.args_resolvers, "args_resolver")
    timeout = _timeout(request.timeout_seconds, config)
    allowed = sorted(set(external) | set(config.default_external))
    host_paths = list(dict.fromkeys(whitelisted + [p for name in external if (p := site_folder_of(name))]))
    if len(host_paths) > filesystem.MAX_HOST_PATHS:
        raise RequestError(f"{len(host_paths)} folders to bind (whitelisted_paths and the externals' "
                           f"site folders); at most {filesystem.MAX_HOST_PATHS}")
    return sandbox_pb2.CallPlan(
        call_id=secrets.token_hex(8), root=root, file=file, allowed=allowed,
        host_paths=host_paths, search_paths=whitelisted,
        extensions=_extensions(request.source_extensions),
        limits=_limits(request.limits, config.limits, timeout), timeout_seconds=timeout)


def _context_names(keys) -> None:
    """Each key becomes a builtin name of every guest module as its source spells it (see
    ``python_name``): two keys of one such name would leave one entry standing for both."""
    seen: dict[str, str] = {}
    for key in keys:
        name = _context_name(key)
        if name in seen:
            raise RequestError(f"context keys {seen[name]!r} and {key!r} are one name, {name!r}, in Python "
                               f"source (it normalizes names, NFKC), so one entry would be lost")
        seen[name] = key


def _context_name(key: str) -> str:
    """The guest's name for a context key. It must be one a guest can name, and must not
    replace what the runtime puts there: a key ``__import__`` would replace the restricted
    importer and ``__build_class__`` break every ``class`` statement. Python reserves every
    ``__*__`` name for itself (its reference, "Reserved classes of identifiers"), so all of
    them are refused, not only those in use today, and so is any key that reads as one
    (``_＿import＿＿``, with full-width low lines)."""
    name = python_name(key) if key.isidentifier() else key
    if not key.isidentifier() or keyword.iskeyword(name):
        raise RequestError(f"context key {key!r} is not a valid Python name")
    if _reserved(name):
        raise RequestError(f"context key {key!r} is a name Python reserves (__*__); "
                           f"context entries become global names of the guest's modules")
    return name


def _root(path: str) -> str:
    return _host_folder(path, "root")


def _file(root: str, file: str, extensions: list[str]) -> str:
    if not file or "\0" in file or len(file) > MAX_PATH:
        raise RequestError(f"file must be a path relative to root, got {file[:200]!r}")
    if file.startswith("/"):
        raise RequestError(f"file must be relative to root, got the absolute path {file!r}")
    normal = os.path.normpath(file)
    if normal == ".." or normal.startswith("../"):
        raise RequestError(f"file {file!r} points outside root")
    real = os.path.realpath(os.path.join(root, normal))
    if real != root and not real.startswith(root + "/"):
        raise RequestError(f"file {file!r} resolves outside root (through a symbolic link)")
    if not os.path.exists(real):
        raise RequestError(f"file {file!r} does not exist in root")
    if os.path.isdir(real):
        raise RequestError(f"file {file!r} is a folder, not a source file")
    if not os.path.isfile(real):
        raise RequestError(f"file {file!r} is not a regular file")
    if not any(normal.endswith(ext) for ext in extensions):
        raise RequestError(f"file {file!r} does not have a source extension ({', '.join(extensions)})")
    _utf8(real, "file", file)
    # The file keeps the name it was asked by when the sandbox reaches it by that name: named
    # after a link's target, it was a module of another name than the one its guest modules
    # import, which then ran it a second time, with state of its own (found by review). A
    # link the sandbox cannot follow (one naming a host path) is read by its target's name.
    return normal if _same_in_the_sandbox(root, normal) else os.path.relpath(real, root)


def _same_in_the_sandbox(root: str, normal: str) -> bool:
    """Whether ``normal`` reaches, under ``/guest`` in the sandbox, the file it reaches under
    ``root`` on the host: no symbolic link along it names an absolute path or leads above root."""
    parts, current, hops = normal.split("/"), root, 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            if current != root and not current.startswith(root + "/"):
                return False
            continue
        candidate = os.path.join(current, part)
        if not os.path.islink(candidate):
            current = candidate
            continue
        hops += 1
        target = os.readlink(candidate)
        if hops > 40 or target.startswith("/"):
            return False
        parts = target.split("/") + parts  # relative to the link's folder, ``current``
    return True


def _extensions(extensions) -> list[str]:
    extensions = list(_bounded(extensions, "source_extensions")) or [".py"]
    for ext in extensions:
        if not ext.startswith(".") or len(ext) > MAX_EXTENSION or "/" in ext or "\0" in ext:
            raise RequestError(f"source extension must look like '.py', got {ext[:40]!r}")
    return extensions


def _reserved(name: str) -> bool:
    """A ``__*__`` name, which Python reserves for itself (its reference, "Reserved classes of
    identifiers"), as the guest's source spells it."""
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _function_name(name: str) -> None:
    """The call's function is an attribute of the module (``getattr``), as isolated-runtime's
    was a key of ``module.exports``: any name, one that is no identifier too (a module may set
    ``globals()["my-rule"]``; one it does not have is a FunctionNotFound, as the contract has
    it, not a refused request). A ``__*__`` name, which Python reserves, would be one of every
    module's own (``__init__``, ``__setattr__``, ``__dir__``), never a function of the guest's."""
    if not name or len(name) > MAX_NAME:
        raise RequestError(f"func_name must be a name of 1 to {MAX_NAME} characters, got {name[:80]!r}")
    if _reserved(python_name(name)):
        raise RequestError(f"func_name {name!r} is a name Python reserves (__*__): every module has such "
                           "attributes of its own, none of them the guest's function")


def _name(name: str, what: str) -> None:
    if not name or len(name) > MAX_NAME or not name.isidentifier():
        raise RequestError(f"{what} must be a Python identifier of at most {MAX_NAME} characters, got {name[:80]!r}")


def _modules(names) -> list[str]:
    """Top-level names only: a submodule cannot be allowed without its package (``os.path``
    would have allowed all of ``os``, which is what the guest would get), so asking for one is
    refused rather than silently widened."""
    for name in _bounded(names, "external"):
        top, dot, _ = name.partition(".")
        if dot and top.isidentifier():
            raise RequestError(f"external names top-level modules, each with its submodules: {name[:80]!r} "
                               f"cannot be allowed without all of {top!r}; name {top!r} to allow it")
        if len(name) > MAX_NAME or not name.isidentifier():
            raise RequestError(f"external module names must be Python names, got {name[:80]!r}")
        if role := runtime_module(name):
            raise RequestError(f"external may not name {name!r}: in a sandbox that is the runtime's own "
                               f"{role}, not a module a guest could mean")
    # as the guest's import statement spells them (``import ｃｓｖ`` imports csv)
    return [python_name(name) for name in names]


def _folder(path: str, what: str) -> str:
    real = _host_folder(path, what)
    # (not asked of the root: the daemon's own self-test call has its folder in the daemon's
    # state folder, /run/isorund under systemd; a socket file in any folder a call is given
    # stays out of reach anyway, since the filter gives a guest Unix sockets only as pairs)
    if any(filesystem.within(real, r) for r in HOST_RUNTIME):
        raise RequestError(f"{what} {path!r} lies in the host's runtime folder {HOST_RUNTIME[0]}, whose "
                           "sockets the guest could connect to")
    if os.stat(real).st_mode & 0o005 != 0o005:
        raise RequestError(f"{what} {path!r} cannot be read by the sandbox's user: it and its subfolders "
                           "must be readable and searchable by every user (chmod -R a+rX)")
    return real


def _host_folder(path: str, what: str) -> str:
    """The real path of a host folder a call may have bound into its sandbox: the root and the
    whitelisted folders alike (the root was held to less: ``/proc`` or ``/tmp`` could be a
    call's root, found by review)."""
    if not path or not path.startswith("/") or "\0" in path or len(path) > MAX_PATH:
        raise RequestError(f"{what} must be an absolute folder path, got {path[:200]!r}")
    real = os.path.realpath(path)
    try:
        is_folder = len(real) <= MAX_PATH and stat.S_ISDIR(os.stat(real).st_mode)
    except PermissionError:
        raise RequestError(f"{what} {path!r} cannot be reached: a folder above it lets no other user "
                           "through, neither the sandbox's user nor the daemon (which keeps no capability "
                           "to pass it); every folder above it must be searchable by every user") from None
    except OSError:
        is_folder = False
    if not is_folder:
        raise RequestError(f"{what} {path!r} is not a folder")
    if real in UNBINDABLE or any(filesystem.within(real, r) for r in RESERVED):
        raise RequestError(f"{what} {path!r} may not be {' or '.join(UNBINDABLE)} "
                           f"or lie in {', '.join(RESERVED)}")
    _utf8(real, what, path)
    return real


def _utf8(real: str, what: str, path: str) -> None:
    """The sandbox's plan carries paths as protobuf strings, which only UTF-8 text can be: a
    real path through a link to a name that is not was an unexpected error, not a refusal."""
    try:
        real.encode()
    except UnicodeEncodeError:
        raise RequestError(f"{what} {path!r} resolves to {real!r}, a path that is not UTF-8 text") from None


def _call_folders(plan: sandbox_pb2.CallPlan) -> dict[str, str]:
    """The call's root and whitelisted folders, each once, with the name a refusal gives it."""
    named = {plan.root: "root"}
    for i, folder in enumerate(plan.search_paths):
        named.setdefault(folder, f"whitelisted_paths[{i}]")
    return named


def check_reachable(plan: sandbox_pb2.CallPlan, caller) -> None:
    """Refuses a plan whose root or a whitelisted folder its caller (``access.Peer``) could not
    reach itself. The daemon passes through root's own private folders, being root, their
    owner: a caller on the allowlist had its guest read files below one (a probe read a token
    below a 0700 folder of root's). Known only through the allowlist's front, which has the
    caller's credentials; without it, whoever may open the socket may name any folder root can
    reach (docs/security.md)."""
    if caller.uid == 0:
        return
    for folder, what in _call_folders(plan).items():
        if (closed := _closed_to(folder, caller)) is not None:
            path, st = closed
            raise RequestError(f"{what} {folder!r} is not reachable by the caller (uid {caller.uid}): {path} "
                               f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}) does not let it "
                               "through; a call may name only folders its caller can reach")


def _closed_to(folder: str, caller) -> tuple[str, os.stat_result] | None:
    """The first folder on the way to ``folder`` (itself included, which must be readable too)
    that ``caller`` may not pass, by its mode bits as the kernel reads them for that user."""
    parts = folder.strip("/").split("/")
    for depth in range(len(parts) + 1):
        path = "/" + "/".join(parts[:depth])
        st = os.stat(path)
        shift = 6 if st.st_uid == caller.uid else 3 if st.st_gid in (caller.gid, *caller.groups) else 0
        wanted = (0o5 if depth == len(parts) else 0o1) << shift
        if st.st_mode & wanted != wanted:
            return path, st
    return None


def check_folders(plan: sandbox_pb2.CallPlan, quick: bool = False) -> None:
    """Refuses a plan whose root or a whitelisted folder holds a named pipe (``named_pipes``),
    or is too large to check. Run on a thread: the walk reads a tree the tenant controls;
    only a ``quick`` check, which raises named_pipes.NotRemembered rather than read a folder,
    may run on the event loop."""
    allowance = named_pipes.Quick() if quick else None  # (for all the call's folders together)
    for folder, what in _call_folders(plan).items():
        try:
            pipe = named_pipes.find_pipe(folder, allowance)
        except named_pipes.TooLarge as e:
            raise RequestError(f"{what} {folder!r} holds {e}, more than a call's folders may (each is checked "
                               "for named pipes on every call)") from None
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise OutOfDescriptors(f"isorund has no file descriptor left to check {what} for named pipes "
                                       f"({e.strerror}); retry later") from None
            raise RequestError(f"{what} {folder!r} cannot be checked for named pipes: {e.strerror}") from None
        if pipe is not None:
            raise RequestError(f"{what} {folder!r} holds a named pipe, {pipe!r}: a pipe stays writable through "
                               "a read-only mount, so a folder holding one is not given to a guest")


def _plugin(name: str, configured: dict, what: str) -> None:
    if name and name not in configured:
        offered = ", ".join(sorted(configured)) or "none"
        raise RequestError(f"unknown {what} {name[:80]!r} (configured: {offered})")


def _timeout(value: float, config) -> float:
    if value == 0:
        return config.default_timeout
    if not (math.isfinite(value) and 0 < value <= config.max_timeout):
        raise RequestError(f"timeout must be > 0 and <= max_timeout ({config.max_timeout:g} s), got {value:g} s")
    return value


def _limits(asked: pb.Limits, defaults, timeout: float) -> pb.Limits:
    """Each limit is the daemon's unless the request asks for less; asking for more is refused."""
    out = pb.Limits()
    for f in pb.Limits.DESCRIPTOR.fields:
        default = getattr(defaults, f.name)
        value = getattr(asked, f.name)
        if f.name == "cpu_seconds":
            # a second past the timeout: a guest that spins until its deadline is a timeout
            default = default or timeout + CPU_GRACE_SECONDS
            if not math.isfinite(value) or value < 0:
                raise RequestError(f"limits.cpu_seconds must be >= 0, got {value}")
        if value and value > default:
            raise RequestError(f"limits.{f.name} may only lower the daemon's limit ({_number(default)}), "
                               f"got {_number(value)}")
        if value and value < MIN_LIMITS.get(f.name, 0):
            raise RequestError(f"limits.{f.name} must be at least {MIN_LIMITS[f.name]} (what the runtime "
                               f"itself needs), got {_number(value)}")
        setattr(out, f.name, value or default)
    return out


def _number(value: float) -> str:
    """A limit as its user wrote it: bytes whole (not 5.36871e+08), seconds as short as exact."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounded(values, what: str):
    if len(values) > MAX_LIST:
        raise RequestError(f"{what} has {len(values)} entries; at most {MAX_LIST} are accepted")
    return values


@lru_cache(maxsize=1)
def _site_folders() -> tuple[str, ...]:
    return tuple(os.path.realpath(p) for p in site.getsitepackages() + [site.getusersitepackages()])


@lru_cache(maxsize=1024)
def site_folder_of(name: str) -> str | None:
    """The site-packages folder holding top-level module ``name``, if it is installed there.

    Only site-packages folders are ever bound for externals: the standard library is bound
    for every sandbox, and nothing else on the daemon's path (its working folder) may be. So
    only they are searched: along the daemon's whole import path, the 256 names a request may
    hold took the event loop 30 ms when no cache had seen them, in those folders 5 ms."""
    folders = _site_folders()
    try:
        spec = importlib.machinery.PathFinder.find_spec(name, list(folders))
    except (ImportError, ValueError):
        return None
    location = spec and (spec.origin if spec.origin not in (None, "built-in", "frozen")
                         else next(iter(spec.submodule_search_locations or []), None))
    if not location:
        return None
    location = os.path.realpath(location)
    return next((f for f in folders if location.startswith(f + "/")), None)
