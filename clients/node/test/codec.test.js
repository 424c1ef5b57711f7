"use strict";
// The codec on its own, without a daemon: the examples of docs/values.md (section 4, in the
// protobuf JSON form) encoded and decoded, the depth and size limits at their exact bounds,
// and malformed input refused.
const assert = require("node:assert/strict");
const { describe, test } = require("node:test");
const { errors } = require("..");
const { encode, sizeBudget, MAX_WIRE_DEPTH } = require("../lib/codec");
const { decode } = require("../lib/decode");
const proto = require("../lib/proto");

/** proto-loader's object form of a Value -> the protobuf JSON form the docs use. */
function toJson(value) {
  if ("nullValue" in value) return null;
  if ("listValue" in value) return value.listValue.values.map(toJson);
  if ("structValue" in value) {
    return Object.fromEntries(Object.entries(value.structValue.fields).map(([k, v]) => [k, toJson(v)]));
  }
  return value.numberValue ?? value.stringValue ?? value.boolValue;
}

/** The JSON form -> a Value as the decoder receives it from proto-loader (with `kind`). */
function fromJson(json) {
  if (json === null) return { kind: "nullValue", nullValue: "NULL_VALUE" };
  if (Array.isArray(json)) return { kind: "listValue", listValue: { values: json.map(fromJson) } };
  if (typeof json === "object") {
    const fields = Object.fromEntries(Object.entries(json).map(([k, v]) => [k, fromJson(v)]));
    return { kind: "structValue", structValue: { fields } };
  }
  const kind = { number: "numberValue", string: "stringValue", boolean: "boolValue" }[typeof json];
  return { kind, [kind]: json };
}

const tagged = (name, payload) => ({ $type: name, $value: payload });

describe("encoding, as docs/values.md section 4 writes it", () => {
  const rows = [
    [null, null], [true, true], [-7, -7], [2 ** 53, 9007199254740992],
    [2n ** 53n + 1n, tagged("int", "9007199254740993")], [-(2n ** 64n) - 1n, tagged("int", "-18446744073709551617")],
    [5n, 5], [0.1, 0.1], [NaN, tagged("float", "nan")], [Infinity, tagged("float", "inf")],
    [-Infinity, tagged("float", "-inf")], ["héllo", "héllo"], [[1, "a", null], [1, "a", null]], [[], []],
    [{ a: { b: [1, 2.5] } }, { a: { b: [1, 2.5] } }], [{}, {}],
    [new Map([[1, "one"], ["two", 2]]), tagged("dict", [[1, "one"], ["two", 2]])],
    [{ $type: "bytes", $value: "AP8=" }, tagged("dict", [["$type", "bytes"], ["$value", "AP8="]])],
    [{ $value: 1 }, { $value: 1 }],
    [Buffer.from([0, 255]), tagged("bytes", "AP8=")], [new Uint8Array([104, 105]), tagged("bytes", "aGk=")],
    [new Set([3]), tagged("set", [3])],
    [new Date(Date.UTC(2026, 10, 24, 12, 30, 5, 123)), tagged("datetime", "2026-11-24T12:30:05.123000+00:00")],
    [new Date(Date.UTC(2026, 10, 24, 12, 30)), tagged("datetime", "2026-11-24T12:30:00+00:00")],
    [{ when: [new Date(0), Buffer.from("raw")] },
      { when: [tagged("datetime", "1970-01-01T00:00:00+00:00"), tagged("bytes", "cmF3")] }],
    [[undefined], [null]], [{ gone: undefined, kept: 1 }, { kept: 1 }],
  ];
  for (const [value, json] of rows) {
    test(`${JSON.stringify(json)}`, () => {
      const names = new Set();
      assert.deepEqual(toJson(encode(value, { names })), json);
      const expectedNames = JSON.stringify(json).match(/"\$type":"[^"]+"/g) || [];
      assert.deepEqual([...names].sort(), [...new Set(expectedNames.map((t) => t.slice(9, -1)))].sort());
    });
  }
});

