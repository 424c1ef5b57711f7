"""What a runner's options and a call's inputs must be, checked before anything is built or
sent: a wrong type is refused with ``InvalidRequest`` naming the option and the type given,
rather than taken apart into something the caller did not mean (``args="abc"`` called as
``f("a", "b", "c")``) or failing deep in gRPC.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2

from . import errors
from ._wire import MAX_SAFE_INTEGER, _short

# sun_path holds 108 bytes, one of them the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


def sequence(option: str, value: Any, what: str) -> Sequence[Any]:
    """``value`` when it is a list, tuple or other sequence; a str or bytes (a sequence of
    characters), a mapping (its keys), a set (no order) or an iterator would be taken apart
    into something the caller did not mean."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray, memoryview)):
        return value
    raise errors.InvalidRequest(f"{option} must be a list or tuple of {what}, "
                                f"got {type(value).__name__}")


def mapping(option: str, value: Any, what: str) -> Mapping[Any, Any]:
    """``value`` when it is a dict or other mapping (``context``: its keys become names)."""
    if isinstance(value, Mapping):
        return value
    raise errors.InvalidRequest(f"{option} must be a mapping (a dict) of {what}, "
                                f"got {type(value).__name__}")


def strings(option: str, value: Any, *, paths: bool = False) -> list[str]:
    """The strings (or, for ``paths``, os.PathLike too) of a list-valued option."""
    items = [os.fspath(item) if paths and isinstance(item, os.PathLike) else item
             for item in sequence(option, value, "strings")]
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise errors.InvalidRequest(f"{option} must be a list or tuple of strings, "
                                        f"got an item of type {type(item).__name__}")
        unicode_text(f"{option}[{i}]", item)
    return items


def source_extensions(value: Any) -> list[str]:
    """``source_extensions``: each a dot and at least one character, as the daemon requires. An
    empty one or a bare dot would end with every file of a folder counted as source, or with
    the daemon refusing a name nobody wrote."""
    items = strings("source_extensions", value)
    for i, ext in enumerate(items):
        if len(ext) < 2 or not ext.startswith("."):
            raise errors.InvalidRequest(f"source_extensions[{i}] must look like '.py' (a dot and at least one "
                                        f"character), got {_short(ext)}")
    return items


def path(option: str, value: Any) -> str:
    """A path option (``root``, ``file``): a str or os.PathLike, as ``open()`` takes; a
    bytes path is decoded as the file system would."""
    try:
        decoded = os.fsdecode(os.fspath(value))
    except TypeError:
        raise errors.InvalidRequest(f"{option} must be a path (a str or os.PathLike), "
                                    f"got {type(value).__name__}") from None
    return unicode_text(option, decoded)


def plugin_name(option: str, value: Any) -> str:
    """``compiler``, ``resolver``, ``args_resolver``: the name of a plugin in the daemon's
    config, or nothing (None or ""). A function given instead failed deep in the client with
    ``'function' object has no attribute 'isascii'``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"{option} must be the name of a plugin in the daemon's config "
                                    f"(a str), got {type(value).__name__}")
    return unicode_text(option, value)


def callback(option: str, value: Any) -> Any:
    """``on_console``, ``running``: a callable or None. One that is not was called only when
    the first line was printed, or once the sandbox had started, and raised there."""
    if value is not None and not callable(value):
        raise errors.InvalidRequest(f"{option} must be callable or None, got {type(value).__name__}")
    return value


def unicode_text(option: str, value: str) -> str:
    """``value`` when it is valid Unicode. A lone surrogate, which ``os.fsdecode`` makes of a
    name whose bytes are not UTF-8, cannot travel in a protobuf string: protobuf raised a bare
    UnicodeEncodeError naming no option."""
    at = _lone_surrogate_at(value)
    if at >= 0:
        raise errors.InvalidRequest(
            f"{option} holds {value[at]!r} at {at}, a lone surrogate, which is not valid Unicode "
            "(os.fsdecode makes one of a name whose bytes are not UTF-8); requests carry UTF-8 text only")
    return value


def _lone_surrogate_at(text: str) -> int:
    """Where ``text`` holds a lone surrogate, or -1."""
    if text.isascii():
        return -1
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return -1


def timeout_seconds(timeout: Any) -> float:
    """The timeout as a float number of seconds; 0.0 (None) leaves it to the daemon."""
    if timeout is None:
        return 0.0
    if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool):
        try:
            seconds = float(timeout)
        except OverflowError:  # an int beyond any double
            seconds = math.inf
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    raise errors.InvalidRequest(f"timeout must be a finite number of seconds > 0, got {_short(timeout)}")


def call_limits(limits: Any, request_limits) -> None:
    """Sets a call's ``limits`` on ``request_limits`` (a ``Limits`` message): names of the
    daemon's limits to numbers, each at most the daemon's own (the daemon refuses more); 0 or
    an absent name leaves the daemon's."""
    if limits is None:
        return
    known = [field.name for field in request_limits.DESCRIPTOR.fields]
    for name, value in mapping("limits", limits, "names of limits to numbers").items():
        if name not in known:
            raise errors.InvalidRequest(f"unknown limit {_short(name)}; known are {', '.join(sorted(known))}")
        whole = name != "cpu_seconds"
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                or value < 0 or (whole and value != int(value))):
            kind = "a whole number" if whole else "a number of seconds"
            raise errors.InvalidRequest(f"limits[{name!r}] must be {kind} >= 0, got {_short(value)}")
        try:
            setattr(request_limits, name, int(value) if whole else float(value))
        except ValueError:  # past the field's 32 or 64 bits
            raise errors.InvalidRequest(f"limits[{name!r}] is out of range, got {_short(value)}") from None


