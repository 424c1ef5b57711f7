# Attack: run code of the guest's own from its private /tmp — find /tmp mounted without
# noexec, or map a file written there with PROT_EXEC (what a loader of a shared library does).
from escape import os, outcome, real_import


def attack():
    mmap = real_import("mmap")
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY)
    mountinfo = os.read(fd, 1 << 20).decode()
    os.close(fd)
    # mountinfo: id parent major:minor root mountpoint options ... ; the last /tmp line is the one in force
    options = [line.split()[5].split(",") for line in mountinfo.splitlines() if line.split()[4] == "/tmp"]
    fd = os.open("/tmp/code", os.O_CREAT | os.O_RDWR, 0o700)
    os.write(fd, b"\xc3" * 4096)  # x86 `ret`, a page of it
    try:
        mapped = outcome(lambda: mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC).close())
        readable = outcome(lambda: mmap.mmap(fd, 4096, prot=mmap.PROT_READ).close())
    finally:
        os.close(fd)
    return {"tmp options": options[-1] if options else None, "mmap exec": mapped, "mmap read": readable}