describe("decoding, as docs/values.md section 4 writes it", () => {
  const rows = [
    [tagged("int", "9007199254740993"), 2n ** 53n + 1n], [tagged("int", "5"), 5n], [9007199254740992, 2 ** 53],
    [tagged("float", "4.0"), 4], [tagged("float", "-0.0"), -0], [tagged("float", "1e+300"), 1e300],
    [tagged("float", "nan"), NaN], [tagged("float", "-inf"), -Infinity],
    [tagged("dict", [[1, "one"], [tagged("tuple", [2, 3]), "pair"]]), new Map([[1, "one"], [[2, 3], "pair"]])],
    [tagged("dict", [["$type", "bytes"], ["$value", "AP8="]]), new Map([["$type", "bytes"], ["$value", "AP8="]])],
    [tagged("bytes", "AP8="), Buffer.from([0, 255])], [tagged("bytearray", "aGk="), Buffer.from("hi")],
    [tagged("tuple", [1, "two"]), [1, "two"]], [tagged("tuple", []), []],
    [tagged("set", [3]), new Set([3])], [tagged("frozenset", ["x"]), new Set(["x"])],
    [tagged("datetime", "2026-11-24T12:30:05.123456+00:00"), new Date("2026-11-24T12:30:05.123Z")],
    [tagged("datetime", "2026-11-24T12:30:00"), new Date("2026-11-24T12:30:00Z")],
    [tagged("datetime", "2026-03-01T09:00:00+05:30"), new Date("2026-03-01T03:30:00Z")],
    [tagged("datetime", "0001-01-01T00:00:00"), new Date("0001-01-01T00:00:00Z")],
    [tagged("date", "2020-02-29"), "2020-02-29"], [tagged("time", "08:00:00.250000-03:00"), "08:00:00.250000-03:00"],
    [tagged("timedelta", [2, 0, 5]), 2 * 86400000 + 0.005], [tagged("timedelta", [-1, 86399, 0]), -1000],
    [tagged("Decimal", "3.14159265358979323846264338327950288"), "3.14159265358979323846264338327950288"],
    [tagged("Decimal", "-0.00"), "-0.00"], [tagged("UUID", "12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"],
    [tagged("complex", [0.5, 0.25]), { real: 0.5, imag: 0.25 }],
    [tagged("complex", [1.5, tagged("float", "-2.0")]), { real: 1.5, imag: -2 }],
    [{ when: tagged("tuple", [tagged("date", "2000-01-01"), tagged("bytes", "cmF3")]) },
      { when: ["2000-01-01", Buffer.from("raw")] }],
    [JSON.parse('{"__proto__": 1}'), JSON.parse('{"__proto__": 1}')],
  ];
  for (const [json, value] of rows) {
    test(`${JSON.stringify(json)}`, () => {
      assert.deepEqual(decode(fromJson(json)), value);
    });
  }

  const malformed = [
    [{ $type: "bytes" }, /exactly the keys '\$type' and '\$value'/],
    [{ $type: 1, $value: 2 }, /'\$type' must be a string/],
    [tagged("acme.Money", ["1.00", "EUR"]), /tagged "acme.Money": no resolver is registered for it here/],
    [tagged("float", "Infinity"), /expected a number such as/],
    [tagged("int", "1e5"), /expected a decimal integer/],
    [tagged("bytes", "AP8"), /base64/],
    [tagged("dict", [[1]]), /\[key, value\] pairs/],
    [[1, { a: tagged("timedelta", [1, 2]) }], /at \[1\]\["a"\]: .*an array of 3 items/],
  ];
  for (const [json, message] of malformed) {
    test(`refuses ${JSON.stringify(json)}`, () => {
      assert.throws(() => decode(fromJson(json)), (error) => {
        assert.ok(error instanceof errors.SerializationError, String(error));
        assert.match(error.message, message);
        return true;
      });
    });
  }
});

describe("a datetime is its exact instant, cut once to the millisecond", () => {
  // [isoformat() text, the UTC instant in microseconds (from Python's astimezone), as a Date]
  const rows = [
    ["2020-01-01T00:00:00.999999+01:00:00.000500", "2019-12-31T23:00:00.999Z"], // .999499
    ["2020-01-01T00:00:00.000900-00:00:00.000200", "2020-01-01T00:00:00.001Z"], // .001100
    ["2000-06-15T12:00:00.000001-05:30", "2000-06-15T17:30:00.000Z"], // .000001
    ["1969-12-31T23:59:59.999999", "1969-12-31T23:59:59.999Z"], // downwards before 1970 too
    ["1969-12-31T23:59:59.000100+00:00:00.000200", "1969-12-31T23:59:58.999Z"], // .999900
    ["1969-12-31T23:59:59.999500-02:30:15.000600", "1970-01-01T02:30:15.000Z"], // .000100
    ["0001-01-01T01:00:00.000001+00:59:59.000002", "0001-01-01T00:00:00.999Z"], // .999999
    ["9999-12-31T23:59:59.999999-23:59:59.999999", "+010000-01-01T23:59:59.999Z"], // .999998
  ];
  for (const [isoformat, instant] of rows) {
    test(`${isoformat} is ${instant}`, () => {
      assert.equal(decode(fromJson(tagged("datetime", isoformat))).toISOString(), instant);
    });
  }
});

describe("limits", () => {
  const nest = (n, wrap) => { let v = wrap(null); for (let i = 1; i < n; i++) v = wrap(v); return v; };
  const lists = (n) => nest(n, (inner) => (inner === null ? [] : [inner]));
  const dicts = (n) => nest(n, (inner) => (inner === null ? {} : { a: inner }));

  test(`${MAX_WIRE_DEPTH} levels: 45 arrays or 30 objects inside one another, and no more`, () => {
    for (const [ok, tooDeep] of [[lists(45), lists(46)], [dicts(30), dicts(31)]]) {
      assert.deepEqual(decode(fromJson(toJson(encode(ok)))), ok);
      assert.throws(() => encode(tooDeep), { name: "SerializationError", limit: "depth" });
      assert.throws(() => decode(fromJson(tooDeep)), { name: "SerializationError", limit: "depth" });
    }
  });

  test("the size bound is the exact encoded size", () => {
    const { Runner } = proto.load();
    const value = { text: "héllo ✓".repeat(50), bytes: Buffer.alloc(300), big: 2n ** 80n, list: [1, 2.5, null, [new Date(0)]] };
    // A RunRequest holding only this value as args[0]: a 1-byte tag, a varint length, the Value.
    const request = Runner.service.Run.requestSerialize({ args: [encode(value)] });
    const size = request.length - 1 - (request.length - 1 > 128 ? 2 : 1);
    assert.ok(encode(value, { budget: sizeBudget(size) }));
    assert.throws(() => encode(value, { budget: sizeBudget(size - 1) }), { name: "SerializationError", limit: "size" });
  });
});

describe("values that cannot be read as they are sent", () => {
  test("an array of 2**32 - 1 holes is refused by its length, before any item is made", () => {
    const holes = [];
    holes.length = 2 ** 32 - 1;
    const started = Date.now();
    assert.throws(() => encode([1, holes]), { name: "SerializationError", limit: "size" });
    // (it took 28 s and 2.2 GB, then Node's heap ran out; generous, not a timing test)
    assert.ok(Date.now() - started < 5000);
    const fits = [];
    fits.length = 1000;
    assert.deepEqual(toJson(encode(fits)), new Array(1000).fill(null));
  });

  test("a getter is read once, and what a getter or a Proxy throws is a SerializationError naming where", () => {
    let reads = 0;
    const changing = { get x() { reads += 1; return reads === 1 ? "first" : "second"; } };
    assert.deepEqual(toJson(encode(changing)), { x: "first" });
    assert.equal(reads, 1);
    assert.throws(() => encode({ a: [0, { get y() { throw new Error("getter boom"); } }] }, { where: "argument 0: " }),
      { name: "SerializationError", message: 'argument 0: cannot read a value at ["a"][1]["y"]: reading it threw Error: getter boom' });
    const { proxy, revoke } = Proxy.revocable({}, {});
    revoke();
    assert.throws(() => encode({ nested: proxy }),
      { name: "SerializationError", message: /^cannot read a value at \["nested"\]: reading it threw TypeError: .*revoked/ });
    const keys = new Proxy({}, { ownKeys() { throw new RangeError("ownKeys boom"); } });
    assert.throws(() => encode([keys]),
      { name: "SerializationError", message: "cannot read a value at [0]: reading it threw RangeError: ownKeys boom" });
    assert.throws(() => encode(proxy), { name: "SerializationError", message: /^cannot read a value: reading it threw/ });
  });
});

describe("ints past Python's 4,300 digits", () => {
  test("a bigint of more than 4,300 digits is refused before it is sent, a sign not counted", () => {
    assert.equal(encode(10n ** 4300n - 1n).structValue.fields.$value.stringValue.length, 4300);
    assert.equal(encode(-(10n ** 4300n - 1n)).structValue.fields.$value.stringValue.length, 4301);
    for (const value of [10n ** 4300n, -(10n ** 4300n)]) {
      assert.throws(() => encode(value), (error) => error instanceof errors.SerializationError &&
        /cannot encode a bigint: it has more than 4300 decimal digits/.test(error.message));
    }
  });
});

describe("decoding what a guest may have forged", () => {
  const refused = (json, message) => assert.throws(() => decode(fromJson(json)),
    (error) => error instanceof errors.SerializationError && message.test(error.message));

  test("bytes of several megabytes decode (a regular expression ran out of stack past ~3.2 MB)", () => {
    const bytes = Buffer.alloc(10 << 20, 7);
    assert.ok(decode(fromJson(tagged("bytes", bytes.toString("base64")))).equals(bytes));
    for (const bad of ["AAAA=", "AB=", "A B=", "@@@@", "QQ"]) refused(tagged("bytes", bad), /not valid padded base64/);
  });

  test("an int of more than 4,300 digits is refused before BigInt() parses it", () => {
    assert.equal(decode(fromJson(tagged("int", "9".repeat(4300)))), 10n ** 4300n - 1n);
    refused(tagged("int", "9".repeat(4301)), /4301 digits, over 4300/);
    refused(tagged("int", "-" + "9".repeat(16 << 20)), /over 4300/);
  });

  test("keys or items equal here are refused, not merged", () => {
    refused(tagged("dict", [["a", 1], ["a", 2]]), /key "a" equals the earlier key "a"/);
    refused(tagged("set", ["a", "a"]), /item "a" equals the earlier item "a"/);
    refused(tagged("frozenset", [0, tagged("float", "-0.0")]), /item 0 equals the earlier item 0/);
  });

  test("keys made to collide in V8's hash tables stop at the decode's time budget", () => {
    // V8 hashes only the low 64 bits of a BigInt: these all land in one bucket. 40,000 of
    // them took 11.7 s to put into a Set; the decode now gives up after 1 s of filling.
    const colliding = [];
    for (let k = 1n; k <= 40000n; k++) colliding.push(tagged("int", ((k << 64n) + 1n).toString()));
    const started = Date.now();
    refused(tagged("set", colliding), /took more than 1000 ms to put into Maps and Sets/);
    assert.ok(Date.now() - started < 8000, `${Date.now() - started} ms`);
    const honest = [];
    for (let k = 0; k < 200000; k++) honest.push(k);
    assert.equal(decode(fromJson(tagged("set", honest))).size, 200000);
  });
});

test("a datetime with fields out of range, or a timedelta that is not finite, is refused", () => {
  for (const text of ["2020-02-30T00:00:00", "2020-13-01T00:00:00", "2020-01-01T25:00:00", "2020-01-01T00:61:00",
    "2020-01-01T00:00:61", "2020-01-01T00:00:00+24:00"]) {
    assert.throws(() => decode(fromJson(tagged("datetime", text))), /not a valid datetime/, text);
  }
  assert.equal(decode(fromJson(tagged("datetime", "2020-02-29T23:59:59+23:59"))).toISOString(), "2020-02-29T00:00:59.000Z");
  assert.throws(() => decode({ kind: "structValue", structValue: { fields: {
    $type: { kind: "stringValue", stringValue: "timedelta" },
    $value: { kind: "listValue", listValue: { values: [0, Infinity, 0].map((n) => ({ kind: "numberValue", numberValue: n })) } },
  } } }), /finite numbers/);
});

describe("date, time, Decimal and UUID payloads must have their type's form", () => {
  // They were returned as strings unread: "not-a-uuid" arrived as a UUID, where the Python
  // client refuses it (docs/values.md section 2: a payload that does not fit its type fails).
  const read = (name, payload) => decode(fromJson(tagged(name, payload)));
  const refused = {
    date: ["2020-13-45", "2020-02-30", "2021-02-29", "0000-12-31", "2020-1-01", "2020-01-01T00:00", "2020/01/01",
      " 2020-01-01", "20200229", "２０２０-01-01", ""],
    time: ["99:99", "24:00:00", "12:60:00", "12:30:61", "12:30", "12:30:45.", "12:30:45.1234567", "12:30:45+24:00",
      "12:30:45+01", "12:30:45Z1", "12:30:45 ", "1２:30:45", ""],
    Decimal: ["abc", "1,5", "1e", "1e+", ".", "", " ", "1 0", "1.2.3", "1e5.0", "nan.1", "Infinit", "infinity1",
      "1_000", "0x10", "1\u0000"],
    UUID: ["not-a-uuid", "xyz", "12345678-1234-5678-1234-56781234567", "12345678123456781234567812345678",
      "{12345678-1234-5678-1234-567812345678}", "g2345678-1234-5678-1234-567812345678", ""],
  };
  for (const [name, payloads] of Object.entries(refused)) {
    test(`a malformed ${name} is a SerializationError naming the type and the payload`, () => {
      for (const payload of payloads) {
        assert.throws(() => read(name, payload), (error) => error instanceof errors.SerializationError &&
          error.message.startsWith(`cannot decode a value tagged "${name}": bad payload: expected `) &&
          error.message.endsWith(`got ${JSON.stringify(payload)}`), JSON.stringify(payload));
      }
    });
  }

  test("the forms the codec writes arrive as they were written (a UUID in lower case)", () => {
    const accepted = [
      ["date", "2020-02-29"], ["date", "0001-01-01"], ["date", "9999-12-31"],
      ["time", "23:59:59"], ["time", "08:00:00.250000-03:00"], ["time", "12:00:00+00:00:00.500000"],
      ["time", "00:00:00Z"], ["Decimal", "3.14159265358979323846"], ["Decimal", "-1.5E+7"], ["Decimal", "1.000"],
      ["Decimal", "-0"], ["Decimal", "Infinity"], ["Decimal", "-Infinity"], ["Decimal", "NaN123"], ["Decimal", "-sNaN"],
      ["Decimal", ".5"], ["UUID", "12345678-1234-5678-1234-567812345678"],
    ];
    for (const [name, payload] of accepted) assert.equal(read(name, payload), payload, `${name} ${payload}`);
    assert.equal(read("UUID", "12345678-1234-5678-1234-56781234567A"), "12345678-1234-5678-1234-56781234567a");
  });
});
