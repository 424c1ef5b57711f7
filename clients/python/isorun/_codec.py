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

import base64
import binascii
import datetime as _dt
import decimal
import re
import reprlib
import uuid
from typing import Any, Callable

from google.protobuf import struct_pb2

from .errors import SerializationError

__all__ = [
    "BUILTIN_NAMES", "DEFAULT_MAX_BYTES", "MAX_WIRE_DEPTH", "TypeRegistry", "decode",
    "default_registry", "encode", "encode_into",
]

# upb (protobuf's C parser, used by grpc's Python and by most clients) refuses messages nested
# deeper than 101 levels (the top message plus 100). Values may sit a few levels down in an
# envelope (RunEvent -> Outcome -> Value), so values themselves stop at 90 levels.
MAX_WIRE_DEPTH = 90
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_SAFE_INTEGER = 2**53  # every int up to this magnitude is exact in a double

TYPE_KEY = "$type"
VALUE_KEY = "$value"

BUILTIN_NAMES = frozenset({
    "int", "float", "dict", "bytes", "bytearray", "tuple", "set", "frozenset", "datetime",
    "date", "time", "timedelta", "Decimal", "UUID", "complex",
})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,199}")
_INT_TEXT = re.compile(r"-?[0-9]+")
# What repr() writes for a float, which is JSON's number syntax; and the non-finite three.
_FLOAT_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|nan|inf|-inf")
# Decimal(text) with this context raises on a malformed string whatever the caller's context.
_DECIMAL_CONTEXT = decimal.Context(traps=[decimal.InvalidOperation])

_TOO_DEEP_WHY = (
    f"more than {MAX_WIRE_DEPTH} protobuf levels (limit 'depth'); that is more than "
    f"{MAX_WIRE_DEPTH // 2} lists or {(MAX_WIRE_DEPTH + 1) // 3} dicts inside one another, "
    "and always the case for a value that contains itself"
)
_NO_STACK_WHY = "the Python stack ran out before the depth limit was reached (limit 'depth')"


class _Failure(Exception):
    """Internal: a failure inside a value. Containers add where it happened as it propagates;
    the public entry point turns it into a SerializationError."""

    def __init__(self, what: str, why: str, limit: str | None = None):
        super().__init__(what, why)
        self.what, self.why, self.limit = what, why, limit
        self.path: list[int | str] = []  # innermost first: ints are indexes, strings formatted

    def error(self) -> SerializationError:
        where = ""
        if self.path and self.limit is None:
            where = " at " + "".join(
                f"[{s}]" if type(s) is int else s for s in reversed(self.path))
        err = SerializationError(f"{self.what}{where}: {self.why}")
        err.limit = self.limit
        return err


def _too_deep() -> _Failure:
    return _Failure("value is nested too deeply", _TOO_DEEP_WHY, "depth")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 40, 40


def _short(value: object) -> str:
    """A bounded repr for messages: never the whole of a big value, never an exception (the
    value may be a guest's object with a __repr__ of its own)."""
    try:
        text = _REPR.repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(value: object) -> str:
    return f"{type(value).__name__} {_short(value)}"


def _field(n: int) -> int:
    """Bytes a length-delimited field of n bytes takes: 1-byte tag, varint length, the data."""
    if n < 0x80:
        return n + 2
    return n + 1 + (n.bit_length() + 6) // 7


def _tagged_size(name_len: int, payload_size: int) -> int:
    """Encoded size of a tagged Value: a Struct holding two map entries."""
    type_entry = 7 + _field(_field(name_len))  # key "$type", then a Value holding the name
    value_entry = 8 + _field(payload_size)     # key "$value", then the payload Value
    return _field(_field(type_entry) + _field(value_entry))


def _utf8_len(text: str) -> int:
    if text.isascii():  # O(1) in CPython
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise _Failure("cannot encode a str", f"it holds a lone surrogate "
                       f"({text[e.start]!r} at index {e.start}), which is not valid Unicode") from None


