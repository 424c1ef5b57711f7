"use strict";
// Operator types (docs/values.md, section 5): a class registered in a TypeRegistry crosses the
// wire tagged with its name and is rebuilt by the daemon's `[types]` resolver, and back. First
// the registry and codec alone, then against a daemon configured with the same types as the
// Python suite's (tests/integration/test_values.py).
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { after, before, describe, test } = require("node:test");
const { TypeRegistry, registerType, errors } = require("..");
const { encode } = require("../lib/codec");
const { decode, TYPE_NAMES } = require("../lib/decode");
const { BUILTIN_NAMES } = require("../lib/registry");
const { startDaemon } = require("../test-support/daemon");
const { received } = require("../test-support/values");

/** The client's own class for acme.Money: only the payload's shape is shared with the daemon. */
class Money {
  constructor(amount, currency) {
    this.amount = amount; // a decimal string: a number would round it
    this.currency = currency;
  }
}

class Coupon {
  constructor(code) {
    this.code = code;
  }
}

function moneyRegistry(options) {
  const registry = new TypeRegistry(options);
  registry.register(Money, "acme.Money", (m) => [m.amount, m.currency], (p) => new Money(p[0], p[1]));
  return registry;
}


const roundTrip = (value, registry) => decode(received(encode(value, { registry })), "", registry);

