"""A call that burns every CPU it can does not keep other calls from starting. Sandboxes were
prepared at nice 19; where the kernel weighs processes by their nice (a cpu cgroup: systemd's
cpu controller, a container), one call's spinning processes starved the pool: other tenants'
trivial calls took seconds, and some timed out with no CPU used (seen). They are prepared at
the guests' own priority now."""
from __future__ import annotations

import threading
import time

import psutil
import pytest

from processes import cgroup_around, zygote_of
from escaped import ESCAPED

HOG = ESCAPED + """
        def hog(children, seconds):
            o = _os_globals()
            clock = o["sys"].modules["time"].monotonic
            end = clock() + seconds
            for _ in range(children):
                if o["fork"]() == 0:
                    while clock() < end:
                        pass
                    o["_exit"](0)
            while clock() < end:
                pass
            return "done"
"""


@pytest.fixture
def cpu_cgroup():
    """A cpu cgroup of the test's own, as a prefix that starts the daemon inside it."""
    with cgroup_around("cpu") as (_folder, prefix):
        yield prefix


def test_a_call_spinning_on_every_cpu_does_not_keep_other_calls_from_starting(cpu_cgroup, start_daemon, make_root):
    from isorun import CodeRunner
    d = start_daemon(prefix=cpu_cgroup)
    hog_root = make_root({"index.py": HOG})
    quick_root = make_root({"index.py": "def quick(i):\n    return i\n"})
    hogged = {}

    def spin():
        with CodeRunner(root=hog_root, file="index.py", socket=d.socket, external=["time"]) as r:
            hogged["result"] = r.run("hog", args=[16, 6.0], timeout=10)
    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(1.0)  # its 17 processes spinning
    took = []
    with CodeRunner(root=quick_root, file="index.py", socket=d.socket) as r:
        for i in range(6):
            started = time.monotonic()
            assert r.run("quick", args=[i], timeout=5) == i
            took.append(time.monotonic() - started)
    spinner.join()
    assert hogged["result"] == "done"
    assert max(took) < 3.0, took
    # and what waits in the pool waits at the guests' priority
    assert {p.nice() for p in zygote_of(d).children() if p.status() != psutil.STATUS_ZOMBIE} <= {0}
