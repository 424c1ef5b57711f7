"use strict";
// Values cross the wire exactly, as README.md ("Values") promises: each JavaScript value reaches
// the guest as the Python type listed there and comes back as itself; what cannot be sent
// exactly is a SerializationError before anything is sent.
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const { after, before, describe, test } = require("node:test");
const { promisify } = require("node:util");
const { errors } = require("..");
const { startDaemon } = require("../test-support/daemon");

const ECHO = "def echo(x):\n    return x\n\ndef kind(x):\n    return type(x).__name__\n\n" +
  "def kinds(x):\n    return [type(i).__name__ for i in x]\n";
let daemon;
let runner;

before(async () => {
  daemon = await startDaemon();
  runner = daemon.runner({ "index.py": ECHO });
});
after(() => daemon?.stop());

const echo = (value) => runner.run({ funcName: "echo", args: [value] });
/** `promise` rejects with an error of class `cls` whose `limit` is `limit`. */
const rejectsWithLimit = (promise, cls, limit) => assert.rejects(promise, (error) => {
  assert.ok(error instanceof cls, String(error));
  assert.equal(error.limit, limit);
  return true;
});
const kind = (value) => runner.run({ funcName: "kind", args: [value] });

describe("round trips", () => {
  const samples = [
    ["null", null, "NoneType"], ["true", true, "bool"], ["false", false, "bool"],
    ["0", 0, "int"], ["-7", -7, "int"], ["2**53", 2 ** 53, "int"], ["0.1", 0.1, "float"],
    ["-2.5e300", -2.5e300, "float"], ["empty string", "", "str"], ["unicode", "héllo ✓ 🎉", "str"],
    ["nested arrays", [1, [2, [3, []]]], "list"], ["nested objects", { a: { b: [1, 2.5, null] }, c: {} }, "dict"],
    ["NaN", NaN, "float"], ["Infinity", Infinity, "float"], ["-Infinity", -Infinity, "float"],
    ["big BigInt", 2n ** 70n, "int"], ["negative BigInt", -(2n ** 64n) - 1n, "int"],
    ["Buffer", Buffer.from([0, 255, 98, 121, 116, 101, 115]), "bytes"], ["empty Buffer", Buffer.alloc(0), "bytes"],
    ["Date", new Date(Date.UTC(2026, 10, 24, 12, 30, 5, 123)), "datetime"],
    ["Date before 1970", new Date(Date.UTC(1, 0, 1, 0, 0, 0, 1) - 0), "datetime"],
    ["Set", new Set([1, "two", 3.5]), "set"], ["Map with number keys", new Map([[1, "a"], [2.5, [true]]]), "dict"],
    ["Map with mixed keys", new Map([["a", 1], [2n ** 64n, 2], [null, 3], [false, 4]]), "dict"],
    ["Map with a $type key", new Map([["$type", "not a tag"], ["$value", 1]]), "dict"],
    ["nested", { nested: [Buffer.from("raw"), new Set([new Date(0)]), new Map([[1, [2, { x: 3n ** 40n }]]])] }, "dict"],
    ["__proto__ key", JSON.parse('{"__proto__": {"x": 1}, "constructor": 2}'), "dict"],
  ];
  for (const [name, value, pythonType] of samples) {
    test(`${name} reaches Python as ${pythonType} and comes back as itself`, async () => {
      assert.equal(await kind(value), pythonType);
      const back = await echo(value);
      assert.deepEqual(back, value);
      if (typeof value === "object" && value !== null) {
        assert.equal(Object.getPrototypeOf(back), Object.getPrototypeOf(value));
      }
    });
  }

  test("Date keeps the year 1 (Date.UTC would read it as 1901)", async () => {
    const date = new Date(0);
    date.setUTCFullYear(1, 0, 1);
    assert.equal((await echo(date)).toISOString(), "0001-01-01T00:00:00.000Z");
  });

  test("integral numbers are Python ints, others floats; JavaScript cannot tell 4.0 from 4", async () => {
    assert.deepEqual(await runner.run({ funcName: "kinds", args: [[4, 4.0, 4.5, -0, 2 ** 60, 5n]] }),
      ["int", "int", "float", "int", "float", "int"]);
  });

  test("small BigInts come back as numbers, large ones as BigInt", async () => {
    assert.equal(await echo(5n), 5);
    assert.equal(await echo(2n ** 53n + 1n), 2n ** 53n + 1n);
  });

  test("undefined is None in arrays and arguments, and left out of objects", async () => {
    assert.deepEqual(await echo([undefined, 1, , 3]), [null, 1, null, 3]); // eslint-disable-line no-sparse-arrays
    assert.deepEqual(await echo({ a: undefined, b: 1 }), { b: 1 });
    assert.equal(await echo(undefined), null);
    assert.equal(await kind(), "NoneType"); // a missing argument is None, as in JavaScript
  });

  test("a Uint8Array is bytes, and comes back as a Buffer", async () => {
    const back = await echo(new Uint8Array([1, 2, 3]));
    assert.ok(Buffer.isBuffer(back));
    assert.deepEqual([...back], [1, 2, 3]);
  });

  test("an object with a $type key is not read as a tag: it travels, and comes back, as a Map", async () => {
    assert.equal(await kind({ $type: "bytes", $value: "AA==" }), "dict");
    assert.deepEqual(await echo({ $type: "bytes", $value: "AA==" }), new Map([["$type", "bytes"], ["$value", "AA=="]]));
  });

  test("a Map with only string keys comes back as an object (Python has one dict)", async () => {
    assert.deepEqual(await echo(new Map([["a", 1]])), { a: 1 });
  });
});