def socket_problem(socket: str) -> str | None:
    """Why no daemon can be reached at ``socket`` whatever runs there, or None."""
    path = os.path.abspath(socket)
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    return (f"no isorun daemon can be reached at {path}: a Unix socket path holds at most "
            f"{MAX_SOCKET_PATH_BYTES} bytes and this one has {size}; use a shorter path "
            "(a symbolic link to the socket will do)")


def options_struct(options: Mapping[str, Any]) -> struct_pb2.Struct:
    """resolver_options are plain JSON handed to the resolver plugin as a dict. What is not
    JSON is named with its place: protobuf's own words ("Unexpected type", "'int' object is
    not iterable") said neither what nor where."""
    if not isinstance(options, Mapping):
        raise errors.SerializationError(f"resolver_options must be a dict of JSON values, got {type(options).__name__}")
    _json_only(options, "resolver_options")
    message = struct_pb2.Struct()
    message.update(dict(options))
    return message


# The deepest protobuf level resolver_options may reach: protobuf's parser in the sandbox (upb)
# takes the request plus 100 levels, and the options' Struct is a field of the request itself.
# Levels count as the codec counts a value's (docs/values.md section 7), the options being at
# level 0: a dict's values are 3 levels down (Struct, map entry, Value), a list's items 2
# (ListValue, Value), an empty dict or list adds 1. Counted in JSON levels (up to 100), options
# deeper than this were sent, and the sandbox refused the request: InvalidRequest, "Exceeded
# upb_DecodeOptions_MaxDepth", naming no place.
MAX_OPTIONS_DEPTH = 100
_OPTIONS_TOO_DEEP_WHY = (
    f"more than {MAX_OPTIONS_DEPTH} protobuf levels (limit 'depth'), the most protobuf's parser takes; "
    f"that is more than {MAX_OPTIONS_DEPTH // 3} dicts around a value, the options' own included, "
    f"or {(MAX_OPTIONS_DEPTH - 3) // 2} lists in one of their entries (one more when the innermost is empty)"
)


def _within_depth(where: str, level: int) -> None:
    if level > MAX_OPTIONS_DEPTH:
        error = errors.SerializationError(f"{where} is nested too deeply: {_OPTIONS_TOO_DEEP_WHY}")
        error.limit = "depth"
        raise error


def _json_only(value: Any, where: str, level: int = 0) -> None:
    """Refuses what is not plain JSON as the daemon reads it (docs/values.md), an int past
    ±2**53 included, which would arrive as the nearest float (2**53 + 1 as 9007199254740992),
    and what is nested past ``MAX_OPTIONS_DEPTH`` (``level``: this value's, counted as there;
    refused before its items are looked at, so a dict that contains itself ends too)."""
    if isinstance(value, dict) or (level == 0 and isinstance(value, Mapping)):  # protobuf takes dicts inside
        _within_depth(where, level + (3 if value else 1))
        for key, item in value.items():
            if not isinstance(key, str):
                raise errors.SerializationError(f"{where} has a key that is no str: {_short(key)}")
            if _lone_surrogate_at(key) >= 0:
                raise errors.SerializationError(f"{where} has a key holding a lone surrogate, which is not "
                                                f"valid Unicode: {key!r}")
            _json_only(item, f"{where}[{key!r}]", level + 3)
    elif isinstance(value, (list, tuple)):
        _within_depth(where, level + (2 if value else 1))
        for i, item in enumerate(value):
            _json_only(item, f"{where}[{i}]", level + 2)
    elif isinstance(value, str) and (at := _lone_surrogate_at(value)) >= 0:
        raise errors.SerializationError(f"{where} holds a lone surrogate at {at}, which is not valid Unicode")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        raise errors.SerializationError(f"{where} is {_short(value)}, an int beyond ±2**53, which a JSON number "
                                        "cannot hold exactly (it would arrive as a float); send it as a str")
    elif isinstance(value, float) and not math.isfinite(value):
        raise errors.SerializationError(f"{where} is {value}, which JSON has no form for")
    elif not (value is None or isinstance(value, (bool, int, float, str))):
        raise errors.SerializationError(f"{where} is of type {type(value).__name__}; resolver_options hold "
                                        "only JSON values (None, bool, int, float, str, list, dict)")
