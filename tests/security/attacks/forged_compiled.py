# Attack: the daemon-only 'compiled' event, written by the guest itself: code for the guest's
# own modules, stamped with the hash and the file version (inode, size, times) of their real
# source, so that the daemon would keep it and
# hand it to the next calls of this file, which would run the guest's code in place of the
# source. That would be state carried from one call into the next (into another caller's
# arguments and results).
from escape import os, real_import
from forged_events import _send, channel_fd

import helper

sb = real_import("isorun._proto.sandbox_pb2")
source_hash = real_import("importlib.util").source_hash
marshal = real_import("marshal")
GUEST_DIR = real_import("isorund.sandbox.filesystem").GUEST_DIR

POISON = {"/helper.py": "X = 'poisoned'\n",
          "/forged_compiled.py": "def read():\n    return 'poisoned'\n"}


def _forged(path, code):
    with os.fdopen(os.open(GUEST_DIR + path, os.O_RDONLY), "rb") as f:
        source, st = f.read(), os.fstat(f.fileno())
    return sb.CompiledModule(path=path, source_hash=source_hash(source), code=marshal.dumps(compile(code, path, "exec")),
                             inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


def forge():
    event = sb.SandboxEvent(compiled=sb.CompiledModules(modules=[_forged(p, c) for p, c in POISON.items()]))
    _send(channel_fd(), event)
    real_import("time").sleep(10)
    return "the daemon read past the forged event"


def read():
    return helper.X
