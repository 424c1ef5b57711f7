"""``google.protobuf.Value`` -> Python values (see ``_codec`` for the guarantees)."""
from __future__ import annotations

import datetime as _dt
import decimal
import re
import uuid
from typing import Any, Callable

import pybase64
from google.protobuf import struct_pb2

from ._wire import (BUILTIN_NAMES, MAX_INT_DIGITS, MAX_SAFE_INTEGER, MAX_WIRE_DEPTH, TYPE_KEY, TypeRegistry,
                    VALUE_KEY, _DECIMAL_CONTEXT, _FLOAT_TEXT, _Failure, _INT_TEXT, _NO_STACK_WHY, _TYPE_CODE_FAULTS,
                    _describe, _raised, _short, _too_deep, default_registry)


# ----------------------------------------------------------------------------------- decode

class _BadPayload(Exception):
    """Internal: a tagged value's payload has the wrong shape."""


# What a decoder says of a type name it has no resolver for; {names} are the names it knows.
NO_RESOLVER = "no resolver for it; available type names: {names}"


class _UnknownName(_Failure):
    """Internal: no resolver for a type name. What to say about the names known instead is the
    caller's (``decode``'s ``no_resolver``): the sandbox decodes with the daemon's ``[types]``,
    a client with its own registry, where the user registers the missing one."""

    def __init__(self, what: str, names: list[str]):
        super().__init__(what, NO_RESOLVER.format(names=", ".join(names)))
        self.names = names


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
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:  # refused before int() spends time quadratic in the digits
        raise _BadPayload(f"an int of {digits} decimal digits; at most {MAX_INT_DIGITS} travel")
    return int(text)


def _dec_float(payload: Any) -> float:
    text = _text(payload)
    if not _FLOAT_TEXT.fullmatch(text):  # float() alone would take " 1_0 " and "Infinity"
        raise _BadPayload(f"expected a number such as '4.0' or '-1e+300', or 'nan', 'inf' or "
                          f"'-inf', got {_short(text)}")
    return float(text)


def _dec_bytes(payload: Any) -> bytes:
    try:
        # pybase64 (SIMD) accepts exactly padded standard base64 (RFC 4648 section 4; stricter
        # than base64.b64decode(validate=True), which lets excess padding such as "AAAA="
        # through), at ~0.1 ms per MiB here against ~3-7 ms for the standard library.
        return pybase64.b64decode(_text(payload), validate=True)
    except ValueError as e:  # binascii.Error is a ValueError
        raise _BadPayload(f"not valid padded base64 ({e})") from None


def _dec_pairs(payload: Any) -> dict:
    pairs = _items(payload)
    for pair in pairs:
        if type(pair) is not list or len(pair) != 2:
            raise _BadPayload(f"expected a list of [key, value] pairs, got {_describe(pair)}")
    _refuse_colliding("key", [key for key, _ in pairs])
    result = dict(pairs)
    if len(result) < len(pairs):
        _refuse_duplicate("key", [key for key, _ in pairs])
    return result


def _dec_set(cls: type, payload: Any) -> Any:
    items = _items(payload)
    _refuse_colliding("item", items)
    result = cls(items)
    if len(result) < len(items):
        _refuse_duplicate("item", items)
    return result


# Entries with one hash value make a dict or set quadratic to build: ints k * (2**61 - 1) all
# hash to 0, and 60,000 of them (3 MB, a guest's result) took 37 s of the client's time.
# Distinct values of Python's own types rarely share a hash (-1 and -2 do); this many never do
# by chance.
MAX_SHARED_HASH = 16


def _refuse_colliding(what: str, entries: list) -> None:
    counts: dict[int, int] = {}
    for entry in entries:
        try:
            value = hash(entry)
        except TypeError:
            raise _BadPayload(f"{what} {_short(entry)} is not hashable") from None
        counts[value] = counts.get(value, 0) + 1
        if counts[value] > MAX_SHARED_HASH:
            raise _BadPayload(f"more than {MAX_SHARED_HASH} {what}s share one hash value (such as "
                              f"{_short(entry)}): building the container would take time quadratic "
                              "in their number")


def _refuse_duplicate(what: str, entries: list) -> None:
    """Entries distinct on the wire can be equal in Python (1 and True; two datetimes for the
    same instant); merging them would silently drop one, so the value is refused."""
    seen: dict = {}
    for entry in entries:
        if entry in seen:
            raise _BadPayload(f"{what} {_short(entry)} equals the earlier {what} "
                              f"{_short(seen[entry])} in Python; one of them would be lost")
        seen[entry] = entry


