"use strict";
// Inputs told in the caller's terms: resolverOptions nested deeper than protobuf's parser takes
// are refused before anything is sent, naming the place (they were sent, and the sandbox refused
// the request as "Exceeded upb_DecodeOptions_MaxDepth"); a timeout the daemon refuses is told in
// the milliseconds the caller passed too. And an operator type's own code failing, whatever it
// throws, is a SerializationError naming the type, as in the Python client.
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { after, before, describe, test } = require("node:test");
const { CodeRunner, TypeRegistry, errors } = require("..");
const { encode } = require("../lib/codec");
const { decode } = require("../lib/decode");
const { MAX_OPTIONS_DEPTH } = require("../lib/inputs");
const { startDaemon } = require("../test-support/daemon");
const { received } = require("../test-support/values");

const objects = (n, inner) => {
  for (let i = 0; i < n; i += 1) inner = { k: inner };
  return inner;
};
const arrays = (n, inner) => {
  for (let i = 0; i < n; i += 1) inner = [inner];
  return inner;
};

// Levels as the codec counts a value's, the options at level 0: an object's values 3 down, an
// array's items 2, an empty one 1; at most 100 (as tests/unit/test_options_depth.py).
const DEEPEST = {
  "34 objects, the innermost empty (level 100)": { d: objects(32, {}) },
  "33 objects around a number (99)": { d: objects(32, 1) },
  "49 arrays in an entry, the innermost empty (100)": { l: arrays(48, []) },
  "48 arrays around a string (99)": { l: arrays(48, "s") },
  "2 objects, then 47 arrays around a number (100)": { m: { k: arrays(47, 1) } },
  "an entry holding undefined adds no level (100)": { d: objects(32, { gone: undefined }) },
};
const TOO_DEEP = [
  [{ d: objects(33, {}) }, 'resolverOptions["d"]' + '["k"]'.repeat(32)],
  [{ d: objects(33, 1) }, 'resolverOptions["d"]' + '["k"]'.repeat(32)],
  [{ l: arrays(49, []) }, 'resolverOptions["l"]' + "[0]".repeat(48)],
  [{ l: arrays(49, "s") }, 'resolverOptions["l"]' + "[0]".repeat(48)],
  [{ m: { k: arrays(48, 1) } }, 'resolverOptions["m"]["k"]' + "[0]".repeat(47)],
];

const escaped = (text) => text.replace(/[[\]()"]/g, "\\$&");

describe("resolverOptions depth, without a daemon", () => {
  test("the limit is protobuf's own", () => {
    assert.equal(MAX_OPTIONS_DEPTH, 100);
  });

  test("options one level too deep are a SerializationError (limit depth) naming the place", () => {
    for (const [options, where] of TOO_DEEP) {
      assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolver: "prefix", resolverOptions: options }),
        (e) => {
          assert.equal(e.name, "SerializationError");
          assert.equal(e.limit, "depth");
          assert.match(e.message, new RegExp(`^${escaped(where)} is nested too deeply: more than 100 protobuf levels`));
          return true;
        });
    }
  });

  test("options that contain themselves are too deep", () => {
    const me = {};
    me.me = me;
    const loop = [];
    loop.push(loop);
    for (const options of [me, { l: loop }]) {
      assert.throws(() => new CodeRunner({ root: "/r", file: "f.py", resolver: "prefix", resolverOptions: options }),
        { name: "SerializationError", limit: "depth" });
    }
  });
});

