"use strict";
/**
 * The value codec, encoding half: JavaScript values -> google.protobuf.Value (in
 * @grpc/proto-loader's object form), by the format of docs/values.md, whose reference is the
 * Python codec (clients/python/isorun/_codec.py). The decoding half is decode.js.
 *
 * JSON-like values use the plain Value kinds; everything else travels *tagged*, as a Struct of
 * exactly {"$type": name, "$value": payload}. The JavaScript side of each rule, and why, is in
 * README.md ("Values"). What the codec guarantees:
 *
 * - A value it cannot send exactly is refused with a SerializationError naming its type and
 *   where it sits ("argument 0: cannot encode a value of type 'Opaque' at ["bad"]: ..."),
 *   before anything is sent.
 * - Instances of a class registered in the runner's TypeRegistry (exactly that class, not a
 *   subclass) travel tagged with its type name, their payload encoded by all these rules.
 * - Nothing recurses without bound: values stop at MAX_WIRE_DEPTH protobuf levels (a
 *   self-referencing array is "nested too deeply", never a stack overflow), and the encoded
 *   size is counted exactly as it grows, so a value over its size budget is refused before it
 *   is built whole.
 */
const { SerializationError } = require("./errors");
const { defaultRegistry } = require("./registry");

// The same bounds as the Python codec: upb refuses messages nested past 101 levels, and a
// value sits a few levels down in its envelope (RunEvent -> Outcome -> Value).
const MAX_WIRE_DEPTH = 90;
const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
// Python reads an integral number up to this magnitude as an int; past it, as a float.
const BIG_MAX_SAFE = 2n ** 53n;
// Python refuses ints of more than 4,300 digits (sys.get_int_max_str_digits()); so does this
// client both ways: before sending one, and before BigInt() spends seconds on millions of them.
const MAX_INT_DIGITS = 4300;
const TYPE_KEY = "$type";
const VALUE_KEY = "$value";
const NULL = { nullValue: "NULL_VALUE" };

/** Internal: a failure inside a value. Containers add where it happened as it propagates. */
class Failure extends Error {
  constructor(what, why, limit = null) {
    super(what);
    this.what = what;
    this.why = why;
    this.limit = limit;
    this.path = []; // innermost first: numbers are indexes, strings are preformatted segments
  }

  toError(prefix) {
    const where = this.path.length && this.limit === null
      ? " at " + this.path.map((s) => (typeof s === "number" ? `[${s}]` : s)).reverse().join("")
      : "";
    return new SerializationError(`${prefix}${this.what}${where}: ${this.why}`, this.limit);
  }
}

const tooDeep = () => new Failure("value is nested too deeply",
  `more than ${MAX_WIRE_DEPTH} protobuf levels (limit 'depth'); that is more than ` +
  `${(MAX_WIRE_DEPTH - 1) >> 1} arrays or ${Math.floor((MAX_WIRE_DEPTH - 1) / 3)} objects around a value ` +
  `(${MAX_WIRE_DEPTH >> 1} or ${Math.floor(MAX_WIRE_DEPTH / 3)} when the innermost is empty), ` +
  "and always the case for a value that contains itself",
  "depth");

/**
 * A short, safe rendering of any value or key for messages (the client's and the codec's
 * alike): a string in quotes (a "100" read as 100), a BigInt with its n, an array or plain
 * object as JSON, any other object as its String() unless that says only "[object Object]",
 * then by its type name. Nothing a value does (a throwing toString, a Proxy) escapes from here.
 */
function short(value) {
  let text;
  try {
    if (typeof value === "string") text = JSON.stringify(value);
    else if (typeof value === "bigint") text = `${value}n`;
    else if (typeof value === "function") text = typeName(value);
    else if (typeof value !== "object" || value === null) text = String(value);
    else if (Array.isArray(value) || isPlainObject(value)) text = JSON.stringify(value);
    else text = String(value);
    if (typeof text !== "string" || text.startsWith("[object ")) text = typeName(value);
  } catch {
    text = typeName(value);
  }
  return text.length <= 40 ? text : text.slice(0, 37) + "...";
}