# "+00:00:00.000001": Python 3.11's fromisoformat reads a UTC offset under one second as UTC
# itself, dropping its microseconds; that one case is read here.
_SUB_SECOND_OFFSET = re.compile(r"([+-])00:00:00\.([0-9]{1,6})$")


def _from_isoformat(cls: type, text: str) -> Any:
    """``cls.fromisoformat`` (datetime or time), keeping an offset shorter than a second."""
    value = cls.fromisoformat(text)
    short_offset = _SUB_SECOND_OFFSET.search(text)
    if short_offset and value.tzinfo is not None:
        sign = -1 if short_offset.group(1) == "-" else 1
        micro = sign * int(short_offset.group(2).ljust(6, "0"))
        value = value.replace(tzinfo=_dt.timezone(_dt.timedelta(microseconds=micro)))
    return value


def _dec_decimal(payload: Any) -> decimal.Decimal:
    text = _text(payload)
    try:
        return decimal.Decimal(text, _DECIMAL_CONTEXT)
    except decimal.InvalidOperation:  # its message is "[<class 'decimal.ConversionSyntax'>]"
        raise _BadPayload(f"expected a decimal number such as '3.14', '-1.5E+7', 'NaN' or '-Infinity', "
                          f"got {_short(text)}") from None


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
    "set": lambda p: _dec_set(set, p),
    "frozenset": lambda p: _dec_set(frozenset, p),
    "datetime": lambda p: _from_isoformat(_dt.datetime, _text(p)),
    "date": lambda p: _dt.date.fromisoformat(_text(p)),
    "time": lambda p: _from_isoformat(_dt.time, _text(p)),
    "timedelta": _dec_timedelta,
    "Decimal": _dec_decimal,
    "UUID": lambda p: uuid.UUID(_text(p)),
    "complex": _dec_complex,
}
assert set(_DECODERS) == BUILTIN_NAMES


def _number(number: float) -> int | float:
    """A number_value, read by docs/values.md's rule: integral within ±2**53 is an int."""
    if number.is_integer() and -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
        return int(number)
    return number


def _decode(message: struct_pb2.Value, depth: int, registry: TypeRegistry) -> Any:
    kind = message.WhichOneof("kind")
    if kind == "number_value":
        return _number(message.number_value)
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
            raise _UnknownName(what, registry.names())
        payload = _decode(fields[VALUE_KEY], depth + 3, registry)
        try:
            return entry.decode(payload)
        except _TYPE_CODE_FAULTS as e:  # SystemExit too; not the process's interruptions
            raise _Failure(what, f"its resolver raised {_raised(e)}") from e
    payload = _decode(fields[VALUE_KEY], depth + 3, registry)
    try:
        return rebuild(payload)
    except _BadPayload as e:
        raise _Failure(what, f"bad payload: {e}") from None
    except (ValueError, TypeError, ArithmeticError) as e:  # fromisoformat, UUID, Decimal, ...
        raise _Failure(what, f"bad payload {_short(payload)}: {e}") from None


def decode_plain(message: struct_pb2.Value) -> Any:
    """Plain JSON, as resolver_options are written: numbers read as values are, but a
    ``"$type"`` key is only a key (the options are a plugin's, not values of the call). The
    nesting is bounded by protobuf's own parse (100 levels)."""
    kind = message.WhichOneof("kind")
    if kind == "struct_value":
        return {key: decode_plain(item) for key, item in message.struct_value.fields.items()}
    if kind == "list_value":
        return [decode_plain(item) for item in message.list_value.values]
    if kind == "number_value":
        return _number(message.number_value)
    if kind == "string_value":
        return message.string_value
    if kind == "bool_value":
        return message.bool_value
    return None


def decode(message: struct_pb2.Value, registry: TypeRegistry | None = None, *,
           no_resolver: str = NO_RESOLVER) -> Any:
    """Rebuild the Python value that ``encode`` (or another client, per docs/values.md) sent.
    ``no_resolver`` is what a type name the registry lacks is told with ({names}: the names it
    has), so that a client can say they are its own and how to register one."""
    try:
        return _decode(message, 1, default_registry if registry is None else registry)
    except _Failure as f:
        if isinstance(f, _UnknownName):
            f.why = no_resolver.format(names=", ".join(f.names))
        raise f.error() from f.__cause__
    except RecursionError:  # the caller was already deep in its stack
        raise _Failure("value is nested too deeply", _NO_STACK_WHY, "depth").error() from None
