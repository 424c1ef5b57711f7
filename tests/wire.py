"""Protobuf wire bytes built by hand, for tests that send what no well-behaved encoder would
(values that do not parse) or more than it would build in reasonable time (millions of values).
The guest-side attacks keep a copy of their own: they run in a sandbox with only escape.py."""


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (a string, bytes or an embedded message)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
