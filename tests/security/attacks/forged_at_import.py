# Attack: the daemon-only 'invalid_request' event, sent while the guest's module is being
# imported — before 'running', where the runtime's own first step would send it — with a
# message far longer than any the runtime writes: to pass the call off as the client's error
# and flood the client's answer and the daemon's log with text of the guest's choosing.
from escape import real_import
from forged_events import _length_delimited, _send_raw, channel_fd

_send_raw(channel_fd(), _length_delimited(15, b"forged " * 20_000))
real_import("time").sleep(10)


def attack():
    return "the daemon never read past the forged event"
