"use strict";
/**
 * Results back: google.protobuf.Value (proto-loader's object form, with `kind` set by the
 * `oneofs` option) -> JavaScript. The JavaScript type each Python type becomes is listed, with
 * the reasons, in README.md ("Values"); operator types are rebuilt by the resolver registered
 * for their name (registry.js). A value tagged with a type this client has no decoder for is a
 * SerializationError: returning it half-decoded would silently change its type.
 */
const {
  Failure, tooDeep, short, thrown, MAX_INT_DIGITS, MAX_WIRE_DEPTH, TYPE_KEY, VALUE_KEY,
} = require("./codec");
const { defaultRegistry } = require("./registry");

/** Internal: a tagged value's payload has the wrong shape. */
class BadPayload extends Error {}

const INT_TEXT = /^-?[0-9]+$/;
// What Python's repr() writes for a float (JSON number syntax), and the non-finite three,
// spelled exactly so (docs/values.md, "float").
const FLOAT_TEXT = /^-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$/;
const NON_FINITE = { nan: NaN, inf: Infinity, "-inf": -Infinity };
// The time one decode may spend putting entries into Maps and Sets. V8 hashes numbers and
// BigInts without a seed, so a guest can pick keys that all land in one bucket: 120,000 such
// BigInts took 136 s to put into a Set. Honest values take milliseconds per 100,000 entries.
const MAX_FILL_MS = 1000;
const FILL_CHUNK = 1024;
let fillSpent = 0; // reset by decode(), which is synchronous: no two decodes interleave
// datetime.isoformat(): date, "T" (or another one-character separator), time with optional
// fraction, optional UTC offset with optional seconds and fraction.
const DATETIME = new RegExp(
  "^(\\d{4})-(\\d{2})-(\\d{2}).(\\d{2}):(\\d{2}):(\\d{2})(?:\\.(\\d{1,6}))?" +
  "(?:(Z)|([+-])(\\d{2}):(\\d{2})(?::(\\d{2})(?:\\.(\\d{1,6}))?)?)?$");

// The other tagged texts, in the forms docs/values.md section 3 gives (which encoders MUST
// write); anything else is refused, never passed on as a string (the Python client also reads
// the other forms Python's own parsers take, which no encoder writes).
const DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const TIME = /^(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,6})?(?:Z|[+-](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,6})?)?)?$/;
const DECIMAL = /^[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|s?nan\d*)$/i;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const describe = (payload) => `${Array.isArray(payload) ? "array" : typeof payload} ${short(payload)}`;

function text(payload) {
  if (typeof payload !== "string") throw new BadPayload(`expected a string, got ${describe(payload)}`);
  return payload;
}

function items(payload, count = null) {
  if (!Array.isArray(payload) || (count !== null && payload.length !== count)) {
    throw new BadPayload(`expected ${count === null ? "an array" : `an array of ${count} items`}, ` +
      `got ${describe(payload)}`);
  }
  return payload;
}

function numbers(payload, count, finite = false) {
  if (!items(payload, count).every((item) => typeof item === "number" && (!finite || Number.isFinite(item)))) {
    throw new BadPayload(`expected ${count} ${finite ? "finite " : ""}numbers, got ${short(payload)}`);
  }
  return payload;
}

function decodeFloat(payload) {
  const t = text(payload);
  if (Object.prototype.hasOwnProperty.call(NON_FINITE, t)) return NON_FINITE[t];
  if (!FLOAT_TEXT.test(t)) {
    throw new BadPayload(`expected a number such as '4.0' or '-1e+300', or 'nan', 'inf' or '-inf', got ${short(t)}`);
  }
  return Number(t);
}

/** Padded base64, checked by writing the bytes back: Buffer.from skips what is not base64,
 * and a regular expression over megabytes of text runs out of V8's backtracking stack. */
function decodeBytes(payload) {
  const t = text(payload);
  const bytes = Buffer.from(t, "base64");
  if (bytes.toString("base64") !== t) throw new BadPayload("not valid padded base64");
  return bytes;
}

function decodePairs(payload) {
  const pairs = items(payload);
  for (const pair of pairs) {
    if (!Array.isArray(pair) || pair.length !== 2) {
      throw new BadPayload(`expected an array of [key, value] pairs, got ${describe(pair)}`);
    }
  }
  const map = new Map();
  fill(pairs, ([key, value]) => map.set(key, value));
  if (map.size < pairs.length) refuseDuplicate("key", pairs.map(([key]) => key));
  return map;
}

function decodeSet(payload) {
  const entries = items(payload);
  const set = new Set();
  fill(entries, (entry) => set.add(entry));
  if (set.size < entries.length) refuseDuplicate("item", entries);
  return set;
}