# ---------------------------------------------------------------------------------- registry

class _Entry:
    __slots__ = ("cls", "name", "encode", "decode")

    def __init__(self, cls: type, name: str, encode: Callable, decode: Callable):
        self.cls, self.name, self.encode, self.decode = cls, name, encode, decode


class TypeRegistry:
    """Encoders and resolvers for types the codec does not know, by exact class and by name.

    ``encode(obj)`` returns a payload (any value the codec can encode, itself encoded
    recursively); ``decode(payload)`` gets that payload back as Python and rebuilds the object.
    Lookups that miss fall back to ``parent``. Names and classes are unique along the chain.
    """

    def __init__(self, parent: TypeRegistry | None = None):
        self._parent = parent
        self._by_class: dict[type, _Entry] = {}
        self._by_name: dict[str, _Entry] = {}

    def register(self, cls: type, name: str, encode: Callable[[Any], Any],
                 decode: Callable[[Any], Any]) -> None:
        if not isinstance(cls, type):
            raise TypeError(f"cls must be a class, got {_describe(cls)}")
        if not callable(encode) or not callable(decode):
            raise TypeError(f"encode and decode for {name!r} must be callable")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("type name must be 1-200 characters of letters, digits, '_', '.' "
                             f"or '-', starting with a letter or '_', got {name!r}")
        if name in BUILTIN_NAMES:
            raise ValueError(f"type name {name!r} is built in; use a qualified name such as "
                             f"'yourpackage.{name}'")
        if self._find_name(name) is not None:
            raise ValueError(f"type name {name!r} is already registered")
        if cls in _BUILTIN_CLASSES:
            raise ValueError(f"{cls.__qualname__} is encoded by the codec itself and cannot be "
                             "registered")
        existing = self._find_class(cls)
        if existing is not None:
            raise ValueError(f"{cls.__module__}.{cls.__qualname__} is already registered as "
                             f"{existing.name!r}")
        entry = _Entry(cls, name, encode, decode)
        self._by_name[name] = entry
        self._by_class[cls] = entry

    def names(self) -> list[str]:
        """Every type name this registry can encode and decode, built-in ones included."""
        found = set(BUILTIN_NAMES)
        registry: TypeRegistry | None = self
        while registry is not None:
            found.update(registry._by_name)
            registry = registry._parent
        return sorted(found)

    def _find_class(self, cls: type) -> _Entry | None:
        registry: TypeRegistry | None = self
        while registry is not None:
            entry = registry._by_class.get(cls)
            if entry is not None:
                return entry
            registry = registry._parent
        return None

    def _find_name(self, name: str) -> _Entry | None:
        registry: TypeRegistry | None = self
        while registry is not None:
            entry = registry._by_name.get(name)
            if entry is not None:
                return entry
            registry = registry._parent
        return None


default_registry = TypeRegistry()

# ----------------------------------------------------------------------------------- encode
# A handler fills `target` (an empty Value at wire level `depth`, the top Value being 1) and
# returns its encoded size. Leaves charge their whole size to the budget; containers charge
# only their own framing, after their children charged themselves.


