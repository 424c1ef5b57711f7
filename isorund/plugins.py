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
    except Exception as e:
        raise PluginError(f"cannot load {what} {spec!r}: {type(e).__name__}: {e}") from e
    return obj


def load(config) -> tuple[Plugins, TypeRegistry]:
    """Imports every configured plugin and operator type; raises PluginError naming the first
    one that fails, so a bad config stops the daemon at start, not at the first call."""
    for path in config.plugin_paths:
        if path not in sys.path:
            sys.path.insert(0, path)
    plugins = Plugins()
    for group in ("compilers", "resolvers", "args_resolvers"):
        for name, spec in getattr(config.plugins, group).items():
            obj = load_object(spec, f"plugins.{group}.{name}")
            if not callable(obj):
                raise PluginError(f"plugins.{group}.{name} = {spec!r} is not callable")
            getattr(plugins, group)[name] = obj
    registry = TypeRegistry(parent=default_registry)
    for name, spec in config.types.items():
        resolver = load_object(spec, f"types.{name}")
        try:
            registry.register(resolver.type, name, resolver.encode, resolver.decode)
        except (AttributeError, ValueError) as e:
            raise PluginError(f"types.{name} = {spec!r} must provide type, encode and decode: {e}") from e
    return plugins, registry
