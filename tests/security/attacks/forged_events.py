# Attack: write events straight to the channel — console batches far past the console cap
# (which no cap would count if the daemon trusted a batch's size), an empty batch, a flood of
# 'running' events, an empty event, endless empty console lines, lines padded with fields the
# schema does not declare, a result of millions of tiny items, a result that is not a Value or
# is nested past any parser's limit, the daemon-only 'invalid_request' event — to get past the
# console cap, grow the daemon's memory, starve its event loop, break it or pass for the client.
from escape import channel_fd, os, real_import

pb = real_import("isorun._proto.runner_pb2")


def _send(fd, event):
    _send_raw(fd, event.SerializeToString())


def _send_raw(fd, data):
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


def empty_batch():
    """A batch of no lines: nothing to count against the cap, nothing for the client."""
    _send(channel_fd(), pb.RunEvent(console_batch=pb.ConsoleBatch()))
    real_import("time").sleep(10)


def running_flood(count):
    fd = channel_fd()
    for _ in range(count):
        _send(fd, pb.RunEvent(running=pb.Running()))
    return "sent"


def empty_event():
    fd = channel_fd()
    os.write(fd, (0).to_bytes(4, "big"))
    real_import("time").sleep(10)


def empty_lines_forever():
    """Six-byte frames as fast as the socket takes them: no text to count, no end."""
    fd = channel_fd()
    data = pb.RunEvent(console=pb.ConsoleLine()).SerializeToString()
    frame = (len(data).to_bytes(4, "big") + data) * 4096
    while True:
        os.write(fd, frame)


def empty_line_batches_forever():
    """Batches of 4,096 lines with no text: two bytes a line on the wire, no end."""
    fd = channel_fd()
    data = pb.RunEvent(console_batch=pb.ConsoleBatch(lines=[pb.ConsoleLine()] * 4096)).SerializeToString()
    frame = len(data).to_bytes(4, "big") + data
    while True:
        os.write(fd, frame)


def one_batch_of_empty_lines(count):
    """A single frame holding ``count`` lines with no text (two bytes each on the wire), built
    as bytes: as messages they would not fit in the guest's own memory limit."""
    field = pb.RunEvent.DESCRIPTOR.fields_by_name["console_batch"].number
    _send_raw(channel_fd(), _length_delimited(field, _length_delimited(1, b"") * count))
    real_import("time").sleep(10)


def padded_lines(count, pad_bytes):
    """Lines with no text but a field number the schema lacks, holding ``pad_bytes`` bytes."""
    fd = channel_fd()
    line = pb.ConsoleLine().SerializeToString() + _length_delimited(15, b"p" * pad_bytes)
    data = _length_delimited(pb.RunEvent.DESCRIPTOR.fields_by_name["console"].number, line)
    for _ in range(count):
        _send_raw(fd, data)
    return "sent"


def result_of_nulls(count):
    """An outcome whose result is a list of ``count`` nulls (four bytes each on the wire),
    built as bytes, as the runtime would encode it if the guest's memory allowed."""
    null = _length_delimited(1, b"\x08\x00")  # ListValue.values: a Value with null_value
    value = _length_delimited(6, null * count)  # Value.list_value
    outcome = _length_delimited(1, value)       # Outcome.value
    _send_raw(channel_fd(), _length_delimited(pb.RunEvent.DESCRIPTOR.fields_by_name["outcome"].number, outcome))
    real_import("time").sleep(10)


def result_not_a_value(how):
    """An outcome whose result's bytes are not a google.protobuf.Value: a string that is not
    UTF-8 ("utf8"), or a field of wire type 7, which does not exist ("wire_type")."""
    value = _length_delimited(3, b"\xff\xfe") if how == "utf8" else b"\x0f"
    outcome = _length_delimited(1, value)
    _send_raw(channel_fd(), _length_delimited(pb.RunEvent.DESCRIPTOR.fields_by_name["outcome"].number, outcome))
    real_import("time").sleep(10)


def deep_result(depth):
    """An outcome whose result is ``depth`` lists inside one another, past any parser's
    nesting limit (the runtime's codec stops at 90 protobuf levels)."""
    value = b"\x08\x00"  # null_value
    for _ in range(depth):
        value = _length_delimited(6, _length_delimited(1, value))  # Value.list_value.values
    outcome = _length_delimited(1, value)
    _send_raw(channel_fd(), _length_delimited(pb.RunEvent.DESCRIPTOR.fields_by_name["outcome"].number, outcome))
    real_import("time").sleep(10)


def invalid_request():
    """The daemon-only event a sandbox sends when the request's values do not parse, sent by
    the guest once its call runs (field 15 of the daemon's twin of RunEvent)."""
    _send_raw(channel_fd(), _length_delimited(15, b"forged"))
    real_import("time").sleep(10)


def _length_delimited(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def outcome_of(size):
    """An outcome of ``size`` bytes of message, whatever the call's result cap."""
    failure = pb.Failure(kind=pb.Failure.GUEST_EXCEPTION, type_name="E", message="m" * size)
    _send(channel_fd(), pb.RunEvent(outcome=pb.Outcome(failure=failure)))
    real_import("time").sleep(10)


def outcome_never_made(which):
    """An outcome no runtime makes: of a kind no daemon knows, naming a limit of 100,000
    characters, or with a CPU time that is not a number — to hide the call from the daemon's
    log and metrics, flood the log, or break its lines' JSON."""
    if which == "kind":
        outcome = pb.Outcome(failure=pb.Failure(kind=999, message="forged"))
    elif which == "limit":
        outcome = pb.Outcome(failure=pb.Failure(kind=pb.Failure.RESOURCE_LIMIT, message="m", limit="L" * 100_000))
    else:
        outcome = pb.Outcome(usage=pb.Usage(cpu_seconds=float(which)))
        outcome.value.number_value = 1
    _send(channel_fd(), pb.RunEvent(outcome=outcome))
    real_import("time").sleep(10)
