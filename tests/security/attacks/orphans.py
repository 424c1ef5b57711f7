# Attack: outlive the call — a child that tries to setsid() into its own session (the filter
# refuses it now), forks again (double fork, the classic daemon escape) and leaves a grandchild
# that ignores SIGTERM and SIGHUP.
from escape import os, real_import


def _leave_orphan():
    """Returns once the grandchild runs, with its signals ignored, in a session of its own."""
    signal = real_import("signal")
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        try:
            os.setsid()
        except PermissionError:  # denied by the filter: the grandchild stays in the call's session
            pass
        if os.fork() == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            os.write(ready_w, str(os.getsid(0)).encode())
            while True:
                real_import("time").sleep(0.05)
        os._exit(0)
    os.close(ready_w)
    session = os.read(ready_r, 32).decode()
    return f"orphan running in session {session} (ours: {os.getsid(0)})"


def leave():
    return _leave_orphan()


def leave_and_hang():
    _leave_orphan()
    while True:
        real_import("time").sleep(1)