/** A value's type for messages: its class's name ("Map", "Money"), else its typeof. Safe on
 * any object, even a Proxy whose traps throw or a prototype whose `constructor` getter does. */
function typeName(value) {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  try {
    const proto = Object.getPrototypeOf(value);
    const ctor = proto && Object.prototype.hasOwnProperty.call(proto, "constructor") && proto.constructor;
    return (typeof ctor === "function" && ctor.name) || "object";
  } catch {
    return "object";
  }
}

/** An object made by `{...}` or Object.create(null): what JSON's objects become. */
function isPlainObject(value) {
  if (typeof value !== "object" || value === null) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** Bytes a length-delimited field of n bytes takes: 1-byte tag, varint length, the data. */
function field(n) {
  let varint = 1;
  for (let rest = n; rest >= 0x80; rest = Math.floor(rest / 0x80)) varint += 1;
  return n + 1 + varint;
}

/** Encoded size of a tagged Value: a Struct holding two map entries. */
function taggedSize(nameLength, payloadSize) {
  const typeEntry = 7 + field(field(nameLength)); // key "$type", then a Value holding the name
  const valueEntry = 8 + field(payloadSize); // key "$value", then the payload Value
  return field(field(typeEntry) + field(valueEntry));
}

function utf8Length(text) {
  if (!text.isWellFormed()) {
    throw new Failure("cannot encode a string",
      "it holds a lone surrogate, which is not valid Unicode (Python would refuse it)");
  }
  return Buffer.byteLength(text, "utf8");
}

// ------------------------------------------------------------------------------------ encode
// Each handler fills `target` (an empty object standing for a Value at wire level `depth`, the
// top Value being 1) and returns its encoded size. Leaves charge their whole size to the
// budget; containers charge only their own framing, after their children charged themselves.

class Encoder {
  constructor(names, budget, registry) {
    this.names = names;
    this.budget = budget;
    this.registry = registry;
  }

  charge(n) {
    this.budget.used += n;
    if (this.budget.used > this.budget.limit) throw this.tooLarge();
  }

  tooLarge() {
    return new Failure(this.budget.what, `more than ${this.budget.limit} bytes once encoded ` +
      "(limit 'size'; bytes take 4/3 of their length, as base64)", "size");
  }

  value(target, value, depth) {
    switch (typeof value) {
      case "number": return this.number(target, value, depth);
      case "string": return this.string(target, value);
      case "boolean": target.boolValue = value; this.charge(2); return 2;
      case "bigint": return this.bigint(target, value, depth);
      case "undefined": target.nullValue = NULL.nullValue; this.charge(2); return 2;
      case "object": return this.object(target, value, depth);
      default: throw unsupported(value, this.registry); // function, symbol
    }
  }

  number(target, value, depth) {
    // Finite numbers travel as numbers: integral ones reach Python as int, others as float.
    // NaN and the infinities are not JSON numbers, so they travel tagged, like Python's.
    if (Number.isFinite(value)) {
      target.numberValue = value;
      this.charge(9);
      return 9;
    }
    const text = Number.isNaN(value) ? "nan" : value > 0 ? "inf" : "-inf";
    return this.tagged(target, "float", depth, (payload) => this.string(payload, text));
  }

  bigint(target, value, depth) {
    if (value >= -BIG_MAX_SAFE && value <= BIG_MAX_SAFE) return this.number(target, Number(value), depth);
    const text = value.toString();
    if (text.length - (value < 0n ? 1 : 0) > MAX_INT_DIGITS) {
      throw new Failure("cannot encode a bigint", `it has more than ${MAX_INT_DIGITS} decimal digits, ` +
        "the most an int may have on the wire (Python's bound on converting ints to text)");
    }
    return this.tagged(target, "int", depth, (payload) => this.string(payload, text));
  }

  string(target, value) {
    const size = field(utf8Length(value));
    this.charge(size);
    target.stringValue = value;
    return size;
  }

  /** Dispatches on the exact prototype: a subclass (of Map, Date, Array...) may carry state
   * and behaviour that would not travel, so it is refused like any other class instance. */
  object(target, value, depth) {
    if (value === null) {
      target.nullValue = NULL.nullValue;
      this.charge(2);
      return 2;
    }
    const prototype = Object.getPrototypeOf(value);
    switch (prototype) {
      case Array.prototype: return this.list(target, value, depth);
      case Object.prototype:
      case null:
        if (!Object.prototype.hasOwnProperty.call(value, TYPE_KEY)) return this.struct(target, value, depth);
        // It would read as a tagged value: send it as pairs (undefined still left out).
        return this.pairs(target, Object.entries(value).filter(([, item]) => item !== undefined), depth);
      case Map.prototype: return this.pairs(target, value, depth);
      case Set.prototype:
        return this.tagged(target, "set", depth, (payload) => this.list(payload, hashables(value), depth + 3));
      case Date.prototype:
        return this.tagged(target, "datetime", depth, (payload) => this.string(payload, isoDate(value)));
      case Uint8Array.prototype:
      case Buffer.prototype:
        return this.tagged(target, "bytes", depth, (payload) => this.base64(payload, value));
      default: {
        const entry = this.registry.byPrototype(prototype);
        if (entry === undefined) throw unsupported(value, this.registry);
        return this.registered(target, value, entry, depth);
      }
    }
  }

  /** An instance of a registered class: tagged with its name, the encoder's payload inside. */
  registered(target, value, entry, depth) {
    let payload;
    try {
      payload = entry.encode(value);
    } catch (e) {
      throw new Failure(`cannot encode a value of type '${typeName(value)}'`,
        `its encoder for '${entry.name}' threw ${thrown(e)}`);
    }
    try {
      return this.tagged(target, entry.name, depth, (inner) => this.value(inner, payload, depth + 3));
    } catch (e) {
      if (!(e instanceof Failure) || e.limit !== null) throw e; // too large or too deep: said as they are
      // The value the caller passed is this one, not what its encoder made of it: name it, and
      // put the payload's own failure, with its place inside the payload, after it.
      throw new Failure(`cannot encode a value of type '${typeName(value)}'`,
        `its encoder for '${entry.name}' returned a value of type '${typeName(payload)}' that cannot be ` +
        `encoded: ${e.toError("").message}`);
    }
  }

  list(target, items, depth) {
    if (items.length === 0) {
      if (depth + 1 > MAX_WIRE_DEPTH) throw tooDeep();
      target.listValue = { values: [] };
      this.charge(2);
      return 2;
    }
    if (depth + 2 > MAX_WIRE_DEPTH) throw tooDeep();
    // Each item takes 4 bytes at least: an array of 2**32 - 1 holes (`a.length = ...`) is
    // refused before one item is read, not after gigabytes of empty Values.
    if (this.budget.used + items.length * 4 > this.budget.limit) throw this.tooLarge();
    const values = [];
    let inner = 0;
    let children = 0;
    let i = 0;
    try {
      for (; i < items.length; i++) {
        const item = {};
        const n = this.value(item, items[i], depth + 2); // a hole reads as undefined: null
        values.push(item);
        inner += field(n);
        children += n;
      }
    } catch (e) {
      throw located(e, i);
    }
    target.listValue = { values };
    const size = field(inner);
    this.charge(size - children);
    return size;
  }

  struct(target, object, depth) {
    // Properties holding undefined are left out, as JSON.stringify does. Each is read once:
    // a getter read again could give another value than the one checked.
    const entries = [];
    for (const key of Object.keys(object)) {
      let item;
      try {
        item = object[key];
      } catch (e) {
        throw located(e, `[${short(key)}]`);
      }
      if (item !== undefined) entries.push([key, item]);
    }
    if (entries.length === 0) {
      if (depth + 1 > MAX_WIRE_DEPTH) throw tooDeep();
      target.structValue = { fields: {} };
      this.charge(2);
      return 2;
    }
    if (depth + 3 > MAX_WIRE_DEPTH) throw tooDeep();
    const fields = Object.create(null); // so that a "__proto__" key stays an ordinary key
    let inner = 0;
    for (const [key, value] of entries) {
      let n;
      const item = {};
      try {
        const keyLength = utf8Length(key);
        n = this.value(item, value, depth + 3);
        const entrySize = field(field(keyLength) + field(n));
        this.charge(entrySize - n); // keys count as they come, not at the end
        inner += entrySize;
      } catch (e) {
        throw located(e, `[${short(key)}]`);
      }
      fields[key] = item;
    }
    target.structValue = { fields };
    const size = field(inner);
    this.charge(size - inner);
    return size;
  }

  /** A Map, or an object with a "$type" key, travels tagged "dict" as [key, value] pairs. */
  pairs(target, entries, depth) {
    const pairs = [];
    for (const [key, item] of entries) pairs.push([hashable(key), item]);
    refuseEqualInPython("Map keys", pairs.map(([key]) => key));
    try {
      return this.tagged(target, "dict", depth, (payload) => this.list(payload, pairs, depth + 3));
    } catch (e) {
      // Say "[key]" rather than the pair's "[i][1]", and "<key ...>" for a bad key.
      if (e instanceof Failure && e.limit === null && e.path.length >= 2) {
        const key = pairs[e.path[e.path.length - 1]][0];
        const segment = e.path[e.path.length - 2] === 1 ? `[${short(key)}]` : `<key ${short(key)}>`;
        e.path.splice(-2, 2, segment);
      }
      throw e;
    }
  }

  tagged(target, name, depth, fill) {
    if (depth + 3 > MAX_WIRE_DEPTH) throw tooDeep();
    if (this.names) this.names.add(name);
    const payload = {};
    const payloadSize = fill(payload);
    const fields = Object.create(null);
    fields[TYPE_KEY] = { stringValue: name };
    fields[VALUE_KEY] = payload;
    target.structValue = { fields };
    const size = taggedSize(name.length, payloadSize);
    this.charge(size - payloadSize);
    return size;
  }

  base64(target, bytes) {
    const size = field(Math.ceil(bytes.length / 3) * 4);
    this.charge(size); // before building: huge bytes are refused without a copy
    target.stringValue = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64");
    return size;
  }
}

const SUPPORTED = [Array, Map, Set, Date, Uint8Array];

function unsupported(value, registry) {
  const name = typeName(value);
  const base = typeof value === "object" && SUPPORTED.find((cls) => value instanceof cls);
  let hint = "isorun sends null, booleans, numbers, bigints, strings, arrays, plain objects, Map, " +
    "Set, Buffer/Uint8Array and Date; convert it to one of those first";
  if (typeof value === "object") { // an instance of a class (functions and symbols cannot be registered)
    hint += ", or register its class (registerType) under a type name the daemon offers; type names " +
      `known here: ${registry.names().join(", ")}`;
  }
  if (base) {
    hint = `it extends ${base.name}, but only exact types are sent: convert it first, or register its class`;
  } else if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
    hint = "only Buffer and Uint8Array travel as bytes: wrap it in a Uint8Array first";
  }
  return new Failure(`cannot encode a value of type '${name}'`, hint);
}

