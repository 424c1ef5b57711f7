"""What the value codec's two halves share: the format's constants, the type registry and the
failure that becomes a SerializationError. The rules themselves are in docs/values.md; the
halves are ``_encode`` and ``_decode``, and ``_codec`` is the one module the rest imports.
"""
from __future__ import annotations

import datetime as _dt
import decimal
import re
import reprlib
import uuid
from typing import Any, Callable, Iterator

from .errors import SerializationError


# upb (protobuf's C parser, used by grpc's Python and by most clients) refuses messages nested
# deeper than 101 levels (the top message plus 100). Values may sit a few levels down in an
# envelope (RunEvent -> Outcome -> Value), so values themselves stop at 90 levels.
MAX_WIRE_DEPTH = 90
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_SAFE_INTEGER = 2**53  # every int up to this magnitude is exact in a double
# The most decimal digits a tagged int may have: CPython's default bound on int <-> text
# (``sys.get_int_max_str_digits()``), which every sandbox keeps. Fixed here, not read from this
# process, so that a client whose host raised its own bound still refuses before sending.
MAX_INT_DIGITS = 4300

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
    f"{(MAX_WIRE_DEPTH - 1) // 2} lists or {(MAX_WIRE_DEPTH - 1) // 3} dicts around a value "
    f"({MAX_WIRE_DEPTH // 2} or {MAX_WIRE_DEPTH // 3} when the innermost is empty), "
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


# What an operator type's own code (its encoder, its resolver, the __str__ of what they raise)
# may raise and still fail only its value, as a SerializationError naming the type: any
# Exception, and SystemExit and GeneratorExit, which such code raises as it would anything else
# (a sys.exit() in it was reported as the guest's SystemExit, before any guest code ran when
# it was a resolver of an argument). Not every BaseException: what interrupts the process
# passes through untouched, KeyboardInterrupt in a client and, in the sandbox, the CPU limit's
# exception (isorund.sandbox.limits.CpuLimitExceeded, a BaseException of the daemon's that this
# codec, also the client's, cannot import): a tuple of what is caught, rather than one of what
# is not, lets both through without naming either.
_TYPE_CODE_FAULTS = (Exception, SystemExit, GeneratorExit)


def _raised(error: BaseException) -> str:
    """``Name: message`` of what a type's code raised, for its SerializationError; Python's own
    words when the exception's __str__ fails too (it escaped as that failure, a RuntimeError)."""
    try:
        said = str(error)
    except _TYPE_CODE_FAULTS:
        said = "<exception str() failed>"
    return f"{type(error).__name__}: {said}"


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


# Classes the codec encodes itself (``_encode`` checks this list against its table); they
# cannot be registered, and subclasses of them are refused unless registered.
_BUILTIN_CLASSES = frozenset({
    type(None), bool, str, int, float, list, dict, bytes, bytearray, tuple, set, frozenset,
    _dt.datetime, _dt.date, _dt.time, _dt.timedelta, decimal.Decimal, uuid.UUID, complex,
})

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
        for registry in self._chain():
            found.update(registry._by_name)
        return sorted(found)

    def _find_class(self, cls: type) -> _Entry | None:
        return next((r._by_class[cls] for r in self._chain() if cls in r._by_class), None)

    def _find_name(self, name: str) -> _Entry | None:
        return next((r._by_name[name] for r in self._chain() if name in r._by_name), None)

    def _chain(self) -> Iterator[TypeRegistry]:
        """This registry, then its parent, and so on."""
        registry: TypeRegistry | None = self
        while registry is not None:
            yield registry
            registry = registry._parent


default_registry = TypeRegistry()
