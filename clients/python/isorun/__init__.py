"""isorun: call a function from untrusted Python code in a fresh, kernel-isolated sandbox.

    from isorun import CodeRunner
    with CodeRunner(root="/srv/tenants/acme", file="rules.py") as runner:
        runner.run("multiply", args=[4, 5])   # -> 20

Every error is a subclass of ``isorun.errors.IsorunError``; values cross the wire as
described in docs/values.md, and ``register_type`` adds your own types to it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from . import errors
from ._codec import TypeRegistry, default_registry
from .errors import (DaemonUnavailable, FunctionNotFound, GuestError, IsorunError, ModuleNotFound,
                     ResourceLimitError, RuntimeTimeoutError, SerializationError)

__version__ = "0.1.0"

__all__ = [
    "AsyncCodeRunner", "CodeRunner", "DaemonUnavailable", "FunctionNotFound", "GuestError",
    "IsorunError", "ModuleNotFound", "ResourceLimitError", "RuntimeTimeoutError",
    "SerializationError", "TypeRegistry", "default_socket", "errors", "register_type",
]


def register_type(cls: type, name: str, encode: Callable[[Any], Any],
                  decode: Callable[[Any], Any]) -> None:
    """Teaches every runner of this process to send and receive ``cls`` as type ``name``.

    ``encode(obj)`` returns a payload the codec can carry (itself encoded recursively);
    ``decode(payload)`` rebuilds the object. The daemon must have a resolver configured for
    ``name`` (``[types]`` in its config), or calls using it fail with SerializationError
    before anything is sent.
    """
    default_registry.register(cls, name, encode, decode)


# Each name the runners' modules give, and the module that holds it.
_CLIENT_NAMES = {"AsyncCodeRunner": "_async", "CodeRunner": "_sync", "default_socket": "_base"}


def __getattr__(name: str) -> Any:
    """The runners load gRPC on first use: the daemon's sandboxes use this package's codec,
    and every byte gRPC would add to them is copied on every fork."""
    if name in _CLIENT_NAMES:
        module = importlib.import_module(f".{_CLIENT_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'isorun' has no attribute {name!r}")

