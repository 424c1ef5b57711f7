"""Sandboxes are prepared at the lowest CPU priority and run their call at the normal one."""
import time

import psutil

from processes import zygote_of

ESCAPE = ("def _os():\n"
          "    for cls in ().__class__.__base__.__subclasses__():\n"
          "        if cls.__name__ == '_wrap_close':\n"
          "            return cls.__init__.__globals__\n"
          "def niceness():\n"
          "    o = _os()\n"
          "    return o['getpriority'](o['PRIO_PROCESS'], 0)\n")


def test_pooled_sandboxes_wait_at_nice_19_and_calls_run_at_0(daemon, runner):
    r = runner({"index.py": ESCAPE})
    assert r.run("niceness") == 0
    zygote = zygote_of(daemon)
    # The call's own sandbox is killed as it ends; give the zygote a moment to reap it, then
    # every sandbox left is a prepared one.
    deadline = time.monotonic() + 10
    while True:
        nice = _pooled_niceness(zygote)
        if (nice and nice == {19}) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert nice == {19}, nice


def _pooled_niceness(zygote) -> set[int]:
    found = set()
    for sandbox in zygote.children():
        try:
            if sandbox.status() != psutil.STATUS_ZOMBIE:
                found.add(sandbox.nice())
        except psutil.NoSuchProcess:
            pass
    return found