/** Puts `entries` in a Map or Set with `add`, within what is left of the decode's MAX_FILL_MS. */
function fill(entries, add) {
  for (let start = 0; start < entries.length; start += FILL_CHUNK) {
    const began = performance.now();
    const end = Math.min(start + FILL_CHUNK, entries.length);
    for (let i = start; i < end; i++) add(entries[i]);
    fillSpent += performance.now() - began;
    if (fillSpent > MAX_FILL_MS) {
      throw new BadPayload(`its entries took more than ${MAX_FILL_MS} ms to put into Maps and Sets ` +
        "(keys made to collide in JavaScript's hash tables?)");
    }
  }
}

/** Entries distinct on the wire can be equal here (two equal strings, -0 and 0); merging them
 * would silently drop one, so the value is refused, as the Python client does. */
function refuseDuplicate(what, entries) {
  const seen = new Map();
  for (const entry of entries) {
    if (seen.has(entry)) {
      throw new BadPayload(`${what} ${short(entry)} equals the earlier ${what} ${short(seen.get(entry))} ` +
        "here; one of them would be lost");
    }
    seen.set(entry, entry);
  }
}

/** Six or fewer fraction digits ("5" is .5 s) -> [whole milliseconds, microseconds left over]. */
function fractionParts(digits) {
  const micros = Number((digits || "").padEnd(6, "0"));
  return [Math.floor(micros / 1000), micros % 1000];
}

/** Python's isoformat() -> Date. A naive datetime is read as UTC: the sandbox's clock is UTC.
 * The instant is cut to the millisecond (the precision of a Date) once, after the offset is
 * applied, and downwards: the Date shows the datetime's own UTC millisecond, also before 1970.
 * Microseconds stay apart from milliseconds so the sum is exact: in one number the
 * microseconds since 1970 pass 2**53 by year 2255. */
function decodeDatetime(payload) {
  const t = text(payload);
  const m = DATETIME.exec(t);
  if (!m) throw new BadPayload(`expected an ISO 8601 datetime, got ${short(t)}`);
  const n = (i) => Number(m[i] || 0);
  const [millis, micros] = fractionParts(m[7]);
  const date = new Date(0);
  date.setUTCFullYear(n(1), n(2) - 1, n(3)); // unlike Date.UTC, keeps years 1-99 as they are
  // A Date rolls fields over (February 30 is March 1): Python never writes such a datetime.
  if (date.getUTCMonth() !== n(2) - 1 || date.getUTCDate() !== n(3) || n(4) > 23 || n(5) > 59 || n(6) > 59 ||
      n(10) > 23 || n(11) > 59 || n(12) > 59) {
    throw new BadPayload(`not a valid datetime: ${short(t)}`);
  }
  date.setUTCHours(n(4), n(5), n(6), millis);
  let time = date.getTime();
  let extraMicros = micros;
  if (m[9]) { // local time = UTC + offset, so UTC = local time - offset
    const sign = m[9] === "-" ? -1 : 1;
    const [offsetMillis, offsetMicros] = fractionParts(m[13]);
    time -= sign * (((n(10) * 60 + n(11)) * 60 + n(12)) * 1000 + offsetMillis);
    extraMicros -= sign * offsetMicros; // -999 to 1998: at most one millisecond either way
  }
  const result = new Date(time + Math.floor(extraMicros / 1000));
  if (Number.isNaN(result.getTime())) throw new BadPayload(`not a valid datetime: ${short(t)}`);
  return result;
}

/** A payload's text if `pattern` matches it and `valid(match)` holds, else BadPayload. */
function matching(payload, pattern, expected, valid = () => true) {
  const t = text(payload);
  const m = pattern.exec(t);
  if (!m || !valid(m)) throw new BadPayload(`expected ${expected}, got ${short(t)}`);
  return t;
}

/** Whether year, month and day (as text) name a day of the calendar, as Python's date does. */
function isDay(year, month, day) {
  const date = new Date(0);
  date.setUTCFullYear(Number(year), Number(month) - 1, Number(day)); // a Date rolls February 30 over
  return Number(year) >= 1 && date.getUTCMonth() === Number(month) - 1 && date.getUTCDate() === Number(day);
}

/** Whether a TIME match's hours, minutes, seconds and offset are in range. */
function isTime(m) {
  const [hour, minute, second, offsetHour, offsetMinute, offsetSecond] = m.slice(1).map((n) => Number(n || 0));
  return hour < 24 && minute < 60 && second < 60 && offsetHour < 24 && offsetMinute < 60 && offsetSecond < 60;
}

