"""The call channel's framing (isorund/sandbox/channel.py), over a real socketpair."""
import os
import socket
import struct
import threading
import time

import pytest

from isorun._proto import runner_pb2 as pb
from isorund.sandbox import channel


def _pair():
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_a_large_frame_sent_in_slow_pieces_arrives_whole():
    ours, theirs = _pair()
    payload = os.urandom(3 << 20)  # well past a socket buffer: many reads on the other side
    frame = struct.pack(">I", len(payload)) + payload

    def trickle():
        for start in range(0, len(frame), 700_001):
            theirs.sendall(frame[start:start + 700_001])
            time.sleep(0.01)
    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        assert channel.receive(ours, 4 << 20) == payload
    finally:
        sender.join()
        ours.close()
        theirs.close()


@pytest.mark.parametrize("size", [0, 1, channel.ONE_WRITE_BYTES, channel.ONE_WRITE_BYTES + 1, 2 << 20])
def test_send_and_receive_agree_on_either_side_of_the_one_write_size(size):
    ours, theirs = _pair()
    event = pb.RunEvent(console=pb.ConsoleLine(text="x" * size))
    sender = threading.Thread(target=channel.send, args=(theirs, event))
    sender.start()
    try:
        assert pb.RunEvent.FromString(channel.receive(ours, 4 << 20)) == event
    finally:
        sender.join()
        ours.close()
        theirs.close()


def test_an_empty_message_is_an_empty_frame():
    ours, theirs = _pair()
    channel.send(theirs, pb.RunEvent())
    assert channel.receive(ours, 4096) == b""
    ours.close()
    theirs.close()


def test_a_frame_cut_short_is_an_eof_not_a_short_frame():
    ours, theirs = _pair()
    theirs.sendall(struct.pack(">I", 1000) + b"only this much")
    theirs.close()
    with pytest.raises(EOFError):
        channel.receive(ours, 4096)
    ours.close()


def test_a_closed_channel_before_any_header_is_an_eof():
    ours, theirs = _pair()
    theirs.close()
    with pytest.raises(EOFError):
        channel.receive(ours, 4096)
    ours.close()


def test_a_frame_over_the_limit_is_refused_before_it_is_read():
    ours, theirs = _pair()
    theirs.sendall(struct.pack(">I", 10_000))
    with pytest.raises(ValueError, match="over the 4096-byte limit"):
        channel.receive(ours, 4096)
    ours.close()
    theirs.close()
