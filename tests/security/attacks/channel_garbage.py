# Attack: the guest's one open socket leads to the daemon — write to it directly: a frame
# header announcing 4 GiB, or a frame of bytes that are not a protobuf event.
from escape import os, real_import


def _channel_fd():
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                return int(name)
        except OSError:
            pass
    raise RuntimeError("no channel socket found")


def huge_frame():
    fd = _channel_fd()
    os.write(fd, b"\xff\xff\xff\xff" + b"z" * 65536)
    real_import("time").sleep(10)


def garbage_frame():
    fd = _channel_fd()
    os.write(fd, (16).to_bytes(4, "big") + b"\xff" * 16)
    real_import("time").sleep(10)