/** A failure inside a container, with where it happened (an index or a "[key]" segment). What
 * else was thrown while reading the value (a getter, a Proxy's trap, a revoked Proxy) is such
 * a failure too: it is the value that cannot be sent. */
function located(error, segment) {
  const failure = error instanceof Failure ? error : unreadable(error);
  failure.path.push(segment);
  return failure;
}

function unreadable(error) {
  return new Failure("cannot read a value", `reading it threw ${thrown(error)}`);
}

/** "TypeError: bad amount" for an Error, a short rendering of anything else thrown. Never
 * throws itself: an Error whose `message` getter throws, a Symbol `name`, a Proxy whose traps
 * throw (a resolver's such error escaped decode() as itself, an encoder's was told as "cannot
 * read a value") reads as its type and "<its message could not be read>", as Python's
 * "<exception str() failed>" for an exception whose __str__ fails. */
function thrown(error) {
  try {
    if (error instanceof Error) return `${String(error.name)}: ${String(error.message)}`;
  } catch {
    return `${typeName(error)}: <its message could not be read>`;
  }
  return short(error);
}

/** Python dict keys and set items must be hashable: no lists, dicts or sets among them. */
function hashable(key) {
  if (key !== null && typeof key === "object" && !(key instanceof Date) && !(key instanceof Uint8Array)) {
    throw new Failure(`cannot use a value of type '${typeName(key)}' as a Map key or Set item`,
      "Python needs it hashable: use a string, number, bigint, boolean, null, Date or Buffer");
  }
  return key;
}

