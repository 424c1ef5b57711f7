"""Finding the daemon's processes from the host, for tests that watch or kill them."""
import time

import psutil


def zygote_of(daemon, seconds: float = 30) -> psutil.Process:
    """The daemon's zygote, waiting up to ``seconds`` for one (it is restarted after a kill).
    Processes may exit while they are looked at; one that is gone is not the zygote."""
    deadline = time.monotonic() + seconds
    while True:
        for child in psutil.Process(daemon.pid).children():
            try:
                if "isorund.zygote" in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                pass
        if time.monotonic() > deadline:
            raise AssertionError("the daemon has no zygote:\n" + daemon.log())
        time.sleep(0.05)