const DECODERS = new Map(Object.entries({
  int: (p) => {
    const digits = text(p).length - (p.startsWith("-") ? 1 : 0);
    if (digits > MAX_INT_DIGITS) throw new BadPayload(`an integer of ${digits} digits, over ${MAX_INT_DIGITS}`);
    if (!INT_TEXT.test(p)) throw new BadPayload(`expected a decimal integer, got ${short(p)}`);
    return BigInt(p); // only integers past 2**53 travel tagged, and those need a BigInt
  },
  float: decodeFloat,
  dict: decodePairs,
  bytes: decodeBytes,
  bytearray: decodeBytes,
  tuple: items,
  set: decodeSet,
  frozenset: decodeSet,
  datetime: decodeDatetime,
  // "2020-02-29": a Date would invent a time of day and a time zone
  date: (p) => matching(p, DATE, "a date such as '2020-02-29'", (m) => isDay(m[1], m[2], m[3])),
  time: (p) => matching(p, TIME, "a time such as '23:59:59' or '08:00:00.250000-03:00'", isTime),
  timedelta: (p) => { // milliseconds, the unit of every duration in JavaScript
    const [days, seconds, microseconds] = numbers(p, 3, true);
    return days * 86400000 + seconds * 1000 + microseconds / 1000;
  },
  // the exact digits: a number would round them
  Decimal: (p) => matching(p, DECIMAL, "a decimal number such as '3.14', '-1.5E+7', 'NaN' or '-Infinity'"),
  UUID: (p) => matching(p, UUID, "a UUID such as '12345678-1234-5678-1234-567812345678'").toLowerCase(),
  complex: (p) => {
    const [real, imag] = numbers(p, 2);
    return { real, imag };
  },
}));

function decodeValue(message, depth, registry) {
  switch (message.kind) {
    case "numberValue": return message.numberValue;
    case "stringValue": return message.stringValue;
    case "boolValue": return message.boolValue;
    case "nullValue": return null;
    case "listValue": return decodeList((message.listValue && message.listValue.values) || [], depth, registry);
    case "structValue":
      return decodeStruct((message.structValue && message.structValue.fields) || {}, depth, registry);
    default: throw new Failure("cannot decode a Value", "no kind is set (an empty Value message)");
  }
}

function decodeList(values, depth, registry) {
  if (depth + (values.length ? 2 : 1) > MAX_WIRE_DEPTH) throw tooDeep();
  const result = new Array(values.length);
  for (let i = 0; i < values.length; i++) {
    try {
      result[i] = decodeValue(values[i], depth + 2, registry);
    } catch (e) {
      if (e instanceof Failure) e.path.push(i);
      throw e;
    }
  }
  return result;
}

function decodeStruct(fields, depth, registry) {
  const keys = Object.keys(fields);
  if (Object.prototype.hasOwnProperty.call(fields, TYPE_KEY)) return decodeTagged(fields, keys, depth, registry);
  if (depth + (keys.length ? 3 : 1) > MAX_WIRE_DEPTH) throw tooDeep();
  const result = {};
  for (const key of keys) {
    let item;
    try {
      item = decodeValue(fields[key], depth + 3, registry);
    } catch (e) {
      if (e instanceof Failure) e.path.push(`[${short(key)}]`);
      throw e;
    }
    // defineProperty, so that a "__proto__" key becomes a key and not the object's prototype.
    Object.defineProperty(result, key, { value: item, enumerable: true, writable: true, configurable: true });
  }
  return result;
}

function decodeTagged(fields, keys, depth, registry) {
  if (keys.length !== 2 || !Object.prototype.hasOwnProperty.call(fields, VALUE_KEY)) {
    throw new Failure("cannot decode a tagged value", "a struct with a '$type' key must have " +
      `exactly the keys '$type' and '$value', got ${short(keys.sort().join(", "))}`);
  }
  const tag = fields[TYPE_KEY];
  if (tag.kind !== "stringValue") {
    throw new Failure("cannot decode a tagged value", `'$type' must be a string, got a ${tag.kind}`);
  }
  const name = tag.stringValue;
  const what = `cannot decode a value tagged ${short(name)}`;
  if (depth + 3 > MAX_WIRE_DEPTH) throw tooDeep();
  const rebuild = DECODERS.get(name);
  const entry = rebuild === undefined ? registry.byName(name) : undefined;
  if (rebuild === undefined && entry === undefined) {
    throw new Failure(what, "no resolver is registered for it here (registerType, or the runner's " +
      `registry); this client decodes ${registry.names().join(", ")}`);
  }
  const payload = decodeValue(fields[VALUE_KEY], depth + 3, registry);
  if (entry !== undefined) {
    try {
      return entry.decode(payload);
    } catch (e) {
      // The payload came from the guest: a resolver that refuses it fails this value, named.
      throw new Failure(what, `its resolver threw ${thrown(e)}`);
    }
  }
  try {
    return rebuild(payload);
  } catch (e) {
    if (e instanceof BadPayload) throw new Failure(what, `bad payload: ${e.message}`);
    throw e;
  }
}

/** Rebuilds the value the daemon sent, operator types by `registry`'s resolvers; throws a
 * SerializationError saying where it failed. */
function decode(message, where = "", registry = defaultRegistry) {
  fillSpent = 0;
  try {
    return decodeValue(message, 1, registry);
  } catch (e) {
    if (e instanceof Failure) throw e.toError(where);
    throw e;
  }
}

module.exports = { decode, TYPE_NAMES: [...DECODERS.keys()].sort() };
