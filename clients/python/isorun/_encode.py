"""Python values -> ``google.protobuf.Value`` (see ``_codec`` for the guarantees)."""
from __future__ import annotations

import datetime as _dt
import decimal
import errno
import math
import mmap
import sys
import uuid
from typing import Any, Callable

import pybase64
from google.protobuf import struct_pb2

from ._wire import (DEFAULT_MAX_BYTES, MAX_INT_DIGITS, MAX_SAFE_INTEGER, MAX_WIRE_DEPTH, TYPE_KEY,
                    TypeRegistry, VALUE_KEY, _BUILTIN_CLASSES, _Failure, _NO_STACK_WHY, _TYPE_CODE_FAULTS, _field,
                    _raised, _short, _tagged_size, _too_deep, _utf8_len, default_registry)


# ----------------------------------------------------------------------------------- encode
# A handler fills `target` (an empty Value at wire level `depth`, the top Value being 1) and
# returns its encoded size. Leaves charge their whole size to the budget; containers charge
# only their own framing, after their children charged themselves.


class _Encoder:
    __slots__ = ("registry", "names", "limit", "used", "wrap_read_errors", "room_checked_to")

    def __init__(self, registry: TypeRegistry, names: set[str] | None, limit: int, wrap_read_errors: bool = True):
        self.registry, self.names, self.limit, self.used = registry, names, limit, 0
        self.wrap_read_errors = wrap_read_errors
        self.room_checked_to = ROOM_CHECKED_FROM  # (see _room_for: what has been built so far)

    def read_error(self, error: Exception) -> Exception:
        """What was raised while reading the value (a set or dict changed by another thread, a
        tzinfo whose utcoffset raises), as a failure of the value: it was a bare RuntimeError
        naming neither the value nor its place. Unchanged when the encoder is told to let such
        errors through, for the codec's own failures, and for memory and stack running out."""
        if isinstance(error, (_Failure, MemoryError, RecursionError)) or not self.wrap_read_errors:
            return error
        failure = _unreadable(error)
        failure.__cause__ = error
        return failure

    def located(self, error: Exception, segment: int | str) -> Exception:
        """A failure inside a container, with where it happened."""
        error = self.read_error(error)
        if isinstance(error, _Failure):
            error.path.append(segment)
        return error

    def value(self, target: struct_pb2.Value, value: Any, depth: int) -> int:
        handler = _ENCODERS.get(type(value))
        if handler is None:
            return _enc_registered(self, target, value, depth)
        return handler(self, target, value, depth)

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise _Failure("value is too large", f"more than {self.limit} bytes once encoded (limit 'size'; "
                           "bytes take 4/3 of their length, as base64)",
                           "size")
        if self.used >= self.room_checked_to:  # many small values: room for the next stretch
            _room_for(WIRE_ROOM * ROOM_CHECKED_FROM)
            self.room_checked_to = self.used + ROOM_CHECKED_FROM


def _enc_none(enc: _Encoder, target: struct_pb2.Value, value: None, depth: int) -> int:
    target.null_value = struct_pb2.NULL_VALUE
    enc.charge(2)
    return 2


def _enc_bool(enc: _Encoder, target: struct_pb2.Value, value: bool, depth: int) -> int:
    target.bool_value = value
    enc.charge(2)
    return 2


# protobuf's message code (upb) ends the process with a fault where an allocation fails
# (assigning a 2 MiB str to a Value with less than that left under RLIMIT_AS: SIGSEGV), where
# Python raises MemoryError: a sandbox near its memory limit died without an outcome. Before a
# large string is copied into a message, or a long list's or dict's items are added (upb takes
# ~30-50 bytes an item), the address space is asked for room: a private mapping of that much
# and a little more, never touched (two system calls), whose refusal is a MemoryError, reported
# as the memory limit. So is it for every 256 KiB of the value built (each its room, ~8 times
# its bytes on the wire in upb for small ints): a result of 6,000 lists of 100 ints, each too
# small to be asked for, crashed as before (found by a probe). What upb asks for beyond the
# estimates can still fail as before.
ROOM_CHECKED_FROM = 256 << 10
ITEM_ROOM = 64
ITEMS_CHECKED_FROM = ROOM_CHECKED_FROM // ITEM_ROOM
WIRE_ROOM = 8


