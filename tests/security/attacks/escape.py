# Not an attack: where every attack starts. It recovers what a real escape from the
# Python-level sandbox gives a guest: the real os and sys modules, and an import that ignores
# the guest's allow-list. Everything the attacks then meet is the kernel's doing.


def _namespace_of_os() -> dict:
    # Every function defined in the os module (os._wrap_close's methods, for one) carries the
    # module's globals, and object.__subclasses__() reaches that class from any guest.
    for klass in object.__subclasses__():
        for member in vars(klass).values():
            found = getattr(member, "__globals__", None)
            if isinstance(found, dict) and found.get("__name__") == "os":
                return found
    raise RuntimeError("no function of the os module is reachable from object")


sys = _namespace_of_os()["sys"]
os = sys.modules["os"]


def real_import(name: str):
    """Imports ``name`` through the interpreter's own import machinery, with the standard
    finders put back on sys.meta_path should anything have removed them."""
    bootstrap = sys.modules["_frozen_importlib"]
    external = sys.modules["_frozen_importlib_external"]
    for finder in (external.PathFinder, bootstrap.FrozenImporter, bootstrap.BuiltinImporter):
        if finder not in sys.meta_path:
            sys.meta_path.insert(0, finder)
    return bootstrap._gcd_import(name)


def syscall(number: int, *args: int) -> tuple[int, str]:
    """Makes a raw system call through libc; returns (result, errno name or "")."""
    ctypes = real_import("ctypes")
    errno = real_import("errno")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    err = ctypes.get_errno() if result == -1 else 0
    return result, errno.errorcode.get(err, str(err)) if err else ""


def outcome(action) -> str:
    """Runs ``action()``; "ok: <value>" if it worked, else the errno name it failed with (or
    the exception's type, for a refusal Python makes before any system call)."""
    try:
        return f"ok: {action()!r}"
    except OSError as e:
        return real_import("errno").errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    except ValueError as e:
        return type(e).__name__


def channel_fd() -> int:
    """The guest's one open socket: its channel to the daemon."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                return int(name)
        except OSError:
            pass
    raise RuntimeError("no channel socket found")