function hashables(set) {
  const items = [];
  for (const item of set) items.push(hashable(item));
  refuseEqualInPython("Set items", items);
  return items;
}

/** Keys distinct here can be one key in Python: 1, 1n and true; two Dates of one instant; two
 * Buffers of the same bytes. The sandbox would refuse the value (an entry would be lost), so
 * it is refused here, before anything is sent. */
function refuseEqualInPython(what, keys) {
  // Strings and numbers equal in Python are equal here too, so the Map or Set holds one of
  // them already; only keys of the other kinds can meet another key in Python.
  if (keys.every((key) => typeof key === "string" || typeof key === "number")) return;
  const seen = new Map();
  for (const key of keys) {
    const python = pythonKey(key);
    if (python === undefined) continue;
    if (seen.has(python)) {
      throw new Failure(`cannot encode ${what} ${keyText(seen.get(python))} and ${keyText(key)}`,
        "they are equal in Python, where one of them would be lost");
    }
    seen.set(python, key);
  }
}

/** What a key becomes in Python, as a string equal for keys equal there (ints equal floats of
 * the same value, True is 1); undefined for keys the encoder refuses anyway. */
function pythonKey(key) {
  switch (typeof key) {
    case "boolean": return key ? "i1" : "i0";
    case "bigint": return `i${key}`;
    case "number": return Number.isInteger(key) ? `i${BigInt(key)}` : `f${key}`;
    case "string": return `s${key}`;
    case "undefined": return "n"; // sent as null
  }
  if (key === null) return "n";
  if (key instanceof Date) return Number.isNaN(key.getTime()) ? undefined : `d${key.getTime()}`;
  if (key instanceof Uint8Array) return `b${Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString("latin1")}`;
  return undefined;
}