def _room_for(size: int) -> None:
    if size >= ROOM_CHECKED_FROM:
        try:
            mmap.mmap(-1, size + ROOM_CHECKED_FROM, flags=mmap.MAP_PRIVATE).close()
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            raise MemoryError() from None


def _enc_str(enc: _Encoder, target: struct_pb2.Value, value: str, depth: int) -> int:
    size = _field(_utf8_len(value))
    enc.charge(size)  # before building: a huge string is refused without copying it
    _room_for(size)
    target.string_value = value
    return size


def _enc_int(enc: _Encoder, target: struct_pb2.Value, value: int, depth: int) -> int:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        target.number_value = value
        enc.charge(9)
        return 9
    return _enc_tagged(enc, target, "int", _enc_str, _int_text(value), depth)


# An int of this many bits has at most MAX_INT_DIGITS + 1 decimal digits: past it, str() (time
# quadratic in the digits) is not even tried.
_MAX_INT_BITS = math.ceil(MAX_INT_DIGITS * math.log2(10))


def _int_text(value: int) -> str:
    text = None
    if value.bit_length() <= _MAX_INT_BITS:
        try:
            text = str(value)
        except ValueError as e:  # past this process's own bound: the host's, if it set it lower
            if 0 < sys.get_int_max_str_digits() < MAX_INT_DIGITS:
                raise _Failure("cannot encode an int", str(e)) from None
    if text is None or len(text) - (value < 0) > MAX_INT_DIGITS:
        raise _Failure("cannot encode an int", f"it has more than {MAX_INT_DIGITS} decimal digits, "
                       "the most an int may have on the wire (Python's bound on converting ints to text)")
    return text


def _enc_float(enc: _Encoder, target: struct_pb2.Value, value: float, depth: int) -> int:
    # A double can carry it and it decodes as a float: finite, with a fractional part.
    if not value.is_integer() and value - value == 0.0:
        target.number_value = value
        enc.charge(9)
        return 9
    return _enc_tagged(enc, target, "float", _enc_str, repr(value), depth)


def _enc_empty(enc: _Encoder, container: Any, depth: int) -> int:
    """An empty ListValue or Struct: one level deeper, two bytes."""
    if depth + 1 > MAX_WIRE_DEPTH:
        raise _too_deep()
    container.SetInParent()
    enc.charge(2)
    return 2


def _enc_items(enc: _Encoder, target: struct_pb2.Value, items: Any, depth: int) -> int:
    """Fill target's list_value from a sized iterable."""
    if not items:
        return _enc_empty(enc, target.list_value, depth)
    if depth + 2 > MAX_WIRE_DEPTH:
        raise _too_deep()
    if len(items) >= ITEMS_CHECKED_FROM:
        _room_for(len(items) * ITEM_ROOM)
    add = target.list_value.values.add
    encode = enc.value
    inner = children = 0
    # (what iterating raises, a set changed meanwhile, is the container's: its parent says where)
    for i, item in enumerate(items):
        try:
            n = encode(add(), item, depth + 2)
        except Exception as e:
            raise enc.located(e, i)
        inner += n + 2 if n < 0x80 else _field(n)
        children += n
    size = _field(inner)
    enc.charge(size - children)
    return size


def _unreadable(error: Exception) -> _Failure:
    try:
        said = str(error)
    except Exception:
        said = ""
    return _Failure("cannot read a value", f"reading it raised {type(error).__name__}"
                                           + (f": {said[:200]}" if said else ""))


def _enc_list(enc: _Encoder, target: struct_pb2.Value, value: list, depth: int) -> int:
    return _enc_items(enc, target, value, depth)


