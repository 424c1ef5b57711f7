"use strict";
/**
 * Operator types (docs/values.md, section 5): classes the codec does not know, each with a type
 * name, an encoder (object -> payload) and a resolver (payload -> object), so that values of
 * a type the daemon's operator registered in `[types]` cross the wire both ways. The rules are
 * the Python client's (clients/python/isorun/_wire.py, TypeRegistry): names are unique, a class
 * is registered at most once, only the exact class is encoded (not subclasses), and the codec's
 * own types cannot be registered.
 */

const NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,199}$/;
const BUILTIN_NAMES = Object.freeze(["Decimal", "UUID", "bytearray", "bytes", "complex", "date", "datetime",
  "dict", "float", "frozenset", "int", "set", "time", "timedelta", "tuple"]);
// Classes the codec encodes itself, or whose instances are primitives in disguise: registering
// one would change how every value of it travels, for every runner.
const CODEC_CLASSES = new Set([Object, Array, Map, Set, Date, Uint8Array, Buffer, Number, String, Boolean,
  BigInt, Symbol, Function]);

class TypeRegistry {
  /**
   * @param {{parent?: TypeRegistry}} [options] lookups that miss here fall back to `parent`;
   *   names and classes are unique along the chain.
   */
  constructor({ parent = null } = {}) {
    if (parent !== null && !(parent instanceof TypeRegistry)) {
      throw new TypeError("parent must be a TypeRegistry");
    }
    this._parent = parent;
    this._byName = new Map();
    this._byPrototype = new Map();
  }

  /**
   * Registers `cls` as type `name`: `encode(obj)` returns a payload (any value the codec can
   * send, itself encoded by every rule), `decode(payload)` gets that payload back decoded and
   * rebuilds the object. The daemon must have the same name in its `[types]`.
   */
  register(cls, name, encode, decode) {
    if (typeof cls !== "function" || typeof cls.prototype !== "object" || cls.prototype === null) {
      throw new TypeError(`cls must be a class, got ${typeof cls}`);
    }
    if (typeof encode !== "function" || typeof decode !== "function") {
      throw new TypeError(`encode and decode for '${name}' must be functions`);
    }
    if (typeof name !== "string" || !NAME.test(name)) {
      throw new TypeError("type name must be 1-200 characters of letters, digits, '_', '.' or '-', " +
        `starting with a letter or '_', got ${JSON.stringify(name)}`);
    }
    if (BUILTIN_NAMES.includes(name)) {
      throw new Error(`type name '${name}' is built in; use a qualified name such as 'yourpackage.${name}'`);
    }
    if (this.byName(name)) throw new Error(`type name '${name}' is already registered`);
    if (CODEC_CLASSES.has(cls)) {
      throw new Error(`${cls.name} is encoded by the codec itself and cannot be registered`);
    }
    const existing = this.byPrototype(cls.prototype);
    if (existing) throw new Error(`${cls.name || "that class"} is already registered as '${existing.name}'`);
    const entry = Object.freeze({ cls, name, encode, decode });
    this._byName.set(name, entry);
    this._byPrototype.set(cls.prototype, entry);
  }

  /** Every type name this registry encodes and decodes, built-in ones included, sorted. */
  names() {
    const found = new Set(BUILTIN_NAMES);
    for (const registry of this._chain()) {
      for (const name of registry._byName.keys()) found.add(name);
    }
    return [...found].sort();
  }

  /** The entry for values whose prototype is exactly `prototype`, or undefined. */
  byPrototype(prototype) {
    return this._find("_byPrototype", prototype);
  }

  /** The entry registered as `name`, or undefined. */
  byName(name) {
    return this._find("_byName", name);
  }

  _find(table, key) {
    for (const registry of this._chain()) {
      const entry = registry[table].get(key);
      if (entry) return entry;
    }
    return undefined;
  }

  /** This registry, then its parent, and so on. */
  * _chain() {
    for (let registry = this; registry; registry = registry._parent) yield registry;
  }
}

/** The process-wide registry every runner uses unless given its own. */
const defaultRegistry = new TypeRegistry();

/** Registers an operator type in the process-wide registry (see TypeRegistry.register). */
function registerType(cls, name, encode, decode) {
  defaultRegistry.register(cls, name, encode, decode);
}

module.exports = { TypeRegistry, defaultRegistry, registerType, BUILTIN_NAMES };
