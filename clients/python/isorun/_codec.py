"""The value codec: Python values <-> ``google.protobuf.Value``, as specified in docs/values.md.

The client uses it for arguments and context (out) and results (in); the sandbox child uses
it the other way round. What it guarantees:

- ``type()`` and value round-trip exactly. JSON-like values use the plain ``Value`` kinds;
  everything else travels *tagged*, as a Struct ``{"$type": name, "$value": payload}``. Only
  exact types are accepted: a subclass (IntEnum, OrderedDict, a namedtuple) is refused unless
  its class is registered in a ``TypeRegistry``.
- Nothing recurses without bound, loops on a self-referencing value, or builds a message
  past the size limit: every failure is a ``SerializationError`` whose ``limit`` attribute is
  ``"depth"``, ``"size"`` or None, and whose message says where in the value it happened.

It is on the path of every call, so it dispatches on ``type(value)`` through one dict, fills
protobuf messages in place, and computes the exact encoded size as it goes (``encode_into``
returns it; it equals ``ByteSize()``).
"""
from __future__ import annotations

import contextlib

from .errors import SerializationError
from ._decode import decode, decode_plain
from ._encode import encode, encode_into
from ._wire import (BUILTIN_NAMES, DEFAULT_MAX_BYTES, MAX_WIRE_DEPTH, TypeRegistry,
                    default_registry)

__all__ = [
    "BUILTIN_NAMES", "DEFAULT_MAX_BYTES", "MAX_WIRE_DEPTH", "TypeRegistry", "decode",
    "decode_plain", "default_registry", "encode", "encode_into", "said_of",
]


@contextlib.contextmanager
def said_of(where: str):
    """A SerializationError raised inside begins with ``where`` (``args[1]: …``, ``the result:
    …``): the codec says what in a value failed, its caller which value it was."""
    try:
        yield
    except SerializationError as e:
        e.args = (f"{where}: {e}", *e.args[1:])
        raise
