"""Sandboxes are prepared at the lowest CPU priority and run their call at the normal one."""
import time

import psutil

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
    zygote = next(p for p in psutil.Process(daemon.pid).children() if "isorund.zygote" in " ".join(p.cmdline()))
    # The call's own sandbox is killed as it ends; give the zygote a moment to reap it, then
    # every sandbox left (init and waiting guest) is a prepared one.
    deadline = time.monotonic() + 10
    while True:
        nice = _pooled_niceness(zygote)
        if (nice and nice == {19}) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert nice == {19}, nice


def _pooled_niceness(zygote) -> set[int]:
    found = set()
    for init in zygote.children():
        try:
            for p in [init, *init.children()]:
                if p.status() != psutil.STATUS_ZOMBIE:
                    found.add(p.nice())
        except psutil.NoSuchProcess:
            pass
    return found
