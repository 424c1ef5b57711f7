# Attack: the guest's one open socket leads to the daemon — write to it directly: a frame
# header announcing 4 GiB, or a frame of bytes that are not a protobuf event.
from escape import channel_fd, os, real_import


def huge_frame():
    fd = channel_fd()
    os.write(fd, b"\xff\xff\xff\xff" + b"z" * 65536)
    real_import("time").sleep(10)


def garbage_frame():
    fd = channel_fd()
    os.write(fd, (16).to_bytes(4, "big") + b"\xff" * 16)
    real_import("time").sleep(10)