describe("an operator type's code that throws, without a daemon", () => {
  class Thing {}
  const unreadable = () => {
    const e = new Error("x");
    Object.defineProperty(e, "message", { get() { throw new Error("no words"); } });
    return e;
  };
  const trapped = () => new Proxy(new Error("p"), { getPrototypeOf() { throw new Error("trap"); } });
  const registry = (enc, dec) => {
    const r = new TypeRegistry();
    r.register(Thing, "t.Thing", enc, dec);
    return r;
  };

  for (const [name, make, said] of [
    ["an Error whose message cannot be read", unreadable, "Error: <its message could not be read>"],
    ["a Proxy whose traps throw", trapped, "object: <its message could not be read>"],
  ]) {
    test(`an encoder that throws ${name} fails its value naming the type`, () => {
      const r = registry(() => { throw make(); }, () => new Thing());
      assert.throws(() => encode([new Thing()], { registry: r }), (e) => {
        assert.equal(e.name, "SerializationError");
        assert.equal(e.message, `cannot encode a value of type 'Thing' at [0]: its encoder for 't.Thing' threw ${said}`);
        return true;
      });
    });

    test(`a resolver that throws ${name} fails its value naming the type`, () => {
      const r = registry(() => 1, () => { throw make(); });
      assert.throws(() => decode(received(encode([new Thing()], { registry: r })), "result: ", r), (e) => {
        assert.equal(e.name, "SerializationError");
        assert.equal(e.message, `result: cannot decode a value tagged "t.Thing" at [0]: its resolver threw ${said}`);
        return true;
      });
    });
  }
});

// The daemon's [types] plugin failing, as tests/integration/test_types_plugin_faults.py: the
// Node client gets the same SerializationError.
const FAULTY_TYPES = fs.readFileSync(path.join(__dirname, "..", "..", "..", "tests", "plugins", "faulty_types.py"), "utf8");

const PLAIN = "def f():\n    return 'ran'\n";

const GUEST = `
import faulty_types

def take(x):
    return 'the guest ran'

def give(mode):
    return faulty_types.Exits(mode)
`;

describe("with a daemon", () => {
  let daemon;
  before(async () => {
    daemon = await startDaemon({ config: '[types]\n"faulty.Exits" = "faulty_types:exits"\n',
      plugins: { "faulty_types.py": FAULTY_TYPES } });
  });
  after(async () => {
    await daemon.stop();
  });

  test("the deepest resolverOptions accepted run", async () => {
    for (const [name, options] of Object.entries(DEEPEST)) {
      const root = daemon.makeRoot({ "index.py": PLAIN });
      const r = new CodeRunner({ root, file: "index.py", socket: daemon.socket, resolver: "prefix",
        resolverOptions: { base: root, ...options } });
      try {
        assert.equal(await r.run({ funcName: "f" }), "ran", name);
      } finally {
        await r.close();
      }
    }
  });

  test("a timeout the daemon refuses is told in the milliseconds passed", async () => {
    const r = daemon.runner({ "index.py": PLAIN });
    for (const running of [undefined, () => {}]) {
      await assert.rejects(r.run({ funcName: "f", timeout: 100000, running }), {
        name: "InvalidRequest",
        message: /^timeout must be > 0 and <= max_timeout \(30 s\), got 100 s \(timeout: 100000 ms\)$/,
      });
    }
    assert.equal(await r.run({ funcName: "f", timeout: 30000 }), "ran");
  });

  test("a daemon type whose resolver or encoder exits is a SerializationError naming the type", async () => {
    class Exits {
      constructor(mode) {
        this.mode = mode;
      }
    }
    const registry = new TypeRegistry();
    registry.register(Exits, "faulty.Exits", (e) => e.mode, (p) => new Exits(p));
    const r = daemon.runner({ "index.py": GUEST }, { external: ["faulty_types"], registry });
    await assert.rejects(r.run({ funcName: "take", args: [new Exits("exit")] }), {
      name: "SerializationError",
      message: /^args\[0\]: cannot decode a value tagged 'faulty\.Exits': its resolver raised SystemExit: the type left$/,
    });
    await assert.rejects(r.run({ funcName: "give", args: ["exit"] }), {
      name: "SerializationError",
      message: /^the result: cannot encode a value of type 'Exits' .*its encoder for 'faulty\.Exits' raised SystemExit: the type left$/,
    });
    assert.equal(await r.run({ funcName: "take", args: [new Exits("fine")] }), "the guest ran");
  });
});
