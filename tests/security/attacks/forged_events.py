# Attack: write events the sandbox's runtime never sends straight to the channel — console
# batches (which no output cap would count if the daemon trusted them), a flood of 'running'
# events, an empty event — to get past the console cap or grow the daemon's memory.
from escape import channel_fd, os, real_import

pb = real_import("isorun._proto.runner_pb2")


def _send(fd, event):
    data = event.SerializeToString()
    frame = len(data).to_bytes(4, "big") + data
    while frame:
        frame = frame[os.write(fd, frame):]


def console_batches(rounds):
    """Batches of 4 x 64 KiB lines, far past the 1 MiB console cap in all."""
    fd = channel_fd()
    line = pb.ConsoleLine(stream=pb.ConsoleLine.STDOUT, text="b" * 65535 + "\n")
    batch = pb.RunEvent(console_batch=pb.ConsoleBatch(lines=[line] * 4))
    for _ in range(rounds):
        _send(fd, batch)
    return "sent"


def running_flood(count):
    fd = channel_fd()
    for _ in range(count):
        _send(fd, pb.RunEvent(running=pb.Running()))
    return "sent"


def empty_event():
    fd = channel_fd()
    os.write(fd, (0).to_bytes(4, "big"))
    real_import("time").sleep(10)