function keyText(key) {
  if (typeof key === "bigint") return `${key}n`;
  if (key instanceof Date) return `Date ${key.toISOString()}`;
  if (key instanceof Uint8Array) return `Buffer of ${key.length} bytes ${short(Buffer.from(key).toString("hex"))}`;
  return short(key);
}

/** Date -> what Python's datetime.isoformat() writes for that instant, aware, in UTC:
 * "2026-11-24T12:30:05.123000+00:00", the fraction in six digits and only when not zero. */
function isoDate(date) {
  const time = date.getTime();
  if (Number.isNaN(time)) throw new Failure("cannot encode an invalid Date", "its time is NaN");
  const year = date.getUTCFullYear();
  if (year < 1 || year > 9999) {
    throw new Failure(`cannot encode the Date ${short(date.toISOString())}`,
      "Python datetimes hold the years 1 to 9999 only");
  }
  const ms = date.getUTCMilliseconds();
  const fraction = ms ? `.${String(ms).padStart(3, "0")}000` : "";
  return `${date.toISOString().slice(0, 19)}${fraction}+00:00`;
}

/** A size budget that several values may share, such as all the values of one request. */
function sizeBudget(limit = DEFAULT_MAX_BYTES, what = "value is too large") {
  return { limit, used: 0, what };
}

/**
 * Encodes a value; `names` (a Set, optional) collects every tagged type name used; `budget`
 * (default: 64 MiB for this value alone) is charged with its exact encoded size; `registry`
 * (default: the process-wide one) has the operator types. Throws a SerializationError whose
 * message starts with `where` ("argument 0: ").
 */
function encode(value, { names = null, budget = sizeBudget(), where = "", registry = defaultRegistry } = {}) {
  const target = {};
  try {
    new Encoder(names, budget, registry).value(target, value, 1);
  } catch (e) {
    throw (e instanceof Failure ? e : unreadable(e)).toError(where);
  }
  return target;
}

module.exports = {
  encode, sizeBudget, Failure, tooDeep, short, typeName, isPlainObject, thrown, MAX_INT_DIGITS, MAX_WIRE_DEPTH,
  TYPE_KEY, VALUE_KEY,
};
