"use strict";
// isolated-runtime-core's run tests (test/run.spec.js), one for one, against a real isorund.
const assert = require("node:assert/strict");
const { after, before, describe, test } = require("node:test");
const { errors } = require("..");
const { startDaemon } = require("../test-support/daemon");

const MULTIPLY = "def multiply(a, b):\n    return a * b\n";
let daemon;

before(async () => { daemon = await startDaemon(); });
after(() => daemon?.stop());

describe("With a single sync user function", () => {
  test("runs a sync method and returns the result", async () => {
    let ran = false;
    const result = await daemon.runner({ "index.py": MULTIPLY }).run({
      funcName: "multiply", args: [4, 5], running: () => { ran = true; },
    });
    assert.equal(result, 20);
    assert.equal(ran, true);
  });
});

describe("With a single async user function", () => {
  test("runs an async method and returns the result", async () => {
    const runner = daemon.runner({ "index.py": "async def multiply(a, b):\n    return a * b\n" });
    assert.equal(await runner.run({ funcName: "multiply", args: [4, 5] }), 20);
  });
});

describe("With a faulty sync user function", () => {
  test("reflects the error thrown by the user function", async () => {
    const runner = daemon.runner({ "index.py": "def multiply(a, b):\n    raise Exception('Boom!')\n" });
    // No arguments: like JavaScript, the daemon passes None for the missing ones.
    await assert.rejects(runner.run({ funcName: "multiply", args: [] }), (error) => {
      assert.ok(error instanceof errors.GuestError);
      assert.equal(error.message, "Boom!");
      assert.equal(error.typeName, "Exception");
      return true;
    });
  });
});

describe("With a faulty async user function", () => {
  test("reflects the error thrown by the user function", async () => {
    const runner = daemon.runner({ "index.py": "async def multiply(a, b):\n    raise ValueError('Boom!')\n" });
    await assert.rejects(runner.run({ funcName: "multiply", args: [] }),
      { name: "GuestError", message: "Boom!", typeName: "ValueError" });
  });
});

describe("With requiring a node module", () => {
  const files = { "index.py": "import mathlib\ndef get(obj, key):\n    return mathlib.get(obj, key)\n" };
  const library = () => daemon.makeRoot({ "mathlib/__init__.py": "def get(obj, key):\n    return obj[key]\n" });

  test("reflects the error when node modules is not allowed", async () => {
    const runner = daemon.runner(files, { whitelistedPaths: [library()] });
    await assert.rejects(runner.run({ funcName: "get", args: [{ a: 1 }, "a"] }), (error) => {
      assert.ok(error instanceof errors.ModuleNotFound);
      assert.equal(error.message, "Cannot find module 'mathlib'");
      assert.equal(error.module, "mathlib");
      assert.match(error.traceback, /File "\/index\.py", line 1, in <module>/); // where the import was
      return true;
    });
  });

  test("allows requiring specific node modules", async () => {
    const runner = daemon.runner(files, { whitelistedPaths: [library()], external: ["mathlib"] });
    assert.equal(await runner.run({ funcName: "get", args: [{ a: 1 }, "a"] }), 1);
  });
});

describe("With user code requiring relative user-modules", () => {
  test("runs the user method with the requires and returns the result", async () => {
    const runner = daemon.runner({
      "module1.py": "from module2 import square\n\ndef multiply_square(a, b):\n    return square(a) * square(b)\n",
      "module2.py": "def square(n):\n    return n * n\n",
    }, { file: "module1.py" });
    assert.equal(await runner.run({ funcName: "multiply_square", args: [2, 3] }), 36);
  });
});

describe("With a nonexisting function name", () => {
  test("throws a FunctionNotFound error", async () => {
    const runner = daemon.runner({ "index.py": "a = 1\n" });
    for (const name of ["no_such_function", "a"]) { // missing, and present but not callable
      await assert.rejects(runner.run({ funcName: name, args: [] }), (error) => {
        assert.ok(error instanceof TypeError);
        assert.ok(error instanceof errors.FunctionNotFound);
        assert.ok(error instanceof errors.IsorunError);
        assert.ok(error.message.includes(name), error.message);
        return true;
      });
    }
  });
});

describe("With a runtime context", () => {
  test("passes the context as a global variable to the sandbox", async () => {
    const key = `key_${Math.random().toString(36).slice(2)}`;
    const value = `secret-${Math.random().toString(36).slice(2)}`;
    // Context entries are global names of the guest, as `global.x` was in isolated-runtime.
    const runner = daemon.runner({ "index.py": `def from_context():\n    return ${key}\n` });
    assert.equal(await runner.run({ funcName: "from_context", context: { [key]: value } }), value);
  });

  test("context values keep their types", async () => {
    const runner = daemon.runner({ "index.py": "def greet():\n    return greeting + ' ' + tenant['name']\n" });
    const context = { greeting: "hi", tenant: { name: "acme" } };
    assert.equal(await runner.run({ funcName: "greet", context }), "hi acme");
  });
});

describe("With a custom file extension", () => {
  test("runs a function of a file with that extension", async () => {
    // isolated-runtime wrote extensions without the dot; both spellings work.
    for (const sourceExtensions of [["jx"], [".jx"]]) {
      const runner = daemon.runner({ "a_module.jx": MULTIPLY }, { file: "a_module.jx", sourceExtensions });
      assert.equal(await runner.run({ funcName: "multiply", args: [4, 5] }), 20);
    }
  });
});

describe("With a custom code compiler", () => {
  test("runs successfully", async () => {
    const runner = daemon.runner({ "index.py": "def multiply(a, b):\n    return a + b\n" },
      { compiler: "plus-to-times" });
    assert.equal(await runner.run({ funcName: "multiply", args: [4, 5] }), 20);
  });
});

describe("With an arguments transformer", () => {
  test("runs successfully", async () => {
    const runner = daemon.runner({ "index.py": MULTIPLY });
    assert.equal(await runner.run({ funcName: "multiply", args: [4, 5], argsResolver: "add-one" }), 30);
  });
});

describe("With multiple module paths and custom require", () => {
  test("runs successfully", async () => {
    const additionalModulesPath = daemon.makeRoot({ "multiply/__init__.py": MULTIPLY });
    const runner = daemon.runner(
      { "index.py": "import multiply\n\ndef run(a, b):\n    return multiply.multiply(a, b)\n" },
      {
        whitelistedPaths: [additionalModulesPath], external: ["multiply"],
        resolver: "prefix", resolverOptions: { base: additionalModulesPath },
      });
    assert.equal(await runner.run({ funcName: "run", args: [4, 5] }), 20);
  });
});