def _enc_dict(enc: _Encoder, target: struct_pb2.Value, value: dict, depth: int) -> int:
    if TYPE_KEY in value:  # would read as a tagged value: send it as key/value pairs
        return _enc_pairs(enc, target, value, depth)
    if not value:
        return _enc_empty(enc, target.struct_value, depth)
    if depth + 3 > MAX_WIRE_DEPTH:
        raise _too_deep()
    if len(value) >= ITEMS_CHECKED_FROM:
        _room_for(len(value) * 2 * ITEM_ROOM)  # (a map entry and its Value)
    fields = target.struct_value.fields
    encode = enc.value
    start = enc.used
    inner = children = 0
    key = None
    for key, item in value.items():  # (as in _enc_items, what iterating raises is the dict's)
        if type(key) is not str:
            break
        try:
            key_len = _utf8_len(key)
            n = encode(fields[key], item, depth + 3)
            entry = (key_len + 2 if key_len < 0x80 else _field(key_len)) + _field(n)
            entry_size = _field(entry)
            enc.charge(entry_size - n)  # keys count as they come, not at the end
        except Exception as e:
            raise enc.located(e, f"[{_short(key)}]")
        inner += entry_size
        children += n
    if type(key) is not str:  # rare: undo, and send it as key/value pairs instead
        target.Clear()
        enc.used = start
        return _enc_pairs(enc, target, value, depth)
    size = _field(inner)
    enc.charge(size - inner)
    return size


def _enc_pairs(enc: _Encoder, target: struct_pb2.Value, value: dict, depth: int) -> int:
    """A dict that cannot be a plain Struct travels tagged, as a list of [key, value]."""
    pairs = [[key, item] for key, item in value.items()]
    try:
        return _enc_tagged(enc, target, "dict", _enc_items, pairs, depth)
    except _Failure as f:
        # Say "[key]" rather than the pair's "[i][1]", and "<key ...>" for a bad key.
        if f.limit is None and len(f.path) >= 2:
            key = pairs[f.path[-1]][0]
            segment = f"[{_short(key)}]" if f.path[-2] == 1 else f"<key {_short(key)}>"
            f.path[-2:] = [segment]
        raise


def _enc_tagged(enc: _Encoder, target: struct_pb2.Value, name: str, fill: Callable,
                payload: Any, depth: int) -> int:
    """Write {"$type": name, "$value": fill(payload)} into target."""
    if depth + 3 > MAX_WIRE_DEPTH:
        raise _too_deep()
    if enc.names is not None:
        enc.names.add(name)
    fields = target.struct_value.fields
    fields[TYPE_KEY].string_value = name
    payload_size = fill(enc, fields[VALUE_KEY], payload, depth + 3)
    size = _tagged_size(len(name), payload_size)
    enc.charge(size - payload_size)
    return size