describe("the registry and the codec, without a daemon", () => {
  test("a registered class travels tagged with its name and comes back as an instance", () => {
    const registry = moneyRegistry();
    const names = new Set();
    const wire = encode({ price: new Money("9.99", "EUR") }, { registry, names });
    const tag = wire.structValue.fields.price.structValue.fields;
    assert.deepEqual(tag.$type, { stringValue: "acme.Money" });
    assert.deepEqual(tag.$value.listValue.values, [{ stringValue: "9.99" }, { stringValue: "EUR" }]);
    assert.deepEqual([...names], ["acme.Money"]); // so the runner checks the daemon offers it
    const back = roundTrip([new Money("1.50", "USD"), new Map([[1, new Money("2", "EUR")]])], registry);
    assert.ok(back[0] instanceof Money && back[1].get(1) instanceof Money);
    assert.deepEqual(back, [new Money("1.50", "USD"), new Map([[1, new Money("2", "EUR")]])]);
  });

  test("a payload is encoded by every rule, tagged values and nested registered values included", () => {
    const registry = new TypeRegistry();
    class Box {
      constructor(items) {
        this.items = items;
      }
    }
    registry.register(Box, "acme.Box", (b) => b.items, (p) => new Box(p));
    const value = new Box([Buffer.from("raw"), new Set([2n ** 60n]), new Box([new Date(0)])]);
    assert.deepEqual(roundTrip(value, registry), value);
  });

  test("only the exact class: a subclass is refused, with a hint", () => {
    class Euro extends Money {}
    assert.throws(() => encode(new Euro("1", "EUR"), { registry: moneyRegistry(), where: "argument 0: " }),
      (e) => e instanceof errors.SerializationError &&
        /^argument 0: cannot encode a value of type 'Euro'.*register its class/.test(e.message) &&
        e.message.includes("acme.Money"));
  });

  test("an encoder or a resolver that throws fails the value, naming the type and the error", () => {
    const registry = new TypeRegistry();
    registry.register(Coupon, "acme.Coupon", () => { throw new RangeError("no code"); },
      (p) => { throw new RangeError(`bad coupon ${JSON.stringify(p)}`); });
    assert.throws(() => encode([new Coupon("X")], { registry }), (e) => e instanceof errors.SerializationError &&
      e.message === "cannot encode a value of type 'Coupon' at [0]: its encoder for 'acme.Coupon' threw RangeError: no code");
    const wire = received({ structValue: { fields: { $type: { stringValue: "acme.Coupon" }, $value: { stringValue: "X" } } } });
    assert.throws(() => decode(wire, "result: ", registry), (e) => e instanceof errors.SerializationError &&
      e.message === 'result: cannot decode a value tagged "acme.Coupon": its resolver threw RangeError: bad coupon "X"');
  });

  test("an encoder returning what cannot be encoded is named with the value it was given", () => {
    // it named the payload's type at the payload's place ([1]["a"]["cents"]), as if the caller had passed that
    const registry = new TypeRegistry();
    registry.register(Coupon, "acme.Coupon", () => ({ cents: Symbol("no") }), (p) => new Coupon(p));
    assert.throws(() => encode([1, { a: new Coupon("X") }], { registry }), (e) => e instanceof errors.SerializationError &&
      e.message.startsWith("cannot encode a value of type 'Coupon' at [1][\"a\"]: its encoder for 'acme.Coupon' " +
        "returned a value of type 'Object' that cannot be encoded: cannot encode a value of type 'symbol' at [\"cents\"]"));
  });

  test("a tag nobody registered is refused, listing what this client decodes", () => {
    const wire = received({ structValue: { fields: { $type: { stringValue: "acme.Gift" }, $value: { nullValue: 0 } } } });
    assert.throws(() => decode(wire, "", moneyRegistry()), (e) => e instanceof errors.SerializationError &&
      e.message.includes('"acme.Gift"') && e.message.includes("acme.Money") && e.message.includes("Decimal"));
  });

  test("a value that encodes to itself is too deep, not a stack overflow", () => {
    const registry = new TypeRegistry();
    registry.register(Coupon, "acme.Loop", (c) => c, (p) => p);
    assert.throws(() => encode(new Coupon("again"), { registry }), (e) => e.limit === "depth");
  });

  test("names and classes are registered once; built-in names and codec classes never", () => {
    const registry = moneyRegistry();
    const same = (p) => p;
    assert.throws(() => registry.register(Coupon, "acme.Money", same, same), /'acme.Money' is already registered/);
    assert.throws(() => registry.register(Money, "acme.Cash", same, same), /Money is already registered as 'acme.Money'/);
    assert.throws(() => registry.register(Coupon, "bytes", same, same), /'bytes' is built in/);
    assert.throws(() => registry.register(Map, "acme.Map", same, same), /encoded by the codec itself/);
    for (const name of ["", "1abc", "has space", "x".repeat(201), 7]) {
      assert.throws(() => registry.register(Coupon, name, same, same), TypeError, String(name));
    }
    assert.throws(() => registry.register({}, "acme.Thing", same, same), TypeError);
    assert.throws(() => registry.register(Coupon, "acme.Thing", same, "no"), TypeError);
    registry.register(Coupon, "x".repeat(200), same, same); // the longest name
  });

  test("a registry falls back to its parent, and stays unique along the chain", () => {
    const parent = moneyRegistry();
    const child = new TypeRegistry({ parent });
    child.register(Coupon, "acme.Coupon", (c) => c.code, (p) => new Coupon(p));
    assert.deepEqual(roundTrip([new Money("1", "EUR"), new Coupon("Y")], child), [new Money("1", "EUR"), new Coupon("Y")]);
    assert.ok(child.names().includes("acme.Money") && !parent.names().includes("acme.Coupon"));
    assert.throws(() => child.register(Coupon, "acme.Money", String, String), /already registered/);
    assert.throws(() => encode(new Coupon("Z"), { registry: parent }), errors.SerializationError);
  });

  test("the reserved names are exactly the codec's built-in type names", () => {
    assert.deepEqual([...BUILTIN_NAMES], TYPE_NAMES);
    assert.deepEqual(new TypeRegistry().names(), TYPE_NAMES);
  });
});

// ------------------------------------------------------------------------ against a daemon

// The [types] plugin module, shared with the Python client's tests.
const ACME_TYPES = fs.readFileSync(path.join(__dirname, "..", "..", "..", "tests", "plugins", "acme_types.py"), "utf8");

const GUEST = `
def describe(m):
    return [type(m).__name__, type(m).__module__, m.amount, m.currency]

def double(m):
    return m.doubled()

def wallet(items, owner):
    return {"owner": owner, "items": tuple(items), "total": sum(m.amount for m in items)}

def from_context():
    return [type(price).__name__, price.doubled()]

def coupon(c):
    return [c.code, type(c).__name__, c]

def echo(x):
    return x
`;