class _Encoder:
    __slots__ = ("registry", "names", "limit", "used")

    def __init__(self, registry: TypeRegistry, names: set[str] | None, limit: int):
        self.registry, self.names, self.limit, self.used = registry, names, limit, 0

    def value(self, target: struct_pb2.Value, value: Any, depth: int) -> int:
        handler = _ENCODERS.get(type(value))
        if handler is None:
            return _enc_registered(self, target, value, depth)
        return handler(self, target, value, depth)

    def charge(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise _Failure("value is too large", f"more than {self.limit} bytes (limit 'size')",
                           "size")


def _enc_none(enc: _Encoder, target: struct_pb2.Value, value: None, depth: int) -> int:
    target.null_value = struct_pb2.NULL_VALUE
    enc.charge(2)
    return 2


def _enc_bool(enc: _Encoder, target: struct_pb2.Value, value: bool, depth: int) -> int:
    target.bool_value = value
    enc.charge(2)
    return 2


def _enc_str(enc: _Encoder, target: struct_pb2.Value, value: str, depth: int) -> int:
    size = _field(_utf8_len(value))
    enc.charge(size)  # before building: a huge string is refused without copying it
    target.string_value = value
    return size


def _enc_int(enc: _Encoder, target: struct_pb2.Value, value: int, depth: int) -> int:
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        target.number_value = value
        enc.charge(9)
        return 9
    try:
        text = str(value)
    except ValueError as e:  # past sys.get_int_max_str_digits()
        raise _Failure("cannot encode an int", str(e)) from None
    return _enc_tagged(enc, target, "int", _enc_str, text, depth)


def _enc_float(enc: _Encoder, target: struct_pb2.Value, value: float, depth: int) -> int:
    # A double can carry it and it decodes as a float: finite, with a fractional part.
    if not value.is_integer() and value - value == 0.0:
        target.number_value = value
        enc.charge(9)
        return 9
    return _enc_tagged(enc, target, "float", _enc_str, repr(value), depth)


def _enc_items(enc: _Encoder, target: struct_pb2.Value, items: Any, depth: int) -> int:
    """Fill target's list_value from a sized iterable."""
    if not items:
        if depth + 1 > MAX_WIRE_DEPTH:
            raise _too_deep()
        target.list_value.SetInParent()
        enc.charge(2)
        return 2
    if depth + 2 > MAX_WIRE_DEPTH:
        raise _too_deep()
    add = target.list_value.values.add
    encode = enc.value
    inner = children = i = 0
    try:
        for i, item in enumerate(items):
            n = encode(add(), item, depth + 2)
            inner += n + 2 if n < 0x80 else _field(n)
            children += n
    except _Failure as f:
        f.path.append(i)
        raise
    size = _field(inner)
    enc.charge(size - children)
    return size


def _enc_list(enc: _Encoder, target: struct_pb2.Value, value: list, depth: int) -> int:
    return _enc_items(enc, target, value, depth)


def _enc_dict(enc: _Encoder, target: struct_pb2.Value, value: dict, depth: int) -> int:
    if TYPE_KEY in value:  # would read as a tagged value: send it as key/value pairs
        return _enc_pairs(enc, target, value, depth)
    if not value:
        if depth + 1 > MAX_WIRE_DEPTH:
            raise _too_deep()
        target.struct_value.SetInParent()
        enc.charge(2)
        return 2
    if depth + 3 > MAX_WIRE_DEPTH:
        raise _too_deep()
    fields = target.struct_value.fields
    encode = enc.value
    start = enc.used
    inner = children = 0
    key = None
    try:
        for key, item in value.items():
            if type(key) is not str:
                break
            key_len = _utf8_len(key)
            n = encode(fields[key], item, depth + 3)
            entry = (key_len + 2 if key_len < 0x80 else _field(key_len)) + _field(n)
            entry_size = _field(entry)
            enc.charge(entry_size - n)  # keys count as they come, not at the end
            inner += entry_size
            children += n
    except _Failure as f:
        f.path.append(f"[{_short(key)}]")
        raise
    else:
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
    target.string_value = binascii.b2a_base64(value, newline=False).decode("ascii")
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
    except Exception as e:
        raise _Failure(what, f"its encoder for {entry.name!r} raised "
                             f"{type(e).__name__}: {e}") from e
    return _enc_tagged(enc, target, entry.name, _Encoder.value, payload, depth)


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
_BUILTIN_CLASSES = frozenset(_ENCODERS)


def encode_into(target: struct_pb2.Value, value: Any, registry: TypeRegistry | None = None, *,
                names: set[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Encode value into target (cleared first), in place; return its encoded size in bytes.

    Fills a message that already sits in a request (``request.args.add()``) without a copy.
    On failure target is left empty and SerializationError is raised.
    """
    enc = _Encoder(default_registry if registry is None else registry, names, max_bytes)
    target.Clear()
    try:
        return enc.value(target, value, 1)
    except _Failure as f:
        target.Clear()
        raise f.error() from f.__cause__
    except RecursionError:  # the caller was already deep in its stack
        target.Clear()
        raise _Failure("value is nested too deeply", _NO_STACK_WHY, "depth").error() from None


def encode(value: Any, registry: TypeRegistry | None = None, *, names: set[str] | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> struct_pb2.Value:
    """Encode value as a new Value. ``names`` collects every tagged type name used."""
    message = struct_pb2.Value()
    encode_into(message, value, registry, names=names, max_bytes=max_bytes)
    return message


# ----------------------------------------------------------------------------------- decode

class _BadPayload(Exception):
    """Internal: a tagged value's payload has the wrong shape."""


def _text(payload: Any) -> str:
    if type(payload) is not str:
        raise _BadPayload(f"expected a string, got {_describe(payload)}")
    return payload


def _items(payload: Any, count: int | None = None) -> list:
    if type(payload) is not list or (count is not None and len(payload) != count):
        expected = "a list" if count is None else f"a list of {count} items"
        raise _BadPayload(f"expected {expected}, got {_describe(payload)}")
    return payload


def _numbers(payload: Any, count: int, types: tuple[type, ...]) -> list:
    items = _items(payload, count)
    for item in items:
        if type(item) not in types:
            names = " or ".join(t.__name__ for t in types)
            raise _BadPayload(f"expected {count} items of type {names}, got {_short(items)}")
    return items


def _dec_int(payload: Any) -> int:
    text = _text(payload)
    if not _INT_TEXT.fullmatch(text):
        raise _BadPayload(f"expected a decimal integer such as '-18446744073709551617', got "
                          f"{_short(text)}")
    return int(text)  # ValueError past sys.get_int_max_str_digits(): no quadratic parse


def _dec_float(payload: Any) -> float:
    text = _text(payload)
    if not _FLOAT_TEXT.fullmatch(text):  # float() alone would take " 1_0 " and "Infinity"
        raise _BadPayload(f"expected a number such as '4.0' or '-1e+300', or 'nan', 'inf' or "
                          f"'-inf', got {_short(text)}")
    return float(text)


def _dec_bytes(payload: Any) -> bytes:
    try:
        return base64.b64decode(_text(payload), validate=True)
    except ValueError as e:  # binascii.Error is a ValueError
        raise _BadPayload(f"not valid padded base64 ({e})") from None


def _dec_pairs(payload: Any) -> dict:
    result = {}
    for pair in _items(payload):
        if type(pair) is not list or len(pair) != 2:
            raise _BadPayload(f"expected a list of [key, value] pairs, got {_describe(pair)}")
        try:
            result[pair[0]] = pair[1]
        except TypeError:
            raise _BadPayload(f"key {_short(pair[0])} is not hashable") from None
    return result


def _dec_timedelta(payload: Any) -> _dt.timedelta:
    days, seconds, microseconds = _numbers(payload, 3, (int,))
    return _dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _dec_complex(payload: Any) -> complex:
    real, imag = _numbers(payload, 2, (float, int))
    return complex(real, imag)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int": _dec_int,
    "float": _dec_float,
    "dict": _dec_pairs,
    "bytes": _dec_bytes,
    "bytearray": lambda p: bytearray(_dec_bytes(p)),
    "tuple": lambda p: tuple(_items(p)),
    "set": lambda p: set(_items(p)),
    "frozenset": lambda p: frozenset(_items(p)),
    "datetime": lambda p: _dt.datetime.fromisoformat(_text(p)),
    "date": lambda p: _dt.date.fromisoformat(_text(p)),
    "time": lambda p: _dt.time.fromisoformat(_text(p)),
    "timedelta": _dec_timedelta,
    "Decimal": lambda p: decimal.Decimal(_text(p), _DECIMAL_CONTEXT),
    "UUID": lambda p: uuid.UUID(_text(p)),
    "complex": _dec_complex,
}
assert set(_DECODERS) == BUILTIN_NAMES


def _decode(message: struct_pb2.Value, depth: int, registry: TypeRegistry) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        number = message.number_value
        if number.is_integer() and -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return message.string_value
    if kind == "struct_value":
        return _dec_struct(message.struct_value.fields, depth, registry)
    if kind == "list_value":
        return _dec_list(message.list_value.values, depth, registry)
    if kind == "bool_value":
        return message.bool_value
    if kind == "null_value":
        return None
    raise _Failure("cannot decode a Value", "no kind is set (an empty Value message)")


def _dec_list(values: Any, depth: int, registry: TypeRegistry) -> list:
    if depth + (2 if values else 1) > MAX_WIRE_DEPTH:
        raise _too_deep()
    result = []
    append = result.append
    i = 0
    try:
        for i, item in enumerate(values):
            append(_decode(item, depth + 2, registry))
    except _Failure as f:
        f.path.append(i)
        raise
    return result


def _dec_struct(fields: Any, depth: int, registry: TypeRegistry) -> Any:
    if TYPE_KEY in fields:
        return _dec_tagged(fields, depth, registry)
    if depth + (3 if fields else 1) > MAX_WIRE_DEPTH:
        raise _too_deep()
    result = {}
    key = None
    try:
        for key, item in fields.items():
            result[key] = _decode(item, depth + 3, registry)
    except _Failure as f:
        f.path.append(f"[{_short(key)}]")
        raise
    return result


def _dec_tagged(fields: Any, depth: int, registry: TypeRegistry) -> Any:
    if len(fields) != 2 or VALUE_KEY not in fields:
        raise _Failure("cannot decode a tagged value", "a struct with a '$type' key must have "
                       f"exactly the keys '$type' and '$value', got {sorted(fields)}")
    tag = fields[TYPE_KEY]
    if tag.WhichOneof("kind") != "string_value":
        raise _Failure("cannot decode a tagged value",
                       f"'$type' must be a string, got a {tag.WhichOneof('kind')}")
    name = tag.string_value
    what = f"cannot decode a value tagged {_short(name)}"
    if depth + 3 > MAX_WIRE_DEPTH:
        raise _too_deep()
    rebuild = _DECODERS.get(name)
    if rebuild is None:
        entry = registry._find_name(name)
        if entry is None:
            raise _Failure(what, "no resolver for it; available type names: "
                                 f"{', '.join(registry.names())}")
        payload = _decode(fields[VALUE_KEY], depth + 3, registry)
        try:
            return entry.decode(payload)
        except Exception as e:
            raise _Failure(what, f"its resolver raised {type(e).__name__}: {e}") from e
    payload = _decode(fields[VALUE_KEY], depth + 3, registry)
    try:
        return rebuild(payload)
    except _BadPayload as e:
        raise _Failure(what, f"bad payload: {e}") from None
    except (ValueError, TypeError, ArithmeticError) as e:  # fromisoformat, UUID, Decimal, ...
        raise _Failure(what, f"bad payload {_short(payload)}: {e}") from None


def decode(message: struct_pb2.Value, registry: TypeRegistry | None = None) -> Any:
    """Rebuild the Python value that ``encode`` (or another client, per docs/values.md) sent."""
    try:
        return _decode(message, 1, default_registry if registry is None else registry)
    except _Failure as f:
        raise f.error() from f.__cause__
    except RecursionError:  # the caller was already deep in its stack
        raise _Failure("value is nested too deeply", _NO_STACK_WHY, "depth").error() from None