describe("Python values without a JavaScript twin", () => {
  const python = "import datetime, decimal, uuid\n\ndef make(name):\n    return {\n" +
    "        'tuple': (1, 'two'), 'frozenset': frozenset({'x'}), 'float': 4.0, 'negzero': -0.0,\n" +
    "        'Decimal': decimal.Decimal('3.14159265358979323846264338327950288'),\n" +
    "        'date': datetime.date(2020, 2, 29), 'time': datetime.time(23, 59, 59, 5),\n" +
    "        'timedelta': datetime.timedelta(days=2, seconds=1, microseconds=500),\n" +
    "        'UUID': uuid.UUID('12345678-1234-5678-1234-567812345678'), 'complex': complex(1, -2),\n" +
    "        'naive': datetime.datetime(2026, 1, 2, 3, 4, 5, 678901),\n" +
    "        'offset': datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))),\n" +
    "        'tuple_keys': {(1, 2): 'a'}, 'bytearray': bytearray(b'ab'), 'unsafe': 2**53 + 1, 'float_big': 1e300 * 10,\n" +
    "    }[name]\n";
  const cases = {
    tuple: [1, "two"], frozenset: new Set(["x"]), float: 4, negzero: -0,
    Decimal: "3.14159265358979323846264338327950288", date: "2020-02-29", time: "23:59:59.000005",
    timedelta: 2 * 86400000 + 1000 + 0.5, UUID: "12345678-1234-5678-1234-567812345678",
    complex: { real: 1, imag: -2 }, naive: new Date("2026-01-02T03:04:05.678Z"),
    offset: new Date("2026-01-02T08:34:05.000Z"), tuple_keys: new Map([[[1, 2], "a"]]),
    bytearray: Buffer.from("ab"), unsafe: 2n ** 53n + 1n, float_big: 1e301,
  };
  for (const [name, expected] of Object.entries(cases)) {
    test(`${name} becomes ${expected?.constructor?.name ?? typeof expected}`, async () => {
      const maker = daemon.runner({ "index.py": python }, { external: ["datetime", "decimal", "uuid"] });
      assert.deepEqual(await maker.run({ funcName: "make", args: [name] }), expected);
    });
  }
});