describe("operator types against a daemon with [types]", () => {
  let daemon;

  before(async () => {
    daemon = await startDaemon({
      config: '\n[types]\n"acme.Money" = "acme_types:money"\n"acme.Coupon" = "acme_types:coupon"\n',
      plugins: { "acme_types.py": ACME_TYPES },
    });
  });
  after(() => daemon?.stop());

  test("a Money crosses both ways, rebuilt on each side by its own side's resolver", async () => {
    const runner = daemon.runner({ "index.py": GUEST }, { registry: moneyRegistry() });
    assert.deepEqual(await runner.run({ funcName: "describe", args: [new Money("9.99", "EUR")] }),
      ["Money", "acme_types", "9.99", "EUR"]); // a Decimal comes back as its digits
    const doubled = await runner.run({ funcName: "double", args: [new Money("1.25", "USD")] });
    assert.ok(doubled instanceof Money);
    assert.deepEqual(doubled, new Money("2.50", "USD"));
    const items = [new Money("1", "EUR"), new Money("2.5", "EUR")];
    assert.deepEqual(await runner.run({ funcName: "wallet", args: [items, "ann"] }),
      { owner: "ann", items, total: "3.5" });
  });

  test("a Money in the context reaches the guest as the daemon's Money", async () => {
    const runner = daemon.runner({ "index.py": GUEST }, { registry: moneyRegistry() });
    assert.deepEqual(await runner.run({ funcName: "from_context", context: { price: new Money("0.10", "EUR") } }),
      ["Money", new Money("0.20", "EUR")]);
  });

  test("the daemon lists its operator types", async () => {
    const caps = await daemon.runner({ "index.py": GUEST }).capabilities();
    assert.deepEqual(caps.typeNames, [...TYPE_NAMES, "acme.Coupon", "acme.Money"].sort());
  });

  test("registerType teaches every runner of the process that has no registry of its own", async () => {
    registerType(Coupon, "acme.Coupon", (c) => ({ code: c.code }), (p) => new Coupon(p.code));
    const [code, guestType, back] = await daemon.runner({ "index.py": GUEST })
      .run({ funcName: "coupon", args: [new Coupon("SAVE10")] });
    assert.deepEqual([code, guestType], ["SAVE10", "Coupon"]);
    assert.ok(back instanceof Coupon && back.code === "SAVE10");
    assert.throws(() => registerType(Coupon, "acme.Coupon2", String, String), /already registered/);
    // a runner with its own registry does not see the process-wide types
    const own = daemon.runner({ "index.py": GUEST }, { registry: moneyRegistry() });
    await assert.rejects(own.run({ funcName: "echo", args: [new Coupon("NO")] }), errors.SerializationError);
  });

  test("a type the daemon lacks fails before anything is sent, naming it and the socket", async () => {
    const registry = moneyRegistry();
    class Gift {}
    registry.register(Gift, "acme.Gift", () => "gift", () => new Gift());
    const runner = daemon.runner({ "index.py": GUEST }, { registry });
    for (const options of [{ args: [[1, { k: new Gift() }]] }, { args: [1], context: { g: new Gift() } }]) {
      await assert.rejects(runner.run({ funcName: "echo", ...options }), (e) => e instanceof errors.SerializationError &&
        e.message.includes("'acme.Gift'") && e.message.includes(daemon.socket) && e.message.includes("acme.Money"));
    }
    assert.ok(!(await daemon.settledLog()).includes(runner.root), "no call of this runner reached the daemon");
  });

  test("a result of an operator type the client lacks names it", async () => {
    const runner = daemon.runner({ "index.py": "import acme_types\n\ndef f():\n    return [acme_types.Money(1, 'EUR')]\n" },
      { external: ["acme_types"], registry: new TypeRegistry() });
    await assert.rejects(runner.run({ funcName: "f" }), (e) => e instanceof errors.SerializationError &&
      e.message.startsWith('result: cannot decode a value tagged "acme.Money" at [0]: no resolver'));
  });
});

describe("operator types after a daemon restart", () => {
  let daemon;

  before(async () => {
    daemon = await startDaemon({ plugins: { "acme_types.py": ACME_TYPES } }); // no [types] yet
  });
  after(() => daemon?.stop());

  test("a runner asks again for a type that the restarted daemon now has", async () => {
    // It asked once per runner: it refused acme.Money for ever after the operator restarted the
    // daemon with the type configured, until the runner was made anew.
    const runner = daemon.runner({ "index.py": GUEST }, { registry: moneyRegistry() });
    await assert.rejects(runner.run({ funcName: "double", args: [new Money("1.25", "USD")] }),
      { name: "SerializationError", message: /has no resolver for type 'acme.Money'/ });
    await daemon.restart(async () => {
      fs.appendFileSync(daemon.configPath, '\n[types]\n"acme.Money" = "acme_types:money"\n');
    });
    assert.deepEqual(await runner.run({ funcName: "double", args: [new Money("1.25", "USD")] }),
      new Money("2.50", "USD"));
  });
});