def _enc_base64(enc: _Encoder, target: struct_pb2.Value, value: bytes, depth: int) -> int:
    size = _field((len(value) + 2) // 3 * 4)
    enc.charge(size)
    _room_for(2 * size)  # (the base64 text, then its copy in the message)
    # pybase64 (SIMD): 1 MiB in ~0.1 ms here, against ~3 ms for binascii.
    target.string_value = pybase64.b64encode_as_string(value)
    return size


def _tagged_as(name: str, fill: Callable, to_payload: Callable) -> Callable:
    def handler(enc: _Encoder, target: struct_pb2.Value, value: Any, depth: int) -> int:
        return _enc_tagged(enc, target, name, fill, to_payload(value), depth)
    return handler


def _same(value: Any) -> Any:
    return value


def _isoformat(value: Any) -> str:
    return value.isoformat()


def _enc_registered(enc: _Encoder, target: struct_pb2.Value, value: Any, depth: int) -> int:
    cls = type(value)
    entry = enc.registry._find_class(cls)
    what = f"cannot encode a value of type {cls.__qualname__!r} ({cls.__module__}.{cls.__qualname__})"
    if entry is None:
        hint = ""
        for base in cls.__mro__[1:]:
            if base in _BUILTIN_CLASSES:
                hint = (f" (it subclasses {base.__qualname__}, but only exact types are "
                        "encoded: convert it, or register its class)")
                break
        raise _Failure(what, f"no codec or resolver{hint}; available type names: "
                             f"{', '.join(enc.registry.names())}")
    try:
        payload = entry.encode(value)
    except _TYPE_CODE_FAULTS as e:  # (see _TYPE_CODE_FAULTS)
        raise _Failure(what, f"its encoder for {entry.name!r} raised {_raised(e)}") from e
    try:
        return _enc_tagged(enc, target, entry.name, _Encoder.value, payload, depth)
    except _Failure as f:
        if f.limit is not None:  # too large or too deep: the whole value's limits, said as they are
            raise
        # The value the caller passed is this one, not what its encoder made of it: name it, and
        # put the payload's own failure, with its place inside the payload, after it.
        inner = f.error()
        raise _Failure(what, f"its encoder for {entry.name!r} returned a value of type "
                             f"{type(payload).__qualname__!r} that cannot be encoded: {inner}") from None


_ENCODERS: dict[type, Callable[[_Encoder, struct_pb2.Value, Any, int], int]] = {
    type(None): _enc_none,
    bool: _enc_bool,
    str: _enc_str,
    int: _enc_int,
    float: _enc_float,
    list: _enc_list,
    dict: _enc_dict,
    bytes: _tagged_as("bytes", _enc_base64, _same),
    bytearray: _tagged_as("bytearray", _enc_base64, _same),
    tuple: _tagged_as("tuple", _enc_items, _same),
    set: _tagged_as("set", _enc_items, _same),
    frozenset: _tagged_as("frozenset", _enc_items, _same),
    _dt.datetime: _tagged_as("datetime", _enc_str, _isoformat),
    _dt.date: _tagged_as("date", _enc_str, _isoformat),
    _dt.time: _tagged_as("time", _enc_str, _isoformat),
    _dt.timedelta: _tagged_as("timedelta", _enc_items,
                              lambda v: [v.days, v.seconds, v.microseconds]),
    decimal.Decimal: _tagged_as("Decimal", _enc_str, str),
    uuid.UUID: _tagged_as("UUID", _enc_str, str),
    complex: _tagged_as("complex", _enc_items, lambda v: (v.real, v.imag)),
}
assert frozenset(_ENCODERS) == _BUILTIN_CLASSES, "the registry's list of built-in classes is stale"


def encode_into(target: struct_pb2.Value, value: Any, registry: TypeRegistry | None = None, *,
                names: set[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                wrap_read_errors: bool = True) -> int:
    """Encode value into target (cleared first), in place; return its encoded size in bytes.

    Fills a message that already sits in a request (``request.args.add()``) without a copy.
    On failure target is left empty and SerializationError is raised; also for what reading
    the value raised, unless ``wrap_read_errors`` is false: then that is raised as it is (the
    sandbox reports a result whose own code raised as the guest's error, with its traceback).
    """
    enc = _Encoder(default_registry if registry is None else registry, names, max_bytes, wrap_read_errors)
    target.Clear()
    try:
        return enc.value(target, value, 1)
    except _Failure as f:
        target.Clear()
        raise f.error() from f.__cause__
    except RecursionError:  # the caller was already deep in its stack
        target.Clear()
        raise _Failure("value is nested too deeply", _NO_STACK_WHY, "depth").error() from None
    except Exception as e:  # (see _Encoder.read_error)
        target.Clear()
        failure = enc.read_error(e)
        if failure is e:
            raise
        raise failure.error() from e


def encode(value: Any, registry: TypeRegistry | None = None, *, names: set[str] | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> struct_pb2.Value:
    """Encode value as a new Value. ``names`` collects every tagged type name used."""
    message = struct_pb2.Value()
    encode_into(message, value, registry, names=names, max_bytes=max_bytes)
    return message