describe("values that cannot be sent", () => {
  class Opaque {}
  const refused = [
    ["a class instance", { ok: 1, bad: new Opaque() }, /cannot encode a value of type 'Opaque' at \["bad"\]/],
    ["a function", [1, () => 1], /type 'function' at \[1\]/],
    ["a symbol", Symbol("s"), /type 'symbol'/],
    ["a RegExp", /x/, /type 'RegExp'/],
    ["a subclass of Map", new (class Registry extends Map {})([[1, 2]]), /type 'Registry'.*extends Map/],
    ["a boxed number", Object(1), /type 'Number'/],
    ["a typed array other than Uint8Array", new Int16Array(2), /type 'Int16Array'.*Uint8Array/],
    ["an invalid Date", new Date(NaN), /invalid Date/],
    ["a Date past year 9999", new Date(Date.UTC(10000, 0, 1)), /years 1 to 9999/],
    ["a Map with an array key", new Map([[[1], 1]]), /as a Map key or Set item/],
    ["a string with a lone surrogate", "a\ud800b", /lone surrogate/],
    ["a value in a Map", new Map([[1, new Opaque()]]), /type 'Opaque' at \[1\]/],
    ["Map keys equal in Python (1 and 1n)", new Map([[1, "a"], [1n, "b"]]), /Map keys 1 and 1n: they are equal in Python/],
    ["Set items equal in Python (0 and false)", { s: new Set([0, false]) }, /Set items 0 and false at \["s"\]: they are equal in Python/],
    ["Map keys of one instant", new Map([[new Date(5), 1], [new Date(5), 2]]), /Map keys Date .* equal in Python/],
    ["Set items of the same bytes", new Set([Buffer.from("ab"), new Uint8Array([97, 98])]), /Set items Buffer .* equal/],
    ["Map keys null and undefined", new Map([[null, 1], [undefined, 2]]), /Map keys null and undefined/],
  ];
  for (const [name, value, message] of refused) {
    test(`${name} is a SerializationError naming it, before sending`, async () => {
      await assert.rejects(echo(value), (error) => {
        assert.ok(error instanceof errors.SerializationError, String(error));
        assert.ok(error instanceof TypeError);
        assert.ok(error instanceof errors.IsorunError);
        assert.match(error.message, /^argument 0: /);
        assert.match(error.message, message);
        return true;
      });
    });
  }

  test("keys of every kind that stay distinct in Python all arrive", async () => {
    const keys = ["1", 1, 1.5, 2n ** 60n, false, null, new Date(1), new Date(2), Buffer.from("a"), Buffer.from("b")];
    const back = await echo(new Set(keys));
    assert.equal(back.size, keys.length);
  });

  test("a context value is checked too, and named", async () => {
    await assert.rejects(runner.run({ funcName: "echo", context: { tenant: { f() {} } } }),
      { name: "SerializationError", message: /^context "tenant": cannot encode a value of type 'function' at \["f"\]/ });
  });

  test("a value nested too deeply is refused, and a cycle is never a stack overflow", async () => {
    let deep = [];
    for (let i = 0; i < 200; i++) deep = [deep];
    const cycle = [];
    cycle.push(cycle);
    const selfish = {};
    selfish.self = selfish;
    for (const value of [deep, cycle, selfish]) {
      await rejectsWithLimit(echo(value), errors.SerializationError, "depth");
    }
    let fine = [];
    for (let i = 0; i < 40; i++) fine = [fine];
    assert.deepEqual(await echo(fine), fine);
  });

  test("arguments over the message size together are refused before sending", async () => {
    const half = "x".repeat(33 * 1024 * 1024);
    await assert.rejects(runner.run({ funcName: "echo", args: [half, half] }),
      { name: "SerializationError", limit: "size", message: /^argument 1: the arguments and context are too large/ });
  });

  test("a value over the message size is refused before it is built whole", async () => {
    await rejectsWithLimit(echo(["x".repeat(40 * 1024 * 1024), Buffer.alloc(30 * 1024 * 1024)]),
      errors.SerializationError, "size");
  });

  test("a result the guest cannot send is a SerializationError", async () => {
    const bad = daemon.runner({ "index.py": "def f():\n    return lambda: 1\n" });
    // no limit was broken: the value has no codec
    await rejectsWithLimit(bad.run({ funcName: "f" }), errors.SerializationError, null);
  });

  test("a result nested past the limit on the guest's side says which limit", async () => {
    const deep = daemon.runner({ "index.py": "def f():\n    x = []\n    for _ in range(200):\n        x = [x]\n    return x\n" });
    await rejectsWithLimit(deep.run({ funcName: "f" }), errors.SerializationError, "depth");
  });
});

describe("a result over the client's message size, from a daemon that allows it", () => {
  // The daemon's own caps (result_bytes, max_request_bytes) may be set above the client's
  // 64 MiB: gRPC then refuses the answer, which is a ResourceLimitError naming the message.
  let roomy;
  before(async () => {
    roomy = await startDaemon({ config: "max_request_bytes = 134217728\n[limits]\nresult_bytes = 104857600\n" });
  });
  after(() => roomy?.stop());

  test("is ResourceLimitError with limit 'message', not a full queue", async () => {
    const big = roomy.runner({ "index.py": "def f():\n    return 'x' * (70 << 20)\n" });
    await rejectsWithLimit(big.run({ funcName: "f" }), errors.ResourceLimitError, "message");
  });
});

describe("a result of millions of small items", () => {
  // Each item was a protobufjs message and an object form of it at the same time before
  // decode.js rebuilt it: 3,000,000 nulls (12 MB on the wire) took ~490 MiB of the client's RSS.
  // The result now stays the decoded message until it is rebuilt (~270 MiB).
  test("costs the client one object per item while it is rebuilt, not two", async () => {
    const root = daemon.makeRoot({ "index.py": "def nulls(n):\n    return [None] * n\n" });
    const script = `
      const { CodeRunner } = require(${JSON.stringify(require.resolve(".."))});
      (async () => {
        const runner = new CodeRunner({ root: process.argv[1], file: "index.py", socket: process.argv[2] });
        const before = process.resourceUsage().maxRSS;
        const value = await runner.run({ funcName: "nulls", args: [3000000], timeout: 30000 });
        const grew = (process.resourceUsage().maxRSS - before) / 1024;
        await runner.close();
        console.log(JSON.stringify({ items: value.length, nulls: value.every((v) => v === null), grew }));
      })();`;
    const { stdout } = await promisify(execFile)(process.execPath, ["-e", script, root, daemon.socket],
      { timeout: 120000 });
    const { items, nulls, grew } = JSON.parse(stdout);
    assert.equal(items, 3000000);
    assert.ok(nulls);
    assert.ok(grew < 400, `the client's RSS grew by ${grew.toFixed(0)} MiB`);
  });
});
