"""Finding the daemon's processes from the host, for tests that watch or kill them."""
import contextlib
import os
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


def peak_rss_growth(pid: int):
    """Resets the process's peak RSS (``VmHWM``; writing 5 to ``clear_refs``, Linux >= 4.0) and
    returns a function that says, in bytes, how far the peak has grown since."""
    def peak() -> int:
        with open(f"/proc/{pid}/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) * 1024

    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = peak()
    return lambda: peak() - before


def wait_for_pool(daemon_pid: int, size: int, seconds: float = 30) -> None:
    """Until the daemon holds a pidfd for each of ``size`` sandboxes: it holds one from the
    zygote's `ready` on, so these sandboxes are the daemon's to hand out (a sandbox merely
    forked by the zygote may not have been announced yet). Counts running ones too."""
    def pidfds() -> int:
        links = []
        for fd in os.listdir(f"/proc/{daemon_pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed since the listing
                links.append(os.readlink(f"/proc/{daemon_pid}/fd/{fd}"))
        return links.count("anon_inode:[pidfd]")
    deadline = time.monotonic() + seconds
    while pidfds() < size:
        assert time.monotonic() < deadline, f"the daemon holds {pidfds()} sandboxes after {seconds:g} s"
        time.sleep(0.05)


@contextlib.contextmanager
def descriptors_left(count: int):
    """This process may open ``count`` more descriptors, then EMFILE, while inside. The
    kernel's limit is on descriptor numbers (each new one takes the lowest free number below
    it), not on how many are open, so it is set just past the ``count``-th free number."""
    import fcntl
    import resource

    def is_open(number: int) -> bool:
        try:
            fcntl.fcntl(number, fcntl.F_GETFD)
            return True
        except OSError:
            return False
    free, number = [], 0
    while len(free) < max(count, 1):
        if not is_open(number):
            free.append(number)
        number += 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (free[count - 1] + 1 if count else free[0], hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def cgroup_around(controller: str):
    """A cgroup of ``controller`` of the test's own (v1's hierarchy of it, or v2's with the
    controller enabled): yields its folder and a prefix that starts a program inside it
    (``sh`` execs the program, so its pid is the one started). Removed after, once its tasks
    have left. Skips the test where none can be made."""
    import pytest
    import secrets
    name = f"isorun-test-{secrets.token_hex(4)}"
    for parent, controllers in ((f"/sys/fs/cgroup/{controller}", None),
                                ("/sys/fs/cgroup", "/sys/fs/cgroup/cgroup.subtree_control")):
        if not os.path.isdir(parent) or (controllers and controller not in open(controllers).read().split()):
            continue
        folder = os.path.join(parent, name)
        try:
            os.mkdir(folder)
        except OSError:
            continue
        try:
            yield folder, ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$@"', "sh"]
        finally:
            deadline = time.monotonic() + 10
            while True:
                try:
                    os.rmdir(folder)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        return
    pytest.skip(f"no {controller} cgroup can be made here")
