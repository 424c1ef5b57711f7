"""Operator plugins: compilers, module resolvers, argument resolvers and value types.

Plugins are trusted code named in the daemon config as ``"module:attribute"``. They are
imported once, in the zygote, so every sandbox inherits them already loaded; they run inside
the sandbox, with the guest's (lack of) privileges. Guests cannot name a plugin the operator
did not configure.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field

from isorun._codec import TypeRegistry, default_registry


class PluginError(Exception):
    """A configured plugin cannot be loaded; the message names it."""


@dataclass
class Plugins:
    compilers: dict = field(default_factory=dict)
    resolvers: dict = field(default_factory=dict)
    args_resolvers: dict = field(default_factory=dict)


def load_object(spec: str, what: str):
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (Exception, SystemExit) as e:  # a module calling sys.exit() on import fails here too
        raise PluginError(f"cannot load {what} {spec!r}: {type(e).__name__}: {e}") from e
    return obj


def load(config, on_load=lambda what: None) -> tuple[Plugins, TypeRegistry]:
    """Imports every configured plugin and operator type; raises PluginError naming the first
    one that fails, so a bad config stops the daemon at start, not at the first call.
    ``on_load`` hears the name of each before its import, so that one that never returns can
    be named by whoever gives up waiting."""
    for path in config.plugin_paths:
        if path not in sys.path:
            sys.path.insert(0, path)
    plugins = Plugins()
    for group in ("compilers", "resolvers", "args_resolvers"):
        for name, spec in getattr(config.plugins, group).items():
            on_load(f"plugins.{group}.{name} = {spec!r}")
            obj = load_object(spec, f"plugins.{group}.{name}")
            if not callable(obj):
                raise PluginError(f"plugins.{group}.{name} = {spec!r} is not callable")
            getattr(plugins, group)[name] = obj
    registry = TypeRegistry(parent=default_registry)
    for name, spec in config.types.items():
        on_load(f"types.{name} = {spec!r}")
        resolver = load_object(spec, f"types.{name}")
        cls, encode, decode = _resolver_parts(resolver, f"types.{name} = {spec!r}")
        try:
            registry.register(cls, name, encode, decode)
        except (TypeError, ValueError) as e:
            raise PluginError(f"types.{name} = {spec!r} cannot be registered: {e}") from e
    return plugins, registry


def _resolver_parts(resolver, where: str) -> tuple[type, object, object]:
    """An operator type is any object (a module, a class, an instance) with three attributes:
    ``type``, the exact class it encodes; ``encode(obj)``, returning a payload the codec can
    carry; ``decode(payload)``, rebuilding the object. See docs/values.md."""
    missing = [a for a in ("type", "encode", "decode") if not hasattr(resolver, a)]
    if missing:
        raise PluginError(f"{where} must have the attributes type, encode and decode; "
                          f"it lacks {', '.join(missing)}")
    cls, encode, decode = resolver.type, resolver.encode, resolver.decode
    if not isinstance(cls, type):
        raise PluginError(f"{where}: 'type' must be a class, got {cls!r}")
    for attr, fn in (("encode", encode), ("decode", decode)):
        if not callable(fn):
            raise PluginError(f"{where}: '{attr}' must be callable, got {fn!r}")
    return cls, encode, decode
